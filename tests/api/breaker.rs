//! The circuit breaker opens when the database goes away: database routes fail fast, gRPC
//! answers UNAVAILABLE, readiness fails, and WebSocket chat keeps working.

use std::time::Duration;

use serde_json::{json, Value};
use switchboard::grpc::pb::ListUsersRequest;
use tonic::Code;

use crate::{
    grpc_users::client,
    helpers::{spawn_app_with, test_settings, TestApp, TestDb},
    ws_client::WsClient,
};

/// A server whose health monitor pings often, with two chat users in room `ops`.
async fn watched_app(
    db: TestDb,
    mut settings: switchboard::config::Settings,
) -> (TestApp, WsClient, WsClient) {
    settings.health_interval = Duration::from_millis(100);
    settings.database.connect_timeout = Duration::from_millis(500);
    let app = spawn_app_with(db, settings).await;
    let mut alice = WsClient::user(&app, "alice").await;
    let mut bob = WsClient::user(&app, "bob").await;
    alice.join("ops").await;
    bob.join("ops").await;
    (app, alice, bob)
}

async fn breaker_state(app: &TestApp) -> Value {
    app.get_json("/health").await["checks"]["circuitBreaker:state"][0]["state"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_opens_when_the_database_goes_away_and_chat_keeps_working() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let settings = test_settings(&db);
    let (app, mut alice, mut bob) = watched_app(db, settings).await;
    assert_eq!(breaker_state(&app).await, "closed");

    app.db().drop_postgres_database().await;
    wait_for(&app, "open").await; // the health monitor opens it

    let started = std::time::Instant::now();
    let response = app
        .http
        .post(app.url("/graphql"))
        .json(&json!({ "query": "{ users { id } }" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("circuit breaker open"),
        "{body}"
    );
    // The body below says the breaker answered; the bound only catches a hang, and is
    // generous for a busy CI machine.
    assert!(started.elapsed() < Duration::from_secs(2), "fails fast");

    let status = client(&app)
        .await
        .list_users(ListUsersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("circuit breaker"),
        "{}",
        status.message()
    );

    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);

    alice
        .send(json!({"type": "message", "room_id": "ops", "content": "still talking"}))
        .await;
    assert_eq!(bob.recv_kind("message").await["content"], "still talking");

    let metrics = app.get_text("/metrics").await;
    assert!(metrics.contains("switchboard_circuit_breaker_state{state=\"open\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_closes_again_when_the_database_returns() {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };

    let Some(cluster) = crate::private_pg::PrivateCluster::start() else {
        return;
    };
    let db = TestDb::sqlite(); // only for the settings' shape; the URL is replaced below
    let mut settings = test_settings(&db);
    settings.database.url = cluster.url.parse().unwrap();
    let (app, mut alice, mut bob) = watched_app(db, settings).await;
    let mut health = HealthClient::new(crate::helpers::grpc_channel(app.grpc_addr).await);
    let grpc_health = |health: &mut HealthClient<tonic::transport::Channel>| {
        let mut health = health.clone();
        async move {
            health
                .check(HealthCheckRequest {
                    service: "userservice.UserService".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status()
        }
    };

    cluster.halt();
    wait_for(&app, "open").await;
    assert_eq!(app.get_status("/readyz").await, 503);
    assert_eq!(grpc_health(&mut health).await, ServingStatus::NotServing);
    alice
        .send(json!({"type": "message", "room_id": "ops", "content": "db is down"}))
        .await;
    assert_eq!(bob.recv_kind("message").await["content"], "db is down");

    cluster.resume().expect("the cluster starts again");
    // Trial calls (after the open period) close it; keep some traffic flowing.
    let mut closed = false;
    for _ in 0..100 {
        let _ = app
            .http
            .post(app.url("/graphql"))
            .json(&json!({ "query": "{ users { id } }" }))
            .send()
            .await;
        if breaker_state(&app).await == "closed" {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(closed, "the breaker closes once trial calls succeed");
    assert_eq!(app.get_status("/readyz").await, 200);
    assert_eq!(grpc_health(&mut health).await, ServingStatus::Serving);
}

async fn wait_for(app: &TestApp, state: &str) {
    for _ in 0..200 {
        if breaker_state(app).await == state {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the breaker never became {state}");
}
