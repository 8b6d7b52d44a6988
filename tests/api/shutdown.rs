//! Start-up output and graceful shutdown of the real binary.

use std::time::Duration;

use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

use crate::{
    helpers::grpc_channel,
    process::{switchboard, wait_within, Server},
};

fn start_server(dir: &std::path::Path, extra: &[&str]) -> Server {
    let mut command = switchboard(dir);
    command.args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"]);
    command.args(["--shutdown-timeout", "3s"]);
    command.args(extra);
    Server::start(command)
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly_and_ends_streams() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(dir.path(), &[]);
    assert!(
        dir.path().join("switchboard.db").exists(),
        "SQLite is the default"
    );

    let body = reqwest::get(format!("http://{}/readyz", server.http_addr))
        .await
        .unwrap();
    assert!(body.status().is_success());
    let mut health = HealthClient::new(grpc_channel(&server.grpc_addr).await);
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().expect("initial status");

    server.signal("TERM");

    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Ok(Some(_)) = watch.message().await {}
    })
    .await;
    assert!(ended.is_ok(), "the health stream ends during shutdown");
    let status = wait_within(&mut server.child, Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn sigint_stops_the_server_with_exit_code_zero() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(dir.path(), &[]);
    server.signal("INT");
    server.wait_for_line(|l| l.contains("stopped"));
    let status = wait_within(&mut server.child, Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(dir.path(), &["--log-format", "json"]);
    server.signal("TERM");
    let stopped = server.wait_for_line(|l| l.contains("\"stopped\""));
    let parsed: serde_json::Value = serde_json::from_str(&stopped).expect("a JSON log line");
    assert_eq!(parsed["fields"]["message"], "stopped");
    assert!(server.http_addr.parse::<std::net::SocketAddr>().is_ok());
    wait_within(&mut server.child, Duration::from_secs(10));
}

#[test]
fn without_a_secret_a_dev_token_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(dir.path(), &[]);
    server.signal("TERM");
    server.wait_for_line(|l| l.contains("stopped"));
    let dev_token_lines = server
        .seen
        .iter()
        .filter(|l| l.contains("Development token"))
        .count();
    assert_eq!(dev_token_lines, 1);
}

#[tokio::test]
async fn json_request_logs_carry_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_server(dir.path(), &["--log-format", "json"]);
    let response = reqwest::Client::new()
        .get(format!("http://{}/livez", server.http_addr))
        .header("X-Request-ID", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-me-42");

    let line = server.wait_for_line(|l| l.contains("request completed"));
    let parsed: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(parsed["span"]["request_id"], "trace-me-42", "{line}");
    assert_eq!(parsed["span"]["path"], "/livez", "{line}");
    assert_eq!(parsed["fields"]["status"], 200, "{line}");
}
