//! Cluster-wide services: user events, the user cache and rate limits across nodes of one
//! cluster (in-process nodes on one database, the local Redis with a prefix per test, or
//! a private `redis-server` a test stops).

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use switchboard::{
    config::Settings,
    grpc::pb::{
        CreateUserRequest, DeleteUserRequest, GetUserRequest, StreamUsersRequest,
        UpdateUserRequest, User,
    },
};
use tonic::{Code, Streaming};

use crate::{
    cluster::node_settings,
    graphql_more::{initialised_socket, next_message, send},
    grpc_users,
    helpers::{spawn_app_with, TestApp, TestDb},
    private_redis::{forget, shared_redis, test_prefix, PrivateRedis},
    ws_client::token,
};

/// Generous: the suite runs in parallel on a busy 2-core machine.
const PATIENCE: Duration = Duration::from_secs(30);

/// Nodes `names` of one cluster on one SQLite database (the last one owns it, so it is
/// dropped last), each with `change` applied to its settings.
pub(crate) async fn nodes_on_one_db(
    redis: &str,
    prefix: &str,
    names: &[&str],
    change: impl Fn(&mut Settings),
) -> Vec<TestApp> {
    let db = TestDb::sqlite();
    let mut owner = Some(db);
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let shared = owner.as_ref().unwrap().share();
        let mut settings = node_settings(&shared, redis, prefix, name);
        change(&mut settings);
        let db = if i + 1 == names.len() {
            owner.take().unwrap()
        } else {
            shared
        };
        nodes.push(spawn_app_with(db, settings).await);
    }
    for node in &nodes {
        linked(node).await;
    }
    nodes
}

/// A Prometheus sample of `app` (with the node label), or `None` when absent.
async fn sample(app: &TestApp, name: &str) -> Option<f64> {
    let text = app.get_text("/metrics").await;
    text.lines()
        .find(|line| line.starts_with(&format!("{name}{{")))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// Waits until `app` hears the other nodes' user changes (its cache serves again).
async fn linked(app: &TestApp) {
    let deadline = Instant::now() + PATIENCE;
    while sample(app, "switchboard_user_cache_serving").await != Some(1.0) {
        assert!(Instant::now() < deadline, "the node never linked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn next_user(stream: &mut Streaming<User>) -> User {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("an event in time")
        .expect("the stream goes on")
        .expect("the stream is not over")
}

fn create(name: &str) -> CreateUserRequest {
    CreateUserRequest {
        name: name.into(),
        email: format!("{name}@example.com"),
        ..CreateUserRequest::default()
    }
}

fn all_changes() -> StreamUsersRequest {
    StreamUsersRequest {
        filter: String::new(),
        include_deletions: true,
        include_updates: true,
    }
}

/// How an event reads: `created ada`, `updated ada2`, `deleted ada2`.
fn describe(user: &User) -> String {
    let kind = if user.deleted {
        "deleted"
    } else if user.updated {
        "updated"
    } else {
        "created"
    };
    format!("{kind} {}", user.name)
}

async fn graphql_as_service(app: &TestApp, query: &str, variables: Value) -> Value {
    app.http
        .post(app.url("/graphql"))
        .bearer_auth(token("service", None))
        .json(&json!({ "query": query, "variables": variables }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Created, updated (over gRPC and GraphQL), bulk-created and deleted users on node a
/// reach `StreamUsers` calls and GraphQL subscriptions on both nodes, once each, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_changes_on_one_node_reach_every_nodes_subscribers_once() {
    let Some(redis) = shared_redis() else {
        return;
    };
    let prefix = test_prefix();
    let nodes = nodes_on_one_db(&redis, &prefix, &["a", "b"], |_| {}).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut on_a = grpc_users::client(a).await;
    let mut on_b = grpc_users::client(b).await;
    let mut stream_a = on_a.stream_users(all_changes()).await.unwrap().into_inner();
    let mut stream_b = on_b.stream_users(all_changes()).await.unwrap().into_inner();
    let mut graphql_b = initialised_socket(b, "graphql-transport-ws", json!({})).await;
    for (id, field) in [
        ("c", "userCreated { name }"),
        ("u", "userUpdated { name }"),
        ("d", "userDeleted"),
    ] {
        let query = format!("subscription {{ {field} }}");
        send(
            &mut graphql_b,
            json!({ "id": id, "type": "subscribe", "payload": { "query": query } }),
        )
        .await;
    }
    crate::graphql_more::until_subscribers(b, 4).await;
    crate::graphql_more::until_subscribers(a, 1).await;

    let ada = on_a.create_user(create("ada")).await.unwrap().into_inner();
    on_a.update_user(UpdateUserRequest {
        id: ada.id.clone(),
        name: "ada2".into(),
        ..UpdateUserRequest::default()
    })
    .await
    .unwrap();
    let updated = graphql_as_service(
        a,
        "mutation($id: ID!) { updateUser(id: $id, input: { name: \"ada3\" }) { name } }",
        json!({ "id": ada.id }),
    )
    .await;
    assert_eq!(updated["data"]["updateUser"]["name"], "ada3", "{updated}");
    let bulk = tokio_stream_of(["bo", "cy", "di"].map(create));
    on_a.bulk_create_users(bulk).await.unwrap();
    on_a.delete_user(DeleteUserRequest { id: ada.id.clone() })
        .await
        .unwrap();
    let deleted_at = Instant::now();
    // A marker after everything: what comes before it is the whole story.
    on_a.create_user(create("zed")).await.unwrap();

    let expected = [
        "created ada",
        "updated ada2",
        "updated ada3",
        "created bo",
        "created cy",
        "created di",
        "deleted ada3",
        "created zed",
    ];
    for (node, stream) in [("a", &mut stream_a), ("b", &mut stream_b)] {
        let mut seen = Vec::new();
        while seen.last().map(String::as_str) != Some("created zed") {
            let user = tokio::time::timeout(PATIENCE, stream.message()).await;
            let user = user.unwrap_or_else(|_| panic!("node {node}: only {seen:?}"));
            seen.push(describe(&user.unwrap().unwrap()));
        }
        // The deletion is announced after its clean-up: it may come after the marker.
        if seen.len() < expected.len() {
            seen.push(describe(&next_user(stream).await));
            let last = seen.len() - 1;
            seen.swap(last, last - 1);
        }
        assert_eq!(
            seen,
            expected,
            "node {node}, after {:?}",
            deleted_at.elapsed()
        );
    }

    let mut events: HashMap<String, Vec<Value>> = HashMap::new();
    while events.get("c").map_or(0, Vec::len) < 5
        || events.get("u").map_or(0, Vec::len) < 2
        || events.get("d").map_or(0, Vec::len) < 1
    {
        let message = next_message(&mut graphql_b).await.expect("an event");
        assert_eq!(message["type"], "next", "{message}");
        let id = message["id"].as_str().unwrap().to_owned();
        events
            .entry(id)
            .or_default()
            .push(message["payload"]["data"].clone());
    }
    let names = |id: &str, field: &str| -> Vec<String> {
        events[id]
            .iter()
            .map(|data| data[field]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names("c", "userCreated"), ["ada", "bo", "cy", "di", "zed"]);
    assert_eq!(names("u", "userUpdated"), ["ada2", "ada3"]);
    assert_eq!(events["d"], [json!({ "userDeleted": ada.id })]);
    // Nothing more: no copy of any event comes later.
    on_a.create_user(create("zz")).await.unwrap();
    assert_eq!(describe(&next_user(&mut stream_b).await), "created zz");
    let message = next_message(&mut graphql_b).await.expect("an event");
    assert_eq!(
        message["payload"]["data"]["userCreated"]["name"], "zz",
        "{message}"
    );
    drop(nodes);
    forget(&redis, &prefix).await;
}

fn tokio_stream_of<const N: usize>(
    requests: [CreateUserRequest; N],
) -> impl futures_util::Stream<Item = CreateUserRequest> {
    futures_util::stream::iter(requests)
}

/// A `StreamUsers` call on node b opened while node a keeps creating users gets every
/// user exactly once, whether it came in the snapshot or live from the other node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_snapshot_and_live_users_from_another_node_have_no_gap_and_no_duplicate() {
    let Some(redis) = shared_redis() else {
        return;
    };
    let prefix = test_prefix();
    let nodes = nodes_on_one_db(&redis, &prefix, &["a", "b"], |_| {}).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut on_a = grpc_users::client(a).await;
    for i in 0..40 {
        on_a.create_user(create(&format!("early{i}")))
            .await
            .unwrap();
    }
    let writer = {
        let mut on_a = grpc_users::client(a).await;
        tokio::spawn(async move {
            for i in 0..160 {
                on_a.create_user(create(&format!("live{i}"))).await.unwrap();
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut on_b = grpc_users::client(b).await;
    let mut stream = on_b
        .stream_users(StreamUsersRequest::default())
        .await
        .unwrap()
        .into_inner();
    writer.await.unwrap();
    on_a.create_user(create("marker")).await.unwrap();
    let mut names = Vec::new();
    loop {
        let user = next_user(&mut stream).await;
        if user.name == "marker" {
            break;
        }
        names.push(user.name);
    }
    let unique: HashSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "duplicates in {names:?}");
    let expected: HashSet<String> = (0..40)
        .map(|i| format!("early{i}"))
        .chain((0..160).map(|i| format!("live{i}")))
        .collect();
    assert_eq!(
        unique.into_iter().cloned().collect::<HashSet<_>>(),
        expected
    );
    drop(nodes);
    forget(&redis, &prefix).await;
}

/// A user updated or deleted through node a is never served stale by node b's cache
/// once the call returned, over gRPC or GraphQL; the cache shows in `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_one_node_is_read_fresh_on_another_right_after_it_returned() {
    let Some(redis) = shared_redis() else {
        return;
    };
    let prefix = test_prefix();
    let nodes = nodes_on_one_db(&redis, &prefix, &["a", "b"], |_| {}).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut on_a = grpc_users::client(a).await;
    let mut on_b = grpc_users::client(b).await;
    let ada = on_a.create_user(create("ada")).await.unwrap().into_inner();
    let get = |id: &str| GetUserRequest { id: id.into() };
    let by_graphql = "query($id: String!) { user(id: $id) { name } }";
    for round in 0..20 {
        // Read twice on b (the second from its cache), change on a, read on b at once.
        for _ in 0..2 {
            on_b.get_user(get(&ada.id)).await.unwrap();
        }
        let name = format!("ada-{round}");
        on_a.update_user(UpdateUserRequest {
            id: ada.id.clone(),
            name: name.clone(),
            ..UpdateUserRequest::default()
        })
        .await
        .unwrap();
        let read = on_b.get_user(get(&ada.id)).await.unwrap().into_inner();
        assert_eq!(
            read.name, name,
            "round {round}: a stale user from b's cache"
        );
        let read = graphql_as_service(b, by_graphql, json!({ "id": ada.id })).await;
        assert_eq!(read["data"]["user"]["name"], name.as_str(), "{read}");
    }
    let hits = sample(b, "switchboard_user_cache_hits_total")
        .await
        .unwrap();
    assert!(hits >= 20.0, "{hits} hits");
    let invalidated = sample(b, "switchboard_user_cache_invalidations_total")
        .await
        .unwrap();
    assert!(invalidated >= 20.0, "{invalidated} invalidations");
    let metrics = b.get_text("/metrics").await;
    assert!(
        metrics.contains("switchboard_user_cache_size{node=\"b\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("switchboard_user_cache_hit_ratio{node=\"b\"} 0."));
    assert!(metrics.contains("switchboard_http_requests_total{node=\"b\","));

    // Deleted through a: gone on b as soon as DeleteUser answered.
    on_b.get_user(get(&ada.id)).await.unwrap();
    on_a.delete_user(DeleteUserRequest { id: ada.id.clone() })
        .await
        .unwrap();
    let status = on_b.get_user(get(&ada.id)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let read = graphql_as_service(b, by_graphql, json!({ "id": ada.id })).await;
    assert_eq!(read["data"]["user"], Value::Null, "{read}");
    assert_eq!(
        sample(b, "switchboard_cluster_invalidation_timeouts_total").await,
        Some(0.0)
    );
    drop(nodes);
    forget(&redis, &prefix).await;
}

/// GETs `/rooms` as `subject` on `node`: the status and the `RateLimit-Policy` header.
async fn limited_get(node: &TestApp, subject: &str) -> (u16, String) {
    let response = node
        .http
        .get(node.url("/rooms"))
        .bearer_auth(token(subject, None))
        .send()
        .await
        .unwrap();
    let policy = response
        .headers()
        .get("ratelimit-policy")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (response.status().as_u16(), policy)
}

/// One client spread over three nodes gets the configured rate, not three times it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_spread_over_three_nodes_gets_the_configured_rate_once() {
    let Some(redis) = shared_redis() else {
        return;
    };
    let prefix = test_prefix();
    let (rate, burst) = (4.0, 6);
    let nodes = nodes_on_one_db(&redis, &prefix, &["a", "b", "c"], |settings| {
        settings.rate_limit_per_second = rate;
        settings.rate_limit_burst = burst;
    })
    .await;
    let started = Instant::now();
    let (mut admitted, mut refused) = (0u32, 0u32);
    let mut policies = HashSet::new();
    while started.elapsed() < Duration::from_secs(2) {
        for node in &nodes {
            let (status, policy) = limited_get(node, "hammer").await;
            policies.insert(policy);
            match status {
                200 => admitted += 1,
                429 => refused += 1,
                other => panic!("status {other}"),
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let most = f64::from(burst) + rate * elapsed + 1.0;
    assert!(
        f64::from(admitted) <= most,
        "{admitted} admitted in {elapsed:.2}s over 3 nodes; at most {most:.1}"
    );
    assert!(
        admitted >= burst,
        "{admitted} admitted: the burst is allowed"
    );
    assert!(refused > 0);
    assert_eq!(
        policies,
        HashSet::from(["\"default\";q=6;w=2".to_owned()]),
        "the policy header is the single node's"
    );
    // Another client has its own budget.
    assert_eq!(limited_get(&nodes[1], "someone-else").await.0, 200);
    let decided = sample(&nodes[0], "switchboard_rate_limit_cluster_decisions_total")
        .await
        .unwrap();
    assert!(decided > 0.0);
    drop(nodes);
    forget(&redis, &prefix).await;
}

/// Redis gone: each node limits alone (not everything refused, not everything let in),
/// counts it, and goes back to cluster-wide decisions when Redis returns. User streams
/// end with UNAVAILABLE (changes elsewhere may be missed) and the cache stops serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_limits_fall_back_to_the_node_and_user_streams_end() {
    let Some(mut redis) = PrivateRedis::start() else {
        return;
    };
    let prefix = test_prefix();
    let nodes = nodes_on_one_db(&redis.url(), &prefix, &["a"], |settings| {
        // One token per 100 s: however slowly the busy machine sends the six requests,
        // no token refills in between.
        settings.rate_limit_per_second = 0.01;
        settings.rate_limit_burst = 3;
    })
    .await;
    let a = &nodes[0];
    let mut on_a = grpc_users::client(a).await;
    let mut stream = on_a.stream_users(all_changes()).await.unwrap().into_inner();

    redis.kill();
    let status = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("the stream ends in time")
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("link"), "{status:?}");
    assert_eq!(sample(a, "switchboard_user_cache_serving").await, Some(0.0));

    let statuses: Vec<u16> = futures_util::future::join_all(
        (0..6).map(|_| async { limited_get(a, "fallback").await.0 }),
    )
    .await;
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(admitted, 3, "the burst, per node: {statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
    let fallbacks = sample(a, "switchboard_rate_limit_fallback_decisions_total")
        .await
        .unwrap();
    assert!(fallbacks >= 6.0, "{fallbacks}");

    redis.restart();
    linked(a).await;
    let before = sample(a, "switchboard_rate_limit_cluster_decisions_total")
        .await
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        limited_get(a, "back").await;
        let now = sample(a, "switchboard_rate_limit_cluster_decisions_total")
            .await
            .unwrap();
        if now > before {
            break;
        }
        assert!(Instant::now() < deadline, "never decided in Redis again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(nodes);
}

/// Deleting a user on node a closes their session on node b at once (close 4403), not
/// when b next reads the deletion marks (here a minute away).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_deleted_on_one_node_is_disconnected_on_every_node_at_once() {
    let Some(redis) = shared_redis() else {
        return;
    };
    let prefix = test_prefix();
    let nodes = nodes_on_one_db(&redis, &prefix, &["a", "b"], |settings| {
        settings.database.saga.resume_interval = Duration::from_secs(60);
    })
    .await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut on_a = grpc_users::client(a).await;
    let ann = on_a.create_user(create("ann")).await.unwrap().into_inner();
    let mut session = crate::ws_client::WsClient::user(b, &ann.id).await;
    let asked = Instant::now();
    on_a.delete_user(DeleteUserRequest { id: ann.id.clone() })
        .await
        .unwrap();
    let close = session.closed().await;
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (4403, "user deleted")
    );
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "closed after {:?}",
        asked.elapsed()
    );
    drop(nodes);
    forget(&redis, &prefix).await;
}
