//! Chat over WebSocket: rooms, relays, acks, typing, private, broadcast, presence, errors.

use std::time::Duration;

use serde_json::{json, Value};

use crate::{
    helpers::{spawn_app, spawn_app_with, test_settings, TestDb},
    ws_client::{token, WsClient},
};

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn the_welcome_names_the_session_and_the_user() {
    let app = spawn_app().await;
    let alice = WsClient::user(&app, "alice").await;
    assert_eq!(alice.user_id, "alice");
    assert_eq!(alice.welcome["to"], alice.session_id.as_str());
    assert_eq!(alice.welcome["metadata"]["guest"], false);

    let guest = WsClient::connect(&app, "?user_id=Ann").await;
    assert!(guest.user_id.starts_with("guest-"), "{}", guest.welcome);
    assert_eq!(guest.welcome["metadata"]["name"], "Ann");
    assert_eq!(guest.welcome["metadata"]["guest"], true);
    assert_ne!(guest.session_id, alice.session_id);
}

#[tokio::test]
async fn a_bearer_header_authenticates_too() {
    let app = spawn_app().await;
    let bearer = format!("Bearer {}", token("carol", None));
    let client = WsClient::try_connect(&app, "", &[("authorization", &bearer)])
        .await
        .unwrap();
    assert_eq!(client.user_id, "carol");
}

#[tokio::test]
async fn join_and_leave_are_confirmed() {
    let app = spawn_app().await;
    let mut alice = WsClient::user(&app, "alice").await;
    let joined = alice.join("lobby").await;
    assert_eq!(joined["from"], "system");
    assert_eq!(joined["metadata"]["users"], 1);

    alice
        .send(json!({"type": "leave", "room_id": "lobby"}))
        .await;
    let left = alice.recv().await;
    assert_eq!(left["type"], "leave");
    assert_eq!(left["room_id"], "lobby");

    alice
        .send(json!({"type": "leave", "room_id": "lobby"}))
        .await;
    assert!(alice.recv_error().await.contains("not a member"));
}

#[tokio::test]
async fn room_messages_reach_the_others_once_and_the_sender_gets_an_ack() {
    let app = spawn_app().await;
    let mut alice = WsClient::user(&app, "alice").await;
    let mut bob = WsClient::user(&app, "bob").await;
    let mut carol = WsClient::user(&app, "carol").await;
    alice.join("lobby").await;
    bob.join("lobby").await;
    carol.join("elsewhere").await;
    alice.recv_kind("presence").await; // bob arrived

    let metadata = json!({"client_ref": 7});
    alice
        .send(json!({"type": "message", "room_id": "lobby", "content": "hi", "metadata": metadata}))
        .await;
    let ack = alice.recv().await;
    assert_eq!(
        ack["type"], "ack",
        "the sender gets an ack, not an echo: {ack}"
    );
    let relayed = bob.recv().await;
    assert_eq!(relayed["type"], "message");
    assert_eq!(relayed["from"], "alice");
    assert_eq!(relayed["content"], "hi");
    assert_eq!(relayed["room_id"], "lobby");
    assert_eq!(relayed["metadata"], metadata);
    assert!(relayed["timestamp"].as_str().is_some());
    assert_eq!(ack["id"], relayed["id"], "the ack carries the relayed id");
    assert!(!ack["id"].as_str().unwrap().is_empty());

    alice.assert_silent(QUIET).await;
    carol.assert_silent(QUIET).await;
}

#[tokio::test]
async fn only_members_may_post_and_unknown_rooms_are_named() {
    let app = spawn_app().await;
    let mut alice = WsClient::user(&app, "alice").await;
    let mut bob = WsClient::user(&app, "bob").await;
    bob.join("lobby").await;

    alice
        .send(json!({"type": "message", "room_id": "lobby", "content": "x"}))
        .await;
    assert!(alice
        .recv_error()
        .await
        .contains("not a member of room `lobby`"));
    alice
        .send(json!({"type": "message", "room_id": "nowhere", "content": "x"}))
        .await;
    assert!(alice.recv_error().await.contains("unknown room `nowhere`"));
    bob.assert_silent(QUIET).await;
}

#[tokio::test]
async fn typing_is_relayed_without_an_ack() {
    let app = spawn_app().await;
    let mut alice = WsClient::user(&app, "alice").await;
    let mut bob = WsClient::user(&app, "bob").await;
    alice.join("lobby").await;
    bob.join("lobby").await;
    alice.recv_kind("presence").await;

    alice
        .send(json!({"type": "typing", "room_id": "lobby"}))
        .await;
    let typing = bob.recv().await;
    assert_eq!(typing["type"], "typing");
    assert_eq!(typing["from"], "alice");
    assert!(typing["id"].as_str().is_some());
    alice.assert_silent(QUIET).await;
}

#[tokio::test]
async fn private_messages_reach_every_session_of_the_user() {
    let app = spawn_app().await;
    let mut alice = WsClient::user(&app, "alice").await;
    let mut bob_phone = WsClient::user(&app, "bob").await;
    let mut bob_laptop = WsClient::user(&app, "bob").await;
    let mut carol = WsClient::user(&app, "carol").await;

    alice
        .send(json!({"type": "private", "to": "bob", "content": "psst"}))
        .await;
    let ack = alice.recv().await;
    assert_eq!(ack["type"], "ack");
    for bob in [&mut bob_phone, &mut bob_laptop] {
        let message = bob.recv().await;
        assert_eq!(message["type"], "private");
        assert_eq!(message["from"], "alice");
        assert_eq!(message["to"], "bob");
        assert_eq!(message["content"], "psst");
        assert_eq!(message["id"], ack["id"]);
    }
    carol.assert_silent(QUIET).await;

    alice
        .send(json!({"type": "private", "to": "nobody", "content": "?"}))
        .await;
    assert!(alice
        .recv_error()
        .await
        .contains("`nobody` is not connected"));
}

#[tokio::test]
async fn broadcast_needs_an_admin_token() {
    let app = spawn_app().await;
    let mut root = WsClient::admin(&app, "root").await;
    let mut alice = WsClient::user(&app, "alice").await;
    let mut guest = WsClient::connect(&app, "").await;

    alice
        .send(json!({"type": "broadcast", "content": "everyone!"}))
        .await;
    assert!(alice.recv_error().await.contains("admin"));
    guest.assert_silent(QUIET).await;

    root.send(json!({"type": "broadcast", "content": "maintenance at 5"}))
        .await;
    assert_eq!(root.recv().await["type"], "ack");
    for client in [&mut alice, &mut guest] {
        let message = client.recv().await;
        assert_eq!(message["type"], "broadcast");
        assert_eq!(message["from"], "root");
        assert_eq!(message["content"], "maintenance at 5");
    }
}

#[tokio::test]
async fn presence_events_follow_joins_leaves_and_disconnects() {
    let app = spawn_app().await;
    let mut alice = WsClient::user(&app, "alice").await;
    alice.join("lobby").await;

    let mut bob = WsClient::connect(&app, "?user_id=Bobby").await;
    bob.join("lobby").await;
    let arrived = alice.recv().await;
    assert_eq!(arrived["type"], "presence");
    assert_eq!(arrived["content"], "join");
    assert_eq!(arrived["room_id"], "lobby");
    assert_eq!(arrived["metadata"]["user_id"], bob.user_id.as_str());
    assert_eq!(arrived["metadata"]["name"], "Bobby");

    bob.send(json!({"type": "leave", "room_id": "lobby"})).await;
    let left = alice.recv().await;
    assert_eq!(left["content"], "leave");
    assert_eq!(left["metadata"]["user_id"], bob.user_id.as_str());

    bob.join("lobby").await;
    assert_eq!(alice.recv().await["content"], "join");
    drop(bob);
    let gone = alice.recv().await;
    assert_eq!(gone["type"], "presence");
    assert_eq!(
        gone["content"], "leave",
        "a dropped connection leaves its rooms"
    );
}

#[tokio::test]
async fn a_second_session_of_a_present_user_is_not_announced_again() {
    let app = spawn_app().await;
    let mut alice = WsClient::user(&app, "alice").await;
    alice.join("lobby").await;
    let mut bob_one = WsClient::user(&app, "bob").await;
    let mut bob_two = WsClient::user(&app, "bob").await;
    bob_one.join("lobby").await;
    assert_eq!(alice.recv().await["content"], "join");
    bob_two.join("lobby").await;
    alice.assert_silent(QUIET).await;
}

#[tokio::test]
async fn presence_lists_the_current_members() {
    let app = spawn_app().await;
    let mut alice = WsClient::user(&app, "alice").await;
    let mut bob = WsClient::user(&app, "bob").await;
    let mut bob_again = WsClient::user(&app, "bob").await;
    for client in [&mut alice, &mut bob, &mut bob_again] {
        client.join("lobby").await;
    }

    alice
        .send(json!({"type": "presence", "room_id": "lobby"}))
        .await;
    let listing = loop {
        let frame = alice.recv_kind("presence").await;
        if frame["content"] == "members" {
            break frame;
        }
    };
    assert_eq!(listing["metadata"]["count"], 2);
    let members: Vec<(String, u64)> = listing["metadata"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["user_id"].as_str().unwrap().into(),
                m["sessions"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(members, [("alice".into(), 1), ("bob".into(), 2)]);
}

#[tokio::test]
async fn rooms_larger_than_the_presence_limit_announce_no_joins_or_leaves() {
    let db = TestDb::sqlite();
    let mut settings = test_settings(&db);
    settings.websocket.presence_limit = 2;
    let app = spawn_app_with(db, settings).await;
    let mut alice = WsClient::user(&app, "alice").await;
    let mut bob = WsClient::user(&app, "bob").await;
    let mut carol = WsClient::user(&app, "carol").await;
    alice.join("big").await;
    bob.join("big").await;
    let arrived = alice.recv().await;
    assert_eq!(
        (&arrived["content"], &arrived["metadata"]["user_id"]),
        (&json!("join"), &json!("bob")),
        "two users: within the limit, announced"
    );

    // A third user: past the limit, nobody is told; the next frame is carol's message.
    carol.join("big").await;
    carol
        .send(json!({"type": "message", "room_id": "big", "content": "hi"}))
        .await;
    for member in [&mut alice, &mut bob] {
        let next = member.recv().await;
        assert_eq!(
            (&next["type"], &next["content"]),
            (&json!("message"), &json!("hi")),
            "{next}"
        );
    }

    // The listing says how many there are and lists the limit's worth.
    alice
        .send(json!({"type": "presence", "room_id": "big"}))
        .await;
    let listing = alice.recv().await;
    assert_eq!(listing["content"], "members", "{listing}");
    assert_eq!(listing["metadata"]["count"], 3, "{listing}");
    assert_eq!(listing["metadata"]["truncated"], true, "{listing}");
    let listed: Vec<_> = listing["metadata"]["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ["alice", "bob"], "the first users by id");

    // Carol leaves a room of three: not announced; then bob leaves a room of two: announced.
    carol.send(json!({"type": "leave", "room_id": "big"})).await;
    assert_eq!(carol.recv_kind("leave").await["room_id"], "big");
    bob.send(json!({"type": "leave", "room_id": "big"})).await;
    let gone = alice.recv().await;
    assert_eq!(
        (&gone["content"], &gone["metadata"]["user_id"]),
        (&json!("leave"), &json!("bob")),
        "{gone}"
    );
}

#[tokio::test]
async fn malformed_frames_get_errors_and_the_connection_stays_usable() {
    let app = spawn_app().await;
    let mut alice = WsClient::user(&app, "alice").await;
    let mut bob = WsClient::user(&app, "bob").await;
    alice.join("lobby").await;
    bob.join("lobby").await;

    let cases: [(&str, &str); 6] = [
        ("{not json", "malformed message"),
        (r#"{"room_id":"lobby"}"#, "missing field `type`"),
        (r#"{"type":"join"}"#, "missing field `room_id`"),
        (r#"{"type":"private","content":"x"}"#, "missing field `to`"),
        (
            r#"{"type":"message","room_id":"lobby","content":5}"#,
            "malformed message",
        ),
        (r#"{"type":"error","room_id":"lobby"}"#, "reserved"),
    ];
    for (frame, expected) in cases {
        alice.send_text(frame).await;
        let error = alice.recv_error().await;
        assert!(error.contains(expected), "{frame}: got `{error}`");
    }
    alice.send_binary(vec![1, 2, 3]).await;
    assert!(alice.recv_error().await.contains("binary"));

    alice
        .send(json!({"type": "message", "room_id": "lobby", "content": "still here"}))
        .await;
    let relayed = bob.recv_kind("message").await;
    assert_eq!(relayed["content"], "still here");
}

#[tokio::test]
async fn messages_from_each_sender_arrive_in_order() {
    const SENDERS: usize = 3;
    const PER_SENDER: usize = 30;
    let app = spawn_app().await;
    let mut receiver = WsClient::user(&app, "receiver").await;
    receiver.join("race").await;
    let mut senders = Vec::new();
    for i in 0..SENDERS {
        let mut sender = WsClient::user(&app, &format!("sender{i}")).await;
        sender.join("race").await;
        senders.push(sender);
    }
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            tokio::spawn(async move {
                for n in 0..PER_SENDER {
                    sender
                        .send(
                            json!({"type": "message", "room_id": "race", "content": n.to_string()}),
                        )
                        .await;
                }
                // Keep the connection open until every ack is in.
                for _ in 0..PER_SENDER {
                    sender.recv_kind("ack").await;
                }
            })
        })
        .collect();

    let mut next: std::collections::HashMap<String, usize> = Default::default();
    for _ in 0..SENDERS * PER_SENDER {
        let message: Value = receiver.recv_kind("message").await;
        let from = message["from"].as_str().unwrap().to_owned();
        let n: usize = message["content"].as_str().unwrap().parse().unwrap();
        let expected = next.entry(from.clone()).or_default();
        assert_eq!(n, *expected, "out of order from {from}");
        *expected += 1;
    }
    assert!(next.values().all(|n| *n == PER_SENDER));
    for task in tasks {
        task.await.unwrap();
    }
}

#[tokio::test]
async fn rooms_are_listed_with_their_member_counts() {
    let app = spawn_app().await;
    let mut alice = WsClient::user(&app, "alice").await;
    let mut bob = WsClient::user(&app, "bob").await;
    alice.join("b-room").await;
    alice.join("a-room").await;
    bob.join("a-room").await;

    let body: Value = app.get_json("/rooms").await;
    assert_eq!(body["count"], 2);
    assert_eq!(
        body["rooms"][0],
        json!({"room_id": "a-room", "sessions": 2, "users": 2})
    );
    assert_eq!(
        body["rooms"][1],
        json!({"room_id": "b-room", "sessions": 1, "users": 1})
    );

    let health: Value = app.get_json("/health").await;
    let hub = &health["checks"]["hub:connections"][0];
    assert_eq!(hub["status"], "pass");
    assert_eq!(hub["stats"]["sessions"], 2);
    assert_eq!(hub["stats"]["rooms"], 2);
}
