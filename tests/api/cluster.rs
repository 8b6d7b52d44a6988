//! Cluster mode: several nodes on one Redis. Nodes run in this process (their own
//! actix systems, ports 0) on the local Redis with a key prefix per test, or on a private
//! `redis-server` a test may stop.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use switchboard::config::Settings;

use crate::{
    helpers::{spawn_app_with, test_settings, TestApp, TestDb},
    private_redis::{forget, shared_redis, test_prefix, PrivateRedis},
    ws_client::WsClient,
};

/// Generous: the suite runs in parallel on a busy 2-core machine.
const PATIENCE: Duration = Duration::from_secs(30);

/// Settings for node `node` of a cluster on `redis` under `prefix`, with a fast heartbeat.
pub fn node_settings(db: &TestDb, redis: &str, prefix: &str, node: &str) -> Settings {
    let mut settings = test_settings(db);
    settings.cluster.redis_url = Some(redis.into());
    settings.cluster.prefix = prefix.into();
    settings.cluster.node_id = Some(node.into());
    settings.cluster.heartbeat = Duration::from_millis(200);
    settings.cluster.node_timeout = Duration::from_secs(2);
    settings.websocket.rate_per_second = 10_000.0;
    settings.websocket.rate_burst = 10_000;
    settings.rate_limit_per_second = 10_000.0;
    settings.rate_limit_burst = 10_000;
    settings
}

/// Starts node `node`.
pub async fn node(redis: &str, prefix: &str, node: &str) -> TestApp {
    node_with(redis, prefix, node, |_| {}).await
}

/// Starts node `node` with `change` applied to its settings.
async fn node_with(
    redis: &str,
    prefix: &str,
    node: &str,
    change: impl FnOnce(&mut Settings),
) -> TestApp {
    let db = TestDb::sqlite();
    let mut settings = node_settings(&db, redis, prefix, node);
    change(&mut settings);
    spawn_app_with(db, settings).await
}

fn cluster_check(health: &Value) -> &Value {
    &health["checks"]["cluster:redis"][0]
}

/// Polls `/health` until the cluster check satisfies `done`.
async fn cluster_until(app: &TestApp, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let health = app.get_json("/health").await;
        if done(cluster_check(&health)) {
            return health;
        }
        assert!(Instant::now() < deadline, "never {what}: {health}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_one_redis_see_each_other_come_and_go() {
    let Some(redis) = shared_redis() else {
        return;
    };
    let prefix = test_prefix();
    let a = node(&redis, &prefix, "node-a").await;
    let b = node(&redis, &prefix, "node-b").await;
    let health = cluster_until(&a, "saw both nodes", |check| {
        check["stats"]["nodes"] == serde_json::json!(["node-a", "node-b"])
    })
    .await;
    let check = cluster_check(&health);
    assert_eq!(check["status"], "pass", "{health}");
    assert_eq!(check["componentId"], "node-a");
    assert!(check["observedValue"].as_f64().unwrap() >= 0.0);
    assert_eq!(check["observedUnit"], "ms");
    assert_eq!(a.get_status("/readyz").await, 200);

    // B goes away: A stops counting it once it has not been heard from for the timeout.
    b.shutdown().await.unwrap();
    cluster_until(&a, "forgot node-b", |check| {
        check["stats"]["nodes"] == serde_json::json!(["node-a"])
    })
    .await;
    forget(&redis, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_and_health_follow_redis() {
    let Some(mut redis) = PrivateRedis::start() else {
        return;
    };
    let app = node(&redis.url(), &test_prefix(), "solo").await;
    assert_eq!(app.get_status("/readyz").await, 200);

    redis.kill();
    let deadline = Instant::now() + PATIENCE;
    let body = loop {
        let response = app.get("/readyz").await;
        if response.status() == 503 {
            break response.json::<Value>().await.unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "readiness never noticed Redis was gone"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        body["reason"]
            .as_str()
            .unwrap()
            .contains("Redis unreachable"),
        "{body}"
    );
    let health = app.get_json("/health").await;
    assert_eq!(cluster_check(&health)["status"], "fail", "{health}");
    assert_ne!(health["status"], "pass", "{health}");

    redis.restart();
    cluster_until(&app, "reconnected", |check| check["status"] == "pass").await;
    assert_eq!(app.get_status("/readyz").await, 200);

    // The subscription connection is cut: it reconnects, resubscribes, and the node's
    // self-probe comes back through it again.
    let before = cluster_until(&app, "probed", |check| {
        check["stats"]["probes_returned"].as_u64() > Some(0)
    })
    .await;
    let returned = cluster_check(&before)["stats"]["probes_returned"]
        .as_u64()
        .unwrap();
    let killed = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "CLIENT",
            "KILL",
            "TYPE",
            "pubsub",
        ])
        .output()
        .unwrap();
    let count = String::from_utf8_lossy(&killed.stdout).trim().to_owned();
    assert!(killed.status.success() && count != "0", "{killed:?}");
    cluster_until(&app, "probed through a new connection", |check| {
        check["stats"]["disconnections"].as_u64() >= Some(1)
            && check["stats"]["probes_returned"].as_u64() >= Some(returned + 2)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_malformed_redis_url_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    for (url, expected) in [
        (format!("redis://127.0.0.1:{closed}"), "cannot reach Redis"),
        ("http://127.0.0.1:6379".to_owned(), "redis url"),
    ] {
        let mut command = crate::process::switchboard(dir.path());
        command.args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"]);
        command.args(["--database-url", "sqlite://cluster.db", "--redis-url", &url]);
        let finished = crate::process::run_within(command, PATIENCE);
        assert!(!finished.status.success(), "{url} should not start");
        assert!(
            finished.stderr.contains(expected),
            "{url}: {}",
            finished.stderr
        );
    }
}

/// Waits until `app`'s broker holds `count` subscriptions.
async fn subscriptions(app: &TestApp, count: u64) {
    cluster_until(app, &format!("held {count} subscriptions"), |check| {
        check["stats"]["subscriptions"] == count
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_messages_reach_every_session_of_the_user_on_every_node() {
    let Some(redis) = shared_redis() else {
        return;
    };
    let prefix = test_prefix();
    let a = node(&redis, &prefix, "a").await;
    let b = node(&redis, &prefix, "b").await;
    let mut alice = WsClient::user(&a, "alice").await;
    let mut bob_on_a = WsClient::user(&a, "bob").await;
    let mut bob_on_b = WsClient::user(&b, "bob").await;
    let mut carol_on_b = WsClient::user(&b, "carol").await;
    // broadcast + probe + alice + bob on A; broadcast + probe + bob + carol on B.
    subscriptions(&a, 4).await;
    subscriptions(&b, 4).await;

    alice
        .send(json!({"type": "private", "to": "bob", "content": "psst"}))
        .await;
    let ack = alice.recv().await;
    assert_eq!(ack["type"], "ack", "{ack}");
    for bob in [&mut bob_on_a, &mut bob_on_b] {
        let message = bob.recv().await;
        assert_eq!(message["type"], "private", "{message}");
        assert_eq!(message["from"], "alice");
        assert_eq!(message["content"], "psst");
        assert_eq!(message["id"], ack["id"]);
    }
    carol_on_b.assert_silent(Duration::from_millis(300)).await;

    // Only Carol's node has her: it delivers; nobody anywhere: refused.
    alice
        .send(json!({"type": "private", "to": "carol", "content": "hi"}))
        .await;
    assert_eq!(alice.recv().await["type"], "ack");
    assert_eq!(carol_on_b.recv().await["content"], "hi");
    alice
        .send(json!({"type": "private", "to": "nobody", "content": "?"}))
        .await;
    assert!(alice
        .recv_error()
        .await
        .contains("`nobody` is not connected"));
    // Bob's session on B ends: B stops listening for him, A still delivers.
    drop(bob_on_b);
    subscriptions(&b, 3).await;
    alice
        .send(json!({"type": "private", "to": "bob", "content": "again"}))
        .await;
    assert_eq!(alice.recv().await["type"], "ack");
    assert_eq!(bob_on_a.recv().await["content"], "again");
    forget(&redis, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_reaches_every_node_and_a_dead_redis_refuses_it() {
    let Some(mut redis) = PrivateRedis::start() else {
        return;
    };
    let prefix = test_prefix();
    let a = node(&redis.url(), &prefix, "a").await;
    let b = node(&redis.url(), &prefix, "b").await;
    let mut root = WsClient::admin(&a, "root").await;
    let mut alice_on_a = WsClient::user(&a, "alice").await;
    let mut bob_on_b = WsClient::user(&b, "bob").await;
    subscriptions(&a, 4).await;
    subscriptions(&b, 3).await;
    joined(&mut alice_on_a, "lobby").await;
    joined(&mut bob_on_b, "lobby").await;

    root.send(json!({"type": "broadcast", "content": "everyone!"}))
        .await;
    assert_eq!(root.recv().await["type"], "ack");
    for member in [&mut alice_on_a, &mut bob_on_b] {
        let message = member.recv_kind("broadcast").await;
        assert_eq!(message["type"], "broadcast", "{message}");
        assert_eq!(message["content"], "everyone!");
    }
    root.assert_silent(Duration::from_millis(300)).await;

    // Redis gone: refused with a retryable error, never delivered on one node only;
    // the sessions stay open.
    redis.kill();
    root.send(json!({"type": "broadcast", "content": "lost?"}))
        .await;
    let error = root.recv_error().await;
    assert!(error.contains("cluster is unavailable"), "{error}");
    alice_on_a
        .send(json!({"type": "message", "room_id": "lobby", "content": "lost?"}))
        .await;
    let error = alice_on_a.recv_error().await;
    assert!(error.contains("cluster is unavailable"), "{error}");
    bob_on_b.assert_silent(Duration::from_millis(300)).await;

    // Back: subscriptions are restored and delivery resumes. (A broadcast is not
    // stored: one published while a node is still resubscribing misses that node, so
    // this sends until both have one.)
    redis.restart();
    let deadline = Instant::now() + PATIENCE;
    let (mut alice_got, mut bob_got) = (false, false);
    while !(alice_got && bob_got) {
        assert!(
            Instant::now() < deadline,
            "delivery never resumed on both nodes"
        );
        root.send(json!({"type": "broadcast", "content": "back"}))
            .await;
        let answer = root.recv().await;
        if answer["type"] != "ack" {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        for (member, got) in [
            (&mut alice_on_a, &mut alice_got),
            (&mut bob_on_b, &mut bob_got),
        ] {
            if let Ok(message) =
                tokio::time::timeout(Duration::from_millis(500), member.recv()).await
            {
                assert_eq!(message["content"], "back", "{message}");
                *got = true;
            }
        }
    }

    // Room messages go through again, each relayed once, in order (Redis came back
    // empty: the room's numbering continues after what this node had delivered).
    let offsets = crate::history::post(&mut alice_on_a, "lobby", 3).await;
    assert_eq!(offsets, [1, 2, 3], "{offsets:?}");
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let message = bob_on_b.recv_kind("message").await;
        seen.push(message["offset"].as_u64().unwrap());
    }
    assert_eq!(seen, offsets);
    // No message twice (late broadcasts from the loop above may still come).
    while let Ok(frame) = tokio::time::timeout(Duration::from_millis(500), bob_on_b.recv()).await {
        assert_ne!(frame["type"], "message", "delivered twice: {frame}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_crosses_nodes_to_the_rooms_members_only() {
    let Some(redis) = shared_redis() else {
        return;
    };
    let prefix = test_prefix();
    let a = node(&redis, &prefix, "a").await;
    let b = node(&redis, &prefix, "b").await;
    let mut alice_on_a = WsClient::user(&a, "alice").await;
    let mut bob_on_b = WsClient::user(&b, "bob").await;
    let mut carol_on_b = WsClient::user(&b, "carol").await;
    alice_on_a.join("lobby").await;
    bob_on_b.join("lobby").await;
    carol_on_b.join("elsewhere").await;
    // A: broadcast, probe, alice, lobby; B: broadcast, probe, bob, carol, lobby,
    // elsewhere.
    subscriptions(&a, 4).await;
    subscriptions(&b, 6).await;

    alice_on_a
        .send(json!({"type": "typing", "room_id": "lobby"}))
        .await;
    let typing = bob_on_b.recv_kind("typing").await;
    assert_eq!(typing["from"], "alice", "{typing}");
    assert_eq!(typing["room_id"], "lobby");
    carol_on_b.assert_silent(Duration::from_millis(300)).await;

    // The last member on B leaves the room: B stops listening to it.
    bob_on_b
        .send(json!({"type": "leave", "room_id": "lobby"}))
        .await;
    subscriptions(&b, 5).await;
    forget(&redis, &prefix).await;
}

/// The room publish script on its own: two nodes publishing at once into one room get
/// consecutive offsets after the seed, one epoch, and Redis delivers and keeps them in
/// offset order.
#[actix_rt::test]
async fn room_offsets_are_atomic_ordered_and_kept_across_publishers() {
    use futures_util::StreamExt;
    use switchboard::actors::broker::{
        rooms::{parse_room_message, OpenRoom, PublishRoomMessage, ReadRoom},
        Broker,
    };
    let Some(redis) = shared_redis() else {
        return;
    };
    let prefix = test_prefix();
    let settings = switchboard::config::ClusterSettings {
        redis_url: Some(redis.clone()),
        prefix: prefix.clone(),
        ..Default::default()
    };
    let a = actix::Actor::start(Broker::connect(&settings, "a").await.unwrap());
    let b = actix::Actor::start(Broker::connect(&settings, "b").await.unwrap());
    let client = redis::Client::open(redis.as_str()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub
        .subscribe(format!("{prefix}:room:lobby"))
        .await
        .unwrap();
    let room = switchboard::domain::RoomId::parse("lobby").unwrap();

    let opened = a
        .send(OpenRoom {
            room: room.clone(),
            seed: 41,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        opened.offset, 41,
        "offsets continue after the database's last"
    );
    let again = b
        .send(OpenRoom {
            room: room.clone(),
            seed: 7,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, opened, "opening again changes nothing");

    let publishes = (0..200).map(|n| {
        let broker = if n % 2 == 0 { a.clone() } else { b.clone() };
        let room = room.clone();
        async move {
            broker
                .send(PublishRoomMessage {
                    room,
                    payload: format!("message {n}"),
                    seed: 0,
                })
                .await
                .unwrap()
                .unwrap()
        }
    });
    let positions = futures_util::future::join_all(publishes).await;
    let mut offsets: Vec<u64> = positions.iter().map(|p| p.offset).collect();
    offsets.sort_unstable();
    assert_eq!(offsets, (42..=241).collect::<Vec<_>>());
    assert!(positions.iter().all(|p| p.epoch == opened.epoch));

    let mut stream = pubsub.on_message();
    let mut delivered = Vec::new();
    while delivered.len() < 200 {
        let message = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("published messages arrive")
            .unwrap();
        let raw: String = message.get_payload().unwrap();
        let (offset, epoch, payload) = parse_room_message(&raw).unwrap();
        assert_eq!(epoch, opened.epoch);
        delivered.push((offset, payload.to_owned()));
    }
    let order: Vec<u64> = delivered.iter().map(|(o, _)| *o).collect();
    assert_eq!(
        order,
        (42..=241).collect::<Vec<_>>(),
        "one order: offset order"
    );

    let kept = a
        .send(ReadRoom {
            room: room.clone(),
            after: 41,
            upto: 241,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        kept, delivered,
        "the stream keeps what was delivered, in order"
    );
    let some = b
        .send(ReadRoom {
            room,
            after: 230,
            upto: 235,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        some.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        [231, 232, 233, 234, 235]
    );
    forget(&redis, &prefix).await;
}

/// Joins `room` and waits until its node's broker has subscribed to it (the join is
/// answered after the subscription, so this is at once).
async fn joined(client: &mut WsClient, room: &str) -> Value {
    let joined = client.join(room).await;
    assert!(joined["metadata"]["epoch"].is_string(), "{joined}");
    joined
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_message_reaches_every_node_once_with_one_offset() {
    let Some(redis) = shared_redis() else {
        return;
    };
    let prefix = test_prefix();
    let a = node(&redis, &prefix, "a").await;
    let b = node(&redis, &prefix, "b").await;
    let c = node(&redis, &prefix, "c").await;
    let mut alice = WsClient::user(&a, "alice").await;
    let mut bob = WsClient::user(&b, "bob").await;
    let mut carol = WsClient::user(&c, "carol").await;
    let first = joined(&mut alice, "lobby").await;
    let epoch = first["metadata"]["epoch"].clone();
    assert_eq!(joined(&mut bob, "lobby").await["metadata"]["epoch"], epoch);
    assert_eq!(
        joined(&mut carol, "lobby").await["metadata"]["epoch"],
        epoch
    );

    let acks = crate::history::post(&mut alice, "lobby", 3).await;
    assert_eq!(acks, [1, 2, 3], "offsets come from Redis, one room counter");
    for member in [&mut bob, &mut carol] {
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let message = member.recv_kind("message").await;
            assert_eq!(message["from"], "alice");
            seen.push(message["offset"].as_u64().unwrap());
        }
        assert_eq!(seen, [1, 2, 3]);
        member.assert_silent(Duration::from_millis(300)).await;
    }
    // The sender gets acks, not its own messages.
    alice.assert_silent(Duration::from_millis(300)).await;
    forget(&redis, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_on_different_nodes_are_seen_in_one_order_everywhere() {
    let Some(redis) = shared_redis() else {
        return;
    };
    let prefix = test_prefix();
    let a = node(&redis, &prefix, "a").await;
    let b = node(&redis, &prefix, "b").await;
    let c = node(&redis, &prefix, "c").await;
    let mut alice = WsClient::user(&a, "alice").await;
    let mut bob = WsClient::user(&b, "bob").await;
    let mut watchers = vec![
        WsClient::user(&a, "wa").await,
        WsClient::user(&b, "wb").await,
        WsClient::user(&c, "wc").await,
    ];
    for client in watchers.iter_mut().chain([&mut alice, &mut bob]) {
        joined(client, "race").await;
    }
    const EACH: usize = 40;
    for i in 0..EACH {
        alice
            .send(json!({"type": "message", "room_id": "race", "content": format!("a{i}")}))
            .await;
        bob.send(json!({"type": "message", "room_id": "race", "content": format!("b{i}")}))
            .await;
    }
    let mut orders = Vec::new();
    for watcher in &mut watchers {
        let mut order = Vec::new();
        while order.len() < 2 * EACH {
            let message = watcher.recv_kind("message").await;
            order.push((
                message["offset"].as_u64().unwrap(),
                message["content"].as_str().unwrap().to_owned(),
            ));
        }
        orders.push(order);
    }
    let offsets: Vec<u64> = orders[0].iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (1..=2 * EACH as u64).collect::<Vec<_>>());
    assert_eq!(orders[0], orders[1], "node A and node B saw one order");
    assert_eq!(orders[0], orders[2], "node A and node C saw one order");
    // Each publisher's own messages keep their order.
    let alices: Vec<&str> = orders[0]
        .iter()
        .filter(|(_, m)| m.starts_with('a'))
        .map(|(_, m)| m.as_str())
        .collect();
    assert_eq!(
        alices,
        (0..EACH).map(|i| format!("a{i}")).collect::<Vec<_>>()
    );
    forget(&redis, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_recovers_on_another_node_what_was_published_while_away() {
    let Some(redis) = shared_redis() else {
        return;
    };
    let prefix = test_prefix();
    let a = node(&redis, &prefix, "a").await;
    let b = node(&redis, &prefix, "b").await;
    let mut alice = WsClient::user(&a, "alice").await;
    joined(&mut alice, "lobby").await;
    let mut bob = WsClient::user(&b, "bob").await;
    joined(&mut bob, "lobby").await;
    crate::history::post(&mut alice, "lobby", 2).await;
    let seen = crate::history::next_offsets(&mut bob, 2).await;
    assert_eq!(seen, [1, 2]);
    drop(bob);

    // While Bob is away, Alice (on A) goes on.
    assert_eq!(
        crate::history::post(&mut alice, "lobby", 3).await,
        [3, 4, 5]
    );
    // Bob comes back on B: the three are replayed, then live traffic follows.
    let mut bob = WsClient::user(&b, "bob").await;
    let rejoined = crate::history::rejoin(&mut bob, "lobby", 2).await;
    assert_eq!(rejoined["metadata"]["recovered"], true, "{rejoined}");
    assert_eq!(rejoined["metadata"]["replayed"], 3, "{rejoined}");
    assert_eq!(rejoined["metadata"]["offset"], 5, "{rejoined}");
    assert_eq!(crate::history::next_offsets(&mut bob, 3).await, [3, 4, 5]);
    crate::history::post(&mut alice, "lobby", 1).await;
    assert_eq!(crate::history::next_offsets(&mut bob, 1).await, [6]);
    forget(&redis, &prefix).await;
}

/// A message whose publish Redis lost (kept in the stream, never delivered on the
/// channel): the next message's offset jumps, and the node reads the missing one from
/// the stream and relays it first — nothing is skipped, nothing is out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_lost_on_the_channel_is_read_from_the_stream_before_the_next() {
    let Some(redis) = shared_redis() else {
        return;
    };
    let prefix = test_prefix();
    let (_a, b, mut alice, mut bob) = alice_and_bob_in_the_lobby(&redis, &prefix).await;

    // Offset 2 reaches the stream, but its publish is "lost".
    let client = redis::Client::open(redis.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let wire = json!({
        "o": "", "id": "lost-1", "kind": "message", "sender": "ghost", "name": null,
        "content": "the lost one", "metadata": null, "at": chrono::Utc::now(),
    });
    let _: i64 = redis::cmd("HINCRBY")
        .arg(format!("{prefix}:room:lobby:meta"))
        .arg("o")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(format!("{prefix}:room:lobby:stream"))
        .arg("2-0")
        .arg("d")
        .arg(wire.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();

    assert_eq!(crate::history::post(&mut alice, "lobby", 1).await, [3]);
    let lost = bob.recv_kind("message").await;
    assert_eq!(lost["offset"], 2, "{lost}");
    assert_eq!(lost["content"], "the lost one");
    assert_eq!(crate::history::next_offsets(&mut bob, 1).await, [3]);
    let health = b.get_json("/health").await;
    assert_eq!(
        health["checks"]["hub:connections"][0]["stats"]["gaps"], 1,
        "{health}"
    );
    forget(&redis, &prefix).await;
}

/// The presence listing answers with the whole cluster's members.
async fn members(client: &mut WsClient, room: &str) -> Value {
    client
        .send(json!({"type": "presence", "room_id": room}))
        .await;
    loop {
        let frame = client.recv().await;
        if frame["type"] == "presence" && frame["content"] == "members" {
            return frame["metadata"].clone();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_cluster_wide_with_one_join_and_one_leave_per_user() {
    let Some(redis) = shared_redis() else {
        return;
    };
    let prefix = test_prefix();
    let a = node(&redis, &prefix, "a").await;
    let b = node(&redis, &prefix, "b").await;
    let mut alice = WsClient::user(&a, "alice").await;
    joined(&mut alice, "lobby").await;
    let mut bob_on_b = WsClient::user(&b, "bob").await;
    joined(&mut bob_on_b, "lobby").await;
    let event = alice.recv_kind("presence").await;
    assert_eq!(event["metadata"]["event"], "join", "{event}");
    assert_eq!(event["metadata"]["user_id"], "bob");

    // Bob's second session, on A: he is present already, nobody is told again.
    let mut bob_on_a = WsClient::user(&a, "bob").await;
    joined(&mut bob_on_a, "lobby").await;
    let listing = members(&mut alice, "lobby").await;
    assert_eq!(listing["count"], 2, "{listing}");
    assert_eq!(listing["members"][0]["user_id"], "alice");
    assert_eq!(listing["members"][1]["user_id"], "bob");
    assert_eq!(listing["members"][1]["sessions"], 2, "{listing}");

    // One of his sessions leaves: still present. The other: gone, and Alice is told.
    bob_on_b
        .send(json!({"type": "leave", "room_id": "lobby"}))
        .await;
    alice.assert_silent(Duration::from_millis(300)).await;
    bob_on_a
        .send(json!({"type": "leave", "room_id": "lobby"}))
        .await;
    let event = alice.recv_kind("presence").await;
    assert_eq!(event["metadata"]["event"], "leave", "{event}");
    assert_eq!(event["metadata"]["user_id"], "bob");
    let listing = members(&mut alice, "lobby").await;
    assert_eq!(listing["count"], 1, "{listing}");
    forget(&redis, &prefix).await;
}

/// A node killed with `kill -9`: a survivor notices within the node timeout, takes its
/// sessions out of presence and tells the rooms they left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_members_leave_within_the_node_timeout() {
    let Some(redis) = shared_redis() else {
        return;
    };
    let prefix = test_prefix();
    let a = node(&redis, &prefix, "a").await;
    let dir = tempfile::tempdir().unwrap();
    let mut command = crate::process::switchboard(dir.path());
    command.args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"]);
    command.args(["--database-url", "sqlite://b.db", "--redis-url", &redis]);
    command.args(["--cluster-prefix", &prefix, "--node-id", "b"]);
    command.args([
        "--cluster-heartbeat",
        "200ms",
        "--cluster-node-timeout",
        "2s",
    ]);
    command.args(["--jwt-secret", crate::helpers::TEST_JWT_SECRET]);
    let mut b = crate::process::Server::start(command);

    let mut alice = WsClient::user(&a, "alice").await;
    joined(&mut alice, "lobby").await;
    let mut bob = WsClient::user_at(&b.http_addr, "bob").await;
    joined(&mut bob, "lobby").await;
    let event = alice.recv_kind("presence").await;
    assert_eq!(event["metadata"]["event"], "join", "{event}");
    crate::history::post(&mut alice, "lobby", 1).await;
    assert_eq!(crate::history::next_offsets(&mut bob, 1).await, [1]);

    b.child.kill().unwrap(); // SIGKILL: no goodbye
    b.child.wait().unwrap();
    let killed = Instant::now();
    let event = alice.recv_kind("presence").await;
    assert_eq!(event["metadata"]["event"], "leave", "{event}");
    assert_eq!(event["metadata"]["user_id"], "bob");
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "noticed after {:?}",
        killed.elapsed()
    );
    assert_eq!(members(&mut alice, "lobby").await["count"], 1);
    cluster_until(&a, "counted the dead node", |check| {
        check["stats"]["reaped_nodes"] == 1 && check["stats"]["nodes"] == json!(["a"])
    })
    .await;

    // Bob's client reconnects to the surviving node and recovers what it missed.
    assert_eq!(crate::history::post(&mut alice, "lobby", 2).await, [2, 3]);
    let mut bob = WsClient::user(&a, "bob").await;
    let rejoined = crate::history::rejoin(&mut bob, "lobby", 1).await;
    assert_eq!(rejoined["metadata"]["recovered"], true, "{rejoined}");
    assert_eq!(crate::history::next_offsets(&mut bob, 2).await, [2, 3]);
    forget(&redis, &prefix).await;
}

/// The load tool publishes on one node and subscribes on others, and the cluster loses
/// nothing on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_tool_measures_delivery_across_nodes() {
    let Some(redis) = shared_redis() else {
        return;
    };
    let prefix = test_prefix();
    let mut nodes = Vec::new();
    for id in ["a", "b", "c"] {
        nodes.push(
            node_with(&redis, &prefix, id, |settings| {
                settings.rate_limit_per_second = 1e6;
                settings.rate_limit_burst = 1_000_000;
            })
            .await,
        );
    }
    let url = |app: &TestApp| format!("ws://{}/ws", app.http_addr);
    let json = crate::loadtool::bench(
        [
            "bench",
            "ws",
            "--url",
            &url(&nodes[2]),
            "--subscribe-url",
            &url(&nodes[0]),
            "--subscribe-url",
            &url(&nodes[1]),
            "--clients",
            "20",
            "--publishers",
            "1",
            "--rate",
            "40",
            "--duration",
            "1s",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await;
    assert_eq!(json["lost"], 0, "{json}");
    assert!(json["delivered"].as_u64().unwrap() > 0, "{json}");
    forget(&redis, &prefix).await;
}

/// The per-user session limit counts the sessions on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_limit_counts_every_nodes_sessions() {
    let Some(redis) = shared_redis() else {
        return;
    };
    let prefix = test_prefix();
    let mut apps = Vec::new();
    for id in ["a", "b"] {
        let limit = |settings: &mut Settings| settings.websocket.max_sessions_per_user = 2;
        apps.push(node_with(&redis, &prefix, id, limit).await);
    }
    let (a, b) = (&apps[0], &apps[1]);
    let _on_a = WsClient::user(a, "bob").await;
    let on_b = WsClient::user(b, "bob").await;
    let query = format!("?token={}", crate::ws_client::token("bob", None));
    let mut third = crate::ws_client::raw_connect(a, &query, &[]).await.unwrap();
    let close = crate::ws_client::read_until_close(&mut third).await;
    assert_eq!(u16::from(close.code), 1008, "{close:?}");
    assert!(close.reason.contains("too many sessions"), "{close:?}");

    // One ends on B: its place is free for a session on A.
    drop(on_b);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut next = crate::ws_client::raw_connect(a, &query, &[]).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(2), next.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(welcome)))) => {
                assert!(welcome.contains("session_id"), "{welcome}");
                break;
            }
            _ => {
                assert!(Instant::now() < deadline, "the place was never given back");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    forget(&redis, &prefix).await;
}

/// Puts a message into a room's stream and counter as a publish would, without
/// publishing it: what a node sees when Redis's publish never reached it.
async fn slip_in(redis: &str, prefix: &str, room: &str, offset: u64, content: &str, stream: bool) {
    let client = redis::Client::open(redis).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("HINCRBY")
        .arg(format!("{prefix}:room:{room}:meta"))
        .arg("o")
        .arg(1)
        .query_async(&mut conn)
        .await
        .unwrap();
    if stream {
        let wire = json!({
            "o": "", "id": format!("slipped-{offset}"), "kind": "message", "sender": "ghost",
            "name": null, "content": content, "metadata": null, "at": chrono::Utc::now(),
        });
        let _: String = redis::cmd("XADD")
            .arg(format!("{prefix}:room:{room}:stream"))
            .arg(format!("{offset}-0"))
            .arg("d")
            .arg(wire.to_string())
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

/// A gap nothing can fill (the stream and the database lack the message): the members
/// are told to re-sync, and what follows is relayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_nothing_can_fill_tells_the_members_to_resync() {
    let Some(redis) = shared_redis() else {
        return;
    };
    let prefix = test_prefix();
    let (_a, _b, mut alice, mut bob) = alice_and_bob_in_the_lobby(&redis, &prefix).await;
    slip_in(&redis, &prefix, "lobby", 2, "gone for good", false).await;
    assert_eq!(crate::history::post(&mut alice, "lobby", 1).await, [3]);
    let resync = bob.recv_kind("resync").await;
    assert_eq!(resync["metadata"]["missing"], 1, "{resync}");
    assert_eq!(resync["room_id"], "lobby");
    assert_eq!(crate::history::next_offsets(&mut bob, 1).await, [3]);
    forget(&redis, &prefix).await;
}

/// After the subscription connection is lost and comes back, a node looks for what was
/// published meanwhile — without waiting for the room's next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_lost_subscription_a_node_fetches_what_it_missed() {
    let Some(redis) = PrivateRedis::start() else {
        return;
    };
    let prefix = test_prefix();
    let a = node(&redis.url(), &prefix, "a").await;
    let mut alice = WsClient::user(&a, "alice").await;
    let mut bob = WsClient::user(&a, "bob").await;
    joined(&mut alice, "lobby").await;
    joined(&mut bob, "lobby").await;
    assert_eq!(crate::history::post(&mut alice, "lobby", 1).await, [1]);
    assert_eq!(crate::history::next_offsets(&mut bob, 1).await, [1]);
    // Published "while the connection was down": in the stream, never delivered.
    slip_in(&redis.url(), &prefix, "lobby", 2, "while away", true).await;
    let killed = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &redis.port.to_string(),
            "CLIENT",
            "KILL",
            "TYPE",
            "pubsub",
        ])
        .output()
        .unwrap();
    assert!(killed.status.success(), "{killed:?}");
    let missed = bob.recv_kind("message").await;
    assert_eq!(missed["offset"], 2, "{missed}");
    assert_eq!(missed["content"], "while away");
}

/// Nodes A and B, Alice on A and Bob on B in `lobby`, one message (offset 1) relayed.
async fn alice_and_bob_in_the_lobby(
    redis: &str,
    prefix: &str,
) -> (TestApp, TestApp, WsClient, WsClient) {
    let a = node(redis, prefix, "a").await;
    let b = node(redis, prefix, "b").await;
    let mut alice = WsClient::user(&a, "alice").await;
    let mut bob = WsClient::user(&b, "bob").await;
    joined(&mut alice, "lobby").await;
    joined(&mut bob, "lobby").await;
    assert_eq!(crate::history::post(&mut alice, "lobby", 1).await, [1]);
    assert_eq!(crate::history::next_offsets(&mut bob, 1).await, [1]);
    (a, b, alice, bob)
}

/// `GET /cluster` (admin): the nodes alive, with address, version and load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_endpoint_lists_the_nodes_alive_for_admins() {
    let Some(redis) = shared_redis() else {
        return;
    };
    let prefix = test_prefix();
    let a = node(&redis, &prefix, "a").await;
    let b = node(&redis, &prefix, "b").await;
    let _on_b = WsClient::user(&b, "bob").await;
    let url = a.url("/cluster");
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(a.http.get(&url).send().await.unwrap()), 401);
    let user = crate::ws_client::token("someone", None);
    assert_eq!(
        status(a.http.get(&url).bearer_auth(user).send().await.unwrap()),
        403
    );
    let admin = crate::ws_client::token("ops", Some("admin"));
    let deadline = Instant::now() + PATIENCE;
    let nodes = loop {
        let body: Value = a
            .http
            .get(&url)
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let nodes = body["nodes"].as_array().cloned().unwrap_or_default();
        if nodes.len() == 2 && nodes[1]["sessions"] == 1 {
            break nodes;
        }
        assert!(Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(nodes[0]["id"], "a");
    assert_eq!(nodes[0]["address"], a.http_addr.to_string());
    assert_eq!(nodes[1]["address"], b.http_addr.to_string());
    assert_eq!(nodes[1]["version"], env!("CARGO_PKG_VERSION"));
    assert!(nodes[1]["last_heartbeat"].is_string(), "{nodes:?}");

    // Not in a cluster: said plainly.
    let single = crate::helpers::spawn_app().await;
    let response = single
        .http
        .get(single.url("/cluster"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    forget(&redis, &prefix).await;
}
