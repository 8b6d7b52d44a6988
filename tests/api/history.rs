//! Chat history: room offsets, recovery on re-join, `history` requests, retention, and the
//! batching writer's flush at shutdown.

use std::time::Duration;

use serde_json::{json, Value};
use switchboard::{config::Settings, domain::RoomId};

use crate::{
    helpers::{spawn_app, spawn_app_with, test_settings, TestDb},
    on_every_backend,
    ws_client::WsClient,
};

/// Posts `count` messages to `room` and waits for each ack; returns the acked offsets.
pub(crate) async fn post(client: &mut WsClient, room: &str, count: usize) -> Vec<u64> {
    let mut offsets = Vec::new();
    for i in 0..count {
        client
            .send(json!({"type": "message", "room_id": room, "content": format!("m{i}")}))
            .await;
        let ack = client.recv_kind("ack").await;
        offsets.push(ack["offset"].as_u64().expect("acks carry the offset"));
    }
    offsets
}

/// Joins `room` with `since_offset` and returns the confirmation.
pub(crate) async fn rejoin(client: &mut WsClient, room: &str, since: u64) -> Value {
    client
        .send(json!({"type": "join", "room_id": room, "metadata": {"since_offset": since}}))
        .await;
    loop {
        let frame = client.recv().await;
        if frame["type"] == "join" && frame["room_id"] == room {
            return frame;
        }
    }
}

/// The offsets of the next `count` relayed `message` frames.
pub(crate) async fn next_offsets(client: &mut WsClient, count: usize) -> Vec<u64> {
    let mut offsets = Vec::new();
    while offsets.len() < count {
        let frame = client.recv_kind("message").await;
        offsets.push(frame["offset"].as_u64().expect("relays carry the offset"));
    }
    offsets
}

pub(crate) fn settings_with(db: &TestDb, change: impl FnOnce(&mut Settings)) -> Settings {
    let mut settings = test_settings(db);
    settings.websocket.rate_per_second = 10_000.0;
    settings.websocket.rate_burst = 10_000;
    change(&mut settings);
    settings
}

#[tokio::test]
async fn relays_and_acks_carry_rising_offsets_per_room() {
    let app = spawn_app().await;
    let mut alice = WsClient::user(&app, "alice").await;
    let mut bob = WsClient::user(&app, "bob").await;
    for room in ["a", "b"] {
        alice.join(room).await;
        bob.join(room).await;
    }
    assert_eq!(post(&mut alice, "a", 3).await, [1, 2, 3]);
    assert_eq!(
        post(&mut alice, "b", 2).await,
        [1, 2],
        "each room counts alone"
    );
    assert_eq!(next_offsets(&mut bob, 5).await, [1, 2, 3, 1, 2]);
    let joined = alice.join("a").await;
    assert_eq!(
        joined["metadata"]["offset"], 3,
        "the join names the last offset"
    );
}

on_every_backend!(owned: rejoining_with_since_offset_replays_then_goes_live_without_gap_or_duplicate);

/// Bob drops out at offset 2 and comes back while Alice keeps posting: he gets every
/// message after 2 exactly once, in order, whether it was stored, still waiting for its
/// batch, or relayed while his replay was being read.
async fn rejoining_with_since_offset_replays_then_goes_live_without_gap_or_duplicate(db: TestDb) {
    let settings = settings_with(&db, |_| {});
    let app = spawn_app_with(db, settings).await;
    let mut alice = WsClient::user(&app, "alice").await;
    let mut bob = WsClient::user(&app, "bob").await;
    alice.join("r").await;
    bob.join("r").await;
    post(&mut alice, "r", 2).await;
    assert_eq!(next_offsets(&mut bob, 2).await, [1, 2]);
    drop(bob);

    post(&mut alice, "r", 30).await;
    // Alice keeps posting while Bob re-joins.
    let sender = tokio::spawn(async move {
        post(&mut alice, "r", 100).await;
        alice
    });
    let mut bob = WsClient::user(&app, "bob").await;
    let joined = rejoin(&mut bob, "r", 2).await;
    assert_eq!(joined["metadata"]["recovered"], true, "{joined}");
    let top = joined["metadata"]["offset"].as_u64().unwrap();
    assert!(top >= 32, "{joined}");
    assert_eq!(joined["metadata"]["replayed"].as_u64().unwrap(), top - 2);
    let _alice = sender.await.unwrap();
    let seen = next_offsets(&mut bob, 130).await;
    let expected: Vec<u64> = (3..=132).collect();
    assert_eq!(
        seen, expected,
        "every missed and live message once, in order"
    );
    bob.assert_silent(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_position_already_current_recovers_and_one_never_handed_out_does_not() {
    let app = spawn_app().await;
    let mut alice = WsClient::user(&app, "alice").await;
    alice.join("r").await;
    post(&mut alice, "r", 3).await;
    let mut bob = WsClient::user(&app, "bob").await;
    let current = rejoin(&mut bob, "r", 3).await;
    assert_eq!(current["metadata"]["recovered"], true);
    assert_eq!(current["metadata"]["replayed"], 0);
    let mut carol = WsClient::user(&app, "carol").await;
    let future = rejoin(&mut carol, "r", 99).await;
    assert_eq!(future["metadata"]["recovered"], false, "{future}");
    assert_eq!(future["metadata"]["offset"], 3);
}

#[tokio::test]
async fn after_pruning_a_recovery_replays_what_is_left_and_says_it_is_incomplete() {
    let db = TestDb::sqlite();
    let settings = settings_with(&db, |s| {
        s.history.max_messages = Some(2);
        s.history.flush_interval = Duration::from_millis(5);
        s.history.prune_interval = Duration::from_millis(50);
    });
    let app = spawn_app_with(db, settings).await;
    let mut alice = WsClient::user(&app, "alice").await;
    alice.join("r").await;
    post(&mut alice, "r", 6).await;

    // All six written and four pruned: two stored rows alone could also be a first batch
    // of two with the rest still waiting (which a busy machine does produce).
    let room = RoomId::parse("r").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let health = app.get_json("/health").await;
        let stats = &health["checks"]["history:pending"][0]["stats"];
        if stats["written"] == 6
            && stats["pruned"] == 4
            && app.database.stored_messages(&room).await.unwrap() == 2
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "retention never pruned: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut bob = WsClient::user(&app, "bob").await;
    let joined = rejoin(&mut bob, "r", 1).await;
    assert_eq!(joined["metadata"]["recovered"], false, "{joined}");
    assert_eq!(joined["metadata"]["replayed"], 2);
    assert_eq!(next_offsets(&mut bob, 2).await, [5, 6]);
}

#[tokio::test]
async fn history_returns_the_last_messages_to_members_only() {
    let app = spawn_app().await;
    let mut alice = WsClient::user(&app, "alice").await;
    alice.join("r").await;
    post(&mut alice, "r", 5).await;

    alice
        .send(json!({"type": "history", "room_id": "r", "metadata": {"limit": 3}}))
        .await;
    let history = alice.recv_kind("history").await;
    assert_eq!(history["room_id"], "r");
    assert_eq!(history["metadata"]["offset"], 5);
    let messages = history["metadata"]["messages"].as_array().unwrap();
    let offsets: Vec<u64> = messages
        .iter()
        .map(|m| m["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [3, 4, 5]);
    assert_eq!(messages[2]["content"], "m4");
    assert_eq!(messages[2]["from"], "alice");
    assert_eq!(messages[2]["type"], "message");

    let mut carol = WsClient::user(&app, "carol").await;
    carol.send(json!({"type": "history", "room_id": "r"})).await;
    assert!(carol.recv_error().await.contains("not a member"));
    carol
        .send(json!({"type": "history", "room_id": "nowhere"}))
        .await;
    assert!(carol.recv_error().await.contains("unknown room"));
}

#[tokio::test]
async fn typing_is_never_stored_and_private_messages_only_when_enabled() {
    for private in [false, true] {
        let db = TestDb::sqlite();
        let settings = settings_with(&db, |s| {
            s.history.private = private;
            s.history.flush_interval = Duration::from_millis(5);
        });
        let app = spawn_app_with(db, settings).await;
        let mut alice = WsClient::user(&app, "alice").await;
        let mut bob = WsClient::user(&app, "bob").await;
        alice.join("r").await;
        bob.join("r").await;
        alice.send(json!({"type": "typing", "room_id": "r"})).await;
        bob.recv_kind("typing").await;
        alice
            .send(json!({"type": "private", "to": "bob", "content": "psst"}))
            .await;
        bob.recv_kind("private").await;
        alice.recv_kind("ack").await;
        post(&mut alice, "r", 1).await;
        drop((alice, bob));
        let db = app.stop_keeping_db().await;
        let database = db.open().await;
        let room = RoomId::parse("r").unwrap();
        assert_eq!(
            database.stored_messages(&room).await.unwrap(),
            1,
            "typing is not stored"
        );
        assert_eq!(
            database.stored_private_messages().await.unwrap(),
            u64::from(private),
            "private history {private}"
        );
    }
}

on_every_backend!(owned: waiting_messages_are_written_at_shutdown_and_offsets_continue_after_restart);

async fn waiting_messages_are_written_at_shutdown_and_offsets_continue_after_restart(db: TestDb) {
    let settings = settings_with(&db, |s| {
        // Nothing would be written before shutdown on its own.
        s.history.flush_interval = Duration::from_secs(3600);
        s.history.batch_size = 10_000;
    });
    let app = spawn_app_with(db, settings.clone()).await;
    let mut alice = WsClient::user(&app, "alice").await;
    alice.join("r").await;
    post(&mut alice, "r", 5).await;
    let room = RoomId::parse("r").unwrap();
    assert_eq!(
        app.database.stored_messages(&room).await.unwrap(),
        0,
        "still batching"
    );
    drop(alice);
    let db = app.stop_keeping_db().await;

    let app = spawn_app_with(db, settings).await;
    assert_eq!(
        app.database.stored_messages(&room).await.unwrap(),
        5,
        "flushed at shutdown"
    );
    let mut alice = WsClient::user(&app, "alice").await;
    let joined = rejoin(&mut alice, "r", 3).await;
    assert_eq!(joined["metadata"]["offset"], 5, "{joined}");
    assert_eq!(joined["metadata"]["recovered"], true);
    let replayed = next_offsets(&mut alice, 2).await;
    assert_eq!(replayed, [4, 5]);
    assert_eq!(
        post(&mut alice, "r", 1).await,
        [6],
        "offsets continue after a restart"
    );
}

#[tokio::test]
async fn with_history_off_offsets_still_rise_but_nothing_is_replayed() {
    let db = TestDb::sqlite();
    let settings = settings_with(&db, |s| s.history.enabled = false);
    let app = spawn_app_with(db, settings).await;
    let mut alice = WsClient::user(&app, "alice").await;
    alice.join("r").await;
    assert_eq!(post(&mut alice, "r", 2).await, [1, 2]);
    let mut bob = WsClient::user(&app, "bob").await;
    let joined = rejoin(&mut bob, "r", 0).await;
    assert_eq!(joined["metadata"]["recovered"], false);
    bob.send(json!({"type": "history", "room_id": "r"})).await;
    assert!(bob.recv_error().await.contains("history is not kept"));
}
