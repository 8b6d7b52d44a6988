//! Cluster settings: several nodes sharing one Redis behave as one chat hub.

use std::time::Duration;

use serde::Deserialize;

use super::{positive, ConfigError};

/// Whether and how this node joins a cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSettings {
    /// Redis (`redis://…`); `None`: a single node, nothing changes.
    pub redis_url: Option<String>,
    /// This node's name in the cluster; random (and logged) when not set.
    pub node_id: Option<String>,
    /// Every key and channel starts with this and a colon, so deployments (and tests)
    /// can share one Redis.
    pub prefix: String,
    /// How often the node announces itself (and checks the others).
    pub heartbeat: Duration,
    /// A node not heard from for this long is taken for dead.
    pub node_timeout: Duration,
    /// How long an update or deletion waits for every node to confirm its user cache
    /// forgot the user, before it answers anyway (logged, counted).
    pub invalidation_timeout: Duration,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            redis_url: None,
            node_id: None,
            prefix: "switchboard".into(),
            heartbeat: Duration::from_secs(5),
            node_timeout: Duration::from_secs(20),
            invalidation_timeout: Duration::from_secs(2),
        }
    }
}

/// Optional overrides of [`ClusterSettings`] (the `[cluster]` TOML table, or flags).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterLayer {
    /// See [`ClusterSettings::redis_url`].
    pub redis_url: Option<String>,
    /// See [`ClusterSettings::node_id`].
    pub node_id: Option<String>,
    /// See [`ClusterSettings::prefix`].
    pub prefix: Option<String>,
    /// See [`ClusterSettings::heartbeat`] (e.g. `"5s"`).
    pub heartbeat: Option<String>,
    /// See [`ClusterSettings::node_timeout`] (e.g. `"20s"`).
    pub node_timeout: Option<String>,
    /// See [`ClusterSettings::invalidation_timeout`] (e.g. `"2s"`).
    pub invalidation_timeout: Option<String>,
}

/// Names (node ids, prefixes) that are safe in keys, channels and logs.
fn name(setting: &'static str, raw: &str) -> Result<String, ConfigError> {
    let raw = raw.trim();
    let ok = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(ConfigError::invalid(
            setting,
            format!("`{raw}` must be 1–64 letters, digits, `-`, `_` or `.`"),
        ))
    }
}

impl ClusterSettings {
    pub(super) fn apply(mut self, layer: ClusterLayer) -> Result<Self, ConfigError> {
        if let Some(url) = layer.redis_url {
            let url = url.trim();
            if url.is_empty() {
                self.redis_url = None;
            } else if url.starts_with("rediss://") {
                return Err(ConfigError::invalid(
                    "redis url",
                    "TLS (`rediss://`) is not supported by this build; use `redis://` on a private network",
                ));
            } else if !url.starts_with("redis://") || redis::Client::open(url).is_err() {
                return Err(ConfigError::invalid(
                    "redis url",
                    format!("`{url}` is not a Redis URL like redis://127.0.0.1:6379"),
                ));
            } else {
                self.redis_url = Some(url.to_owned());
            }
        }
        if let Some(raw) = layer.node_id {
            self.node_id = Some(name("node id", &raw)?);
        }
        if let Some(raw) = layer.prefix {
            self.prefix = name("cluster prefix", &raw)?;
        }
        if let Some(raw) = layer.heartbeat {
            self.heartbeat = positive("cluster heartbeat", &raw)?;
        }
        if let Some(raw) = layer.node_timeout {
            self.node_timeout = positive("cluster node timeout", &raw)?;
        }
        if let Some(raw) = layer.invalidation_timeout {
            self.invalidation_timeout = positive("cluster invalidation timeout", &raw)?;
        }
        if self.node_timeout < self.heartbeat * 2 {
            return Err(ConfigError::invalid(
                "cluster node timeout",
                "it must be at least twice the heartbeat",
            ));
        }
        Ok(self)
    }
}

/// The cluster flags (each with an environment fallback).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClusterArgs {
    /// Redis URL: several nodes on one Redis behave as one hub (off when unset).
    #[arg(long, env = "SWITCHBOARD_REDIS_URL", value_name = "URL")]
    pub redis_url: Option<String>,
    /// This node's id in the cluster [default: random, logged].
    #[arg(long, env = "SWITCHBOARD_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,
    /// Prefix of every Redis key and channel [default: switchboard].
    #[arg(long, env = "SWITCHBOARD_CLUSTER_PREFIX", value_name = "PREFIX")]
    pub cluster_prefix: Option<String>,
    /// How often a node announces itself [default: 5s].
    #[arg(long, env = "SWITCHBOARD_CLUSTER_HEARTBEAT", value_name = "DURATION")]
    pub cluster_heartbeat: Option<String>,
    /// A node not heard from for this long is taken for dead [default: 20s].
    #[arg(
        long,
        env = "SWITCHBOARD_CLUSTER_NODE_TIMEOUT",
        value_name = "DURATION"
    )]
    pub cluster_node_timeout: Option<String>,
    /// How long an update or deletion waits for every node's user cache to forget the
    /// user before answering anyway [default: 2s].
    #[arg(
        long,
        env = "SWITCHBOARD_CLUSTER_INVALIDATION_TIMEOUT",
        value_name = "DURATION"
    )]
    pub cluster_invalidation_timeout: Option<String>,
}

impl ClusterArgs {
    /// The layer these flags and variables form.
    pub fn layer(&self) -> ClusterLayer {
        ClusterLayer {
            redis_url: self.redis_url.clone(),
            node_id: self.node_id.clone(),
            prefix: self.cluster_prefix.clone(),
            heartbeat: self.cluster_heartbeat.clone(),
            node_timeout: self.cluster_node_timeout.clone(),
            invalidation_timeout: self.cluster_invalidation_timeout.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_names_and_timeouts_are_checked() {
        let on = ClusterSettings::default()
            .apply(ClusterLayer {
                redis_url: Some("redis://127.0.0.1:6379/0".into()),
                node_id: Some("node-a".into()),
                prefix: Some("test.1".into()),
                ..ClusterLayer::default()
            })
            .unwrap();
        assert_eq!(on.redis_url.as_deref(), Some("redis://127.0.0.1:6379/0"));
        assert_eq!(on.prefix, "test.1");
        for (layer, setting) in [
            (
                ClusterLayer {
                    redis_url: Some("http://127.0.0.1:6379".into()),
                    ..ClusterLayer::default()
                },
                "redis url",
            ),
            (
                ClusterLayer {
                    redis_url: Some("rediss://cache:6380".into()),
                    ..ClusterLayer::default()
                },
                "redis url",
            ),
            (
                ClusterLayer {
                    node_id: Some("a b".into()),
                    ..ClusterLayer::default()
                },
                "node id",
            ),
            (
                ClusterLayer {
                    prefix: Some("x:y".into()),
                    ..ClusterLayer::default()
                },
                "cluster prefix",
            ),
            (
                ClusterLayer {
                    heartbeat: Some("10s".into()),
                    node_timeout: Some("15s".into()),
                    ..ClusterLayer::default()
                },
                "cluster node timeout",
            ),
        ] {
            let error = ClusterSettings::default().apply(layer).unwrap_err();
            assert!(error.to_string().contains(setting), "{error}");
        }
    }
}
