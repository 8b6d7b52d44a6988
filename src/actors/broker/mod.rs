//! The `Broker`: this node's link to the other nodes of a cluster, through Redis.
//!
//! It owns the Redis connections (commands on one multiplexed connection that reconnects
//! by itself, with back-off) and the node's membership: every `--cluster-heartbeat` it
//! records itself in a sorted set of nodes scored by the time it was last heard from,
//! measures Redis's latency, and reads which nodes are alive (heard from within
//! `--cluster-node-timeout`). `/readyz` and `/health` ask it how Redis is doing.
//!
//! Keys live under `<prefix>:` (`--cluster-prefix`), so deployments and tests can share
//! one Redis.
//!
//! Subscriptions live on a connection of their own (RESP3, resubscribed automatically
//! after a reconnect). Its push messages go through a bounded queue into this actor
//! (never blocking the connection; an overflow is counted) and on to the hub: private
//! messages on a channel per user (`<prefix>:user:<id>`, subscribed while the user has a
//! session on this node) and broadcasts on `<prefix>:broadcast`. User changes travel on
//! `<prefix>:users` (see [`users`]).

pub mod leave;
pub mod presence;
pub mod rooms;
pub mod users;

pub use leave::LeaveCluster;
pub use users::{AttachEvents, ClaimKey, PublishUsers, SettleKey};

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use actix::prelude::*;
use std::collections::HashSet;

use bytestring::ByteString;
use redis::{
    aio::{ConnectionManager, ConnectionManagerConfig},
    IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind,
};
use serde::{Deserialize, Serialize};

use crate::{
    actors::hub::{Hub, RemoteBroadcast, RemotePrivate, RemoteRoomFrame, RemoteRoomMessage},
    chat::SessionId,
    config::ClusterSettings,
    domain::RoomId,
};

/// How long after losing the subscription connection the hub checks its rooms for
/// messages published meanwhile (the connection reconnects and resubscribes first).
const RECHECK_AFTER: Duration = Duration::from_secs(2);

/// How long a room without members stays subscribed.
const UNSUBSCRIBE_DELAY: Duration = Duration::from_secs(1);

/// Push messages waiting for the broker, at most; more are dropped and counted.
const PUSH_QUEUE: usize = 65_536;

/// A Redis command that takes longer than this counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach Redis at {url}: {source}")]
pub struct BrokerError {
    url: String,
    #[source]
    source: redis::RedisError,
}

/// How this node sees the cluster.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BrokerStats {
    /// This node's id.
    pub node: String,
    /// The key prefix.
    pub prefix: String,
    /// Whether the last heartbeat reached Redis.
    pub connected: bool,
    /// Round trip of the last heartbeat's `PING`, in milliseconds.
    pub latency_ms: Option<f64>,
    /// Nodes heard from within the node timeout (this one included), sorted.
    pub nodes: Vec<String>,
    /// Why the last heartbeat failed, while it fails.
    pub error: Option<String>,
    /// Heartbeats that failed, since start.
    pub failed_heartbeats: u64,
    /// Channels this node is subscribed to.
    pub subscriptions: usize,
    /// Messages published by this node.
    pub published: u64,
    /// Messages received from Redis.
    pub received: u64,
    /// Push messages dropped because the broker was too far behind.
    pub dropped: u64,
    /// Times the subscription connection was lost (and restored).
    pub disconnections: u64,
    /// Round trip of the last self-probe through the subscription connection, in ms.
    pub probe_ms: Option<f64>,
    /// Self-probes that came back, since start.
    pub probes_returned: u64,
    /// Dead nodes whose presence this node took out (with leave events).
    pub reaped_nodes: u64,
    /// Times the subscription connection was replaced because it stopped delivering
    /// (its probe did not come back) while Redis answered.
    pub subscriber_restarts: u64,
    /// User updates and deletions answered before every node confirmed its cache
    /// forgot the user.
    pub invalidation_timeouts: u64,
}

/// The broker actor. One per node, in cluster mode only.
pub struct Broker {
    commands: ConnectionManager,
    subscriber: ConnectionManager,
    /// What a replacement subscription connection is opened with.
    subscriber_client: redis::Client,
    subscriber_config: ConnectionManagerConfig,
    /// The self-probe in flight: its number and when it was published.
    probe_sent: Option<(u64, Instant)>,
    probes: u64,
    restarting: bool,
    pushes: Option<tokio::sync::mpsc::Receiver<PushInfo>>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    settings: ClusterSettings,
    stats: BrokerStats,
    beating: bool,
    hub: Option<Addr<Hub>>,
    /// Where user changes from other nodes go.
    events: Option<Addr<crate::actors::events::Events>>,
    /// User changes waiting for the other nodes' acknowledgements.
    acks: users::Acks,
    /// Presence changes and place releases under way.
    in_flight: usize,
    /// Who waits for them to settle ([`LeaveCluster`]).
    settled: Vec<tokio::sync::oneshot::Sender<()>>,
    /// Set by [`LeaveCluster`]: no more heartbeats.
    leaving: bool,
    /// Users this node wants to hear about (it has a session of theirs).
    users: HashSet<Arc<str>>,
    /// Rooms this node wants to hear about (it has a member in them).
    rooms: HashSet<RoomId>,
    /// Rooms with more users announce no joins and leaves (`--ws-presence-limit`).
    presence_limit: usize,
    /// This node's HTTP address, for `GET /cluster`.
    address: Option<String>,
    started_at: chrono::DateTime<chrono::Utc>,
}

/// Hands push messages to the broker without ever blocking the connection.
struct Pushes {
    queue: tokio::sync::mpsc::Sender<PushInfo>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
}

impl redis::aio::AsyncPushSender for Pushes {
    fn send(&self, info: PushInfo) -> Result<(), redis::aio::SendError> {
        match self.queue.try_send(info) {
            Ok(()) => Ok(()),
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => Err(redis::aio::SendError),
        }
    }
}

/// What travels on the private and broadcast channels: the frame, and the session that
/// sent it (which does not get it back). On a node's own channel: a self-probe, or an
/// acknowledgement (`o` = `ack`).
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    /// The sending session.
    o: String,
    /// The encoded frame.
    f: String,
}

impl Broker {
    /// Connects to Redis (failing within a few seconds when it does not answer).
    pub async fn connect(settings: &ClusterSettings, node: &str) -> Result<Self, BrokerError> {
        let url = settings.redis_url.clone().unwrap_or_default();
        let error = |source| BrokerError {
            url: url.clone(),
            source,
        };
        let client = redis::Client::open(url.as_str()).map_err(error)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_max_delay(Duration::from_secs(2));
        let commands = client
            .get_connection_manager_with_config(config.clone())
            .await
            .map_err(error)?;
        let info = url.as_str().into_connection_info().map_err(error)?;
        let resp3 = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let subscriber_client =
            redis::Client::open(info.set_redis_settings(resp3)).map_err(error)?;
        let (queue, pushes) = tokio::sync::mpsc::channel(PUSH_QUEUE);
        let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let subscriber_config = config
            .set_push_sender(Pushes {
                queue,
                dropped: dropped.clone(),
            })
            .set_automatic_resubscription();
        let subscriber = subscriber_client
            .get_connection_manager_with_config(subscriber_config.clone())
            .await
            .map_err(error)?;
        Ok(Self {
            commands,
            subscriber,
            subscriber_client,
            subscriber_config,
            probe_sent: None,
            probes: 0,
            restarting: false,
            pushes: Some(pushes),
            dropped,
            hub: None,
            events: None,
            acks: users::Acks::default(),
            in_flight: 0,
            settled: Vec::new(),
            leaving: false,
            users: HashSet::new(),
            rooms: HashSet::new(),
            presence_limit: crate::actors::hub::DEFAULT_PRESENCE_LIMIT,
            address: None,
            started_at: chrono::Utc::now(),
            settings: settings.clone(),
            stats: BrokerStats {
                node: node.to_owned(),
                prefix: settings.prefix.clone(),
                // Both connections were just made: ready before the first heartbeat.
                connected: true,
                ..BrokerStats::default()
            },
            beating: false,
        })
    }

    /// The broker's command connection (multiplexed, reconnecting), for a front door
    /// that talks to Redis on every request without going through the actor (the
    /// cluster-wide rate limiter).
    pub fn commands(&self) -> ConnectionManager {
        self.commands.clone()
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.settings.prefix)
    }

    /// Rooms with more users than `limit` announce no joins and leaves.
    pub fn with_presence_limit(mut self, limit: usize) -> Self {
        self.presence_limit = limit;
        self
    }

    /// This node's HTTP address, shown by `GET /cluster`.
    pub fn with_address(mut self, address: std::net::SocketAddr) -> Self {
        self.address = Some(address.to_string());
        self
    }

    /// Publishes what `GET /cluster` shows of this node (kept two node timeouts).
    fn announce(&mut self, ctx: &mut Context<Self>) {
        let key = self.key(&format!("node:{}:info", self.stats.node));
        let ttl = (self.settings.node_timeout * 2).as_millis() as u64;
        let (mut redis, hub) = (self.commands.clone(), self.hub.clone());
        let base = serde_json::json!({
            "id": self.stats.node,
            "address": self.address,
            "version": env!("CARGO_PKG_VERSION"),
            "started_at": self.started_at.to_rfc3339(),
        });
        ctx.spawn(
            async move {
                let stats = match hub {
                    Some(hub) => hub.send(crate::actors::hub::GetStats).await.ok(),
                    None => None,
                };
                let mut info = base;
                info["sessions"] = serde_json::json!(stats.as_ref().map(|s| s.sessions));
                info["rooms"] = serde_json::json!(stats.as_ref().map(|s| s.rooms));
                let _: Result<(), _> = redis::cmd("SET")
                    .arg(key)
                    .arg(info.to_string())
                    .arg("PX")
                    .arg(ttl)
                    .query_async(&mut redis)
                    .await;
            }
            .into_actor(self),
        );
    }
}

impl Actor for Broker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::info!(node = %self.stats.node, prefix = %self.settings.prefix, "cluster node started");
        if let Some(pushes) = self.pushes.take() {
            ctx.add_stream(futures_util::stream::unfold(
                pushes,
                |mut pushes| async move { pushes.recv().await.map(|push| (push, pushes)) },
            ));
        }
        self.subscribe_all(ctx);
        ctx.notify(Heartbeat);
        ctx.run_interval(self.settings.heartbeat, |_, ctx| ctx.notify(Heartbeat));
    }
}

/// Announce this node, measure Redis, read the live nodes.
#[derive(Debug, Message)]
#[rtype(result = "()")]
struct Heartbeat;

/// The broker's view of the cluster.
#[derive(Debug, Message)]
#[rtype(result = "BrokerStats")]
pub struct GetBrokerStats;

/// What one heartbeat found.
struct Beat {
    latency: Duration,
    nodes: Vec<String>,
    /// Dead nodes whose presence this node took out.
    reaped: Vec<(String, usize)>,
}

async fn beat(
    mut redis: ConnectionManager,
    prefix: String,
    node: String,
    timeout: Duration,
    limit: usize,
) -> Result<Beat, redis::RedisError> {
    let nodes_key = format!("{prefix}:nodes");
    let started = Instant::now();
    let _: String = redis::cmd("PING").query_async(&mut redis).await?;
    let latency = started.elapsed();
    let now = chrono::Utc::now().timestamp_millis();
    let alive_since = now - i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
    let _: i64 = redis::cmd("ZADD")
        .arg(&nodes_key)
        .arg(now)
        .arg(&node)
        .query_async(&mut redis)
        .await?;
    // Nodes gone for ten timeouts are forgotten for good (the set stays small).
    let _: i64 = redis::cmd("ZREMRANGEBYSCORE")
        .arg(&nodes_key)
        .arg("-inf")
        .arg(now - 10 * (now - alive_since))
        .query_async(&mut redis)
        .await?;
    let nodes: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(&nodes_key)
        .arg(alive_since)
        .arg("+inf")
        .query_async(&mut redis)
        .await?;
    let mut nodes = nodes;
    nodes.sort();
    // Nodes not heard from for the timeout are dead: one survivor (by a lock) takes
    // their sessions out of the rooms' presence, publishing the leave events.
    let dead: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(&nodes_key)
        .arg("-inf")
        .arg(format!("({alive_since}"))
        .query_async(&mut redis)
        .await?;
    let mut reaped = Vec::new();
    for dead in dead.into_iter().filter(|d| *d != node) {
        let locked: Option<String> = redis::cmd("SET")
            .arg(format!("{prefix}:reaping:{dead}"))
            .arg(&node)
            .arg("NX")
            .arg("EX")
            .arg(60)
            .query_async(&mut redis)
            .await?;
        if locked.is_none() {
            continue;
        }
        let leave = |room: &RoomId, user: &str, name: Option<&str>| {
            crate::actors::hub::presence_event(room, "leave", user, name)
                .encode()
                .to_string()
        };
        let reaped_presence =
            presence::reap(redis.clone(), prefix.clone(), dead.clone(), limit, leave).await;
        if let Err(error) = presence::reap_sessions(redis.clone(), &prefix, &dead).await {
            tracing::warn!(%error, %dead, "could not give a dead node's session places back");
        }
        match reaped_presence {
            Ok(count) => {
                let _: i64 = redis::cmd("ZREM")
                    .arg(&nodes_key)
                    .arg(&dead)
                    .query_async(&mut redis)
                    .await?;
                reaped.push((dead, count));
            }
            Err(error) => {
                tracing::warn!(%error, %dead, "could not take a dead node's presence out")
            }
        }
    }
    Ok(Beat {
        latency,
        nodes,
        reaped,
    })
}

impl Handler<Heartbeat> for Broker {
    type Result = ();

    fn handle(&mut self, _msg: Heartbeat, ctx: &mut Self::Context) {
        if self.leaving {
            return;
        }
        self.probe(ctx);
        self.announce(ctx);
        if self.beating {
            return;
        }
        self.beating = true;
        let work = beat(
            self.commands.clone(),
            self.settings.prefix.clone(),
            self.stats.node.clone(),
            self.settings.node_timeout,
            self.presence_limit,
        );
        let deadline = self.settings.heartbeat.max(RESPONSE_TIMEOUT);
        ctx.spawn(
            async move {
                tokio::time::timeout(deadline, work)
                    .await
                    .unwrap_or_else(|_| {
                        Err(redis::RedisError::from(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the heartbeat timed out",
                        )))
                    })
            }
            .into_actor(self)
            .map(|result, this, _ctx| {
                this.beating = false;
                match result {
                    Ok(beat) => {
                        if !this.stats.connected {
                            tracing::info!(nodes = ?beat.nodes, "Redis reachable");
                        }
                        this.stats.connected = true;
                        this.stats.error = None;
                        this.stats.latency_ms = Some(beat.latency.as_secs_f64() * 1e3);
                        this.stats.nodes = beat.nodes;
                        for (dead, sessions) in beat.reaped {
                            tracing::warn!(%dead, sessions, "a dead node's presence was taken out");
                            this.stats.reaped_nodes += 1;
                        }
                    }
                    Err(error) => {
                        if this.stats.connected || this.stats.failed_heartbeats == 0 {
                            tracing::warn!(%error, "Redis unreachable; retrying");
                        }
                        this.stats.connected = false;
                        this.stats.failed_heartbeats += 1;
                        this.stats.latency_ms = None;
                        this.stats.error = Some(error.to_string());
                    }
                }
            }),
        );
    }
}

impl Handler<GetBrokerStats> for Broker {
    type Result = MessageResult<GetBrokerStats>;

    fn handle(&mut self, _msg: GetBrokerStats, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(BrokerStats {
            dropped: self.dropped.load(std::sync::atomic::Ordering::Relaxed),
            ..self.stats.clone()
        })
    }
}

impl Broker {
    /// Subscribes to `channel`, trying again every second while Redis refuses (the
    /// connection resubscribes by itself after a reconnect once subscribed).
    fn subscribe(&mut self, channel: String, ctx: &mut Context<Self>) {
        let mut subscriber = self.subscriber.clone();
        let target = channel.clone();
        ctx.spawn(
            async move { subscriber.subscribe(&target).await }
                .into_actor(self)
                .map(move |result, this, ctx| match result {
                    Ok(()) => this.stats.subscriptions += 1,
                    Err(error) => {
                        tracing::debug!(%error, %channel, "subscribe failed; retrying");
                        ctx.run_later(Duration::from_secs(1), move |this, ctx| {
                            if this.wanted(&channel) {
                                this.subscribe(channel, ctx);
                            }
                        });
                    }
                }),
        );
    }

    fn unsubscribe(&mut self, channel: String, ctx: &mut Context<Self>) {
        let mut subscriber = self.subscriber.clone();
        ctx.spawn(
            async move { subscriber.unsubscribe(&channel).await }
                .into_actor(self)
                .map(|result, this, _ctx| {
                    if result.is_ok() {
                        this.stats.subscriptions = this.stats.subscriptions.saturating_sub(1);
                    }
                }),
        );
    }

    /// Subscribes to every channel this node wants (at start, and on a new subscription
    /// connection).
    fn subscribe_all(&mut self, ctx: &mut Context<Self>) {
        self.stats.subscriptions = 0;
        let mut channels = vec![self.key("broadcast"), self.probe_channel()];
        channels.extend(self.users.iter().map(|user| self.user_channel(user)));
        channels.extend(self.rooms.iter().map(|room| self.room_channel(room)));
        for channel in channels {
            self.subscribe(channel, ctx);
        }
    }

    fn probe_channel(&self) -> String {
        self.node_channel(&self.stats.node)
    }

    /// Node `node`'s own channel: its self-probes and the acknowledgements it waits for.
    fn node_channel(&self, node: &str) -> String {
        self.key(&format!("probe:{node}"))
    }

    /// The self-probe: a message to this node's own channel every heartbeat. One that
    /// has not come back after three heartbeats while Redis answers means the
    /// subscription connection stopped delivering without failing (it happens): it is
    /// replaced, and everything is subscribed again.
    fn probe(&mut self, ctx: &mut Context<Self>) {
        if let Some((_, sent)) = self.probe_sent {
            if sent.elapsed() < self.settings.heartbeat * 3 {
                return;
            }
            if self.stats.connected && !self.restarting {
                self.restart_subscriber(ctx);
            }
            self.probe_sent = None;
            return;
        }
        self.probes += 1;
        let seq = self.probes;
        self.probe_sent = Some((seq, Instant::now()));
        let payload = serde_json::to_string(&Envelope {
            o: String::new(),
            f: seq.to_string(),
        })
        .unwrap_or_default();
        let (redis, channel) = (self.commands.clone(), self.probe_channel());
        ctx.spawn(
            async move { publish(redis, channel, payload).await }
                .into_actor(self)
                .map(move |result, this, _ctx| {
                    // Not sent (Redis away): nothing to wait for.
                    if result.is_err() && this.probe_sent.is_some_and(|(s, _)| s == seq) {
                        this.probe_sent = None;
                    }
                }),
        );
    }

    fn restart_subscriber(&mut self, ctx: &mut Context<Self>) {
        self.restarting = true;
        self.stats.subscriber_restarts += 1;
        tracing::error!("the Redis subscription connection stopped delivering; replacing it");
        if let Some(events) = &self.events {
            events.do_send(crate::actors::events::ClusterLinkLost);
        }
        let (client, config) = (
            self.subscriber_client.clone(),
            self.subscriber_config.clone(),
        );
        ctx.spawn(
            async move { client.get_connection_manager_with_config(config).await }
                .into_actor(self)
                .map(|result, this, ctx| {
                    this.restarting = false;
                    match result {
                        Ok(subscriber) => {
                            this.subscriber = subscriber;
                            this.subscribe_all(ctx);
                            this.relink(ctx);
                            ctx.run_later(RECHECK_AFTER, |this, _ctx| {
                                if let Some(hub) = &this.hub {
                                    hub.do_send(crate::actors::hub::CheckRooms);
                                }
                            });
                        }
                        Err(error) => {
                            tracing::warn!(%error, "could not open a new subscription connection")
                        }
                    }
                }),
        );
    }

    /// Whether this node still wants `channel`.
    fn wanted(&self, channel: &str) -> bool {
        if channel == self.key("broadcast") || channel == self.probe_channel() {
            return true;
        }
        if let Some(room) = channel.strip_prefix(&self.key("room:")) {
            return RoomId::parse(room).is_ok_and(|room| self.rooms.contains(&room));
        }
        channel
            .strip_prefix(&self.key("user:"))
            .is_some_and(|user| self.users.contains(user))
    }

    fn room_channel(&self, room: &RoomId) -> String {
        self.key(&format!("room:{room}"))
    }

    fn user_channel(&self, user: &str) -> String {
        self.key(&format!("user:{user}"))
    }
}

/// Where the broker hands what arrives from other nodes.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct AttachHub(pub Addr<Hub>);

impl Handler<AttachHub> for Broker {
    type Result = ();

    fn handle(&mut self, msg: AttachHub, _ctx: &mut Self::Context) {
        self.hub = Some(msg.0);
    }
}

/// The hub has a session of `user` (its first): hear about messages to that user.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct SubscribeUser(pub Arc<str>);

/// The hub's last session of `user` ended.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct UnsubscribeUser(pub Arc<str>);

impl Handler<SubscribeUser> for Broker {
    type Result = ();

    fn handle(&mut self, msg: SubscribeUser, ctx: &mut Self::Context) {
        let channel = self.user_channel(&msg.0);
        if self.users.insert(msg.0) {
            self.subscribe(channel, ctx);
        }
    }
}

impl Handler<UnsubscribeUser> for Broker {
    type Result = ();

    fn handle(&mut self, msg: UnsubscribeUser, ctx: &mut Self::Context) {
        if self.users.remove(&msg.0) {
            let channel = self.user_channel(&msg.0);
            self.unsubscribe(channel, ctx);
        }
    }
}

/// The hub has a member in `room` (its first): hear about the room.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct SubscribeRoom(pub RoomId);

/// The hub's last member of the room left.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct UnsubscribeRoom(pub RoomId);

impl Handler<SubscribeRoom> for Broker {
    type Result = ();

    fn handle(&mut self, msg: SubscribeRoom, ctx: &mut Self::Context) {
        let channel = self.room_channel(&msg.0);
        if self.rooms.insert(msg.0) {
            self.subscribe(channel, ctx);
        }
    }
}

impl Handler<UnsubscribeRoom> for Broker {
    type Result = ();

    fn handle(&mut self, msg: UnsubscribeRoom, ctx: &mut Self::Context) {
        // A little later, unless a member came back meanwhile: a room left and joined
        // again at once keeps its subscription (and no unsubscribe can overtake the new
        // subscribe on the connection).
        if self.rooms.remove(&msg.0) {
            let room = msg.0;
            ctx.run_later(UNSUBSCRIBE_DELAY, move |this, ctx| {
                if !this.rooms.contains(&room) {
                    let channel = this.room_channel(&room);
                    this.unsubscribe(channel, ctx);
                }
            });
        }
    }
}

/// Subscribe to `room` now, answering once Redis has confirmed (a room's numbering is
/// read only after this, so no message published later is missed).
#[derive(Debug, Message)]
#[rtype(result = "Result<(), ClusterUnavailable>")]
pub struct SubscribeRoomNow(pub RoomId);

impl Handler<SubscribeRoomNow> for Broker {
    type Result = ResponseActFuture<Self, Result<(), ClusterUnavailable>>;

    fn handle(&mut self, msg: SubscribeRoomNow, _ctx: &mut Self::Context) -> Self::Result {
        let channel = self.room_channel(&msg.0);
        let room = msg.0.clone();
        let fresh = self.rooms.insert(msg.0);
        let mut subscriber = self.subscriber.clone();
        Box::pin(
            async move { subscriber.subscribe(&channel).await }
                .into_actor(self)
                .map(move |result, this, _ctx| match result {
                    Ok(()) => {
                        if fresh {
                            this.stats.subscriptions += 1;
                        }
                        Ok(())
                    }
                    Err(error) => {
                        if fresh {
                            this.rooms.remove(&room);
                        }
                        Err(ClusterUnavailable(error.to_string()))
                    }
                }),
        )
    }
}

/// Publish an unnumbered, unstored frame (typing) to a room's members on every node;
/// lost when Redis is away (it is ephemeral).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct PublishRoomFrame {
    /// The room.
    pub room: RoomId,
    /// The sending session.
    pub origin: SessionId,
    /// The encoded frame.
    pub frame: ByteString,
}

impl Handler<PublishRoomFrame> for Broker {
    type Result = ();

    fn handle(&mut self, msg: PublishRoomFrame, ctx: &mut Self::Context) {
        self.stats.published += 1;
        let channel = self.room_channel(&msg.room);
        let payload = envelope(msg.origin, &msg.frame);
        let redis = self.commands.clone();
        ctx.spawn(
            async move {
                let _ = publish(redis, channel, payload).await;
            }
            .into_actor(self),
        );
    }
}

/// Why a publish did not go out.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the cluster is unavailable ({0}); nothing was sent, try again")]
pub struct ClusterUnavailable(pub String);

/// Publish a private message to `to` on every node; answers how many nodes have a
/// session of `to` (0: the user is not connected anywhere).
#[derive(Debug, Message)]
#[rtype(result = "Result<u64, ClusterUnavailable>")]
pub struct PublishPrivate {
    /// The addressee.
    pub to: String,
    /// The sending session (it does not get the message back).
    pub origin: SessionId,
    /// The encoded frame.
    pub frame: ByteString,
}

/// Publish a broadcast to every node.
#[derive(Debug, Message)]
#[rtype(result = "Result<(), ClusterUnavailable>")]
pub struct PublishBroadcast {
    /// The sending session.
    pub origin: SessionId,
    /// The encoded frame.
    pub frame: ByteString,
}

/// An envelope for `frame` (encoded) from `origin` (none: everybody gets it).
pub(crate) fn envelope_raw(origin: Option<SessionId>, frame: String) -> String {
    serde_json::to_string(&Envelope {
        o: origin.map(|o| o.to_string()).unwrap_or_default(),
        f: frame,
    })
    .unwrap_or_default()
}

fn envelope(origin: SessionId, frame: &ByteString) -> String {
    serde_json::to_string(&Envelope {
        o: origin.to_string(),
        f: frame.to_string(),
    })
    .unwrap_or_default()
}

async fn publish(
    mut redis: ConnectionManager,
    channel: String,
    payload: String,
) -> Result<u64, ClusterUnavailable> {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query_async(&mut redis)
        .await
        .map_err(|e| ClusterUnavailable(e.to_string()))
}

impl Handler<PublishPrivate> for Broker {
    type Result = ResponseFuture<Result<u64, ClusterUnavailable>>;

    fn handle(&mut self, msg: PublishPrivate, _ctx: &mut Self::Context) -> Self::Result {
        self.stats.published += 1;
        let channel = self.user_channel(&msg.to);
        let payload = envelope(msg.origin, &msg.frame);
        Box::pin(publish(self.commands.clone(), channel, payload))
    }
}

impl Handler<PublishBroadcast> for Broker {
    type Result = ResponseFuture<Result<(), ClusterUnavailable>>;

    fn handle(&mut self, msg: PublishBroadcast, _ctx: &mut Self::Context) -> Self::Result {
        self.stats.published += 1;
        let channel = self.key("broadcast");
        let payload = envelope(msg.origin, &msg.frame);
        let redis = self.commands.clone();
        Box::pin(async move { publish(redis, channel, payload).await.map(|_| ()) })
    }
}

impl StreamHandler<PushInfo> for Broker {
    fn handle(&mut self, push: PushInfo, ctx: &mut Self::Context) {
        match push.kind {
            PushKind::Message => {}
            PushKind::Disconnection => {
                self.stats.disconnections += 1;
                tracing::warn!(
                    "the subscription connection to Redis was lost; it reconnects and resubscribes"
                );
                self.link_lost(ctx);
                // Once it is back, the hub looks for what was published meanwhile.
                ctx.run_later(RECHECK_AFTER, |this, _ctx| {
                    if let Some(hub) = &this.hub {
                        hub.do_send(crate::actors::hub::CheckRooms);
                    }
                });
                return;
            }
            _ => return,
        }
        self.stats.received += 1;
        let mut data = push.data.into_iter();
        let (Some(channel), Some(payload)) = (data.next(), data.next()) else {
            return;
        };
        let (Ok(channel), Ok(payload)) = (
            redis::from_redis_value::<String>(channel),
            redis::from_redis_value::<String>(payload),
        ) else {
            return;
        };
        if channel == self.key("users") {
            self.users_message(&payload, ctx);
            return;
        }
        if let Some(room) = channel.strip_prefix(&self.key("room:")) {
            // Numbered messages start with their offset; typing is an envelope.
            if let Some((offset, epoch, message)) = rooms::parse_room_message(&payload) {
                if let (Ok(room), Some(hub)) = (RoomId::parse(room), &self.hub) {
                    hub.do_send(RemoteRoomMessage {
                        room,
                        offset,
                        epoch: epoch.to_owned(),
                        payload: message.to_owned(),
                    });
                }
                return;
            }
        }
        let Ok(envelope) = serde_json::from_str::<Envelope>(&payload) else {
            tracing::warn!(%channel, "a cluster message that is not ours was ignored");
            return;
        };
        if channel == self.probe_channel() {
            if envelope.o == users::ACK {
                if let Ok(seq) = envelope.f.parse() {
                    self.acknowledged(seq);
                }
                return;
            }
            if let Some((seq, sent)) = self.probe_sent {
                if envelope.f == seq.to_string() {
                    self.stats.probe_ms = Some(sent.elapsed().as_secs_f64() * 1e3);
                    self.stats.probes_returned += 1;
                    self.probe_sent = None;
                }
            }
            return;
        }
        let Some(hub) = &self.hub else {
            return;
        };
        if let (Some(user), Some(from)) = (
            channel.strip_prefix(&self.key("user:")),
            envelope.o.strip_prefix(CONTROL),
        ) {
            // The server API's Disconnect or Unsubscribe on another node (that node acted
            // on its own sessions).
            if from != self.stats.node {
                match serde_json::from_str::<UserControl>(&envelope.f) {
                    Ok(UserControl::Close { code, reason }) => {
                        hub.do_send(crate::actors::hub::CloseUser {
                            user_id: user.to_owned(),
                            code,
                            reason,
                        })
                    }
                    Ok(UserControl::Unsubscribe { room }) => {
                        if let Ok(room) = RoomId::parse(&room) {
                            hub.do_send(crate::actors::hub::RemoveFromRoom {
                                user_id: user.to_owned(),
                                room,
                            });
                        }
                    }
                    Err(error) => tracing::warn!(%error, "an unreadable user control message"),
                }
            }
            return;
        }
        let origin = SessionId::parse(&envelope.o);
        let frame = ByteString::from(envelope.f);
        if channel == self.key("broadcast") {
            hub.do_send(RemoteBroadcast { origin, frame });
        } else if let Some(room) = channel.strip_prefix(&self.key("room:")) {
            if let Ok(room) = RoomId::parse(room) {
                hub.do_send(RemoteRoomFrame {
                    room,
                    origin,
                    frame,
                });
            }
        } else if let Some(user) = channel.strip_prefix(&self.key("user:")) {
            hub.do_send(RemotePrivate {
                to: user.to_owned(),
                origin,
                frame,
            });
        }
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {
        // The push queue only ends when the connection manager is gone: nothing to do.
    }
}

/// Marks an envelope on a user's channel as a control message for the user's sessions
/// ([`UserControl`]), followed by the requesting node's id.
const CONTROL: &str = "control:";

/// What the server API asks every node to do with a user's sessions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case")]
pub enum UserControl {
    /// Close them (`Disconnect`).
    Close {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
    /// Take them out of a room (`Unsubscribe`).
    Unsubscribe {
        /// The room.
        room: String,
    },
}

/// Act on `user`'s sessions on the other nodes (the server API's `Disconnect` and
/// `Unsubscribe`; this node acts on its own). Answers how many nodes hold sessions of the
/// user.
#[derive(Debug, Message)]
#[rtype(result = "Result<u64, ClusterUnavailable>")]
pub struct PublishUserControl {
    /// The user.
    pub user: String,
    /// What to do.
    pub control: UserControl,
}

impl Handler<PublishUserControl> for Broker {
    type Result = ResponseFuture<Result<u64, ClusterUnavailable>>;

    fn handle(&mut self, msg: PublishUserControl, _ctx: &mut Self::Context) -> Self::Result {
        self.stats.published += 1;
        let channel = self.user_channel(&msg.user);
        let payload = serde_json::to_string(&Envelope {
            o: format!("{CONTROL}{}", self.stats.node),
            f: serde_json::to_string(&msg.control).unwrap_or_default(),
        })
        .unwrap_or_default();
        Box::pin(publish(self.commands.clone(), channel, payload))
    }
}

/// The nodes alive, as each last described itself (for `GET /cluster`).
#[derive(Debug, Message)]
#[rtype(result = "Result<Vec<serde_json::Value>, ClusterUnavailable>")]
pub struct ReadCluster;

impl Handler<ReadCluster> for Broker {
    type Result = ResponseFuture<Result<Vec<serde_json::Value>, ClusterUnavailable>>;

    fn handle(&mut self, _msg: ReadCluster, _ctx: &mut Self::Context) -> Self::Result {
        let (nodes_key, prefix) = (self.key("nodes"), self.settings.prefix.clone());
        let timeout = self.settings.node_timeout;
        let mut redis = self.commands.clone();
        Box::pin(async move {
            let unavailable = |e: redis::RedisError| ClusterUnavailable(e.to_string());
            let now = chrono::Utc::now().timestamp_millis();
            let alive_since = now - i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
            let alive: Vec<(String, i64)> = redis::cmd("ZRANGEBYSCORE")
                .arg(&nodes_key)
                .arg(alive_since)
                .arg("+inf")
                .arg("WITHSCORES")
                .query_async(&mut redis)
                .await
                .map_err(unavailable)?;
            let mut nodes = Vec::new();
            for (node, heard) in alive {
                let info: Option<String> = redis::cmd("GET")
                    .arg(format!("{prefix}:node:{node}:info"))
                    .query_async(&mut redis)
                    .await
                    .map_err(unavailable)?;
                let mut info: serde_json::Value = info
                    .and_then(|i| serde_json::from_str(&i).ok())
                    .unwrap_or_else(|| serde_json::json!({ "id": node }));
                info["last_heartbeat"] = serde_json::json!(
                    chrono::DateTime::from_timestamp_millis(heard).map(|t| t.to_rfc3339())
                );
                nodes.push(info);
            }
            nodes.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
            Ok(nodes)
        })
    }
}

/// A random node id: 8 hex digits.
pub fn random_node_id() -> String {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The node id to use: the configured one, or a random one.
pub fn node_id(settings: &ClusterSettings) -> Arc<str> {
    settings
        .node_id
        .clone()
        .unwrap_or_else(random_node_id)
        .into()
}
