//! Deleting users through the saga, against a real server (release build, loopback,
//! gRPC `DeleteUser`), on SQLite and — when it answers on 127.0.0.1:5432 — PostgreSQL:
//!
//! - the saga's own cost: 50 users with nothing to clean up, deleted one after another:
//!   the call's latency (it answers once the user row is gone) and the time until the
//!   saga has completed (seven steps, each written to the log before and after);
//! - clean-up throughput: one user with 10,000 posts, 10,000 room messages in 10 rooms
//!   and 1,000 private messages: the call's latency and the time until every row is gone
//!   or redacted, in rows per second.
//!
//! `cargo bench --bench saga`; the figures are in the README.

#[path = "support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::{start_server_on, BenchServer, Client};
use switchboard::{
    actors::saga::SagaLog,
    config::DatabaseUrl,
    domain::{NewPost, PostContent, PostTitle, RoomId, StoredMessage, StoredPrivate, UserId},
    grpc::pb::{CreateUserRequest, DeleteUserRequest},
};

const EMPTY_USERS: usize = 50;
const POSTS: usize = 10_000;
const MESSAGES: u64 = 1_000; // per room
const ROOMS: usize = 10;
const PRIVATES: usize = 1_000;

async fn client(server: &BenchServer) -> Client {
    support::grpc_client(server.grpc).await
}

async fn create(users: &mut Client, n: usize) -> String {
    users
        .create_user(CreateUserRequest {
            name: format!("User {n}"),
            email: format!("user{n}@example.com"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .id
}

/// Deletes `id`: the call's latency and the time until the saga completed.
async fn delete(server: &BenchServer, users: &mut Client, id: &str) -> (Duration, Duration) {
    let log = SagaLog::new(server.database.clone());
    let started = Instant::now();
    let response = users
        .delete_user(DeleteUserRequest { id: id.into() })
        .await
        .unwrap();
    let answered = started.elapsed();
    let saga = response
        .metadata()
        .get("switchboard-saga-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    loop {
        let (record, _) = log.load(&saga).await.unwrap().unwrap();
        if record.state == "completed" {
            return (answered, started.elapsed());
        }
        assert_eq!(record.state, "running", "{record:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p).round() as usize]
}

async fn measure(name: &str, server: BenchServer) {
    let mut users = client(&server).await;

    let mut calls = Vec::new();
    let mut completions = Vec::new();
    for n in 0..EMPTY_USERS {
        let id = create(&mut users, n).await;
        let (call, done) = delete(&server, &mut users, &id).await;
        calls.push(call);
        completions.push(done);
    }
    println!(
        "saga/{name}/empty user: DeleteUser p50 {:.1} ms p90 {:.1} ms; saga completed p50 {:.1} ms p90 {:.1} ms ({EMPTY_USERS} users, one after another)",
        percentile(&mut calls, 0.5).as_secs_f64() * 1e3,
        percentile(&mut calls, 0.9).as_secs_f64() * 1e3,
        percentile(&mut completions, 0.5).as_secs_f64() * 1e3,
        percentile(&mut completions, 0.9).as_secs_f64() * 1e3,
    );

    let id = create(&mut users, 1_000_000).await;
    let author = UserId::parse(&id).unwrap();
    let db = &server.database;
    for n in 0..POSTS {
        db.create_post(NewPost {
            author_id: author,
            title: PostTitle::parse(&format!("Post {n}")).unwrap(),
            content: PostContent::parse("some text").unwrap(),
            tags: Default::default(),
            published: true,
        })
        .await
        .unwrap();
    }
    for room in 0..ROOMS {
        let room = RoomId::parse(&format!("room-{room}")).unwrap();
        let messages: Vec<_> = (1..=MESSAGES)
            .map(|offset| StoredMessage {
                room: room.clone(),
                offset,
                id: uuid::Uuid::now_v7().to_string(),
                kind: "message".into(),
                sender: id.clone(),
                sender_name: Some("User".into()),
                content: "hello there".into(),
                metadata: None,
                created_at: chrono::Utc::now(),
            })
            .collect();
        db.append_history(&messages, &[]).await.unwrap();
    }
    let privates: Vec<_> = (0..PRIVATES)
        .map(|n| StoredPrivate {
            id: uuid::Uuid::now_v7().to_string(),
            sender: id.clone(),
            sender_name: None,
            recipient: format!("friend-{n}"),
            content: "psst".into(),
            metadata: None,
            created_at: chrono::Utc::now(),
        })
        .collect();
    db.append_history(&[], &privates).await.unwrap();
    let rows = POSTS + ROOMS * MESSAGES as usize + PRIVATES;
    let (call, done) = delete(&server, &mut users, &id).await;
    println!(
        "saga/{name}/big user ({POSTS} posts, {} room messages, {PRIVATES} private): DeleteUser {:.1} ms; saga completed in {:.2} s = {:.0} rows/s",
        ROOMS as u64 * MESSAGES,
        call.as_secs_f64() * 1e3,
        done.as_secs_f64(),
        rows as f64 / done.as_secs_f64(),
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    runtime.block_on(measure(
        "sqlite",
        start_server_on(DatabaseUrl::Sqlite(dir.path().join("saga.db"))),
    ));
    let Some((url, name)) = runtime.block_on(support::postgres_database()) else {
        println!("saga/postgres: skipped (no PostgreSQL)");
        return;
    };
    runtime.block_on(measure("postgres", start_server_on(url.parse().unwrap())));
    // The server still holds connections; the database is dropped with FORCE.
    runtime.block_on(support::drop_databases(&[name]));
}
