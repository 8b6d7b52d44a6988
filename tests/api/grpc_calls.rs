//! The gRPC call layer: request ids, deadlines and the per-call log line.

use std::time::Duration;

use futures_util::StreamExt;
use switchboard::grpc::pb::{
    user_service_client::UserServiceClient, CreateUserRequest, GetUserRequest, ListUsersRequest,
};
use tonic::{metadata::MetadataValue, Code, Request};

use crate::{
    grpc_users::client,
    helpers::{grpc_channel, spawn_app, TEST_JWT_SECRET},
    process::{switchboard, Server},
    ws_client::token,
};

#[tokio::test]
async fn request_ids_are_honoured_or_generated_and_returned() {
    let app = spawn_app().await;
    let mut users = client(&app).await;

    let mut request = Request::new(ListUsersRequest::default());
    request
        .metadata_mut()
        .insert("request-id", MetadataValue::from_static("trace-77"));
    let response = users.list_users(request).await.unwrap();
    assert_eq!(response.metadata().get("request-id").unwrap(), "trace-77");

    let response = users.list_users(ListUsersRequest::default()).await.unwrap();
    let generated = response
        .metadata()
        .get("request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");

    let status = users
        .get_user(GetUserRequest { id: String::new() })
        .await
        .unwrap_err();
    assert!(
        status.metadata().get("request-id").is_some(),
        "errors carry the id too"
    );
}

#[tokio::test]
async fn a_call_that_outlives_its_deadline_is_deadline_exceeded() {
    let app = spawn_app().await;
    let mut users = client(&app).await;

    // A bulk create whose client pauses mid-stream keeps the server's handler waiting
    // past the deadline; the server answers before the client's own timer fires.
    let first = CreateUserRequest {
        name: "Early".into(),
        email: "early@example.com".into(),
        ..Default::default()
    };
    let stalled = futures_util::stream::iter([first]).chain(futures_util::stream::once(async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        CreateUserRequest::default()
    }));
    let mut request = Request::new(stalled);
    request.set_timeout(Duration::from_millis(500));
    let started = std::time::Instant::now();
    let status = users.bulk_create_users(request).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    let mut patient = Request::new(ListUsersRequest::default());
    patient.set_timeout(Duration::from_secs(10));
    users
        .list_users(patient)
        .await
        .expect("a generous deadline is met");
}

#[tokio::test]
async fn every_call_is_logged_with_method_status_duration_and_peer() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = switchboard(dir.path());
    command.args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"]);
    command.args(["--log-format", "json", "--jwt-secret", TEST_JWT_SECRET]);
    let mut server = Server::start(command);

    let channel = grpc_channel(&server.grpc_addr).await;
    let bearer: MetadataValue<_> = format!("Bearer {}", token("svc", None)).parse().unwrap();
    let mut users = UserServiceClient::with_interceptor(channel, move |mut r: Request<()>| {
        r.metadata_mut().insert("authorization", bearer.clone());
        Ok(r)
    });
    let unknown = uuid::Uuid::now_v7().to_string();
    let status = users
        .get_user(GetUserRequest { id: unknown })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let line = server.wait_for_line(|l| l.contains("grpc call completed"));
    let log: serde_json::Value = serde_json::from_str(&line).unwrap();
    let fields = &log["fields"];
    assert_eq!(
        fields["method"], "/userservice.UserService/GetUser",
        "{line}"
    );
    assert_eq!(fields["grpc_status"], "NOT_FOUND", "{line}");
    // The ids under the same names as on an HTTP request's line.
    for id in ["request_id", "trace_id", "span_id"] {
        assert!(
            log["span"][id].as_str().is_some_and(|v| !v.is_empty()),
            "{id}: {line}"
        );
    }
    assert!(fields["elapsed_ms"].as_f64().is_some(), "{line}");
    assert!(
        fields["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{line}"
    );
}
