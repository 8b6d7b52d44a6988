//! History under poison: a message the database cannot store is refused at the edge, a
//! row the database refuses anyway is dropped and counted without wedging the rest, and
//! `/health` says when the writer is failing.

use std::time::Duration;

use serde_json::{json, Value};
use switchboard::domain::{RoomId, StoredMessage};

use crate::{
    helpers::{spawn_app_with, TestApp, TestDb},
    history::{post, settings_with},
    on_both_backends,
    ws_client::WsClient,
};

/// Waits until `room` has `count` stored messages (the writer flushes every 50 ms).
async fn until_stored(app: &TestApp, room: &str, count: u64) {
    let room = RoomId::parse(room).unwrap();
    let mut stored = 0;
    for _ in 0..200 {
        stored = app.database.stored_messages(&room).await.unwrap();
        if stored == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{stored} messages stored in {room}, expected {count}");
}

async fn history_check(app: &TestApp) -> Value {
    app.get_json("/health").await["checks"]["history:pending"][0].clone()
}

on_both_backends!(
    owned:
    a_message_with_nul_is_refused_and_history_keeps_being_written,
    a_row_the_database_refuses_is_dropped_and_the_rest_is_written,
);

async fn a_message_with_nul_is_refused_and_history_keeps_being_written(db: TestDb) {
    let settings = settings_with(&db, |_| {});
    let app = spawn_app_with(db, settings).await;
    let mut alice = WsClient::user(&app, "alice").await;
    let mut bob = WsClient::user(&app, "bob").await;
    alice.join("lab").await;
    bob.join("lab").await;

    alice
        .send(json!({"type": "message", "room_id": "lab", "content": "bad\u{0}byte"}))
        .await;
    let error = alice.recv_error().await;
    assert!(error.contains("NUL"), "{error}");

    let offsets = post(&mut alice, "lab", 3).await;
    // Bob's next message is the first good one: the refused one was never relayed.
    let first = bob.recv_kind("message").await;
    assert_eq!(first["content"], "m0", "{first}");
    assert_eq!(first["offset"], offsets[0]);
    until_stored(&app, "lab", 3).await;
    let check = history_check(&app).await;
    assert_eq!(check["status"], "pass", "{check}");
}

async fn a_row_the_database_refuses_is_dropped_and_the_rest_is_written(db: TestDb) {
    let settings = settings_with(&db, |_| {});
    let app = spawn_app_with(db, settings).await;
    let mut alice = WsClient::user(&app, "alice").await;
    alice.join("lab").await;
    let first = post(&mut alice, "lab", 1).await[0];
    until_stored(&app, "lab", 1).await;

    // Someone else's row already holds the offset the next-but-one message will get: the
    // batch with it is refused for its data.
    let room = RoomId::parse("lab").unwrap();
    let poison = StoredMessage {
        room: room.clone(),
        offset: first + 2,
        id: "poison".into(),
        kind: "message".into(),
        sender: "intruder".into(),
        sender_name: None,
        content: "squatting".into(),
        metadata: None,
        created_at: chrono::Utc::now(),
    };
    app.database.append_history(&[poison], &[]).await.unwrap();

    let offsets = post(&mut alice, "lab", 4).await;
    assert_eq!(offsets, (first + 1..=first + 4).collect::<Vec<_>>());
    until_stored(&app, "lab", 5).await;
    let stored = app
        .database
        .history_range(&room, first, first + 4)
        .await
        .unwrap();
    let senders: Vec<(u64, &str)> = stored
        .iter()
        .map(|m| (m.offset, m.sender.as_str()))
        .collect();
    assert_eq!(
        senders,
        [
            (first + 1, "alice"),
            (first + 2, "intruder"),
            (first + 3, "alice"),
            (first + 4, "alice"),
        ]
    );

    let check = history_check(&app).await;
    assert_eq!(check["status"], "warn", "{check}");
    assert_eq!(check["stats"]["rejected"], 1, "{check}");
    assert!(
        check["output"].as_str().unwrap().contains("refused"),
        "{check}"
    );
    let metrics = app.get_text("/metrics").await;
    assert!(
        metrics.contains("switchboard_history_rejected_total 1"),
        "{metrics}"
    );
    // And the writer goes on: later messages are stored.
    post(&mut alice, "lab", 2).await;
    until_stored(&app, "lab", 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_says_when_the_history_writer_is_failing() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let settings = settings_with(&db, |_| {});
    let app = spawn_app_with(db, settings).await;
    let mut alice = WsClient::user(&app, "alice").await;
    alice.join("lab").await;
    post(&mut alice, "lab", 1).await;
    until_stored(&app, "lab", 1).await;
    assert_eq!(history_check(&app).await["status"], "pass");

    app.db().drop_postgres_database().await;
    // Chat goes on without the database; the writer cannot store.
    post(&mut alice, "lab", 2).await;
    let mut check = Value::Null;
    for _ in 0..200 {
        check = history_check(&app).await;
        if check["status"] == "warn" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(check["status"], "warn", "{check}");
    assert!(
        check["output"].as_str().unwrap().contains("failing"),
        "{check}"
    );
    assert!(check["stats"]["pending"].as_u64().unwrap() >= 1, "{check}");
}
