//! Server reflection (v1 and v1alpha, no token needed), gzip and message size limits.

use tonic::codec::CompressionEncoding;
use tonic_reflection::pb::{v1, v1alpha};

use crate::{
    grpc_users::client,
    helpers::{grpc_channel, spawn_app},
};

#[tokio::test]
async fn reflection_v1_lists_every_service_without_a_token() {
    use v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let app = spawn_app().await;
    let mut client = ServerReflectionClient::new(grpc_channel(app.grpc_addr).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(futures_util::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "userservice.UserService",
        "switchboard.chat.v1.ChatService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }

    let describe = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(
            "userservice.UserService".into(),
        )),
    };
    let mut responses = client
        .server_reflection_info(futures_util::stream::iter([describe]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    assert!(
        matches!(response.message_response, Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()),
        "{response:?}"
    );
}

#[tokio::test]
async fn reflection_v1alpha_answers_too() {
    use v1alpha::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let app = spawn_app().await;
    let mut client = ServerReflectionClient::new(grpc_channel(app.grpc_addr).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(futures_util::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer: {response:?}");
    };
    assert!(list
        .service
        .iter()
        .any(|s| s.name == "userservice.UserService"));
}

#[tokio::test]
async fn gzip_requests_and_responses_work() {
    let app = spawn_app().await;
    let mut users = client(&app)
        .await
        .send_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Gzip);
    let created = users
        .create_user(switchboard::grpc::pb::CreateUserRequest {
            name: "Zip".into(),
            email: "zip@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        created
            .metadata()
            .get("grpc-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("gzip"),
        "the response was compressed"
    );
    assert_eq!(created.into_inner().name, "Zip");
}

#[tokio::test]
async fn messages_over_the_size_limit_are_refused() {
    let db = crate::helpers::TestDb::sqlite();
    let mut settings = crate::helpers::test_settings(&db);
    settings.grpc_max_message_size = 1024;
    let app = crate::helpers::spawn_app_with(db, settings).await;
    let mut users = client(&app).await;
    let metadata = (0..3).map(|i| (format!("k{i}"), "v".repeat(900))).collect();
    let status = users
        .create_user(switchboard::grpc::pb::CreateUserRequest {
            name: "Big".into(),
            email: "big@example.com".into(),
            metadata,
            age: None,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(status.message().contains("1024"), "{}", status.message());
}
