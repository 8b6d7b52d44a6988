//! GraphQL under attack: documents built to pin a worker, batches built to exhaust the
//! database, and the same limits over `/subscriptions`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    graphql_more::{
        initialised_socket, next_message, send, subscription_socket_at, until_subscribers,
    },
    helpers::{spawn_app, spawn_app_with, test_settings, TestApp, TestDb, TEST_JWT_SECRET},
    process::{switchboard, Server},
};

async fn post_json(app: &TestApp, body: &Value) -> (u16, Value) {
    let response = app.post_graphql(None, body).await;
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

fn first_code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or("<none>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragment_cycles_are_refused_at_once_and_the_server_stays_responsive() {
    let app = spawn_app().await;
    let attacks = [
        "{ user(id:\"x\") { ...F } } fragment F on User { id ...F ...F ...F }",
        "{ user(id:\"x\") { ...A } } fragment A on User { id ...B ...B } fragment B on User { name ...A ...A }",
        "{ users { ...Nowhere } }",
    ];
    // Several at once: before the fix, two of them pinned both workers of this machine.
    let requests = (0..6).map(|i| {
        let body = json!({ "query": attacks[i % attacks.len()] });
        let app = &app;
        async move { post_json(app, &body).await }
    });
    let answers = tokio::time::timeout(
        Duration::from_secs(20),
        futures_util::future::join_all(requests),
    )
    .await
    .expect("every attack document is answered");
    for (status, body) in answers {
        assert_eq!(status, 400, "{body}");
        assert_eq!(first_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    }
    assert_eq!(app.get_status("/livez").await, 200);
    // A sound document still runs.
    let (status, body) = post_json(&app, &json!({ "query": "{ users { id } }" })).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_bounded_in_operations_and_in_total_cost() {
    let app = spawn_app().await;
    let heavy = json!({ "query": "{ users(limit: 100) { id name posts { id } } }" }); // 1 + 100 × 13
    let light = json!({ "query": "{ users(limit: 1) { id } }" });

    let (status, body) = post_json(&app, &Value::Array(vec![light.clone(); 11])).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(first_code(&body), "BATCH_LIMIT_EXCEEDED", "{body}");
    assert_eq!(body["errors"][0]["extensions"]["limit"], 10);

    // Each document alone is under the default limit of 10,000; eight together are not.
    let (status, body) = post_json(&app, &Value::Array(vec![heavy.clone(); 8])).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(first_code(&body), "COST_LIMIT_EXCEEDED", "{body}");
    assert!(body["errors"][0]["extensions"]["cost"].as_u64().unwrap() > 10_000);

    let (status, body) = post_json(&app, &Value::Array(vec![heavy, light])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().map(Vec::len), Some(2), "{body}");
}

/// A server whose GraphQL cost limit is 100 and whose WebSocket bucket holds `burst`
/// tokens that (for the length of a test) do not refill.
async fn strict_app(burst: u32) -> TestApp {
    let db = TestDb::sqlite();
    let mut settings = test_settings(&db);
    settings.graphql.max_cost = 100;
    settings.websocket.rate_burst = burst;
    settings.websocket.rate_per_second = 0.001;
    spawn_app_with(db, settings).await
}

/// The start-an-operation message of each protocol.
fn start(protocol: &str, id: &str, query: &str) -> Value {
    let kind = if protocol == "graphql-ws" {
        "start"
    } else {
        "subscribe"
    };
    json!({ "id": id, "type": kind, "payload": { "query": query } })
}

const COSTLY_SUBSCRIPTION: &str =
    "subscription { userCreated { posts { author { posts { author { posts { id } } } } } } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_pass_the_same_cost_limit_as_http() {
    let app = strict_app(100).await;
    let (status, body) = post_json(&app, &json!({ "query": COSTLY_SUBSCRIPTION })).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(first_code(&body), "COST_LIMIT_EXCEEDED", "{body}");

    let mut sockets = Vec::new();
    for (running, protocol) in [(1, "graphql-transport-ws"), (2, "graphql-ws")] {
        let mut socket = initialised_socket(&app, protocol, json!({})).await;
        send(&mut socket, start(protocol, "costly", COSTLY_SUBSCRIPTION)).await;
        let refused = next_message(&mut socket).await.expect("an answer");
        assert_eq!(refused["type"], "error", "{protocol}: {refused}");
        assert_eq!(refused["id"], "costly", "{protocol}: {refused}");
        assert_eq!(
            refused["payload"][0]["extensions"]["code"], "COST_LIMIT_EXCEEDED",
            "{protocol}: {refused}"
        );
        assert_eq!(refused["payload"][0]["extensions"]["limit"], 100);

        let cycle = "subscription { userCreated { ...F } } fragment F on User { id ...F }";
        send(&mut socket, start(protocol, "cycle", cycle)).await;
        let refused = next_message(&mut socket).await.expect("an answer");
        assert_eq!(refused["id"], "cycle", "{protocol}: {refused}");
        assert_eq!(
            refused["payload"][0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED",
            "{protocol}: {refused}"
        );

        // The connection is still usable: a cheap subscription runs.
        send(
            &mut socket,
            start(protocol, "cheap", "subscription { userCreated { id } }"),
        )
        .await;
        until_subscribers(&app, running).await;
        sockets.push(socket);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_messages_are_rate_limited_per_connection() {
    // Three tokens: `connection_init` and two operations; everything after is refused.
    let app = strict_app(3).await;
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut socket = initialised_socket(&app, protocol, json!({})).await;
        for id in 1..=12 {
            let query = "subscription { userCreated { id } }";
            send(&mut socket, start(protocol, &id.to_string(), query)).await;
        }
        let mut refused = Vec::new();
        let close = loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .expect("the server answers in time");
            match frame {
                Some(Ok(Message::Text(text))) => {
                    let message: Value = serde_json::from_str(&text).unwrap();
                    if message["type"] == "error" {
                        assert_eq!(
                            message["payload"][0]["extensions"]["code"], "RATE_LIMITED",
                            "{protocol}: {message}"
                        );
                        refused.push(message["id"].as_str().unwrap().to_owned());
                    }
                }
                Some(Ok(Message::Close(frame))) => break frame,
                Some(Ok(_)) => {}
                other => panic!("{protocol}: the connection ended without a close: {other:?}"),
            }
        };
        let expected: Vec<String> = (3..=11).map(|id| id.to_string()).collect();
        assert_eq!(refused, expected, "{protocol}");
        let close = close.expect("a close frame with a code");
        assert_eq!(u16::from(close.code), 1008, "{protocol}: {close:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_offered_subprotocol_is_answered() {
    let app = spawn_app().await;
    let upgrade = |protocol: Option<&'static str>| {
        let mut request = app
            .http
            .get(app.url("/subscriptions"))
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        if let Some(protocol) = protocol {
            request = request.header("sec-websocket-protocol", protocol);
        }
        request.send()
    };
    let bogus = upgrade(Some("bogus")).await.unwrap();
    assert_eq!(bogus.status(), 400);
    assert!(bogus.text().await.unwrap().contains("graphql-transport-ws"));

    let none = upgrade(None).await.unwrap();
    assert_eq!(none.status(), 101);
    assert!(none.headers().get("sec-websocket-protocol").is_none());

    let legacy = upgrade(Some("bogus, graphql-ws")).await.unwrap();
    assert_eq!(legacy.status(), 101);
    assert_eq!(legacy.headers()["sec-websocket-protocol"], "graphql-ws");
}

/// Sends `frames` back to back (the server reads them as one burst) and reads until the
/// connection ends; returns the close code, if a close frame came.
async fn burst(addr: &str, protocol: &str, frames: &[&str]) -> Option<u16> {
    let mut socket = subscription_socket_at(addr, protocol).await;
    for frame in frames {
        // The server may close midway; later sends may fail, which is the point.
        if socket.feed(Message::text(*frame)).await.is_err() {
            break;
        }
    }
    let _ = socket.flush().await;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("the server answers or closes in time");
        match next {
            Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// Every way a client can break either subscription protocol — garbage, messages out of
/// order, duplicate ids, refused init, more frames after the server decided to close —
/// answered by the protocol's close codes, against the real binary; nothing panics
/// (`switchboard_panics_total` stays 0 and no panic reaches the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abusing_the_subscription_protocols_never_panics_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = switchboard(dir.path());
    command.args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"]);
    command.args(["--log-format", "json", "--database-url", "abuse.db"]);
    command.args(["--jwt-secret", TEST_JWT_SECRET]);
    let server = Server::start(command);
    let addr = server.http_addr.clone();

    let init = r#"{"type":"connection_init","payload":{}}"#;
    let bad_init = r#"{"type":"connection_init","payload":{"Authorization":"Bearer nope"}}"#;
    let subscribe = r#"{"id":"1","type":"subscribe","payload":{"query":"subscription { userCreated { id } }"}}"#;
    let complete = r#"{"id":"1","type":"complete"}"#;
    let ping = r#"{"type":"ping"}"#;
    let transport: [(&[&str], u16); 5] = [
        (&[init, "{not json", subscribe, complete, ping, init], 4400),
        (&[init, init, subscribe, "{not json", complete], 4429),
        (&[subscribe, init, "{not json", subscribe], 4401),
        (
            &[init, subscribe, subscribe, complete, "{not json", init],
            4409,
        ),
        (&[bad_init, subscribe, "{not json", init, complete], 4403),
    ];
    for (frames, code) in transport {
        let closed = burst(&addr, "graphql-transport-ws", frames).await;
        assert_eq!(closed, Some(code), "{frames:?}");
    }

    let start =
        r#"{"id":"1","type":"start","payload":{"query":"subscription { userCreated { id } }"}}"#;
    let stop = r#"{"id":"1","type":"stop"}"#;
    let terminate = r#"{"type":"connection_terminate"}"#;
    let legacy: [&[&str]; 3] = [
        &[
            init,
            "{not json",
            start,
            start,
            stop,
            terminate,
            start,
            "{not json",
        ],
        &[start, "{not json", init, init, stop, terminate],
        &[bad_init, start, terminate, "{not json", init],
    ];
    for frames in legacy {
        // The legacy protocol answers errors and carries on; it ends on terminate.
        burst(&addr, "graphql-ws", frames).await;
    }

    // The server is still up, counted no panic and logged none.
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|line| line == "switchboard_panics_total 0"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("panic"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let logged: Vec<String> = server.lines.try_iter().collect();
    let panics: Vec<&String> = logged.iter().filter(|l| l.contains("panic")).collect();
    assert!(panics.is_empty(), "{panics:?}");
    server.signal("TERM");
}

/// A server with a short keep-alive on subscription connections.
async fn keep_alive_app(keep_alive: Duration, pong_timeout: Duration) -> TestApp {
    let db = TestDb::sqlite();
    let mut settings = test_settings(&db);
    settings.graphql.keep_alive = keep_alive;
    settings.websocket.pong_timeout = pong_timeout;
    spawn_app_with(db, settings).await
}

/// npm graphql-ws clients never send `ping` by default: their subscriptions must not be
/// cut every keep-alive interval (juniper's own timeout would), only dead peers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_pings_keeps_its_subscription() {
    let app = keep_alive_app(Duration::from_millis(200), Duration::from_secs(60)).await;
    let mut socket = initialised_socket(&app, "graphql-transport-ws", json!({})).await;
    send(
        &mut socket,
        start(
            "graphql-transport-ws",
            "1",
            "subscription { userCreated { name } }",
        ),
    )
    .await;
    until_subscribers(&app, 1).await;
    // Ten keep-alive intervals without a `ping` from us (the library answers the
    // server's WebSocket pings as it reads).
    let quiet = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut keep_alives = 0;
    while let Ok(frame) = tokio::time::timeout_at(quiet, socket.next()).await {
        match frame {
            Some(Ok(Message::Text(text))) => {
                assert!(text.contains("pong"), "only keep-alives: {text}");
                keep_alives += 1;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("the connection ended: {other:?}"),
        }
    }
    assert!(keep_alives >= 2, "keep-alives arrive: {keep_alives}");
    let writer = crate::ws_client::token("writer", None);
    let created = app
        .post_graphql(
            Some(&writer),
            &json!({"query": "mutation { createUser(input: {name: \"Kept\", email: \"kept@example.com\"}) { id } }"}),
        )
        .await;
    assert_eq!(created.status(), 200);
    let event = next_message(&mut socket).await.expect("the event");
    assert_eq!(
        event["payload"]["data"]["userCreated"]["name"], "Kept",
        "{event}"
    );
}

/// A peer that stops answering (not even WebSocket pongs) is closed after the pong
/// timeout, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_subscription_client_is_disconnected() {
    let app = keep_alive_app(Duration::from_millis(200), Duration::from_secs(1)).await;
    let mut socket = initialised_socket(&app, "graphql-transport-ws", json!({})).await;
    // Not reading: the client library answers no ping.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let close = loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("the close arrives in time");
        match frame {
            Some(Ok(Message::Close(frame))) => break frame.expect("a close code"),
            Some(Ok(_)) => continue,
            other => panic!("ended without a close frame: {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1008, "{close:?}");
    assert!(close.reason.contains("heartbeat timeout"), "{close:?}");
}
