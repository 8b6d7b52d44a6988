//! Room numbering under stress: offsets are never handed out twice (not even after
//! `kill -9`), joins sent during a recovery are all answered without a gap, and rooms
//! nobody uses are forgotten.

use std::time::Duration;

use diesel::{connection::SimpleConnection, Connection, SqliteConnection};
use serde_json::{json, Value};
use switchboard::{config::DatabaseUrl, domain::RoomId};

use crate::{
    helpers::{spawn_app_with, TestApp, TestDb, TEST_JWT_SECRET},
    history::{post, rejoin, settings_with},
    process::{switchboard, Server},
    ws_client::WsClient,
};

/// Starts the real binary on `db` with history batches that never flush by themselves.
fn start_binary(dir: &std::path::Path, db: &std::path::Path) -> Server {
    let mut command = switchboard(dir);
    command.args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"]);
    command.args(["--jwt-secret", TEST_JWT_SECRET]);
    command.args(["--database-url", db.to_str().unwrap()]);
    command.args(["--history-flush-interval", "1h"]);
    command.args(["--ws-rate", "1000", "--ws-burst", "1000"]);
    Server::start(command)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_are_never_handed_out_twice_even_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("chat.db");
    let mut server = start_binary(dir.path(), &db);
    let mut alice = WsClient::user_at(&server.http_addr, "alice").await;
    alice.join("ops").await;
    let acked = post(&mut alice, "ops", 30).await;
    assert_eq!(acked, (1..=30).collect::<Vec<_>>());

    // Killed inside the flush window: none of the 30 reached the database.
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    drop(server);

    let server = start_binary(dir.path(), &db);
    let mut bob = WsClient::user_at(&server.http_addr, "bob").await;
    bob.send(json!({"type": "join", "room_id": "ops", "metadata": {"since_offset": 30}}))
        .await;
    let confirmation = bob.recv_kind("join").await;
    let top = confirmation["metadata"]["offset"].as_u64().unwrap();
    assert!(
        top > 30,
        "numbering skips what may have been handed out: {confirmation}"
    );
    assert_eq!(
        confirmation["metadata"]["recovered"], false,
        "the 30 acked messages were lost with the process, and the client is told: {confirmation}"
    );
    let next = post(&mut bob, "ops", 1).await[0];
    assert_eq!(next, top + 1);
    assert!(next > 30, "offset {next} was handed out before the crash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_restart_continues_offsets_without_a_gap() {
    let db = TestDb::sqlite();
    let settings = settings_with(&db, |_| {});
    let app = spawn_app_with(db, settings.clone()).await;
    let mut alice = WsClient::user(&app, "alice").await;
    alice.join("ops").await;
    assert_eq!(post(&mut alice, "ops", 3).await, [1, 2, 3]);
    drop(alice);
    let db = app.stop_keeping_db().await;

    let app = spawn_app_with(db, settings).await;
    let mut alice = WsClient::user(&app, "alice").await;
    let confirmation = rejoin(&mut alice, "ops", 3).await;
    assert_eq!(confirmation["metadata"]["offset"], 3, "{confirmation}");
    assert_eq!(confirmation["metadata"]["recovered"], true);
    assert_eq!(post(&mut alice, "ops", 1).await, [4]);
}

fn sqlite_path(db: &TestDb) -> String {
    match &db.settings.url {
        DatabaseUrl::Sqlite(path) => path.to_string_lossy().into_owned(),
        other => panic!("a SQLite test database, not {other}"),
    }
}

/// Pooled connections lent out (read from the server's own pool: `/health` would wait
/// for the history writer, which is stuck inside its batch here).
fn pool_in_use(app: &TestApp) -> u32 {
    app.database.pool_status().in_use
}

/// The next frames until `count` `join` confirmations for `room` have arrived, as
/// (confirmation, offsets of the messages that followed it).
async fn confirmations(client: &mut WsClient, room: &str, count: usize) -> Vec<(Value, Vec<u64>)> {
    let mut answers: Vec<(Value, Vec<u64>)> = Vec::new();
    loop {
        let frame = client.recv().await;
        match frame["type"].as_str() {
            Some("join") if frame["room_id"] == room => answers.push((frame, Vec::new())),
            Some("message") => {
                let offset = frame["offset"].as_u64().unwrap();
                answers
                    .last_mut()
                    .expect("messages only after a confirmation")
                    .1
                    .push(offset);
                if answers.len() == count && offset == 11 {
                    return answers;
                }
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_sent_during_a_recovery_are_all_answered_and_none_covers_a_gap() {
    let db = TestDb::sqlite();
    let path = sqlite_path(&db);
    let settings = settings_with(&db, |s| {
        s.database.sqlite_busy_timeout = Duration::from_secs(120);
    });
    let app = spawn_app_with(db, settings).await;
    let mut alice = WsClient::user(&app, "alice").await;
    let mut bob = WsClient::user(&app, "bob").await;
    alice.join("ops").await;
    bob.join("ops").await;
    post(&mut alice, "ops", 5).await; // 1..=5, bob has them
    bob.send(json!({"type": "leave", "room_id": "ops"})).await;
    bob.recv_kind("leave").await;
    post(&mut alice, "ops", 3).await; // 6..=8, bob misses them

    // The history writer gets stuck inside its next batch on SQLite's write lock, so the
    // replays bob's joins ask for wait behind it, and both joins are in recovery at once.
    let mut lock = SqliteConnection::establish(&path).unwrap();
    lock.batch_execute("BEGIN IMMEDIATE").unwrap();
    post(&mut alice, "ops", 1).await; // 9
    for _ in 0..200 {
        if pool_in_use(&app) >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(pool_in_use(&app) >= 1, "the writer is inside its batch");

    // After each join, a `presence` request: its answer (sent at once, not held) says
    // the hub has taken the join before alice posts again.
    for since in [5, 7] {
        bob.send(json!({"type": "join", "room_id": "ops", "metadata": {"since_offset": since}}))
            .await;
        bob.send(json!({"type": "presence", "room_id": "ops"}))
            .await;
        let listing = bob.recv().await;
        assert_eq!(
            listing["content"], "members",
            "nothing else before: {listing}"
        );
        post(&mut alice, "ops", 1).await; // 10, then 11: live while that join recovers
    }

    lock.batch_execute("COMMIT").unwrap();
    let answers = confirmations(&mut bob, "ops", 2).await;
    assert_eq!(answers.len(), 2, "both joins are answered: {answers:?}");
    let (first, after_first) = &answers[0];
    assert_eq!(first["metadata"]["offset"], 9, "{first}");
    assert_eq!(first["metadata"]["recovered"], true, "{first}");
    assert_eq!(first["metadata"]["replayed"], 4, "{first}");
    assert_eq!(
        after_first,
        &[6, 7, 8, 9, 10],
        "replay, then what came live"
    );
    let (second, after_second) = &answers[1];
    assert_eq!(second["metadata"]["offset"], 10, "{second}");
    assert_eq!(second["metadata"]["recovered"], true, "{second}");
    assert_eq!(after_second, &[8, 9, 10, 11]);
}

async fn hub_stats(app: &TestApp) -> Value {
    app.get_json("/health").await["checks"]["hub:connections"][0]["stats"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_nobody_uses_are_forgotten_and_their_numbering_continues_later() {
    let db = TestDb::sqlite();
    let settings = settings_with(&db, |s| s.history.room_idle = Duration::from_millis(200));
    let app = spawn_app_with(db, settings).await;
    let mut alice = WsClient::user(&app, "alice").await;

    // Only a join opens numbering: messages to rooms nobody joined cost nothing.
    alice
        .send(json!({"type": "message", "room_id": "nowhere", "content": "x"}))
        .await;
    assert!(alice.recv_error().await.contains("unknown room"));

    alice.join("used").await;
    assert_eq!(post(&mut alice, "used", 3).await, [1, 2, 3]);
    alice.join("silent").await;
    assert_eq!(hub_stats(&app).await["numbered_rooms"], 2);
    for room in ["used", "silent"] {
        alice.send(json!({"type": "leave", "room_id": room})).await;
        alice.recv_kind("leave").await;
    }

    let mut stats = Value::Null;
    for _ in 0..200 {
        stats = hub_stats(&app).await;
        if stats["numbered_rooms"] == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        stats["numbered_rooms"], 0,
        "idle rooms are forgotten: {stats}"
    );
    // Their unused offsets went back: a room that saw messages keeps its position, one
    // that never did (or was never joined) leaves no row behind.
    let reserved = |room: &str| {
        let room = RoomId::parse(room).unwrap();
        let db = app.database.clone();
        async move { db.reserved_offset(&room).await.unwrap() }
    };
    let mut used = None;
    for _ in 0..200 {
        used = reserved("used").await;
        if used == Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(used, Some(3));
    assert_eq!(reserved("silent").await, None);
    assert_eq!(reserved("nowhere").await, None);

    // Numbering continues where it stopped.
    let confirmation = alice.join("used").await;
    assert_eq!(confirmation["metadata"]["offset"], 3, "{confirmation}");
    assert_eq!(post(&mut alice, "used", 1).await, [4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_that_outgrows_its_reservation_keeps_numbering_in_order() {
    let db = TestDb::sqlite();
    let settings = settings_with(&db, |_| {});
    let app = spawn_app_with(db, settings.clone()).await;
    let mut alice = WsClient::user(&app, "alice").await;
    alice.join("busy").await;
    // Sent without waiting for acks, past the first reservation (1,024 offsets).
    let count = switchboard::actors::hub::FIRST_RESERVATION + 300;
    for i in 0..count {
        alice
            .send(json!({"type": "message", "room_id": "busy", "content": format!("m{i}")}))
            .await;
    }
    for expected in 1..=count {
        let ack = alice.recv_kind("ack").await;
        assert_eq!(ack["offset"], expected, "{ack}");
    }
    drop(alice);
    let db = app.stop_keeping_db().await;
    let app = spawn_app_with(db, settings).await;
    let reserved = app
        .database
        .reserved_offset(&RoomId::parse("busy").unwrap())
        .await
        .unwrap();
    assert_eq!(
        reserved,
        Some(count),
        "the unused rest was handed back at the stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_cannot_open_without_the_database_but_open_rooms_go_on() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let settings = settings_with(&db, |s| {
        s.database.connect_timeout = Duration::from_millis(500);
    });
    let app = spawn_app_with(db, settings).await;
    let mut alice = WsClient::user(&app, "alice").await;
    alice.join("open").await;
    assert_eq!(post(&mut alice, "open", 1).await, [1]);

    app.db().drop_postgres_database().await;
    alice.send(json!({"type": "join", "room_id": "new"})).await;
    let error = alice.recv_error().await;
    assert!(error.contains("cannot join `new`"), "{error}");
    // The open room keeps numbering from its reserved range.
    assert_eq!(post(&mut alice, "open", 2).await, [2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_may_join_post_and_leave_without_waiting_for_answers() {
    let db = TestDb::sqlite();
    let settings = settings_with(&db, |_| {});
    let app = spawn_app_with(db, settings).await;
    let mut alice = WsClient::user(&app, "alice").await;
    // The room's first join waits for its numbering; the requests after it wait too.
    for room in ["fresh-1", "fresh-2"] {
        alice.send(json!({"type": "join", "room_id": room})).await;
        alice
            .send(json!({"type": "message", "room_id": room, "content": "hi"}))
            .await;
        alice.send(json!({"type": "leave", "room_id": room})).await;
    }
    for room in ["fresh-1", "fresh-2"] {
        let joined = alice.recv().await;
        assert_eq!(
            (joined["type"].as_str(), joined["room_id"].as_str()),
            (Some("join"), Some(room)),
            "{joined}"
        );
        let ack = alice.recv().await;
        assert_eq!(ack["type"], "ack", "{ack}");
        assert_eq!(ack["offset"], 1, "{ack}");
        let left = alice.recv().await;
        assert_eq!(
            (left["type"].as_str(), left["room_id"].as_str()),
            (Some("leave"), Some(room)),
            "{left}"
        );
    }
}
