//! gRPC health over a real tonic client.

use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

use crate::helpers::{grpc_channel, spawn_app};

#[tokio::test]
async fn grpc_health_check_reports_serving() {
    let app = spawn_app().await;
    let mut client = HealthClient::new(grpc_channel(app.grpc_addr).await);

    let response = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();

    assert_eq!(response.into_inner().status(), ServingStatus::Serving);
}

#[tokio::test]
async fn unknown_services_are_not_found() {
    let app = spawn_app().await;
    let mut client = HealthClient::new(grpc_channel(app.grpc_addr).await);
    let status = client
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn health_watch_streams_end_with_not_serving_on_shutdown() {
    let app = spawn_app().await;
    let mut client = HealthClient::new(grpc_channel(app.grpc_addr).await);
    let mut stream = client
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("an initial status");
    assert_eq!(first.status(), ServingStatus::Serving);

    let shutdown = tokio::spawn(app.shutdown());

    let mut last = None;
    while let Ok(Some(update)) = stream.message().await {
        last = Some(update.status());
    }
    assert_eq!(
        last,
        Some(ServingStatus::NotServing),
        "watchers learn of the shutdown"
    );
    shutdown.await.unwrap().expect("a clean shutdown");
}
