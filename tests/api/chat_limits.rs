//! WebSocket security, limits, liveness, slow consumers and shutdown.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::config::{OriginPolicy, Settings, WsSettings};
use tokio_tungstenite::tungstenite::{
    client::IntoClientRequest,
    protocol::frame::coding::{CloseCode, Data},
    Message,
};

use crate::{
    helpers::{spawn_app, spawn_app_with, test_settings, TestApp, TestDb},
    ws_client::{raw_close, raw_connect, read_until_close, token, WsClient},
};

/// A server whose WebSocket settings are adjusted by `tweak`.
async fn spawn_chat(tweak: impl FnOnce(&mut WsSettings)) -> TestApp {
    let db = TestDb::sqlite();
    let mut settings: Settings = test_settings(&db);
    tweak(&mut settings.websocket);
    spawn_app_with(db, settings).await
}

#[tokio::test]
async fn a_foreign_origin_is_refused_before_the_upgrade() {
    let app = spawn_app().await;
    let refused = WsClient::try_connect(&app, "", &[("origin", "http://evil.example")])
        .await
        .err()
        .expect("a foreign origin is refused");
    assert_eq!(refused.status, 403);
    assert!(refused.body["error"]
        .as_str()
        .unwrap()
        .contains("evil.example"));

    let own = format!("http://{}", app.http_addr);
    WsClient::try_connect(&app, "", &[("origin", &own)])
        .await
        .expect("the server's own origin is allowed");
}

#[tokio::test]
async fn an_origin_allowlist_admits_exactly_its_origins() {
    let app = spawn_chat(|ws| {
        ws.allowed_origins = OriginPolicy::parse(&["https://app.example.com"]).unwrap();
    })
    .await;
    WsClient::try_connect(&app, "", &[("origin", "https://app.example.com")])
        .await
        .expect("a listed origin is allowed");
    let own = format!("http://{}", app.http_addr);
    let refused = WsClient::try_connect(&app, "", &[("origin", &own)])
        .await
        .err();
    assert_eq!(refused.expect("an unlisted origin is refused").status, 403);
}

#[tokio::test]
async fn require_auth_refuses_anonymous_upgrades_with_401() {
    let app = spawn_chat(|ws| ws.require_auth = true).await;
    let refused = WsClient::try_connect(&app, "", &[]).await.err().unwrap();
    assert_eq!(refused.status, 401);
    assert!(refused.body["error"]
        .as_str()
        .unwrap()
        .contains("token is required"));
    let alice = WsClient::user(&app, "alice").await;
    assert_eq!(alice.user_id, "alice");
}

#[tokio::test]
async fn a_bad_token_is_refused_with_401_even_when_guests_are_allowed() {
    let app = spawn_app().await;
    for query in [
        "?token=not-a-jwt",
        &format!("?token={}x", token("alice", None)),
    ] {
        let refused = WsClient::try_connect(&app, query, &[]).await.err().unwrap();
        assert_eq!(refused.status, 401, "{query}");
        assert!(refused.body["error"].as_str().unwrap().contains("token"));
    }
}

#[tokio::test]
async fn an_oversize_message_closes_with_1009() {
    let app = spawn_chat(|ws| ws.max_message_size = 1024).await;
    let mut alice = WsClient::user(&app, "alice").await;
    let content = "x".repeat(2000);
    alice
        .send(json!({"type": "message", "room_id": "r", "content": content}))
        .await;
    let close = alice.closed().await;
    assert_eq!(close.code, CloseCode::Size);
    assert!(close.reason.contains("1024"), "{}", close.reason);
}

#[tokio::test]
async fn invalid_utf8_text_closes_with_1007() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::frame::{coding::OpCode, Frame};

    let app = spawn_app().await;
    let mut alice = WsClient::user(&app, "alice").await;
    let invalid = Frame::message(vec![0xff, 0xfe, b'{'], OpCode::Data(Data::Text), true);
    alice.stream.send(Message::Frame(invalid)).await.unwrap();
    let close = alice.closed().await;
    assert_eq!(close.code, CloseCode::Invalid);
}

#[tokio::test]
async fn the_rate_limit_answers_with_errors_then_closes_with_1008() {
    let app = spawn_chat(|ws| {
        ws.rate_per_second = 0.5;
        ws.rate_burst = 2;
    })
    .await;
    let mut alice = WsClient::user(&app, "alice").await;
    let mut bob = WsClient::user(&app, "bob").await;
    alice.join("lobby").await;
    alice.join("lobby").await; // the burst of two passes

    for _ in 0..10 {
        alice
            .send(json!({"type": "join", "room_id": "lobby"}))
            .await;
    }
    let mut rate_errors = 0;
    let close = loop {
        match alice.stream.next().await.unwrap().unwrap() {
            Message::Text(text) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                assert_eq!(frame["type"], "error", "{frame}");
                assert!(frame["content"].as_str().unwrap().contains("rate limit"));
                rate_errors += 1;
            }
            Message::Close(frame) => break frame.unwrap(),
            _ => {}
        }
    };
    assert_eq!(rate_errors, 9, "each refusal is explained");
    assert_eq!(close.code, CloseCode::Policy, "until refusals persist");

    bob.join("lobby").await; // other connections are unaffected
}

#[tokio::test]
async fn a_session_may_only_be_in_so_many_rooms() {
    let app = spawn_chat(|ws| ws.max_rooms_per_session = 2).await;
    let mut alice = WsClient::user(&app, "alice").await;
    alice.join("a").await;
    alice.join("b").await;
    alice.send(json!({"type": "join", "room_id": "c"})).await;
    assert!(alice.recv_error().await.contains("at most 2 rooms"));
}

#[tokio::test]
async fn a_user_may_only_hold_so_many_sessions() {
    let app = spawn_chat(|ws| ws.max_sessions_per_user = 2).await;
    let _one = WsClient::user(&app, "alice").await;
    let _two = WsClient::user(&app, "alice").await;
    let mut third = raw_connect(&app, &format!("?token={}", token("alice", None)), &[])
        .await
        .unwrap();
    let close = read_until_close(&mut third).await;
    assert_eq!(close.code, CloseCode::Policy);
    assert!(
        close.reason.contains("too many sessions"),
        "{}",
        close.reason
    );
    WsClient::user(&app, "bob").await; // the limit is per user
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_after_the_pong_timeout() {
    // Margins that hold on a busy machine: the lively client only has to be read once
    // in five seconds (pinged every 200 ms); the silent one is given thirty to be found out.
    let app = spawn_chat(|ws| {
        ws.ping_interval = Duration::from_millis(200);
        ws.pong_timeout = Duration::from_secs(5);
        ws.close_timeout = Duration::from_millis(500);
    })
    .await;
    let silent = WsClient::user(&app, "silent").await;
    let lively = WsClient::user(&app, "lively").await;

    // The lively client reads all along, on a task of its own, so its library answers
    // every ping.
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let lively = tokio::spawn(lively.keep_reading_until(stopped));
    // The silent one reads nothing, so it never answers.
    let (code, reason) = tokio::time::timeout(Duration::from_secs(30), raw_close(silent))
        .await
        .expect("the silent client is closed in time");
    assert_eq!(code, 1008);
    assert!(reason.contains("heartbeat"), "{reason}");

    let _ = stop.send(());
    let mut lively = lively.await.unwrap();
    lively.join("still-here").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_disconnected_and_a_fast_member_gets_everything() {
    const MESSAGES: u64 = 3000;
    let app = spawn_chat(|ws| {
        ws.outbound_queue = 256;
        // Frames, not bytes, bound the queues here (the byte bound has its own test).
        ws.outbound_bytes = 1 << 30;
        ws.rate_per_second = 1e6;
        ws.rate_burst = 1_000_000;
    })
    .await;
    let mut slow = WsClient::user(&app, "slow").await;
    let mut fast = WsClient::user(&app, "fast").await;
    let mut sender = WsClient::user(&app, "sender").await;
    slow.join("firehose").await;
    fast.join("firehose").await;
    sender.join("firehose").await;

    // The fast member reads everything relayed until the closing message.
    let fast_reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            let frame = fast.recv_kind("message").await;
            let n = frame["metadata"]["n"].as_u64().unwrap();
            if n == MESSAGES {
                return seen;
            }
            seen.push(n);
        }
    });
    // The sender fires as fast as it can; a publish the server refuses for overload is
    // answered with an `overloaded` error instead of an ack, and is not relayed.
    let (mut to_server, mut from_server) = sender.stream.split();
    let padding = "p".repeat(16 * 1024);
    let answers = tokio::spawn(async move {
        let (mut acked, mut refused) = (0, 0);
        while acked + refused < MESSAGES {
            let frame = from_server.next().await.expect("a frame").unwrap();
            let Message::Text(text) = frame else { continue };
            let frame: Value = serde_json::from_str(&text).unwrap();
            match frame["type"].as_str() {
                Some("ack") => acked += 1,
                Some("error") => {
                    assert_eq!(frame["metadata"]["code"], "overloaded", "{frame}");
                    refused += 1;
                }
                _ => {}
            }
        }
        (acked, refused, from_server)
    });
    for n in 0..MESSAGES {
        let frame = json!({"type": "message", "room_id": "firehose", "content": padding, "metadata": {"n": n}});
        to_server
            .send(Message::text(frame.to_string()))
            .await
            .unwrap();
    }
    let (acked, refused, mut from_server) = answers.await.unwrap();
    // The closing message, retried until the server takes it.
    loop {
        let done = json!({"type": "message", "room_id": "firehose", "content": "done", "metadata": {"n": MESSAGES}});
        to_server
            .send(Message::text(done.to_string()))
            .await
            .unwrap();
        let answer = loop {
            let Message::Text(text) = from_server.next().await.unwrap().unwrap() else {
                continue;
            };
            let frame: Value = serde_json::from_str(&text).unwrap();
            if matches!(frame["type"].as_str(), Some("ack" | "error")) {
                break frame;
            }
        };
        if answer["type"] == "ack" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let relayed = fast_reader.await.unwrap();
    assert_eq!(
        relayed.len() as u64,
        acked,
        "every acked message reached the fast member ({refused} refused)"
    );
    assert!(
        relayed.windows(2).all(|w| w[0] < w[1]),
        "in order, once each"
    );

    // The slow member read nothing meanwhile: it was cut off after a prefix of what was
    // relayed, with nothing skipped before the close.
    let mut received = Vec::new();
    let close = loop {
        match slow.stream.next().await.expect("a frame or close").unwrap() {
            Message::Text(text) => {
                let frame: Value = serde_json::from_str(&text).unwrap();
                if frame["type"] == "message" {
                    received.push(frame["metadata"]["n"].as_u64().unwrap());
                }
            }
            Message::Close(frame) => break frame.expect("a close code"),
            _ => {}
        }
    };
    assert_eq!(close.code, CloseCode::Policy);
    assert!(close.reason.contains("slow consumer"), "{}", close.reason);
    assert!(
        received.len() < relayed.len(),
        "the slow member was cut off"
    );
    assert_eq!(
        received,
        relayed[..received.len()],
        "no gaps before the close"
    );

    let health: Value = app.get_json("/health").await;
    assert_eq!(
        health["checks"]["hub:connections"][0]["stats"]["slow_consumer_disconnects"],
        1
    );
}

#[tokio::test]
async fn shutdown_closes_every_session_with_1001() {
    let app = spawn_app().await;
    let mut alice = WsClient::user(&app, "alice").await;
    let mut bob = WsClient::connect(&app, "").await;
    alice.join("lobby").await;

    let stopping = tokio::spawn(app.shutdown());
    for client in [&mut alice, &mut bob] {
        let close = client.closed().await;
        assert_eq!(close.code, CloseCode::Away);
    }
    stopping.await.unwrap().expect("a clean shutdown");
}

#[tokio::test]
async fn websocket_flags_reach_the_running_binary() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = crate::process::switchboard(dir.path());
    command.args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"]);
    command.args([
        "--ws-require-auth",
        "--allowed-origins",
        "https://app.example.com",
    ]);
    let server = crate::process::Server::start(command);
    let url = format!("ws://{}/ws", server.http_addr);

    let status = |result: Result<_, tokio_tungstenite::tungstenite::Error>| match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Ok(_) => 101,
        Err(other) => panic!("{other}"),
    };
    let anonymous = tokio_tungstenite::connect_async(url.as_str()).await;
    assert_eq!(status(anonymous), 401, "--ws-require-auth is in force");

    let mut foreign = url.as_str().into_client_request().unwrap();
    foreign
        .headers_mut()
        .insert("origin", "https://other.example".parse().unwrap());
    assert_eq!(status(tokio_tungstenite::connect_async(foreign).await), 403);
}

#[tokio::test]
async fn a_plain_get_on_the_websocket_route_is_a_clear_400() {
    let app = spawn_app().await;
    let response = app.http.get(app.url("/ws")).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("not a WebSocket upgrade"), "{error}");
}
