//! Chat history settings: whether room messages are stored, for how long, and how the
//! writer batches them.

use std::time::Duration;

use serde::Deserialize;

use super::{at_least, parse_duration, positive, ConfigError};

/// How room (and optionally private) messages are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct HistorySettings {
    /// Store relayed room messages, so `join` can recover and `history` can answer.
    pub enabled: bool,
    /// Messages kept per room (the newest); `None` keeps any number.
    pub max_messages: Option<u64>,
    /// Messages older than this are deleted; `None` keeps them whatever their age.
    pub max_age: Option<Duration>,
    /// Store private messages too.
    pub private: bool,
    /// Longest a message waits in memory before its batch is written.
    pub flush_interval: Duration,
    /// Messages written in one transaction at most; a full batch is written at once.
    pub batch_size: usize,
    /// Messages that may wait for the database; beyond this, new ones are not stored
    /// (delivery goes on) and are counted as dropped.
    pub max_pending: usize,
    /// How often retention is applied.
    pub prune_interval: Duration,
    /// How long a room without members keeps its numbering in memory (and its reserved
    /// offsets) before they are handed back.
    pub room_idle: Duration,
}

impl Default for HistorySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_messages: Some(1_000),
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            private: false,
            flush_interval: Duration::from_millis(50),
            batch_size: 500,
            max_pending: 100_000,
            prune_interval: Duration::from_secs(60),
            room_idle: Duration::from_secs(60),
        }
    }
}

/// Optional overrides of [`HistorySettings`] (the `[history]` TOML table, or flags).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryLayer {
    /// See [`HistorySettings::enabled`].
    pub enabled: Option<bool>,
    /// See [`HistorySettings::max_messages`]; 0 means no limit.
    pub max_messages: Option<u64>,
    /// See [`HistorySettings::max_age`] (e.g. `"7d"`); `"0s"` means no limit.
    pub max_age: Option<String>,
    /// See [`HistorySettings::private`].
    pub private: Option<bool>,
    /// See [`HistorySettings::flush_interval`] (e.g. `"50ms"`).
    pub flush_interval: Option<String>,
    /// See [`HistorySettings::batch_size`].
    pub batch_size: Option<usize>,
    /// See [`HistorySettings::max_pending`].
    pub max_pending: Option<usize>,
    /// See [`HistorySettings::prune_interval`] (e.g. `"60s"`).
    pub prune_interval: Option<String>,
    /// See [`HistorySettings::room_idle`] (e.g. `"60s"`).
    pub room_idle: Option<String>,
}

impl HistorySettings {
    /// Applies one layer, validating every value it sets.
    pub(super) fn apply(mut self, layer: HistoryLayer) -> Result<Self, ConfigError> {
        if let Some(enabled) = layer.enabled {
            self.enabled = enabled;
        }
        if let Some(max) = layer.max_messages {
            self.max_messages = (max > 0).then_some(max);
        }
        if let Some(raw) = layer.max_age {
            let age = parse_duration("history max age", &raw)?;
            self.max_age = (!age.is_zero()).then_some(age);
        }
        if let Some(private) = layer.private {
            self.private = private;
        }
        if let Some(raw) = layer.flush_interval {
            self.flush_interval = positive("history flush interval", &raw)?;
        }
        if let Some(size) = layer.batch_size {
            self.batch_size = at_least("history batch size", size, 1)?;
        }
        if let Some(pending) = layer.max_pending {
            self.max_pending = at_least("history max pending", pending, 1)?;
        }
        if let Some(raw) = layer.prune_interval {
            self.prune_interval = positive("history prune interval", &raw)?;
        }
        if let Some(raw) = layer.room_idle {
            self.room_idle = positive("history room idle", &raw)?;
        }
        Ok(self)
    }
}

/// The history flags (each with an environment fallback).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HistoryArgs {
    /// Store room messages for recovery and `history` requests [default: true].
    #[arg(long, env = "SWITCHBOARD_HISTORY", value_name = "BOOL")]
    pub history: Option<bool>,
    /// Messages kept per room; 0 for no limit [default: 1000].
    #[arg(long, env = "SWITCHBOARD_HISTORY_MAX_MESSAGES", value_name = "N")]
    pub history_max_messages: Option<u64>,
    /// Age after which stored messages are deleted; 0s for no limit [default: 7d].
    #[arg(long, env = "SWITCHBOARD_HISTORY_MAX_AGE", value_name = "DURATION")]
    pub history_max_age: Option<String>,
    /// Store private messages too [default: false].
    #[arg(long, env = "SWITCHBOARD_HISTORY_PRIVATE", value_name = "BOOL")]
    pub history_private: Option<bool>,
    /// Longest a message waits before its batch is written [default: 50ms].
    #[arg(
        long,
        env = "SWITCHBOARD_HISTORY_FLUSH_INTERVAL",
        value_name = "DURATION"
    )]
    pub history_flush_interval: Option<String>,
    /// How often retention is applied [default: 60s].
    #[arg(
        long,
        env = "SWITCHBOARD_HISTORY_PRUNE_INTERVAL",
        value_name = "DURATION"
    )]
    pub history_prune_interval: Option<String>,
    /// How long a room without members keeps its numbering before its unused offsets
    /// are handed back [default: 60s].
    #[arg(long, env = "SWITCHBOARD_HISTORY_ROOM_IDLE", value_name = "DURATION")]
    pub history_room_idle: Option<String>,
}

impl HistoryArgs {
    /// The layer these flags and variables form.
    pub fn layer(&self) -> HistoryLayer {
        HistoryLayer {
            enabled: self.history,
            max_messages: self.history_max_messages,
            max_age: self.history_max_age.clone(),
            private: self.history_private,
            flush_interval: self.history_flush_interval.clone(),
            prune_interval: self.history_prune_interval.clone(),
            room_idle: self.history_room_idle.clone(),
            batch_size: None,
            max_pending: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_limits_mean_unlimited_and_bad_values_are_named() {
        let settings = HistorySettings::default()
            .apply(HistoryLayer {
                max_messages: Some(0),
                max_age: Some("0s".into()),
                ..HistoryLayer::default()
            })
            .unwrap();
        assert_eq!(settings.max_messages, None);
        assert_eq!(settings.max_age, None);
        let bad = HistorySettings::default().apply(HistoryLayer {
            flush_interval: Some("0ms".into()),
            ..HistoryLayer::default()
        });
        assert!(bad
            .unwrap_err()
            .to_string()
            .contains("history flush interval"));
    }
}
