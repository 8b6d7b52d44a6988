//! gRPC streams ending every which way: a `BulkCreateUsers` stores its trailing partial
//! batch only when the client closes its stream, every call is logged and counted once
//! however it ends, and many `StreamUsers` calls share a small pool fairly, capped per
//! client.

use std::time::Duration;

use switchboard::{
    domain::SearchFilter,
    grpc::pb::{CreateUserRequest, ListUsersRequest, StreamUsersRequest, User},
};
use tokio::sync::mpsc;
use tonic::{Code, Request, Streaming};

use crate::{
    grpc_stream::new_user,
    grpc_users::{client, client_with, Client},
    helpers::{spawn_app, spawn_app_with, test_settings, TestApp, TestDb},
    ws_client::token,
};

/// A client whose calls carry `sub`'s token.
async fn other_client(app: &TestApp, sub: &str) -> Client {
    client_with(app, Some(format!("Bearer {}", token(sub, None)))).await
}

fn create(i: usize) -> CreateUserRequest {
    CreateUserRequest {
        name: format!("Bulk {i}"),
        email: format!("bulk{i}@example.com"),
        ..Default::default()
    }
}

async fn users_stored(app: &TestApp) -> i64 {
    app.database
        .list_users(&SearchFilter::default(), 1, None)
        .await
        .unwrap()
        .total_count
}

async fn until_stored(app: &TestApp, count: i64) {
    for _ in 0..400 {
        if users_stored(app).await == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} users stored, expected {count}", users_stored(app).await);
}

/// How many `BulkCreateUsers` calls ended with `code`, per `/metrics`.
async fn bulk_calls_with_code(app: &TestApp, code: &str) -> u64 {
    let metrics = app.get_text("/metrics").await;
    let wanted = format!(
        "switchboard_grpc_calls_total{{code=\"{code}\",method=\"/userservice.UserService/BulkCreateUsers\"}} "
    );
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&wanted))
        .map_or(0, |n| n.trim().parse().unwrap())
}

/// A request stream fed by the test: 700 requests now, more (or the end) when it says.
fn feed() -> (
    mpsc::Sender<CreateUserRequest>,
    impl futures_util::Stream<Item = CreateUserRequest> + Send + 'static,
) {
    let (tx, mut rx) = mpsc::channel(1_000);
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    (tx, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_create_keeps_its_trailing_batch_only_when_the_client_closes_its_stream() {
    let app = spawn_app().await;

    // Cancelled by the client (RST_STREAM CANCEL) after 700 requests: the full batch of
    // 500 is stored, the trailing 200 are not.
    let (tx, stream) = feed();
    for i in 0..700 {
        tx.send(create(i)).await.unwrap();
    }
    let mut users = client(&app).await;
    let call = tokio::spawn(async move { users.bulk_create_users(stream).await });
    until_stored(&app, 500).await;
    call.abort();
    let _ = call.await;
    for _ in 0..400 {
        if bulk_calls_with_code(&app, "CANCELLED").await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        bulk_calls_with_code(&app, "CANCELLED").await,
        1,
        "counted as cancelled"
    );
    assert_eq!(
        users_stored(&app).await,
        500,
        "the tail of a cancelled call is not stored"
    );
    drop(tx);

    // Past its deadline: the same, answered DEADLINE_EXCEEDED.
    let (tx, stream) = feed();
    for i in 1_000..1_700 {
        tx.send(create(i)).await.unwrap();
    }
    let mut request = Request::new(stream);
    request.set_timeout(Duration::from_secs(5));
    let status = client(&app)
        .await
        .bulk_create_users(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(users_stored(&app).await, 1_000);
    assert_eq!(bulk_calls_with_code(&app, "DEADLINE_EXCEEDED").await, 1);
    drop(tx);

    // Closed by the client: everything is stored, the tail included.
    let (tx, stream) = feed();
    for i in 2_000..2_700 {
        tx.send(create(i)).await.unwrap();
    }
    drop(tx);
    let answer = client(&app)
        .await
        .bulk_create_users(stream)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.created_count, 700);
    assert_eq!(users_stored(&app).await, 1_700);
    assert_eq!(bulk_calls_with_code(&app, "OK").await, 1);
}

/// A server with a two-connection pool (both opened up front, checkouts giving up after
/// 250 ms) and `cap` streams per client, holding 1,200 users.
async fn small_pool_app(cap: usize) -> TestApp {
    let db = TestDb::sqlite();
    let mut settings = test_settings(&db);
    settings.database.max_connections = 2;
    settings.database.min_idle = Some(2);
    settings.database.connect_timeout = Duration::from_millis(250);
    settings.grpc_max_streams_per_client = cap;
    settings.rate_limit_burst = 10_000;
    let app = spawn_app_with(db, settings).await;
    let users: Vec<_> = (0..1_200)
        .map(|i| new_user(&format!("Member {i}")))
        .collect();
    app.database.bulk_create_users(users).await.unwrap();
    app
}

/// Opens a `StreamUsers` call and reads its first `count` users.
async fn read_snapshot(mut users: Client, count: usize) -> (Client, Streaming<User>, usize) {
    let mut stream = users
        .stream_users(StreamUsersRequest::default())
        .await
        .expect("the stream opens")
        .into_inner();
    let mut seen = 0;
    while seen < count {
        match tokio::time::timeout(Duration::from_secs(60), stream.message()).await {
            Ok(Ok(Some(_))) => seen += 1,
            other => panic!("the stream broke after {seen} users: {other:?}"),
        }
    }
    (users, stream, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_streams_share_a_small_pool_fairly() {
    let app = small_pool_app(1_000).await;
    let mut clients = Vec::new();
    for _ in 0..100 {
        clients.push(client(&app).await);
    }
    // A hundred snapshots of two pages each over two connections whose checkouts give up
    // after 250 ms: the pages take turns on half the pool instead of racing for it...
    let (started, mut first_user) = mpsc::channel::<()>(100);
    let streams = tokio::spawn(futures_util::future::join_all(clients.into_iter().map(
        |c| {
            let started = started.clone();
            async move {
                let (c, s, _) = read_snapshot(c, 1).await;
                let _ = started.send(()).await;
                let (_, rest) = (c, s);
                read_rest(rest, 1_199).await
            }
        },
    )));
    first_user.recv().await.expect("a stream started");
    // ...so other calls still find a connection while they run.
    let mut other = client(&app).await;
    for _ in 0..10 {
        other
            .list_users(ListUsersRequest::default())
            .await
            .expect("a unary call is served while the snapshots are read");
    }
    let seen = streams.await.unwrap();
    assert!(
        seen.iter().all(|n| *n == 1_199),
        "every snapshot is complete"
    );
}

/// Reads `count` more users from an open stream.
async fn read_rest(mut stream: Streaming<User>, count: usize) -> usize {
    let mut seen = 0;
    while seen < count {
        match tokio::time::timeout(Duration::from_secs(60), stream.message()).await {
            Ok(Ok(Some(_))) => seen += 1,
            other => panic!("the stream broke after {seen} more users: {other:?}"),
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_holds_a_bounded_number_of_streams() {
    let app = small_pool_app(3).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(read_snapshot(client(&app).await, 1).await);
    }
    let mut fourth = client(&app).await;
    let status = fourth
        .stream_users(StreamUsersRequest::default())
        .await
        .expect_err("over the cap");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("at most 3"),
        "{}",
        status.message()
    );

    // Another client is not affected.
    let mut stranger = other_client(&app, "stranger").await;
    stranger
        .stream_users(StreamUsersRequest::default())
        .await
        .expect("another client's stream opens");

    // A stream that ends frees its place.
    drop(open.pop());
    let mut reopened = None;
    for _ in 0..200 {
        match fourth.stream_users(StreamUsersRequest::default()).await {
            Ok(stream) => {
                reopened = Some(stream);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(25)).await,
        }
    }
    assert!(reopened.is_some(), "the place was freed");
}
