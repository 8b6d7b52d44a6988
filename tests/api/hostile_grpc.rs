//! gRPC streams ending every which way: a `BulkCreateUsers` stores its trailing partial
//! batch only when the client closes its stream, and every call is logged and counted
//! once, however it ends.

use std::time::Duration;

use switchboard::{domain::SearchFilter, grpc::pb::CreateUserRequest};
use tokio::sync::mpsc;
use tonic::{Code, Request};

use crate::{
    grpc_users::client,
    helpers::{spawn_app, TestApp},
};

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
        if bulk_calls_with_code(&app, "1").await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        bulk_calls_with_code(&app, "1").await,
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
    assert_eq!(bulk_calls_with_code(&app, "4").await, 1);
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
    assert_eq!(bulk_calls_with_code(&app, "0").await, 1);
}
