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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_watch_turns_not_serving_while_the_database_is_unreachable() {
    let Some(db) = crate::helpers::TestDb::postgres().await else {
        return;
    };
    let mut settings = crate::helpers::test_settings(&db);
    settings.health_interval = std::time::Duration::from_millis(100);
    let app = crate::helpers::spawn_app_with(db, settings).await;
    let mut client = HealthClient::new(grpc_channel(app.grpc_addr).await);
    let mut stream = client
        .watch(HealthCheckRequest {
            service: "userservice.UserService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("an initial status");
    assert_eq!(first.status(), ServingStatus::Serving);

    app.db().drop_postgres_database().await;

    let turned = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(update) = stream.message().await.unwrap() {
            if update.status() == ServingStatus::NotServing {
                return;
            }
        }
        panic!("the stream ended without NOT_SERVING");
    })
    .await;
    assert!(turned.is_ok(), "health turns NOT_SERVING within 10 s");
}
