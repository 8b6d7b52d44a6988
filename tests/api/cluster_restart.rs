//! Rolling restarts: three spawned nodes on one database and one Redis, each stopped with
//! SIGTERM and started again in turn while publishers and subscribers spread over them
//! keep going. Clients do what the chat page does: on close 1012 they reconnect to
//! another node and rejoin with `since_offset`.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::{
    helpers::TEST_JWT_SECRET,
    private_redis::{forget, shared_redis, test_prefix},
    process::{self, Server},
    ws_client::token,
};

const ROOM: &str = "restarts";
const PATIENCE: Duration = Duration::from_secs(60);

/// The nodes' HTTP addresses; `None` while a node is being restarted.
type Alive = Arc<Mutex<Vec<Option<String>>>>;

fn start_node(dir: &std::path::Path, redis: &str, prefix: &str, id: &str) -> Server {
    let mut command = process::switchboard(dir);
    command.args(["--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"]);
    command.args(["--database-url", "sqlite://shared.db", "--redis-url", redis]);
    command.args(["--cluster-prefix", prefix, "--node-id", id]);
    // Far longer than the test: leaves must come from the graceful stop, not the reaper.
    command.args([
        "--cluster-heartbeat",
        "200ms",
        "--cluster-node-timeout",
        "120s",
    ]);
    command.args(["--shutdown-timeout", "5s", "--jwt-secret", TEST_JWT_SECRET]);
    command.args(["--ws-rate", "1000", "--ws-burst", "1000"]);
    Server::start(command)
}

/// The first alive node from `from` on (round robin).
fn pick(alive: &Alive, from: usize) -> (usize, String) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let nodes = alive.lock().unwrap().clone();
        for step in 0..nodes.len() {
            let index = (from + step) % nodes.len();
            if let Some(addr) = &nodes[index] {
                return (index, addr.clone());
            }
        }
        assert!(Instant::now() < deadline, "no node alive");
        std::thread::sleep(Duration::from_millis(50));
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects as `user` to some alive node from `from` on, past the welcome; answers the
/// node's index. Refused or failed attempts move on to the next node.
async fn connect(alive: &Alive, from: usize, user: &str) -> (usize, Socket) {
    let deadline = Instant::now() + PATIENCE;
    let mut from = from;
    loop {
        assert!(Instant::now() < deadline, "{user} could not reconnect");
        let (index, addr) = pick(alive, from);
        let url = format!("ws://{addr}/ws?token={}", token(user, None));
        if let Ok(Ok((mut socket, _))) = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_tungstenite::connect_async(url),
        )
        .await
        {
            if let Ok(Some(Ok(Message::Text(welcome)))) =
                tokio::time::timeout(Duration::from_secs(5), socket.next()).await
            {
                let welcome: Value = serde_json::from_str(&welcome).unwrap();
                if welcome["type"] == "join" {
                    return (index, socket);
                }
            }
        }
        from = index + 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a subscriber saw: `(offset, content)` of every message, and how often it was
/// told 1012 and came back.
#[derive(Debug, Default)]
struct Seen {
    messages: Vec<(u64, String)>,
    restarts: usize,
}

/// Follows the room until the `end` message, reconnecting on 1012 and rejoining from
/// the last offset seen.
async fn subscribe(alive: Alive, start: usize, user: String) -> Seen {
    let mut seen = Seen::default();
    let mut from = start;
    loop {
        let (index, mut socket) = connect(&alive, from, &user).await;
        // From the room's start the first time (offset 0: everything).
        let since = seen.messages.last().map_or(0, |(o, _)| *o);
        let join =
            json!({ "type": "join", "room_id": ROOM, "metadata": { "since_offset": since } });
        socket.send(Message::text(join.to_string())).await.unwrap();
        loop {
            let frame = tokio::time::timeout(PATIENCE, socket.next())
                .await
                .unwrap_or_else(|_| panic!("{user}: nothing for a minute after {seen:?}"));
            match frame {
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    if frame["type"] == "join" && frame["room_id"] == ROOM {
                        assert_ne!(frame["metadata"]["recovered"], false, "{user}: {frame}");
                    }
                    if frame["type"] == "resync" {
                        panic!("{user}: told to re-sync: {frame}");
                    }
                    if frame["type"] != "message" {
                        continue;
                    }
                    let offset = frame["offset"].as_u64().unwrap();
                    let content = frame["content"].as_str().unwrap().to_owned();
                    let expected = seen.messages.last().map_or(offset, |(o, _)| o + 1);
                    assert_eq!(offset, expected, "{user}: a gap or a duplicate");
                    seen.messages.push((offset, content.clone()));
                    if content == "end" {
                        return seen;
                    }
                }
                Some(Ok(Message::Close(Some(close)))) => {
                    assert_eq!(u16::from(close.code), 1012, "{user}: {close:?}");
                    assert_eq!(close.reason.as_str(), "service restart");
                    seen.restarts += 1;
                    break;
                }
                Some(Ok(_)) => {}
                other => panic!("{user}: the connection failed without 1012: {other:?}"),
            }
        }
        from = index + 1;
    }
}

/// Publishes paced messages until `stop`, moving to another node on 1012; answers the
/// contents that were acknowledged.
async fn publish(
    alive: Alive,
    start: usize,
    user: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<String> {
    let mut acked = Vec::new();
    let mut from = start;
    let mut n = 0;
    'reconnect: while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let (index, mut socket) = connect(&alive, from, &user).await;
        from = index + 1;
        let join = json!({ "type": "join", "room_id": ROOM });
        if socket.send(Message::text(join.to_string())).await.is_err() {
            continue 'reconnect;
        }
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            n += 1;
            let content = format!("{user}-{n}");
            let message = json!({ "type": "message", "room_id": ROOM, "content": content });
            if socket
                .send(Message::text(message.to_string()))
                .await
                .is_err()
            {
                continue 'reconnect;
            }
            loop {
                match tokio::time::timeout(PATIENCE, socket.next()).await.unwrap() {
                    Some(Ok(Message::Text(text))) => {
                        let frame: Value = serde_json::from_str(&text).unwrap();
                        if frame["type"] == "ack" {
                            acked.push(content);
                            break;
                        }
                        // Refused (e.g. the node is stopping): not acked, not retried.
                        if frame["type"] == "error" {
                            break;
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => continue 'reconnect,
                    Some(Ok(_)) => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    acked
}

/// Reads `socket` until a presence event of `kind` for `user`.
async fn presence(socket: &mut Socket, kind: &str, user: &str) {
    loop {
        let frame = tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("a presence event in time");
        if let Some(Ok(Message::Text(text))) = frame {
            let frame: Value = serde_json::from_str(&text).unwrap();
            if frame["type"] == "presence"
                && frame["metadata"]["event"] == kind
                && frame["metadata"]["user_id"] == user
            {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_three_nodes_loses_and_repeats_nothing() {
    let Some(redis) = shared_redis() else {
        return;
    };
    let prefix = test_prefix();
    let dir = tempfile::tempdir().unwrap();
    let ids = ["a", "b", "c"];
    // One at a time: the first migrates the database.
    let mut servers: Vec<Server> = ids
        .iter()
        .map(|id| start_node(dir.path(), &redis, &prefix, id))
        .collect();
    let alive: Alive = Arc::new(Mutex::new(
        servers.iter().map(|s| Some(s.http_addr.clone())).collect(),
    ));

    // A watcher on a sees a lone member of c leave as soon as c stops.
    let (_, mut watcher) = connect(&alive, 0, "watcher").await;
    let join = json!({ "type": "join", "room_id": "lobby" });
    watcher.send(Message::text(join.to_string())).await.unwrap();
    let (_, mut lone) = connect(&alive, 2, "lone").await;
    lone.send(Message::text(join.to_string())).await.unwrap();
    presence(&mut watcher, "join", "lone").await;

    let subscribers: Vec<_> = (0..3)
        .map(|i| tokio::spawn(subscribe(alive.clone(), i, format!("sub{i}"))))
        .collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publishers: Vec<_> = (0..3)
        .map(|i| {
            tokio::spawn(publish(
                alive.clone(),
                i + 1,
                format!("pub{i}"),
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    for index in [2, 0, 1] {
        alive.lock().unwrap()[index] = None;
        servers[index].signal("TERM");
        let stopped = Instant::now();
        if index == 2 {
            presence(&mut watcher, "leave", "lone").await;
            assert!(
                stopped.elapsed() < Duration::from_secs(15),
                "the leave came {:?} after SIGTERM (node timeout 120s)",
                stopped.elapsed()
            );
            drop(watcher);
            watcher = connect(&alive, 1, "watcher").await.1;
        }
        let status = process::wait_within(&mut servers[index].child, Duration::from_secs(30));
        assert!(status.success(), "node {} exited with {status}", ids[index]);
        let mut left = false;
        while let Ok(line) = servers[index].lines.recv_timeout(Duration::from_secs(5)) {
            left |= line.contains("left the cluster");
        }
        assert!(
            left,
            "node {} did not leave the cluster cleanly",
            ids[index]
        );
        servers[index] = start_node(dir.path(), &redis, &prefix, ids[index]);
        alive.lock().unwrap()[index] = Some(servers[index].http_addr.clone());
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    drop(watcher);

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for publisher in publishers {
        acked.extend(publisher.await.unwrap());
    }
    let (_, mut last) = connect(&alive, 0, "closer").await;
    let join = json!({ "type": "join", "room_id": ROOM });
    last.send(Message::text(join.to_string())).await.unwrap();
    let end = json!({ "type": "message", "room_id": ROOM, "content": "end" });
    last.send(Message::text(end.to_string())).await.unwrap();

    let mut histories = Vec::new();
    for subscriber in subscribers {
        histories.push(subscriber.await.unwrap());
    }
    let first = &histories[0].messages;
    for (i, seen) in histories.iter().enumerate() {
        assert_eq!(&seen.messages, first, "sub{i} saw another story");
        assert!(
            seen.restarts >= 1,
            "sub{i} was never restarted: {}",
            seen.restarts
        );
    }
    assert_eq!(first[0].0, 1, "from the room's first offset");
    for content in &acked {
        let copies = first.iter().filter(|(_, c)| c == content).count();
        assert_eq!(copies, 1, "{content} seen {copies} times");
    }
    assert!(
        acked.len() > 50,
        "only {} messages were acknowledged",
        acked.len()
    );
    eprintln!(
        "rolling restart: {} messages acknowledged, {} delivered to each of 3 subscribers, \
         restarts seen per subscriber: {:?}",
        acked.len(),
        first.len(),
        histories.iter().map(|h| h.restarts).collect::<Vec<_>>()
    );
    drop(servers);
    forget(&redis, &prefix).await;
}
