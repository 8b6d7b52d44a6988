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

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use actix::prelude::*;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Serialize;

use crate::config::ClusterSettings;

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
}

/// The broker actor. One per node, in cluster mode only.
pub struct Broker {
    commands: ConnectionManager,
    settings: ClusterSettings,
    stats: BrokerStats,
    beating: bool,
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
            .get_connection_manager_with_config(config)
            .await
            .map_err(error)?;
        Ok(Self {
            commands,
            settings: settings.clone(),
            stats: BrokerStats {
                node: node.to_owned(),
                prefix: settings.prefix.clone(),
                ..BrokerStats::default()
            },
            beating: false,
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.settings.prefix)
    }
}

impl Actor for Broker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::info!(node = %self.stats.node, prefix = %self.settings.prefix, "cluster node started");
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
}

async fn beat(
    mut redis: ConnectionManager,
    nodes_key: String,
    node: String,
    timeout: Duration,
) -> Result<Beat, redis::RedisError> {
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
    Ok(Beat { latency, nodes })
}

impl Handler<Heartbeat> for Broker {
    type Result = ();

    fn handle(&mut self, _msg: Heartbeat, ctx: &mut Self::Context) {
        if self.beating {
            return;
        }
        self.beating = true;
        let work = beat(
            self.commands.clone(),
            self.key("nodes"),
            self.stats.node.clone(),
            self.settings.node_timeout,
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
        MessageResult(self.stats.clone())
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
