//! HTTP rate limiting: per-client buckets, 429 with the right headers, recovery, exemptions.

use std::time::Duration;

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::{
    helpers::{spawn_app_with, test_settings, TestApp, TestDb},
    ws_client::{raw_connect, read_until_close, token, WsClient},
};

async fn limited_app(per_second: f64, burst: u32) -> TestApp {
    let db = TestDb::sqlite();
    let mut settings = test_settings(&db);
    settings.rate_limit_per_second = per_second;
    settings.rate_limit_burst = burst;
    spawn_app_with(db, settings).await
}

#[tokio::test]
async fn a_burst_over_the_limit_gets_429_with_retry_after_and_ratelimit_headers() {
    let app = limited_app(0.5, 3).await;
    for remaining in [2, 1, 0] {
        let ok = app.http.get(app.url("/rooms")).send().await.unwrap();
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.headers()["ratelimit-policy"], "\"default\";q=3;w=6");
        let current = ok.headers()["ratelimit"].to_str().unwrap();
        assert!(
            current.starts_with(&format!("\"default\";r={remaining};")),
            "{current}"
        );
    }
    let refused = app.http.get(app.url("/rooms")).send().await.unwrap();
    assert_eq!(refused.status(), 429);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(refused.headers()["ratelimit"], "\"default\";r=0;t=2");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "rate limit exceeded");

    let probe = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(probe.status(), 200, "health probes are never limited");

    let text = app.get_text("/metrics").await;
    assert!(
        text.contains("switchboard_rate_limit_rejections_total{protocol=\"http\"} 1"),
        "the rejection is counted"
    );

    let other = app
        .http
        .get(app.url("/rooms"))
        .bearer_auth(token("someone-else", None))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200, "a token's subject has its own bucket");
}

#[tokio::test]
async fn the_bucket_refills_continuously() {
    let app = limited_app(4.0, 1).await;
    // Requests back to back soon find the bucket empty (a token takes 250 ms at 4/s);
    // how soon does not matter, so a slow machine cannot fail this.
    let mut refused = false;
    for _ in 0..20 {
        if app.get_status("/rooms").await == 429 {
            refused = true;
            break;
        }
    }
    assert!(refused, "the bucket empties");
    // Well under a second later there is a token again — not after a whole second, as
    // the seed's refill had it. (The exact arithmetic is unit-tested with a clock.)
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app.get_status("/rooms").await, 200);
}

#[tokio::test]
async fn grpc_calls_over_the_limit_are_resource_exhausted_but_health_is_not_limited() {
    use switchboard::grpc::pb::ListUsersRequest;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

    let app = limited_app(0.5, 2).await;
    let mut users = crate::grpc_users::client(&app).await;
    for _ in 0..2 {
        users.list_users(ListUsersRequest::default()).await.unwrap();
    }
    let status = users
        .list_users(ListUsersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().contains("rate limit"),
        "{}",
        status.message()
    );

    let mut health = HealthClient::new(crate::helpers::grpc_channel(app.grpc_addr).await);
    for _ in 0..5 {
        health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health is never limited");
    }
}

#[tokio::test]
async fn a_websocket_upgrade_over_the_limit_is_closed_with_1013_after_the_upgrade() {
    let app = limited_app(0.5, 2).await;
    let first = WsClient::connect(&app, "?user_id=ann").await;
    assert_eq!(
        first.welcome["type"], "join",
        "the first upgrade is admitted"
    );
    let ok = app.http.get(app.url("/rooms")).send().await.unwrap();
    assert_eq!(
        ok.status(),
        200,
        "upgrades and requests share the client's bucket"
    );

    // The bucket is empty: the upgrade still answers 101, then the session closes it with
    // a reason a browser can read (it cannot read a 429).
    let mut refused = raw_connect(&app, "?user_id=ann", &[]).await.unwrap();
    let close = read_until_close(&mut refused).await;
    assert_eq!(close.code, CloseCode::Again);
    assert!(
        close.reason.contains("rate limit exceeded; retry in 2s"),
        "{}",
        close.reason
    );
    let text = app.get_text("/metrics").await;
    assert!(
        text.contains("switchboard_rate_limit_rejections_total{protocol=\"ws\"} 1"),
        "the refusal is counted"
    );
    // A token's subject has its own bucket, for upgrades too.
    WsClient::user(&app, "someone-else").await;
}

#[tokio::test]
async fn refused_websocket_upgrades_take_tokens_too_and_get_429_when_over() {
    let app = limited_app(0.01, 2).await;
    let bad = [("authorization", "Bearer not-a-jwt")];
    for _ in 0..2 {
        let refused = WsClient::try_connect(&app, "", &bad).await.err().unwrap();
        assert_eq!(refused.status, 401);
    }
    let over = WsClient::try_connect(&app, "", &bad).await.err().unwrap();
    assert_eq!(over.status, 429, "bad-token upgrades cannot be hammered");
    assert_eq!(over.body["error"], "rate limit exceeded");
}
