//! W3C trace context: joined, logged and returned over HTTP and gRPC.

use switchboard::grpc::pb::ListUsersRequest;
use tonic::{metadata::MetadataValue, Request};

use crate::{
    grpc_users::client,
    helpers::spawn_app,
    process::{switchboard, Server},
};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn trace_of(traceparent: &str) -> (&str, &str) {
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    (parts[1], parts[2])
}

#[tokio::test]
async fn http_joins_the_callers_trace_and_returns_its_own_span() {
    let app = spawn_app().await;
    let response = app
        .http
        .get(app.url("/rooms"))
        .header("traceparent", PARENT)
        .header("tracestate", "vendor=1")
        .send()
        .await
        .unwrap();
    let traceparent = response.headers()["traceparent"].to_str().unwrap();
    let (trace, span) = trace_of(traceparent);
    assert_eq!(trace, TRACE);
    assert_ne!(span, "00f067aa0ba902b7", "a new span for this request");
    assert_eq!(response.headers()["tracestate"], "vendor=1");
    assert_eq!(response.headers()["x-trace-id"], TRACE);

    let seed = app
        .http
        .get(app.url("/rooms"))
        .header("x-trace-id", TRACE)
        .header("x-span-id", "00f067aa0ba902b7")
        .send()
        .await
        .unwrap();
    assert_eq!(
        trace_of(seed.headers()["traceparent"].to_str().unwrap()).0,
        TRACE
    );

    let fresh = app.http.get(app.url("/rooms")).send().await.unwrap();
    let (trace, _) = trace_of(fresh.headers()["traceparent"].to_str().unwrap());
    assert_ne!(trace, TRACE, "no header starts a new trace");
}

#[tokio::test]
async fn grpc_joins_the_callers_trace() {
    let app = spawn_app().await;
    let mut users = client(&app).await;
    let mut request = Request::new(ListUsersRequest::default());
    request
        .metadata_mut()
        .insert("traceparent", MetadataValue::from_static(PARENT));
    let response = users.list_users(request).await.unwrap();
    let traceparent = response
        .metadata()
        .get("traceparent")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(trace_of(traceparent).0, TRACE);
}

#[tokio::test]
async fn every_log_line_of_a_request_carries_its_trace_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = switchboard(dir.path());
    command.args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"]);
    command.args(["--log-format", "json", "--log-level", "debug"]);
    let mut server = Server::start(command);
    reqwest::Client::new()
        .get(format!("http://{}/rooms", server.http_addr))
        .header("traceparent", PARENT)
        .send()
        .await
        .unwrap();
    let line = server.wait_for_line(|l| l.contains("request completed"));
    let log: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(log["span"]["trace_id"], TRACE, "{line}");
    assert!(log["span"]["span_id"].as_str().is_some(), "{line}");
    assert!(log["span"]["request_id"].as_str().is_some(), "{line}");
}

/// A minimal OTLP/HTTP collector: answers 200 to every request and hands over
/// (path, body) pairs.
async fn fake_collector() -> (
    String,
    tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(socket);
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let path = request_line.split(' ').nth(1).unwrap_or("").to_owned();
                    let mut length = 0;
                    loop {
                        let mut line = String::new();
                        reader.read_line(&mut line).await.unwrap();
                        if line == "\r\n" || line.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = line.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                length = value.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).await.unwrap();
                    let _ = tx.send((path, body));
                    reader
                        .get_mut()
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await
                        .unwrap();
                }
            });
        }
    });
    (format!("http://{addr}"), rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_in_the_callers_trace() {
    let (endpoint, mut exports) = fake_collector().await;
    let dir = tempfile::tempdir().unwrap();
    let mut command = switchboard(dir.path());
    command.args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"]);
    command.args(["--otlp-endpoint", &endpoint]);
    command.env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let server = Server::start(command);

    let response = reqwest::Client::new()
        .get(format!("http://{}/rooms", server.http_addr))
        .header("traceparent", PARENT)
        .send()
        .await
        .unwrap();
    let (trace, span) = trace_of(response.headers()["traceparent"].to_str().unwrap());
    assert_eq!(
        trace, TRACE,
        "the exported span continues the caller's trace"
    );
    assert_ne!(span, "00f067aa0ba902b7");

    let trace_bytes: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&TRACE[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    let found = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        while let Some((path, body)) = exports.recv().await {
            if path == "/v1/traces" && body.windows(16).any(|w| w == trace_bytes.as_slice()) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "the request's span reached the collector");
}
