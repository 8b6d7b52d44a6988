//! Queues that mean what they say, and overload shed at the door: a client that stops
//! reading is dropped in bounded time, what waits for one connection is bounded in bytes,
//! and when most of a room is behind, publishers are told to retry instead of subscribers
//! being closed.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::config::WsSettings;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    helpers::{spawn_app_with, test_settings, TestApp, TestDb},
    ws_client::WsClient,
};

async fn spawn_chat(tweak: impl FnOnce(&mut WsSettings)) -> TestApp {
    let db = TestDb::sqlite();
    let mut settings = test_settings(&db);
    settings.websocket.rate_per_second = 1e6;
    settings.websocket.rate_burst = 1_000_000;
    tweak(&mut settings.websocket);
    spawn_app_with(db, settings).await
}

async fn hub_stats(app: &TestApp) -> Value {
    app.get_json("/health").await["checks"]["hub:connections"][0]["stats"].clone()
}

/// Polls the hub's stats until `check` holds (or fails after `limit`).
async fn until_hub(app: &TestApp, limit: Duration, what: &str, check: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let stats = hub_stats(app).await;
        if check(&stats) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {stats}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_dropped_in_bounded_time() {
    // Frames and bytes are bounded loosely here, so the slow-consumer rule does not catch
    // the client first: the heartbeat and the kernel's user timeout must.
    let app = spawn_chat(|ws| {
        ws.ping_interval = Duration::from_secs(1);
        ws.pong_timeout = Duration::from_secs(3);
        ws.outbound_queue = 1 << 20;
        ws.outbound_bytes = 1 << 30;
    })
    .await;
    let mut stuck = WsClient::user(&app, "stuck").await;
    let mut sender = WsClient::user(&app, "sender").await;
    stuck.join("flood").await;
    sender.join("flood").await;
    until_hub(&app, Duration::from_secs(10), "two sessions", |s| {
        s["sessions"] == 2
    })
    .await;

    // The stuck client reads nothing from now on, while the room fills its socket.
    let padding = "f".repeat(32 * 1024);
    let (mut to_server, mut from_server) = sender.stream.split();
    let drain = tokio::spawn(async move { while from_server.next().await.is_some() {} });
    let flood = tokio::spawn(async move {
        for n in 0..2_000 {
            let frame = json!({"type": "message", "room_id": "flood", "content": padding, "metadata": {"n": n}});
            if to_server
                .send(Message::text(frame.to_string()))
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        to_server
    });
    // Deregistered well within the bound (pong timeout, then the close timeout), not
    // never, as when the heartbeat waited behind the frames it could not write.
    until_hub(
        &app,
        Duration::from_secs(30),
        "the stuck session is gone",
        |s| s["sessions"] == 1,
    )
    .await;
    let _keep = flood.await.unwrap();
    drain.abort();
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_waits_for_one_connection_is_bounded_in_bytes() {
    let app = spawn_chat(|ws| ws.outbound_bytes = 1 << 20).await;
    let mut writer = WsClient::user(&app, "writer").await;
    writer.join("archive").await;
    // 60 messages of 60 KB: about 3.6 MB of history.
    let padding = "h".repeat(60 * 1000);
    for n in 0..60 {
        writer
            .send(json!({"type": "message", "room_id": "archive", "content": padding, "metadata": {"n": n}}))
            .await;
        writer.recv_kind("ack").await;
    }

    // One answer is trimmed to half the budget, newest messages first, and says so.
    writer
        .send(json!({"type": "history", "room_id": "archive", "metadata": {"limit": 1000}}))
        .await;
    let history = writer.recv_kind("history").await;
    assert_eq!(history["metadata"]["truncated"], true);
    let messages = history["metadata"]["messages"].as_array().unwrap();
    assert!(
        messages.len() < 60 && !messages.is_empty(),
        "{}",
        messages.len()
    );
    assert_eq!(
        messages.last().unwrap()["metadata"]["n"],
        59,
        "the newest is kept"
    );
    assert!(history.to_string().len() <= 512 * 1024);

    // A client that asks for history twenty times and reads nothing is a slow consumer
    // once what waits for it passes the budget — not 20 × 3.6 MB held in memory.
    let mut greedy = WsClient::user(&app, "greedy").await;
    greedy.join("archive").await;
    for _ in 0..20 {
        greedy
            .send(json!({"type": "history", "room_id": "archive", "metadata": {"limit": 1000}}))
            .await;
    }
    until_hub(
        &app,
        Duration::from_secs(30),
        "the greedy client is cut off",
        |s| s["slow_consumer_disconnects"] == 1,
    )
    .await;
    let stats = hub_stats(&app).await;
    assert_eq!(stats["sessions"], 1, "{stats}");
}

/// Members of `room` that read nothing until told to start, then everything.
struct Member {
    client: WsClient,
}

impl Member {
    async fn join(app: &TestApp, name: &str, room: &str) -> Self {
        let mut client = WsClient::user(app, name).await;
        client.join(room).await;
        Self { client }
    }

    /// Reads until the message numbered `last`, returning the numbers seen (or the close).
    async fn read_until(mut self, last: u64) -> Result<Vec<u64>, String> {
        let mut seen = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(30), self.client.stream.next())
                .await
                .map_err(|_| format!("nothing for 30 s after {seen:?}"))?;
            match next {
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    if frame["type"] == "message" {
                        let n = frame["metadata"]["n"].as_u64().unwrap();
                        seen.push(n);
                        if n == last {
                            return Ok(seen);
                        }
                    }
                }
                Some(Ok(Message::Close(frame))) => return Err(format!("closed: {frame:?}")),
                Some(Ok(_)) => {}
                other => return Err(format!("failed: {other:?}")),
            }
        }
    }
}

/// Publishes `n` into `room` and returns the server's answer (`ack` or `error`).
async fn publish(sender: &mut WsClient, room: &str, n: u64, content: &str) -> Value {
    sender
        .send(json!({"type": "message", "room_id": room, "content": content, "metadata": {"n": n}}))
        .await;
    loop {
        let frame = sender.recv().await;
        if matches!(frame["type"].as_str(), Some("ack" | "error")) {
            return frame;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_most_of_a_room_is_behind_publishers_are_told_to_retry_and_nobody_is_closed() {
    // Small queues so that members fall behind quickly once their sockets are full; they
    // may take their time to start reading without being taken for stalled.
    let app = spawn_chat(|ws| {
        ws.outbound_queue = 64;
        ws.outbound_bytes = 8 << 20;
        ws.stall_timeout = Duration::from_secs(15);
    })
    .await;
    let mut members = Vec::new();
    for i in 0..10 {
        members.push(Member::join(&app, &format!("member{i}"), "busy").await);
    }
    let mut sender = WsClient::user(&app, "sender").await;
    sender.join("busy").await;

    // Nobody reads: publish until the server says it is overloaded.
    let padding = "o".repeat(60 * 1000);
    let mut acked = Vec::new();
    let mut refusal = None;
    for n in 0..2_000 {
        let answer = publish(&mut sender, "busy", n, &padding).await;
        if answer["type"] == "ack" {
            acked.push(n);
        } else {
            refusal = Some(answer);
            break;
        }
    }
    let refusal = refusal.expect("the server pushes back before 2,000 messages");
    assert_eq!(refusal["metadata"]["code"], "overloaded", "{refusal}");
    assert!(refusal["metadata"]["retry_after_ms"].as_u64().unwrap() > 0);
    let stats = hub_stats(&app).await;
    assert_eq!(stats["overloaded_rooms"], 1, "{stats}");
    assert_eq!(
        stats["slow_consumer_disconnects"], 0,
        "nobody was closed: {stats}"
    );
    assert!(stats["publishes_refused"].as_u64().unwrap() >= 1);
    let metrics = app.get_text("/metrics").await;
    assert!(
        metrics.contains("switchboard_chat_overloaded 1"),
        "{metrics}"
    );
    let health = app.get_json("/health").await;
    assert_eq!(
        health["checks"]["hub:connections"][0]["status"], "warn",
        "{health}"
    );

    // The members start reading: the queues drain and publishing works again.
    let readers: Vec<_> = members
        .into_iter()
        .map(|m| tokio::spawn(m.read_until(LAST)))
        .collect();
    // Nobody publishes meanwhile: the room is not left marked overloaded.
    until_hub(
        &app,
        Duration::from_secs(30),
        "the drained room is no longer overloaded",
        |s| s["overloaded_rooms"] == 0,
    )
    .await;
    let health = app.get_json("/health").await;
    assert_eq!(
        health["checks"]["hub:connections"][0]["status"], "pass",
        "{health}"
    );
    let mut n = *acked.last().unwrap() + 1;
    loop {
        let answer = publish(&mut sender, "busy", n, "after").await;
        if answer["type"] == "ack" {
            acked.push(n);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        n += 1;
    }
    assert_eq!(
        publish(&mut sender, "busy", LAST, "last").await["type"],
        "ack"
    );
    acked.push(LAST);
    for reader in readers {
        let seen = reader.await.unwrap().expect("every member stays connected");
        assert_eq!(seen, acked, "every acked message, in order; nothing else");
    }
    let stats = hub_stats(&app).await;
    assert_eq!(stats["slow_consumer_disconnects"], 0, "{stats}");
    assert_eq!(stats["overloaded_rooms"], 0, "{stats}");
}

/// The number of a test's last message.
const LAST: u64 = 1_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_that_never_read_are_closed_even_in_an_overloaded_room() {
    let app = spawn_chat(|ws| {
        ws.outbound_queue = 64;
        ws.outbound_bytes = 8 << 20;
        ws.stall_timeout = Duration::from_secs(2);
    })
    .await;
    let mut stuck = Vec::new();
    for i in 0..6 {
        stuck.push(Member::join(&app, &format!("stuck{i}"), "busy").await);
    }
    let mut readers = Vec::new();
    for i in 0..4 {
        let member = Member::join(&app, &format!("reader{i}"), "busy").await;
        readers.push(tokio::spawn(member.read_until(LAST)));
    }
    let mut sender = WsClient::user(&app, "sender").await;
    sender.join("busy").await;

    // Most of the room stops reading, so it looks overloaded and publishes are refused;
    // but it does not drain, so after a while those members are closed as slow consumers
    // and the readers, who kept up, go on without losing a message.
    let padding = "s".repeat(60 * 1000);
    let mut acked = Vec::new();
    let mut refused = 0;
    let mut n = 0;
    while acked.len() < 200 {
        let answer = publish(&mut sender, "busy", n, &padding).await;
        if answer["type"] == "ack" {
            acked.push(n);
        } else {
            assert_eq!(answer["metadata"]["code"], "overloaded", "{answer}");
            refused += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        n += 1;
        assert!(n < 20_000, "publishing never resumed ({refused} refused)");
    }
    assert_eq!(
        publish(&mut sender, "busy", LAST, "last").await["type"],
        "ack"
    );
    acked.push(LAST);
    for reader in readers {
        let seen = reader.await.unwrap().expect("readers stay connected");
        assert_eq!(seen, acked, "every acked message, in order");
    }
    until_hub(
        &app,
        Duration::from_secs(30),
        "the stuck members are closed",
        |s| s["slow_consumer_disconnects"] == 6,
    )
    .await;
    assert!(refused > 0, "the room was overloaded for a while");
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_hub_is_behind_publishes_are_refused_not_acked() {
    // Every message reaches the hub some time after its session sent it; a limit of one
    // nanosecond makes the hub count itself behind on every publish.
    let app = spawn_chat(|ws| ws.overload_lag = Duration::from_nanos(1)).await;
    let mut reader = WsClient::user(&app, "reader").await;
    reader.join("lagging").await;
    let mut sender = WsClient::user(&app, "sender").await;
    sender.join("lagging").await;
    let joined = reader.recv().await;
    assert_eq!(
        (&joined["type"], &joined["content"]),
        (&json!("presence"), &json!("join")),
        "{joined}"
    );

    let answer = publish(&mut sender, "lagging", 1, "hello").await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["metadata"]["code"], "overloaded", "{answer}");
    assert_eq!(answer["metadata"]["retry_after_ms"], 200, "{answer}");
    let hub = &app.get_json("/health").await["checks"]["hub:connections"][0];
    assert_eq!(hub["status"], "warn", "{hub}");
    assert_eq!(hub["stats"]["lagging"], true, "{hub}");
    assert_eq!(hub["stats"]["publishes_refused"], 1, "{hub}");
    assert_eq!(
        hub["stats"]["overloaded_rooms"], 0,
        "no room is behind: {hub}"
    );
    // Nothing was relayed: the reader's next frame is the answer to its own request.
    reader
        .send(json!({"type": "presence", "room_id": "lagging"}))
        .await;
    let next = reader.recv().await;
    assert_eq!(
        next["content"], "members",
        "nothing relayed before it: {next}"
    );
    // With nobody publishing there is no backlog to shed: the hub is not left lagging.
    until_hub(
        &app,
        Duration::from_secs(30),
        "the hub stops counting itself behind",
        |s| s["lagging"] == false,
    )
    .await;
    assert_eq!(
        app.get_json("/health").await["checks"]["hub:connections"][0]["status"],
        "pass"
    );
}
