//! `StreamUsers`: snapshot then live, no gaps or duplicates; slow consumers; cancellation.

use std::{collections::HashSet, time::Duration};

use futures_util::StreamExt;
use serde_json::Value;
use switchboard::{
    domain::{Email, Metadata, NewUser, UserName},
    grpc::pb::{CreateUserRequest, StreamUsersRequest},
};
use tonic::Code;

use crate::{
    grpc_users::client,
    helpers::{spawn_app_on, spawn_app_with, test_settings, TestApp, TestDb},
    on_both_backends,
};

pub(crate) fn new_user(name: &str) -> NewUser {
    NewUser {
        name: UserName::parse(name).unwrap(),
        email: Email::parse(&format!("{}@example.com", name.replace(' ', "."))).unwrap(),
        age: None,
        metadata: Metadata::default(),
    }
}

fn request(name: &str) -> CreateUserRequest {
    CreateUserRequest {
        name: name.into(),
        email: format!("{}@example.com", name.replace(' ', ".")),
        ..Default::default()
    }
}

/// Polls `/health` until `check` holds for the events stats (or fails after 5 s).
pub async fn until_events(app: &TestApp, what: &str, check: impl Fn(&Value) -> bool) {
    for _ in 0..100 {
        let health = app.get_json("/health").await;
        if check(&health["checks"]["events:subscriptions"][0]["stats"]) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("events never reached: {what}");
}

on_both_backends!(
    owned:
    the_snapshot_and_the_live_part_join_without_gaps_or_duplicates,
    the_filter_applies_to_both_parts,
);

async fn the_snapshot_and_the_live_part_join_without_gaps_or_duplicates(db: TestDb) {
    let app = spawn_app_on(db).await;
    let mut users = client(&app).await;
    let mut expected = HashSet::new();
    for i in 0..25 {
        let user = users
            .create_user(request(&format!("before {i}")))
            .await
            .unwrap();
        expected.insert(user.into_inner().id);
    }

    let mut stream = users
        .stream_users(StreamUsersRequest::default())
        .await
        .unwrap()
        .into_inner();
    // Writers race the snapshot: through gRPC, one by one through the repository, and in bulk.
    let mut grpc_writer = client(&app).await;
    let database = app.database.clone();
    let writers = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..25 {
            let user = grpc_writer
                .create_user(request(&format!("grpc {i}")))
                .await
                .unwrap();
            ids.push(user.into_inner().id);
            let direct = database
                .create_user(new_user(&format!("direct {i}")))
                .await
                .unwrap();
            ids.push(direct.id.to_string());
        }
        let bulk: Vec<NewUser> = (0..25).map(|i| new_user(&format!("bulk {i}"))).collect();
        for user in database.bulk_create_users(bulk).await.unwrap() {
            ids.push(user.id.to_string());
        }
        ids
    });
    expected.extend(writers.await.unwrap());

    let mut received = Vec::new();
    while received.len() < expected.len() {
        let user = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("every user arrives")
            .expect("the stream stays open")
            .expect("no error");
        received.push(user.id);
    }
    let unique: HashSet<String> = received.iter().cloned().collect();
    assert_eq!(unique.len(), received.len(), "no user is sent twice");
    assert_eq!(unique, expected, "every user is sent");
    let extra = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
    assert!(extra.is_err(), "nothing more: {extra:?}");
}

async fn the_filter_applies_to_both_parts(db: TestDb) {
    let app = spawn_app_on(db).await;
    let mut users = client(&app).await;
    users.create_user(request("keep old")).await.unwrap();
    users.create_user(request("drop old")).await.unwrap();
    let mut stream = users
        .stream_users(StreamUsersRequest {
            filter: "KEEP".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    users.create_user(request("drop new")).await.unwrap();
    users.create_user(request("keep new")).await.unwrap();

    let first = stream.next().await.unwrap().unwrap();
    let second = stream.next().await.unwrap().unwrap();
    assert_eq!([first.name, second.name], ["keep old", "keep new"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_too_slow_for_its_buffer_gets_resource_exhausted() {
    let db = TestDb::sqlite();
    let mut settings = test_settings(&db);
    settings.grpc_stream_buffer = 8;
    let app = spawn_app_with(db, settings).await;
    let mut users = client(&app).await;
    let mut stream = users
        .stream_users(StreamUsersRequest::default())
        .await
        .unwrap()
        .into_inner();
    until_events(&app, "one subscriber", |s| s["subscribers"] == 1).await;

    // Far more than the buffer, the wire buffer and HTTP/2's window hold, unread.
    let bulk: Vec<NewUser> = (0..3000).map(|i| new_user(&format!("flood {i}"))).collect();
    app.database.bulk_create_users(bulk).await.unwrap();
    until_events(&app, "an overflow", |s| s["overflows"] == 1).await;

    let mut delivered = 0;
    let status = loop {
        match stream.next().await.expect("the stream ends with a status") {
            Ok(_) => delivered += 1,
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(
        status.message().contains("too slow"),
        "{}",
        status.message()
    );
    assert!(delivered < 3000, "the stream was cut, not completed");
    until_events(&app, "the subscription released", |s| s["subscribers"] == 0).await;
}

#[tokio::test]
async fn cancelling_a_stream_releases_its_subscription_at_once() {
    let app = crate::helpers::spawn_app().await;
    let mut users = client(&app).await;
    let stream = users
        .stream_users(StreamUsersRequest::default())
        .await
        .unwrap()
        .into_inner();
    until_events(&app, "one subscriber", |s| s["subscribers"] == 1).await;
    drop(stream);
    until_events(&app, "no subscriber", |s| s["subscribers"] == 0).await;
}

#[tokio::test]
async fn shutdown_ends_live_streams() {
    let app = crate::helpers::spawn_app().await;
    let mut users = client(&app).await;
    let mut stream = users
        .stream_users(StreamUsersRequest::default())
        .await
        .unwrap()
        .into_inner();
    until_events(&app, "one subscriber", |s| s["subscribers"] == 1).await;

    let stopping = tokio::spawn(app.shutdown());
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the stream ends promptly");
    let status = ended.expect("a final status").unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    stopping.await.unwrap().expect("a clean shutdown");
}
