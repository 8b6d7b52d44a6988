//! Cluster mode: several nodes on one Redis. Nodes run in this process (their own
//! actix systems, ports 0) on the local Redis with a key prefix per test, or on a private
//! `redis-server` a test may stop.

use std::time::{Duration, Instant};

use serde_json::Value;
use switchboard::config::Settings;

use crate::{
    helpers::{spawn_app_with, test_settings, TestApp, TestDb},
    private_redis::{forget, shared_redis, test_prefix, PrivateRedis},
};

/// Generous: the suite runs in parallel on a busy 2-core machine.
const PATIENCE: Duration = Duration::from_secs(30);

/// Settings for node `node` of a cluster on `redis` under `prefix`, with a fast heartbeat.
pub fn node_settings(db: &TestDb, redis: &str, prefix: &str, node: &str) -> Settings {
    let mut settings = test_settings(db);
    settings.cluster.redis_url = Some(redis.into());
    settings.cluster.prefix = prefix.into();
    settings.cluster.node_id = Some(node.into());
    settings.cluster.heartbeat = Duration::from_millis(200);
    settings.cluster.node_timeout = Duration::from_secs(2);
    settings
}

/// Starts node `node`.
pub async fn node(redis: &str, prefix: &str, node: &str) -> TestApp {
    let db = TestDb::sqlite();
    let settings = node_settings(&db, redis, prefix, node);
    spawn_app_with(db, settings).await
}

fn cluster_check(health: &Value) -> &Value {
    &health["checks"]["cluster:redis"][0]
}

/// Polls `/health` until the cluster check satisfies `done`.
async fn cluster_until(app: &TestApp, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let health = app.get_json("/health").await;
        if done(cluster_check(&health)) {
            return health;
        }
        assert!(Instant::now() < deadline, "never {what}: {health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_one_redis_see_each_other_come_and_go() {
    let Some(redis) = shared_redis() else {
        return;
    };
    let prefix = test_prefix();
    let a = node(&redis, &prefix, "node-a").await;
    let b = node(&redis, &prefix, "node-b").await;
    let health = cluster_until(&a, "saw both nodes", |check| {
        check["stats"]["nodes"] == serde_json::json!(["node-a", "node-b"])
    })
    .await;
    let check = cluster_check(&health);
    assert_eq!(check["status"], "pass", "{health}");
    assert_eq!(check["componentId"], "node-a");
    assert!(check["observedValue"].as_f64().unwrap() >= 0.0);
    assert_eq!(check["observedUnit"], "ms");
    assert_eq!(a.get_status("/readyz").await, 200);

    // B goes away: A stops counting it once it has not been heard from for the timeout.
    b.shutdown().await.unwrap();
    cluster_until(&a, "forgot node-b", |check| {
        check["stats"]["nodes"] == serde_json::json!(["node-a"])
    })
    .await;
    forget(&redis, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_health_follow_redis() {
    let Some(mut redis) = PrivateRedis::start() else {
        return;
    };
    let app = node(&redis.url(), &test_prefix(), "solo").await;
    assert_eq!(app.get_status("/readyz").await, 200);

    redis.kill();
    let deadline = Instant::now() + PATIENCE;
    let body = loop {
        let response = app.get("/readyz").await;
        if response.status() == 503 {
            break response.json::<Value>().await.unwrap();
        }
        assert!(Instant::now() < deadline, "readiness never noticed Redis was gone");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        body["reason"].as_str().unwrap().contains("Redis unreachable"),
        "{body}"
    );
    let health = app.get_json("/health").await;
    assert_eq!(cluster_check(&health)["status"], "fail", "{health}");
    assert_ne!(health["status"], "pass", "{health}");

    redis.restart();
    cluster_until(&app, "reconnected", |check| check["status"] == "pass").await;
    assert_eq!(app.get_status("/readyz").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_malformed_redis_url_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for (url, expected) in [
        (format!("redis://127.0.0.1:{closed}"), "cannot reach Redis"),
        ("http://127.0.0.1:6379".to_owned(), "redis url"),
    ] {
        let mut command = crate::process::switchboard(dir.path());
        command.args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"]);
        command.args(["--database-url", "sqlite://cluster.db", "--redis-url", &url]);
        let finished = crate::process::run_within(command, PATIENCE);
        assert!(!finished.status.success(), "{url} should not start");
        assert!(
            finished.stderr.contains(expected),
            "{url}: {}",
            finished.stderr
        );
    }
}
