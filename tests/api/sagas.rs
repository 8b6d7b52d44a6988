//! Sagas: deleting a user everywhere (gRPC `DeleteUser`, GraphQL `deleteUser`), with
//! compensation before the pivot, forward recovery after it, resumption after `kill -9`,
//! one owner at a time, and the admin endpoints.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchboard::{
    actors::saga::{log::Record, Fault, SagaLog},
    config::Settings,
    db::Database,
    domain::{RoomId, StoredMessage, StoredPrivate, UserId},
    grpc::pb::{CreateUserRequest, DeleteUserRequest, GetUserRequest, StreamUsersRequest},
};
use tonic::Code;

use crate::{
    graphql_more::{initialised_socket, next_message, send},
    grpc_users::{client, Client},
    helpers::{spawn_app_with, test_settings, TestDb},
    on_both_backends, on_every_backend,
    ws_client::{token, WsClient},
};

/// Generous: the suite runs in parallel on a busy 2-core machine.
const PATIENCE: Duration = Duration::from_secs(60);

fn create(name: &str, email: &str) -> CreateUserRequest {
    CreateUserRequest {
        name: name.into(),
        email: email.into(),
        ..Default::default()
    }
}

/// Settings with fast saga retries and resumption.
fn fast(db: &TestDb) -> Settings {
    let mut settings = test_settings(db);
    let saga = &mut settings.database.saga;
    saga.retry_initial = Duration::from_millis(20);
    saga.retry_max = Duration::from_millis(200);
    saga.resume_interval = Duration::from_millis(200);
    saga.lease = Duration::from_secs(3);
    saga.stuck_after = 3;
    settings.history.private = true;
    settings.rate_limit_per_second = 100_000.0;
    settings.rate_limit_burst = 100_000;
    settings
}

fn admin() -> String {
    token("ops", Some("admin"))
}

async fn admin_get(http: &reqwest::Client, base: &str, path: &str) -> (u16, Value) {
    let response = http
        .get(format!("{base}{path}"))
        .bearer_auth(admin())
        .send()
        .await
        .expect("the server answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Polls `/admin/sagas/{id}` until `done` holds, or fails after [`PATIENCE`].
async fn saga_until(base: &str, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, saga) = admin_get(&http, base, &format!("/admin/sagas/{id}")).await;
        if status == 200 && done(&saga) {
            return saga;
        }
        assert!(Instant::now() < deadline, "saga never {what}: {saga}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn step<'a>(saga: &'a Value, name: &str) -> &'a Value {
    saga["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name}: {saga}"))
}

fn saga_id<T>(response: &tonic::Response<T>) -> String {
    response
        .metadata()
        .get("switchboard-saga-id")
        .expect("the saga id is in the response metadata")
        .to_str()
        .unwrap()
        .to_owned()
}

fn message(room: &str, offset: u64, sender: &str) -> StoredMessage {
    StoredMessage {
        room: RoomId::parse(room).unwrap(),
        offset,
        id: uuid::Uuid::now_v7().to_string(),
        kind: "message".into(),
        sender: sender.into(),
        sender_name: Some(format!("name of {sender}")),
        content: format!("hello from {sender} #{offset}"),
        metadata: Some(serde_json::Map::from_iter([("k".into(), json!("v"))])),
        created_at: chrono::Utc::now(),
    }
}

fn private(sender: &str, recipient: &str) -> StoredPrivate {
    StoredPrivate {
        id: uuid::Uuid::now_v7().to_string(),
        sender: sender.into(),
        sender_name: None,
        recipient: recipient.into(),
        content: "psst".into(),
        metadata: None,
        created_at: chrono::Utc::now(),
    }
}

async fn post(db: &Database, author: &str, n: usize) {
    db.create_post(switchboard::domain::NewPost {
        author_id: UserId::parse(author).unwrap(),
        title: switchboard::domain::PostTitle::parse(&format!("Post {n}")).unwrap(),
        content: switchboard::domain::PostContent::parse("text").unwrap(),
        tags: Default::default(),
        published: true,
    })
    .await
    .unwrap();
}

async fn posts_of(db: &Database, author: &str) -> usize {
    let id = UserId::parse(author).unwrap();
    db.posts_by_authors(&[id])
        .await
        .unwrap()
        .get(&id)
        .map_or(0, Vec::len)
}

on_every_backend!(owned: deleting_a_user_removes_it_everywhere);
on_both_backends!(
    owned:
    a_failure_before_the_pivot_compensates_and_the_user_stays_usable,
    a_failure_after_the_pivot_is_retried_marked_stuck_and_completes_once_fixed,
    two_servers_on_one_database_never_run_one_saga_at_once,
);
on_both_backends!(only_one_of_many_concurrent_claims_wins_and_the_loser_is_fenced_out);

async fn deleting_a_user_removes_it_everywhere(db: TestDb) {
    let settings = fast(&db);
    let app = spawn_app_with(db, settings).await;
    let base = app.url("");
    let mut users = client(&app).await;
    let ann = users
        .create_user(create("Ann", "ann@example.com"))
        .await
        .unwrap()
        .into_inner();
    let bob = users
        .create_user(create("Bob", "bob@example.com"))
        .await
        .unwrap()
        .into_inner();
    for n in 0..3 {
        post(&app.database, &ann.id, n).await;
    }
    post(&app.database, &bob.id, 9).await;
    // History in several rooms (on several shards when sharded) and private messages.
    let mut messages = Vec::new();
    for room in ["lobby", "room-2", "room-3", "room-4"] {
        messages.push(message(room, 1, &ann.id));
        messages.push(message(room, 2, &bob.id));
        messages.push(message(room, 3, &ann.id));
    }
    let privates = [
        private(&ann.id, &bob.id),
        private(&bob.id, &ann.id),
        private(&bob.id, "carol"),
    ];
    app.database
        .append_history(&messages, &privates)
        .await
        .unwrap();

    // Live: a chat session of Ann's, a StreamUsers call asking for deletions, a
    // GraphQL subscriber.
    let mut session = WsClient::user(&app, &ann.id).await;
    let mut stream = users
        .stream_users(StreamUsersRequest {
            filter: String::new(),
            include_deletions: true,
            include_updates: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut subscriber = initialised_socket(&app, "graphql-transport-ws", json!({})).await;
    send(
        &mut subscriber,
        json!({ "id": "d", "type": "subscribe",
                "payload": { "query": "subscription { userDeleted }" } }),
    )
    .await;
    crate::graphql_more::until_subscribers(&app, 2).await;

    let response = users
        .delete_user(DeleteUserRequest { id: ann.id.clone() })
        .await
        .expect("the deletion passes its pivot");
    let id = saga_id(&response);

    // Her session is closed with 4403, and her token no longer opens one.
    let close = session.closed().await;
    assert_eq!(u16::from(close.code), 4403, "{close:?}");
    let refused = WsClient::try_connect(&app, &format!("?token={}", token(&ann.id, None)), &[])
        .await
        .err()
        .expect("her token is refused");
    assert_eq!(refused.status, 401, "{refused:?}");
    let mut as_ann =
        crate::grpc_users::client_with(&app, Some(format!("Bearer {}", token(&ann.id, None))))
            .await;
    let status = as_ann
        .get_user(GetUserRequest { id: bob.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("deleted"), "{status:?}");
    // Her email is free at once.
    users
        .create_user(create("Another Ann", "ann@example.com"))
        .await
        .expect("the email is free");
    assert_eq!(
        users
            .get_user(GetUserRequest { id: ann.id.clone() })
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    let saga = saga_until(&base, &id, "completed", |s| s["state"] == "completed").await;
    for step in saga["steps"].as_array().unwrap() {
        assert_eq!(step["state"], "done", "{saga}");
        assert_eq!(step["attempts"], 1, "{saga}");
    }
    assert_eq!(step(&saga, "close_sessions")["output"]["sessions"], 1);
    assert_eq!(step(&saga, "delete_posts")["output"]["rows"], 3);
    assert_eq!(step(&saga, "redact_messages")["output"]["rows"], 8);
    assert_eq!(step(&saga, "delete_private_messages")["output"]["rows"], 2);
    assert!(
        saga["owner"].is_null(),
        "a finished saga holds no lease: {saga}"
    );

    // Nothing of hers is left: posts gone, messages redacted (offsets kept), privates
    // gone; Bob's untouched.
    assert_eq!(posts_of(&app.database, &ann.id).await, 0);
    assert_eq!(posts_of(&app.database, &bob.id).await, 1);
    for room in ["lobby", "room-2", "room-3", "room-4"] {
        let stored = app
            .database
            .history_range(&RoomId::parse(room).unwrap(), 0, 10)
            .await
            .unwrap();
        assert_eq!(
            stored.iter().map(|m| m.offset).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        for m in &stored {
            if m.offset == 2 {
                assert_eq!(m.sender, bob.id);
                assert!(m.content.contains("hello"));
            } else {
                assert_eq!(m.sender, switchboard::db::REDACTED_SENDER, "{m:?}");
                assert_eq!(m.content, "");
                assert_eq!(m.sender_name, None);
                assert_eq!(m.metadata, None);
            }
        }
    }
    assert_eq!(app.database.stored_private_messages().await.unwrap(), 1);

    // Live subscribers were told.
    let deleted = loop {
        let user = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("a StreamUsers event in time")
            .unwrap()
            .expect("the stream goes on");
        if user.deleted {
            break user;
        }
    };
    assert_eq!(deleted.id, ann.id);
    assert_eq!(deleted.email, "ann@example.com");
    let event = next_message(&mut subscriber).await.unwrap();
    assert_eq!(event["payload"]["data"]["userDeleted"], ann.id, "{event}");

    // Deleting again answers with the same saga; an unknown user is NOT_FOUND.
    let again = users
        .delete_user(DeleteUserRequest { id: ann.id.clone() })
        .await
        .expect("deleting twice is idempotent");
    assert_eq!(saga_id(&again), id);
    let unknown = users
        .delete_user(DeleteUserRequest {
            id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

async fn a_failure_before_the_pivot_compensates_and_the_user_stays_usable(db: TestDb) {
    let mut settings = fast(&db);
    settings.database.saga.fault = Fault::parse("fail:close_sessions");
    let app = spawn_app_with(db, settings).await;
    let mut users = client(&app).await;
    let ann = users
        .create_user(create("Ann", "ann@example.com"))
        .await
        .unwrap()
        .into_inner();
    post(&app.database, &ann.id, 1).await;
    let mut session = WsClient::user(&app, &ann.id).await;

    let status = users
        .delete_user(DeleteUserRequest { id: ann.id.clone() })
        .await
        .expect_err("the deletion is undone");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains("undone"), "{status:?}");
    let id = status
        .metadata()
        .get("switchboard-saga-id")
        .expect("the saga id is in the status metadata")
        .to_str()
        .unwrap()
        .to_owned();

    let (_, saga) = admin_get(&app.http, &app.url(""), &format!("/admin/sagas/{id}")).await;
    assert_eq!(saga["state"], "compensated", "{saga}");
    assert!(saga["last_error"]
        .as_str()
        .unwrap()
        .contains("injected failure"));
    // The mark was undone once; the failed step is not compensated (it certainly did
    // nothing); the steps that never ran were neither run nor compensated.
    let mark = step(&saga, "mark_deleting");
    assert_eq!(mark["state"], "compensated", "{saga}");
    assert_eq!(mark["compensation_attempts"], 1, "{saga}");
    let failed = step(&saga, "close_sessions");
    assert_eq!(failed["state"], "failed", "{saga}");
    assert_eq!(failed["compensation_attempts"], 0, "{saga}");
    for name in ["remove_user", "delete_posts", "announce"] {
        assert_eq!(step(&saga, name)["state"], "pending", "{saga}");
        assert_eq!(step(&saga, name)["attempts"], 0, "{saga}");
    }

    // The user is fully usable: found, her posts kept, her email still hers, her
    // session open, her token accepted again.
    users
        .get_user(GetUserRequest { id: ann.id.clone() })
        .await
        .unwrap();
    assert_eq!(posts_of(&app.database, &ann.id).await, 1);
    let taken = users
        .create_user(create("Other", "ann@example.com"))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);
    session.join("lobby").await;
    WsClient::user(&app, &ann.id).await;
}

async fn a_failure_after_the_pivot_is_retried_marked_stuck_and_completes_once_fixed(db: TestDb) {
    let blocker = tempfile::NamedTempFile::new().unwrap();
    let mut settings = fast(&db);
    settings.database.saga.fault = Fault::parse(&format!(
        "fail-while:redact_messages:{}",
        blocker.path().display()
    ));
    let app = spawn_app_with(db, settings).await;
    let base = app.url("");
    let mut users = client(&app).await;
    let ann = users
        .create_user(create("Ann", "ann@example.com"))
        .await
        .unwrap()
        .into_inner();
    app.database
        .append_history(&[message("lobby", 1, &ann.id)], &[])
        .await
        .unwrap();

    let response = users
        .delete_user(DeleteUserRequest { id: ann.id.clone() })
        .await
        .expect("the call returns once the pivot has committed");
    let id = saga_id(&response);

    // Retried, then shown as stuck (and still retried).
    let saga = saga_until(&base, &id, "stuck", |s| s["stuck"] == true).await;
    assert_eq!(saga["state"], "running", "{saga}");
    let failing = step(&saga, "redact_messages");
    assert!(failing["attempts"].as_i64().unwrap() >= 3, "{saga}");
    assert!(failing["last_error"]
        .as_str()
        .unwrap()
        .contains("injected failure"));
    assert_eq!(step(&saga, "delete_posts")["state"], "done");
    let (_, stuck) = admin_get(&app.http, &base, "/admin/sagas?state=stuck").await;
    assert!(
        stuck["sagas"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == id),
        "{stuck}"
    );
    let metrics = app.get_text("/metrics").await;
    assert!(metrics.contains("switchboard_sagas_stuck 1"), "{metrics}");
    let health = app.get_json("/health").await;
    let check = &health["checks"]["sagas:running"][0];
    assert_eq!(check["status"], "warn", "{health}");
    assert!(
        check["output"].as_str().unwrap().contains("stuck"),
        "{health}"
    );
    assert!(!metrics.contains("switchboard_saga_step_retries_total 0"));

    // The cause is fixed: it completes, and is no longer stuck.
    drop(blocker);
    let saga = saga_until(&base, &id, "completed", |s| s["state"] == "completed").await;
    assert_eq!(saga["stuck"], false, "{saga}");
    assert_eq!(step(&saga, "redact_messages")["output"]["rows"], 1);
    let (_, stuck) = admin_get(&app.http, &base, "/admin/sagas?state=stuck").await;
    assert!(stuck["sagas"].as_array().unwrap().is_empty(), "{stuck}");
    let health = app.get_json("/health").await;
    assert_eq!(
        health["checks"]["sagas:running"][0]["status"], "pass",
        "{health}"
    );
    let metrics = app.get_text("/metrics").await;
    assert!(
        metrics.contains("switchboard_sagas_total{type=\"delete_user\",outcome=\"completed\"} 1"),
        "{metrics}"
    );
}

async fn two_servers_on_one_database_never_run_one_saga_at_once(db: TestDb) {
    let hold = tempfile::NamedTempFile::new().unwrap();
    // A lease of 6 s renewed every 2 s: a renewal would have to stall for 4 s on a busy
    // machine before B could take the saga over.
    let mut settings_a = fast(&db);
    settings_a.database.saga.lease = Duration::from_secs(6);
    settings_a.database.saga.fault =
        Fault::parse(&format!("pause:delete_posts:{}", hold.path().display()));
    let settings_b = {
        let mut b = fast(&db);
        b.database.saga.lease = Duration::from_secs(6);
        b.database.saga.fault = None;
        b
    };
    let a = spawn_app_with(db, settings_a).await;
    let b = spawn_app_with(TestDb::sqlite(), settings_b).await;
    let mut users = client(&a).await;
    let ann = users
        .create_user(create("Ann", "ann@example.com"))
        .await
        .unwrap()
        .into_inner();
    let response = users
        .delete_user(DeleteUserRequest { id: ann.id.clone() })
        .await
        .unwrap();
    let id = saga_id(&response);
    let held = saga_until(&a.url(""), &id, "paused in delete_posts", |s| {
        step(s, "delete_posts")["state"] == "started"
    })
    .await;
    let owner = held["owner"].as_str().unwrap().to_owned();

    // For longer than the lease (B looks every 200 ms), B never takes it: A renews.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let (_, saga) = admin_get(&b.http, &b.url(""), &format!("/admin/sagas/{id}")).await;
        assert_eq!(saga["owner"], owner.as_str(), "{saga}");
        assert_eq!(step(&saga, "delete_posts")["attempts"], 1, "{saga}");
        assert!(b
            .get_text("/metrics")
            .await
            .contains("switchboard_sagas_running 0"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // A stops (its run with it); once its lease runs out, B resumes and completes.
    let _kept = a.stop_keeping_db().await;
    let saga = saga_until(&b.url(""), &id, "completed by B", |s| {
        s["state"] == "completed"
    })
    .await;
    assert_eq!(step(&saga, "delete_posts")["attempts"], 2, "{saga}");
    for name in ["mark_deleting", "close_sessions", "remove_user"] {
        assert_eq!(step(&saga, name)["attempts"], 1, "{saga}");
    }
    let metrics = b.get_text("/metrics").await;
    assert!(
        metrics.contains("switchboard_sagas_resumed_total 1"),
        "{metrics}"
    );
    drop(hold);
}

async fn only_one_of_many_concurrent_claims_wins_and_the_loser_is_fenced_out(db: &TestDb) {
    let database = db.open().await;
    let log = SagaLog::new(database);
    let id = uuid::Uuid::now_v7().to_string();
    log.create(
        &id,
        "test",
        "k",
        "{}",
        &["one"],
        "gone",
        Duration::from_millis(1),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let claims = futures_util::future::join_all((0..8).map(|n| {
        let log = log.clone();
        let id = id.clone();
        async move {
            log.claim(&id, &format!("node{n}"), Duration::from_secs(60))
                .await
                .unwrap()
        }
    }))
    .await;
    let winners: Vec<usize> = (0..8).filter(|n| claims[*n]).collect();
    assert_eq!(winners.len(), 1, "{claims:?}");
    let winner = format!("node{}", winners[0]);
    let loser = format!("node{}", (winners[0] + 1) % 8);
    let lease = Duration::from_secs(60);
    log.write(&id, &winner, lease, Record::StepStarted(0))
        .await
        .expect("the owner writes");
    assert!(matches!(
        log.write(&id, &loser, lease, Record::StepDone(0, "null"))
            .await,
        Err(switchboard::actors::saga::log::LogError::LeaseLost)
    ));
    // The dead owner cannot write either, and a live lease cannot be claimed.
    assert!(log.write(&id, "gone", lease, Record::Renew).await.is_err());
    assert!(!log.claim(&id, &loser, lease).await.unwrap());
    let (_, steps) = log.load(&id).await.unwrap().unwrap();
    assert_eq!(steps[0].state, "started");
    assert_eq!(steps[0].attempts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_need_an_admin_token() {
    let db = TestDb::sqlite();
    let settings = fast(&db);
    let app = spawn_app_with(db, settings).await;
    let url = app.url("/admin/sagas");
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(app.http.get(&url).send().await.unwrap()), 401);
    assert_eq!(
        status(
            app.http
                .get(&url)
                .bearer_auth("forged")
                .send()
                .await
                .unwrap()
        ),
        401
    );
    assert_eq!(
        status(
            app.http
                .get(&url)
                .bearer_auth(token("user-1", None))
                .send()
                .await
                .unwrap()
        ),
        403
    );
    assert_eq!(
        status(
            app.http
                .get(app.url("/admin/sagas/x"))
                .bearer_auth(token("user-1", None))
                .send()
                .await
                .unwrap()
        ),
        403
    );
    let (code, body) = admin_get(&app.http, &app.url(""), "/admin/sagas").await;
    assert_eq!(code, 200, "{body}");
    assert!(body["sagas"].is_array(), "{body}");
    let (code, _) = admin_get(&app.http, &app.url(""), "/admin/sagas/nope").await;
    assert_eq!(code, 404);
    let (code, body) = admin_get(&app.http, &app.url(""), "/admin/sagas?state=weird").await;
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("running"),
        "{body}"
    );
    let (code, _) = admin_get(&app.http, &app.url(""), "/admin/sagas?limit=0").await;
    assert_eq!(code, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graphql_delete_user_answers_with_the_saga() {
    let db = TestDb::sqlite();
    let settings = fast(&db);
    let app = spawn_app_with(db, settings).await;
    let mut users = client(&app).await;
    let ann = users
        .create_user(create("Ann", "ann@example.com"))
        .await
        .unwrap()
        .into_inner();
    let mutation = |id: &str| {
        json!({
            "query": "mutation($id: ID!) { deleteUser(id: $id) { userId sagaId completed } }",
            "variables": { "id": id },
        })
    };
    let anonymous: Value = app
        .post_graphql(None, &mutation(&ann.id))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        anonymous["errors"][0]["extensions"]["code"], "UNAUTHENTICATED",
        "{anonymous}"
    );
    let writer = token("writer", None);
    let deleted: Value = app
        .post_graphql(Some(&writer), &mutation(&ann.id))
        .await
        .json()
        .await
        .unwrap();
    let deletion = &deleted["data"]["deleteUser"];
    assert_eq!(deletion["userId"], ann.id, "{deleted}");
    let saga = deletion["sagaId"].as_str().expect("a saga id").to_owned();
    saga_until(&app.url(""), &saga, "completed", |s| {
        s["state"] == "completed"
    })
    .await;
    let missing: Value = app
        .post_graphql(Some(&writer), &mutation(&uuid::Uuid::now_v7().to_string()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        missing["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{missing}"
    );
    let again: Value = app
        .post_graphql(Some(&writer), &mutation(&ann.id))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        again["data"]["deleteUser"]["sagaId"],
        saga.as_str(),
        "{again}"
    );
    assert_eq!(again["data"]["deleteUser"]["completed"], true, "{again}");
}

/// A client for a spawned server at `addr`.
async fn client_at(addr: &str) -> Client {
    let channel = crate::helpers::grpc_channel(addr).await;
    let token = format!("Bearer {}", token("saga-test", None));
    let add: crate::grpc_users::AddToken = Box::new(move |mut request: tonic::Request<()>| {
        request
            .metadata_mut()
            .insert("authorization", token.parse().unwrap());
        Ok(request)
    });
    switchboard::grpc::pb::user_service_client::UserServiceClient::with_interceptor(channel, add)
}

fn server_on(
    path: &std::path::Path,
    dir: &std::path::Path,
    fault: Option<String>,
) -> crate::process::Server {
    let mut command = crate::process::switchboard(dir);
    command.args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"]);
    command.args(["--database-url", &format!("sqlite://{}", path.display())]);
    command.args(["--saga-lease", "2s", "--saga-resume-interval", "300ms"]);
    command.args(["--saga-retry-initial", "50ms", "--saga-retry-max", "500ms"]);
    command.args(["--jwt-secret", crate::helpers::TEST_JWT_SECRET]);
    command.args(["--log-format", "json", "--rate-limit", "100000"]);
    if let Some(fault) = fault {
        command.env("SWITCHBOARD_FAULT_SAGA", fault);
    }
    crate::process::Server::start(command)
}

/// `kill -9` while a deletion is half-way through the posts; the restarted server
/// resumes it from the log and completes it, without running the finished steps again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_interrupted_by_kill_9_resumes_after_restart_and_completes() {
    const POSTS: usize = 800;
    const MESSAGES: u64 = 700;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("saga.db");
    let pause = dir.path().join("pause");
    std::fs::write(&pause, b"").unwrap();
    let mut first = server_on(
        &path,
        dir.path(),
        Some(format!("pause:delete_posts/batch:{}", pause.display())),
    );
    let mut users = client_at(&first.grpc_addr).await;
    let ann = users
        .create_user(create("Ann", "ann@example.com"))
        .await
        .unwrap()
        .into_inner();
    let settings = switchboard::config::DatabaseSettings {
        url: format!("sqlite://{}", path.display()).parse().unwrap(),
        ..Default::default()
    };
    let db = Database::connect(&settings).await.unwrap();
    for n in 0..POSTS {
        post(&db, &ann.id, n).await;
    }
    let messages: Vec<_> = (1..=MESSAGES)
        .map(|o| message("lobby", o, &ann.id))
        .collect();
    db.append_history(&messages, &[]).await.unwrap();

    let response = users
        .delete_user(DeleteUserRequest { id: ann.id.clone() })
        .await
        .unwrap();
    let id = saga_id(&response);
    let base = format!("http://{}", first.http_addr);
    saga_until(&base, &id, "half-way through the posts", |s| {
        step(s, "delete_posts")["state"] == "started"
    })
    .await;
    let deadline = Instant::now() + PATIENCE;
    while posts_of(&db, &ann.id).await != POSTS - 500 {
        assert!(Instant::now() < deadline, "the first batch never went");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    first.child.kill().unwrap(); // SIGKILL
    first.child.wait().unwrap();
    let second = server_on(&path, dir.path(), None);
    let base = format!("http://{}", second.http_addr);
    let saga = saga_until(&base, &id, "completed after the restart", |s| {
        s["state"] == "completed"
    })
    .await;
    for name in ["mark_deleting", "close_sessions", "remove_user"] {
        assert_eq!(step(&saga, name)["attempts"], 1, "{saga}");
    }
    // The interrupted step ran again and finished what was left; the rest ran once.
    let posts = step(&saga, "delete_posts");
    assert_eq!(posts["attempts"], 2, "{saga}");
    assert_eq!(posts["output"]["rows"], (POSTS - 500) as u64, "{saga}");
    let redacted = step(&saga, "redact_messages");
    assert_eq!(redacted["attempts"], 1, "{saga}");
    assert_eq!(redacted["output"]["rows"], MESSAGES, "{saga}");
    assert_eq!(posts_of(&db, &ann.id).await, 0);
    let stored = db
        .history_range(&RoomId::parse("lobby").unwrap(), 0, MESSAGES)
        .await
        .unwrap();
    assert_eq!(stored.len() as u64, MESSAGES);
    assert!(stored
        .iter()
        .all(|m| m.sender == switchboard::db::REDACTED_SENDER));
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("switchboard_sagas_resumed_total 1"),
        "{metrics}"
    );
}

/// A shard holding the user's email index row is stopped while the deletion is at its
/// pivot: the pivot cannot commit, so the deletion is compensated and the user stays
/// whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_stopped_during_the_pivot_compensates_and_the_user_stays_usable() {
    let Some(clusters) = crate::private_pg::SplitClusters::start().await else {
        return;
    };
    let hold = tempfile::NamedTempFile::new().unwrap();
    let placeholder = TestDb::sqlite();
    let mut settings = fast(&placeholder);
    clusters.apply(&mut settings);
    settings.database.saga.fault =
        Fault::parse(&format!("pause:remove_user:{}", hold.path().display()));
    let app = spawn_app_with(placeholder, settings).await;
    let map = switchboard::db::shards::ShardMap::new(
        "any".into(),
        (0..3).map(|i| i.to_string()).collect(),
    );
    let mut users = client(&app).await;
    // A user on shard 0 or 1 whose email's index row is on shard 2.
    let mut user = None;
    for i in 0..200 {
        let email = format!("u{i}@example.com");
        if map.shard_of(&email) != 2 {
            continue;
        }
        let created = users
            .create_user(create("Ann", &email))
            .await
            .unwrap()
            .into_inner();
        if map.shard_of(&created.id) != 2 {
            user = Some(created);
            break;
        }
    }
    let ann = user.expect("such a user");
    post(&app.database, &ann.id, 1).await;

    let mut deleter = client(&app).await;
    let deletion = tokio::spawn({
        let id = ann.id.clone();
        async move { deleter.delete_user(DeleteUserRequest { id }).await }
    });
    let http = reqwest::Client::new();
    let base = app.url("");
    let deadline = Instant::now() + PATIENCE;
    let id = loop {
        let (_, list) = admin_get(&http, &base, "/admin/sagas").await;
        if let Some(saga) = list["sagas"].as_array().and_then(|s| s.first()) {
            break saga["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "no saga started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    saga_until(&base, &id, "at its pivot", |s| {
        step(s, "remove_user")["state"] == "started"
    })
    .await;
    // Marked: GetUser still answers, her token is refused.
    users
        .get_user(GetUserRequest { id: ann.id.clone() })
        .await
        .expect("a user being deleted is still found");
    let refused = WsClient::try_connect(&app, &format!("?token={}", token(&ann.id, None)), &[])
        .await
        .err()
        .expect("a user being deleted cannot connect");
    assert_eq!(refused.status, 401, "{refused:?}");
    clusters.lone.halt();
    drop(hold);

    let status = deletion
        .await
        .unwrap()
        .expect_err("the deletion cannot pass its pivot");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains("shard 2"), "{status:?}");
    let (_, saga) = admin_get(&http, &base, &format!("/admin/sagas/{id}")).await;
    assert_eq!(saga["state"], "compensated", "{saga}");
    assert_eq!(step(&saga, "remove_user")["state"], "failed", "{saga}");
    assert!(step(&saga, "remove_user")["attempts"].as_i64().unwrap() >= 3);
    assert_eq!(
        step(&saga, "mark_deleting")["state"],
        "compensated",
        "{saga}"
    );
    assert_eq!(step(&saga, "delete_posts")["attempts"], 0, "{saga}");

    // Whole and usable: found, posts kept, token accepted; and once the shard is back,
    // its email is still its own.
    users
        .get_user(GetUserRequest { id: ann.id.clone() })
        .await
        .unwrap();
    assert_eq!(posts_of(&app.database, &ann.id).await, 1);
    WsClient::user(&app, &ann.id).await;
    clusters.lone.resume().unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        match users.create_user(create("Copy", &ann.email)).await {
            Err(status) if status.code() == Code::AlreadyExists => break,
            Err(status) if status.code() == Code::Unavailable => {
                assert!(Instant::now() < deadline, "{status:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("the email should still be taken: {other:?}"),
        }
    }
}

/// A clean stop hands running sagas back: with a lease far longer than the test's
/// patience, the other server can only finish the saga because the first gave it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_hands_running_sagas_over_at_once() {
    let db = TestDb::sqlite();
    let hold = tempfile::NamedTempFile::new().unwrap();
    let long = |db: &TestDb| {
        let mut settings = fast(db);
        settings.database.saga.lease = Duration::from_secs(600);
        settings
    };
    let mut settings_a = long(&db);
    settings_a.database.saga.fault =
        Fault::parse(&format!("pause:delete_posts:{}", hold.path().display()));
    let settings_b = long(&db);
    let a = spawn_app_with(db, settings_a).await;
    let b = spawn_app_with(TestDb::sqlite(), settings_b).await;
    let mut users = client(&a).await;
    let ann = users
        .create_user(create("Ann", "ann@example.com"))
        .await
        .unwrap()
        .into_inner();
    let id = saga_id(
        &users
            .delete_user(DeleteUserRequest { id: ann.id.clone() })
            .await
            .unwrap(),
    );
    saga_until(&a.url(""), &id, "paused in delete_posts", |s| {
        step(s, "delete_posts")["state"] == "started"
    })
    .await;
    let _kept = a.stop_keeping_db().await;
    let saga = saga_until(&b.url(""), &id, "completed by B", |s| {
        s["state"] == "completed"
    })
    .await;
    assert_eq!(step(&saga, "delete_posts")["attempts"], 2, "{saga}");
    drop(hold);
}

/// Finished sagas (and the marks refusing a deleted user's tokens) go after the
/// retention period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_sagas_are_deleted_after_the_retention_period() {
    let db = TestDb::sqlite();
    let mut settings = fast(&db);
    settings.database.saga.retention = Duration::from_secs(2);
    let app = spawn_app_with(db, settings).await;
    let mut users = client(&app).await;
    let ann = users
        .create_user(create("Ann", "ann@example.com"))
        .await
        .unwrap()
        .into_inner();
    let id = saga_id(
        &users
            .delete_user(DeleteUserRequest { id: ann.id.clone() })
            .await
            .unwrap(),
    );
    saga_until(&app.url(""), &id, "completed", |s| {
        s["state"] == "completed"
    })
    .await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, _) = admin_get(&app.http, &app.url(""), &format!("/admin/sagas/{id}")).await;
        if status == 404 {
            break;
        }
        assert!(Instant::now() < deadline, "the saga was never pruned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(app.database.deletion_marks().await.unwrap().is_empty());
}

/// The orchestrator's rules, on a scripted test definition over a real database:
/// `reserve` and `charge` can be undone, `commit` is the pivot, `notify` comes after it.
mod scripted {
    use std::{
        collections::HashMap,
        sync::{Arc, Mutex},
        time::Duration,
    };

    use futures_util::{future::BoxFuture, FutureExt};
    use serde_json::{json, Value};
    use switchboard::actors::saga::{
        Definition, Saga, SagaConfig, SagaLog, Start, StartError, StepContext, StepError, StepSpec,
    };

    use crate::helpers::TestDb;

    const STEPS: &[StepSpec] = &[
        StepSpec {
            name: "reserve",
            compensable: true,
        },
        StepSpec {
            name: "charge",
            compensable: true,
        },
        StepSpec {
            name: "commit",
            compensable: false,
        },
        StepSpec {
            name: "notify",
            compensable: false,
        },
    ];

    /// How a step fails: this many times, definitely (a refusal) or not.
    #[derive(Clone, Copy)]
    struct Failing {
        times: u32,
        definite: bool,
    }

    #[derive(Default)]
    struct Script {
        failing: HashMap<&'static str, Failing>,
        /// What `pivot_took_effect` says.
        pivot_took_effect: bool,
        calls: Mutex<Vec<String>>,
        attempts: Mutex<HashMap<&'static str, u32>>,
    }

    /// A script whose `step` fails its first `times` attempts.
    fn failing(step: &'static str, times: u32, definite: bool) -> Script {
        Script {
            failing: HashMap::from([(step, Failing { times, definite })]),
            ..Script::default()
        }
    }

    struct Scripted(Arc<Script>);

    impl Definition for Scripted {
        fn saga_type(&self) -> &'static str {
            "scripted"
        }

        fn steps(&self) -> &'static [StepSpec] {
            STEPS
        }

        fn pivot(&self) -> usize {
            2
        }

        fn run(&self, ctx: StepContext) -> BoxFuture<'static, Result<Value, StepError>> {
            let script = self.0.clone();
            async move {
                let name = STEPS[ctx.step].name;
                script.calls.lock().unwrap().push(format!("run {name}"));
                let attempt = {
                    let mut attempts = script.attempts.lock().unwrap();
                    let n = attempts.entry(name).or_default();
                    *n += 1;
                    *n
                };
                match script.failing.get(name) {
                    Some(f) if attempt <= f.times && f.definite => {
                        Err(StepError::definite("refused"))
                    }
                    Some(f) if attempt <= f.times => Err(StepError::unknown("timed out")),
                    _ => Ok(json!({ "step": name, "key": ctx.idempotency_key() })),
                }
            }
            .boxed()
        }

        fn compensate(&self, ctx: StepContext) -> BoxFuture<'static, Result<(), StepError>> {
            let script = self.0.clone();
            async move {
                let name = STEPS[ctx.step].name;
                script.calls.lock().unwrap().push(format!("undo {name}"));
                Ok(())
            }
            .boxed()
        }

        fn pivot_took_effect(
            &self,
            _ctx: StepContext,
        ) -> BoxFuture<'static, Result<bool, StepError>> {
            let answer = self.0.pivot_took_effect;
            async move { Ok(answer) }.boxed()
        }
    }

    /// Runs one saga of `script` to its end; answers what `Start` said, the calls made
    /// and the saga's final state.
    fn run(script: Script) -> (Result<String, String>, Vec<String>, String) {
        let script = Arc::new(script);
        let db = TestDb::sqlite();
        let settings = db.settings.clone();
        let definition = script.clone();
        let (started, state) = std::thread::spawn(move || {
            actix_rt::System::new().block_on(async move {
                switchboard::db::migrate::run_pending(&settings)
                    .await
                    .unwrap();
                let database = switchboard::db::Database::connect(&settings).await.unwrap();
                let config = SagaConfig {
                    retry_initial: Duration::from_millis(5),
                    retry_max: Duration::from_millis(20),
                    ..SagaConfig::default()
                };
                let saga = actix::Actor::start(
                    Saga::new(database.clone(), config)
                        .with_definition(Arc::new(Scripted(definition))),
                );
                let started = saga
                    .send(Start {
                        saga_type: "scripted",
                        key: "order-1".into(),
                        input: json!({ "order": 1 }),
                    })
                    .await
                    .unwrap();
                let id = match &started {
                    Ok(started) => started.id.clone(),
                    Err(StartError::Compensated { id, .. }) => id.clone(),
                    Err(other) => panic!("{other}"),
                };
                // Past the pivot the run goes on after `Start` answered: wait for its end.
                let log = SagaLog::new(database);
                let deadline = std::time::Instant::now() + super::PATIENCE;
                let state = loop {
                    let (saga, _) = log.load(&id).await.unwrap().unwrap();
                    if saga.state == "completed" || saga.state == "compensated" {
                        break saga.state;
                    }
                    assert!(std::time::Instant::now() < deadline, "{saga:?}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                (started.map(|s| s.id).map_err(|e| e.to_string()), state)
            })
        })
        .join()
        .unwrap();
        let calls = script.calls.lock().unwrap().clone();
        (started, calls, state)
    }

    #[test]
    fn a_refused_step_before_the_pivot_undoes_only_what_ran_before_it() {
        let (started, calls, state) = run(failing("charge", u32::MAX, true));
        assert!(started.unwrap_err().contains("refused"));
        assert_eq!(calls, ["run reserve", "run charge", "undo reserve"]);
        assert_eq!(state, "compensated");
    }

    #[test]
    fn a_step_with_an_unknown_outcome_is_retried_then_undone_too_in_reverse_order() {
        let (started, calls, state) = run(failing("charge", u32::MAX, false));
        assert!(started.is_err());
        assert_eq!(
            calls,
            [
                "run reserve",
                "run charge",
                "run charge",
                "run charge",
                "undo charge",
                "undo reserve"
            ]
        );
        assert_eq!(state, "compensated");
    }

    #[test]
    fn a_pivot_that_did_not_take_effect_compensates_what_came_before_it() {
        let (started, calls, state) = run(Script {
            pivot_took_effect: false,
            ..failing("commit", u32::MAX, false)
        });
        assert!(started.is_err());
        assert_eq!(
            calls,
            [
                "run reserve",
                "run charge",
                "run commit",
                "run commit",
                "run commit",
                "undo charge",
                "undo reserve"
            ]
        );
        assert_eq!(state, "compensated");
    }

    #[test]
    fn a_pivot_that_took_effect_despite_its_error_goes_forward() {
        let (started, calls, state) = run(Script {
            pivot_took_effect: true,
            ..failing("commit", u32::MAX, false)
        });
        assert!(started.is_ok());
        assert_eq!(
            calls,
            [
                "run reserve",
                "run charge",
                "run commit",
                "run commit",
                "run commit",
                "run notify"
            ]
        );
        assert_eq!(state, "completed");
    }

    #[test]
    fn after_the_pivot_a_failing_step_is_retried_until_it_succeeds_and_nothing_is_undone() {
        let (started, calls, state) = run(failing("notify", 12, true));
        assert!(started.is_ok(), "the call answers once the pivot is done");
        let notifies = calls.iter().filter(|c| *c == "run notify").count();
        assert_eq!(notifies, 13, "{calls:?}");
        assert!(calls.iter().all(|c| !c.starts_with("undo")), "{calls:?}");
        assert_eq!(state, "completed");
    }
}
