//! Names across reconnects: relayed and stored messages carry the sender's display name,
//! and a guest keeps its id (and name) with the resume token from its welcome.

use std::time::Duration;

use serde_json::{json, Value};
use switchboard::{auth::JwtAuth, config::JwtSecret};

use crate::{
    helpers::{spawn_app, spawn_app_with, TestApp, TestDb, TEST_JWT_SECRET},
    history::{post, settings_with},
    on_every_backend,
    ws_client::{raw_connect, WsClient},
};

/// A user token with a `name` claim.
fn named_token(sub: &str, name: &str) -> String {
    JwtAuth::new(&JwtSecret::parse(TEST_JWT_SECRET).unwrap())
        .issue_named(sub, Duration::from_secs(3600), None, Some(name))
        .unwrap()
}

fn resume_token(client: &WsClient) -> String {
    client.welcome["metadata"]["resume_token"]
        .as_str()
        .unwrap_or_else(|| panic!("a guest's welcome has a resume token: {}", client.welcome))
        .to_owned()
}

/// The `history` answer's messages for `room`.
async fn history(client: &mut WsClient, room: &str) -> Vec<Value> {
    client
        .send(json!({"type": "history", "room_id": room}))
        .await;
    let answer = client.recv_kind("history").await;
    answer["metadata"]["messages"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relayed_frames_carry_the_senders_name() {
    let app = spawn_app().await;
    let mut ann = WsClient::connect(&app, "?user_id=Ann").await;
    let mut bob = WsClient::connect(&app, &format!("?token={}", named_token("bob", "Bob B"))).await;
    assert_eq!(bob.welcome["metadata"]["name"], "Bob B", "{}", bob.welcome);
    assert!(
        bob.welcome["metadata"].get("resume_token").is_none(),
        "users have their own tokens: {}",
        bob.welcome
    );
    ann.join("lobby").await;
    bob.join("lobby").await;

    ann.send(json!({"type": "message", "room_id": "lobby", "content": "hi"}))
        .await;
    let relayed = bob.recv_kind("message").await;
    assert_eq!(relayed["from"], ann.user_id.as_str());
    assert_eq!(relayed["name"], "Ann", "{relayed}");

    bob.send(json!({"type": "typing", "room_id": "lobby"}))
        .await;
    let typing = ann.recv_kind("typing").await;
    assert_eq!(typing["name"], "Bob B", "{typing}");

    ann.send(json!({"type": "private", "to": "bob", "content": "psst"}))
        .await;
    let private = bob.recv_kind("private").await;
    assert_eq!(private["name"], "Ann", "{private}");

    // A sender without a name sends frames without one.
    let mut carl = WsClient::user(&app, "carl").await;
    carl.join("lobby").await;
    carl.send(json!({"type": "message", "room_id": "lobby", "content": "yo"}))
        .await;
    let relayed = bob.recv_kind("message").await;
    assert_eq!(relayed["from"], "carl");
    assert!(relayed.get("name").is_none(), "{relayed}");
}

on_every_backend!(owned: a_guest_resumes_its_id_after_a_restart_and_history_keeps_names);

/// Ann (a guest) and Bob (a named user) talk; the server restarts; Ann comes back with her
/// resume token — same id, same name — and the stored history shows both names.
async fn a_guest_resumes_its_id_after_a_restart_and_history_keeps_names(db: TestDb) {
    let settings = settings_with(&db, |_| {});
    let app = spawn_app_with(db, settings.clone()).await;
    let mut ann = WsClient::connect(&app, "?user_id=Ann").await;
    assert_eq!(ann.welcome["metadata"]["guest"], true);
    assert!(ann.welcome["metadata"].get("resumed").is_none());
    let resume = resume_token(&ann);
    let ann_id = ann.user_id.clone();
    let mut bob = WsClient::connect(&app, &format!("?token={}", named_token("bob", "Bob B"))).await;
    ann.join("lobby").await;
    bob.join("lobby").await;
    post(&mut ann, "lobby", 2).await;
    post(&mut bob, "lobby", 1).await;
    drop((ann, bob));
    let db = app.stop_keeping_db().await;

    let app = spawn_app_with(db, settings).await;
    let mut ann = WsClient::connect(&app, &format!("?guest={resume}")).await;
    assert_eq!(ann.user_id, ann_id, "the same guest: {}", ann.welcome);
    assert_eq!(ann.welcome["metadata"]["name"], "Ann");
    assert_eq!(ann.welcome["metadata"]["resumed"], true);
    assert_ne!(resume_token(&ann), "", "a fresh token for next time");
    ann.join("lobby").await;
    let messages = history(&mut ann, "lobby").await;
    let senders: Vec<(&str, &str)> = messages
        .iter()
        .map(|m| {
            (
                m["from"].as_str().unwrap(),
                m["name"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        senders,
        [
            (ann_id.as_str(), "Ann"),
            (ann_id.as_str(), "Ann"),
            ("bob", "Bob B")
        ],
        "{messages:?}"
    );

    // A new name given on the way back replaces the kept one.
    let renamed = WsClient::connect(&app, &format!("?guest={resume}&user_id=Annie")).await;
    assert_eq!(renamed.user_id, ann_id);
    assert_eq!(renamed.welcome["metadata"]["name"], "Annie");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_resume_token_starts_a_new_guest_and_says_why() {
    let app = spawn_app().await;
    let ann = WsClient::connect(&app, "?user_id=Ann").await;
    let resume = resume_token(&ann);

    let fresh = WsClient::connect(&app, "?guest=not-a-token&user_id=Zed").await;
    assert_eq!(fresh.welcome["metadata"]["resumed"], false);
    assert!(fresh.welcome["metadata"]["resume_error"]
        .as_str()
        .unwrap()
        .contains("invalid token"));
    assert_ne!(fresh.user_id, ann.user_id);
    assert_eq!(fresh.welcome["metadata"]["name"], "Zed");

    // A user's token is no resume token, and a resume token is no user token.
    let user = JwtAuth::new(&JwtSecret::parse(TEST_JWT_SECRET).unwrap())
        .issue("admin", Duration::from_secs(60), Some("admin"))
        .unwrap();
    let posing = WsClient::connect(&app, &format!("?guest={user}")).await;
    assert_eq!(posing.welcome["metadata"]["resumed"], false);
    assert!(posing.user_id.starts_with("guest-"), "{}", posing.welcome);

    let refused = raw_connect(&app, &format!("?token={resume}"), &[])
        .await
        .expect_err("a resume token does not authenticate");
    assert_eq!(refused.status, 401);
    assert!(
        refused.body["error"]
            .as_str()
            .unwrap()
            .contains("guest resume token"),
        "{:?}",
        refused.body
    );
    let answer: Value = app
        .post_graphql(
            Some(&resume),
            &json!({"query": "mutation { createUser(input: {name: \"G\", email: \"g@example.com\"}) { id } }"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        answer["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_guest_ttl_hands_out_no_resume_tokens() {
    let db = TestDb::sqlite();
    let settings = settings_with(&db, |s| s.websocket.guest_ttl = Duration::ZERO);
    let app: TestApp = spawn_app_with(db, settings).await;
    let guest = WsClient::connect(&app, "?user_id=Ann").await;
    assert!(
        guest.welcome["metadata"].get("resume_token").is_none(),
        "{}",
        guest.welcome
    );
}
