//! Client-caused trouble must never look like a database failure: an exhausted pool is
//! overload (retry shortly), input the database would choke on is the client's error, and
//! neither may open the circuit breaker for everyone else.

use std::time::Duration;

use diesel::{connection::SimpleConnection, Connection, SqliteConnection};
use futures_util::future::join_all;
use serde_json::{json, Value};
use switchboard::{
    config::DatabaseUrl,
    grpc::pb::{CreateUserRequest, ListUsersRequest, StreamUsersRequest},
};
use tonic::Code;

use crate::{
    grpc_users::client,
    helpers::{spawn_app_with, test_settings, TestApp, TestDb},
    on_both_backends,
    ws_client::token,
};

async fn breaker_state(app: &TestApp) -> Value {
    app.get_json("/health").await["checks"]["circuitBreaker:state"][0]["state"].clone()
}

async fn pool_in_use(app: &TestApp) -> u64 {
    app.get_json("/health").await["checks"]["database:responseTime"][0]["pool"]["in_use"]
        .as_u64()
        .unwrap_or(0)
}

fn create(name: &str) -> CreateUserRequest {
    CreateUserRequest {
        name: name.into(),
        email: format!("{name}@example.com"),
        ..Default::default()
    }
}

/// `createUser` over GraphQL: the status, and the first error's code (if any).
async fn graphql_create(app: &TestApp, name: &str) -> (u16, Option<String>, bool) {
    let body = json!({
        "query": "mutation($input: UserInput!) { createUser(input: $input) { id } }",
        "variables": { "input": { "name": name, "email": format!("{name}@example.com") } },
    });
    let response = app.post_graphql(Some(&token("writer", None)), &body).await;
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let body: Value = response.json().await.unwrap();
    let code = body["errors"][0]["extensions"]["code"]
        .as_str()
        .map(str::to_owned);
    (status, code, retry_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_is_overload_and_never_opens_the_breaker() {
    let db = TestDb::sqlite();
    let mut settings = test_settings(&db);
    settings.database.max_connections = 2;
    settings.database.min_idle = None;
    // Checkouts give up quickly; writers wait long on the lock (the two that got a
    // connection keep it until the test lets them finish).
    settings.database.connect_timeout = Duration::from_millis(500);
    settings.database.sqlite_busy_timeout = Duration::from_secs(120);
    settings.health_interval = Duration::from_millis(100);
    let path = match &settings.database.url {
        DatabaseUrl::Sqlite(path) => path.to_string_lossy().into_owned(),
        other => panic!("a SQLite test database, not {other}"),
    };
    let app = spawn_app_with(db, settings).await;

    // Another process holds SQLite's write lock: every write waits for it.
    let mut lock = SqliteConnection::establish(&path).unwrap();
    lock.batch_execute("BEGIN IMMEDIATE").unwrap();

    // Two writers take both pooled connections and wait on the lock.
    let mut grpc = client(&app).await;
    let mut holders = Vec::new();
    for i in 0..2 {
        let mut grpc = client(&app).await;
        holders.push(tokio::spawn(async move {
            grpc.create_user(create(&format!("holder{i}"))).await
        }));
    }
    for _ in 0..200 {
        if pool_in_use(&app).await == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(pool_in_use(&app).await, 2, "both connections are held");

    // Fourteen more writers over both front doors find no connection: told to retry.
    let over_grpc = join_all((0..7).map(|i| {
        let app = &app;
        async move {
            let mut grpc = client(app).await;
            grpc.create_user(create(&format!("grpc{i}"))).await
        }
    }));
    let over_graphql = join_all((0..7).map(|i| {
        let app = &app;
        async move { graphql_create(app, &format!("graphql{i}")).await }
    }));
    let (grpc_answers, graphql_answers) = tokio::join!(over_grpc, over_graphql);
    for answer in grpc_answers {
        let status = answer.expect_err("no connection was free");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(status.message().contains("busy"), "{}", status.message());
    }
    for (status, code, retry_after) in graphql_answers {
        assert_eq!(status, 503);
        assert_eq!(code.as_deref(), Some("BUSY"));
        assert!(retry_after, "a busy answer says when to retry");
    }
    // Overload is not an outage: the breaker stays closed, readiness holds.
    assert_eq!(breaker_state(&app).await, "closed");
    assert_eq!(app.get_status("/readyz").await, 200);

    lock.batch_execute("COMMIT").unwrap();
    for holder in holders {
        holder.await.unwrap().expect("the held writes finish");
    }
    let page = grpc
        .list_users(ListUsersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.total_count, 2);
    assert_eq!(breaker_state(&app).await, "closed");
}

on_both_backends!(
    owned:
    filters_the_database_would_choke_on_are_invalid_input_and_never_open_the_breaker,
);

async fn filters_the_database_would_choke_on_are_invalid_input_and_never_open_the_breaker(
    db: TestDb,
) {
    let settings = test_settings(&db);
    let app = spawn_app_with(db, settings).await;
    let mut grpc = client(&app).await;
    // SQLite refuses LIKE patterns over 50,000 bytes; PostgreSQL refuses NUL in text.
    let hostile = ["x".repeat(60_000), "a\0b".to_owned(), "a".repeat(255)];
    for round in 0..3 {
        for filter in &hostile {
            let status = grpc
                .list_users(ListUsersRequest {
                    filter: filter.clone(),
                    ..Default::default()
                })
                .await
                .expect_err("the filter is refused");
            assert_eq!(status.code(), Code::InvalidArgument, "round {round}");
            assert!(status.message().contains("filter"), "{}", status.message());

            let status = grpc
                .stream_users(StreamUsersRequest {
                    filter: filter.clone(),
                    ..Default::default()
                })
                .await
                .expect_err("the filter is refused");
            assert_eq!(status.code(), Code::InvalidArgument);

            let body = json!({
                "query": "query($f: String!) { users(filter: $f) { id } }",
                "variables": { "f": filter },
            });
            let response: Value = app.post_graphql(None, &body).await.json().await.unwrap();
            assert_eq!(
                response["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
                "{response}"
            );
            assert_eq!(response["errors"][0]["extensions"]["field"], "filter");
        }
    }
    assert_eq!(breaker_state(&app).await, "closed");
    let page = grpc
        .list_users(ListUsersRequest {
            filter: "  someone  ".into(),
            ..Default::default()
        })
        .await
        .expect("a sane filter works")
        .into_inner();
    assert_eq!(page.total_count, 0);
}
