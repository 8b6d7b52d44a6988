//! WebSocket settings: who may connect, and the limits every session lives within.

use std::time::Duration;

use serde::Deserialize;

use super::{at_least, is_http_url, positive, ConfigError};

/// Limits and policies for `GET /ws`.
#[derive(Debug, Clone, PartialEq)]
pub struct WsSettings {
    /// Refuse upgrades without a valid token (401) instead of assigning a guest identity.
    pub require_auth: bool,
    /// Which `Origin`s may open a WebSocket.
    pub allowed_origins: OriginPolicy,
    /// Largest message (a frame, or a fragmented message in total) in bytes; close 1009 above it.
    pub max_message_size: usize,
    /// Rooms one session may be in at once.
    pub max_rooms_per_session: usize,
    /// Concurrent sessions one user id may hold.
    pub max_sessions_per_user: usize,
    /// Sustained messages per second one connection may send.
    pub rate_per_second: f64,
    /// Messages a connection may send in a burst above the sustained rate.
    pub rate_burst: u32,
    /// Frames that may wait for a slow client before it is disconnected (close 1008).
    pub outbound_queue: usize,
    /// Bytes that may wait for a client (relays, replies, history) before it is
    /// disconnected as a slow consumer (close 1008).
    pub outbound_bytes: usize,
    /// How long a closing connection may take to deliver what is queued (and the close
    /// frame) before it is dropped.
    pub close_timeout: Duration,
    /// A client that is behind (frames waiting for it) and takes none for this long is
    /// disconnected as a slow consumer, even while its room is overloaded.
    pub stall_timeout: Duration,
    /// Publishes are refused as `overloaded` everywhere while messages reach the hub
    /// later than this after their session sent them (until they take under a fifth).
    pub overload_lag: Duration,
    /// Joins and leaves are announced in rooms of at most this many users (0: never),
    /// and a `presence` answer lists at most this many users.
    pub presence_limit: usize,
    /// How long a guest's resume token (handed out in the welcome) stays valid; zero: no
    /// resume tokens, every guest connection gets a new id.
    pub guest_ttl: Duration,
    /// How often the server pings each client.
    pub ping_interval: Duration,
    /// A client silent (no pong or other frame) this long is disconnected.
    pub pong_timeout: Duration,
}

impl Default for WsSettings {
    fn default() -> Self {
        Self {
            require_auth: false,
            allowed_origins: OriginPolicy::SameHost,
            max_message_size: 64 * 1024,
            max_rooms_per_session: 100,
            max_sessions_per_user: 10,
            rate_per_second: 20.0,
            rate_burst: 40,
            outbound_queue: 1024,
            outbound_bytes: 1024 * 1024,
            close_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(5),
            overload_lag: Duration::from_millis(100),
            presence_limit: 1000,
            guest_ttl: Duration::from_secs(7 * 24 * 3600),
            ping_interval: Duration::from_secs(54),
            pong_timeout: Duration::from_secs(60),
        }
    }
}

/// Which browser origins may open a WebSocket. Requests without an `Origin` header (not
/// sent by browsers' WebSocket API, so not a cross-site risk) are always allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPolicy {
    /// Only an origin whose host (and port) is the request's `Host`.
    SameHost,
    /// Any origin (`*`): for development only.
    Any,
    /// Exactly these origins, e.g. `https://app.example.com` (lower-cased, no trailing `/`).
    List(Vec<String>),
}

impl OriginPolicy {
    /// Parses a list of origins; `*` alone means any, an empty list means same host.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, ConfigError> {
        let items: Vec<&str> = items
            .iter()
            .map(|s| s.as_ref().trim())
            .filter(|s| !s.is_empty())
            .collect();
        if items.is_empty() {
            return Ok(Self::SameHost);
        }
        if items == ["*"] {
            return Ok(Self::Any);
        }
        items
            .iter()
            .map(|item| {
                let origin = item.trim_end_matches('/').to_ascii_lowercase();
                if is_http_url(&origin) && !origin.contains('*') {
                    Ok(origin)
                } else {
                    Err(ConfigError::invalid(
                        "allowed origins",
                        format!(
                            "`{item}` is not an origin like https://app.example.com (or `*` alone)"
                        ),
                    ))
                }
            })
            .collect::<Result<_, _>>()
            .map(Self::List)
    }

    /// Whether a request with this `Origin` header to this `Host` may upgrade.
    pub fn allows(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        match self {
            Self::Any => true,
            Self::List(allowed) => allowed.contains(&origin),
            Self::SameHost => {
                let origin_host = origin
                    .strip_prefix("https://")
                    .or_else(|| origin.strip_prefix("http://"));
                match (origin_host, host) {
                    (Some(origin_host), Some(host)) => origin_host.eq_ignore_ascii_case(host),
                    _ => false,
                }
            }
        }
    }
}

/// Optional overrides of [`WsSettings`] (the `[websocket]` TOML table, or flags).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsLayer {
    /// See [`WsSettings::require_auth`].
    pub require_auth: Option<bool>,
    /// See [`WsSettings::allowed_origins`].
    pub allowed_origins: Option<Vec<String>>,
    /// See [`WsSettings::max_message_size`].
    pub max_message_size: Option<usize>,
    /// See [`WsSettings::max_rooms_per_session`].
    pub max_rooms_per_session: Option<usize>,
    /// See [`WsSettings::max_sessions_per_user`].
    pub max_sessions_per_user: Option<usize>,
    /// See [`WsSettings::rate_per_second`].
    pub rate_per_second: Option<f64>,
    /// See [`WsSettings::rate_burst`].
    pub rate_burst: Option<u32>,
    /// See [`WsSettings::outbound_queue`].
    pub outbound_queue: Option<usize>,
    /// See [`WsSettings::outbound_bytes`].
    pub outbound_bytes: Option<usize>,
    /// See [`WsSettings::close_timeout`] (e.g. `"5s"`).
    pub close_timeout: Option<String>,
    /// See [`WsSettings::stall_timeout`] (e.g. `"5s"`).
    pub stall_timeout: Option<String>,
    /// See [`WsSettings::overload_lag`] (e.g. `"100ms"`).
    pub overload_lag: Option<String>,
    /// See [`WsSettings::presence_limit`].
    pub presence_limit: Option<usize>,
    /// See [`WsSettings::guest_ttl`] (e.g. `"7d"`, `"0s"` for none).
    pub guest_ttl: Option<String>,
    /// See [`WsSettings::ping_interval`] (e.g. `"54s"`).
    pub ping_interval: Option<String>,
    /// See [`WsSettings::pong_timeout`] (e.g. `"60s"`).
    pub pong_timeout: Option<String>,
}

impl WsSettings {
    /// Applies one layer, validating every value it sets.
    pub(super) fn apply(mut self, layer: WsLayer) -> Result<Self, ConfigError> {
        if let Some(required) = layer.require_auth {
            self.require_auth = required;
        }
        if let Some(origins) = layer.allowed_origins {
            self.allowed_origins = OriginPolicy::parse(&origins)?;
        }
        if let Some(size) = layer.max_message_size {
            self.max_message_size = at_least("websocket max message size", size, 64)?;
        }
        if let Some(rooms) = layer.max_rooms_per_session {
            self.max_rooms_per_session = at_least("websocket max rooms per session", rooms, 1)?;
        }
        if let Some(sessions) = layer.max_sessions_per_user {
            self.max_sessions_per_user = at_least("websocket max sessions per user", sessions, 1)?;
        }
        if let Some(rate) = layer.rate_per_second {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(ConfigError::invalid(
                    "websocket rate",
                    "it must be a positive number of messages per second",
                ));
            }
            self.rate_per_second = rate;
        }
        if let Some(burst) = layer.rate_burst {
            self.rate_burst = at_least("websocket burst", burst as usize, 1)? as u32;
        }
        if let Some(queue) = layer.outbound_queue {
            self.outbound_queue = at_least("websocket outbound queue", queue, 1)?;
        }
        if let Some(bytes) = layer.outbound_bytes {
            // At least one largest message fits; at most 1 GiB (the counters are 32-bit).
            let bytes = at_least("websocket outbound bytes", bytes, 4096)?;
            if bytes > 1 << 30 {
                return Err(ConfigError::invalid(
                    "websocket outbound bytes",
                    "it must be at most 1073741824 (1 GiB)",
                ));
            }
            self.outbound_bytes = bytes;
        }
        if self.outbound_bytes < 8 * self.max_message_size {
            // A relay of the largest message (escaped in JSON, up to 6× its size) must fit.
            return Err(ConfigError::invalid(
                "websocket outbound bytes",
                format!(
                    "it must be at least 8 × the max message size ({} bytes)",
                    8 * self.max_message_size
                ),
            ));
        }
        if let Some(raw) = layer.close_timeout {
            self.close_timeout = positive("websocket close timeout", &raw)?;
        }
        if let Some(raw) = layer.stall_timeout {
            let timeout = positive("websocket stall timeout", &raw)?;
            // Checked once a second, at most 15 checks in a row.
            if timeout > Duration::from_secs(15) {
                return Err(ConfigError::invalid(
                    "websocket stall timeout",
                    "it must be at most 15s",
                ));
            }
            self.stall_timeout = timeout;
        }
        if let Some(raw) = layer.overload_lag {
            let lag = positive("websocket overload lag", &raw)?;
            if lag < Duration::from_millis(1) {
                return Err(ConfigError::invalid(
                    "websocket overload lag",
                    "it must be at least 1ms",
                ));
            }
            self.overload_lag = lag;
        }
        if let Some(limit) = layer.presence_limit {
            self.presence_limit = limit;
        }
        if let Some(raw) = layer.guest_ttl {
            self.guest_ttl = crate::config::parse_duration("websocket guest ttl", &raw)?;
        }
        if let Some(raw) = layer.ping_interval {
            self.ping_interval = positive("websocket ping interval", &raw)?;
        }
        if let Some(raw) = layer.pong_timeout {
            self.pong_timeout = positive("websocket pong timeout", &raw)?;
        }
        Ok(self)
    }
}

/// The WebSocket flags (each with an environment fallback).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WsArgs {
    /// Refuse WebSocket upgrades without a valid token (401) [default: false].
    #[arg(long, env = "SWITCHBOARD_WS_REQUIRE_AUTH", num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    pub ws_require_auth: Option<bool>,
    /// Comma-separated origins allowed to open a WebSocket; `*` for any
    /// [default: the request's own host only].
    #[arg(
        long,
        env = "SWITCHBOARD_ALLOWED_ORIGINS",
        value_delimiter = ',',
        value_name = "ORIGINS"
    )]
    pub allowed_origins: Option<Vec<String>>,
    /// Largest WebSocket message in bytes [default: 65536].
    #[arg(long, env = "SWITCHBOARD_WS_MAX_MESSAGE_SIZE", value_name = "BYTES")]
    pub ws_max_message_size: Option<usize>,
    /// Rooms one session may be in [default: 100].
    #[arg(long, env = "SWITCHBOARD_WS_MAX_ROOMS", value_name = "N")]
    pub ws_max_rooms: Option<usize>,
    /// Concurrent sessions per user [default: 10].
    #[arg(long, env = "SWITCHBOARD_WS_MAX_SESSIONS_PER_USER", value_name = "N")]
    pub ws_max_sessions_per_user: Option<usize>,
    /// Sustained messages per second per connection [default: 20].
    #[arg(long, env = "SWITCHBOARD_WS_RATE", value_name = "PER_SECOND")]
    pub ws_rate: Option<f64>,
    /// Burst of messages per connection above the rate [default: 40].
    #[arg(long, env = "SWITCHBOARD_WS_BURST", value_name = "N")]
    pub ws_burst: Option<u32>,
    /// Frames queued for a slow client before it is disconnected [default: 1024].
    #[arg(long, env = "SWITCHBOARD_WS_OUTBOUND_QUEUE", value_name = "N")]
    pub ws_outbound_queue: Option<usize>,
    /// Bytes queued for a slow client before it is disconnected [default: 1048576].
    #[arg(long, env = "SWITCHBOARD_WS_OUTBOUND_BYTES", value_name = "BYTES")]
    pub ws_outbound_bytes: Option<usize>,
    /// How long a closing connection may take to flush before it is dropped [default: 5s].
    #[arg(long, env = "SWITCHBOARD_WS_CLOSE_TIMEOUT", value_name = "DURATION")]
    pub ws_close_timeout: Option<String>,
    /// Disconnect a client that is behind and takes nothing for this long [default: 5s].
    #[arg(long, env = "SWITCHBOARD_WS_STALL_TIMEOUT", value_name = "DURATION")]
    pub ws_stall_timeout: Option<String>,
    /// Refuse publishes while the hub is this far behind [default: 100ms].
    #[arg(long, env = "SWITCHBOARD_WS_OVERLOAD_LAG", value_name = "DURATION")]
    pub ws_overload_lag: Option<String>,
    /// Announce joins and leaves only in rooms of at most this many users [default: 1000].
    #[arg(long, env = "SWITCHBOARD_WS_PRESENCE_LIMIT", value_name = "USERS")]
    pub ws_presence_limit: Option<usize>,
    /// How long a guest's resume token stays valid; `0s`: none [default: 7d].
    #[arg(long, env = "SWITCHBOARD_WS_GUEST_TTL", value_name = "DURATION")]
    pub ws_guest_ttl: Option<String>,
    /// Server ping interval [default: 54s].
    #[arg(long, env = "SWITCHBOARD_WS_PING_INTERVAL", value_name = "DURATION")]
    pub ws_ping_interval: Option<String>,
    /// Disconnect a client silent this long [default: 60s].
    #[arg(long, env = "SWITCHBOARD_WS_PONG_TIMEOUT", value_name = "DURATION")]
    pub ws_pong_timeout: Option<String>,
}

impl WsArgs {
    /// The layer these flags and variables form.
    pub fn layer(&self) -> WsLayer {
        WsLayer {
            require_auth: self.ws_require_auth,
            allowed_origins: self.allowed_origins.clone(),
            max_message_size: self.ws_max_message_size,
            max_rooms_per_session: self.ws_max_rooms,
            max_sessions_per_user: self.ws_max_sessions_per_user,
            rate_per_second: self.ws_rate,
            rate_burst: self.ws_burst,
            outbound_queue: self.ws_outbound_queue,
            outbound_bytes: self.ws_outbound_bytes,
            close_timeout: self.ws_close_timeout.clone(),
            stall_timeout: self.ws_stall_timeout.clone(),
            overload_lag: self.ws_overload_lag.clone(),
            presence_limit: self.ws_presence_limit,
            guest_ttl: self.ws_guest_ttl.clone(),
            ping_interval: self.ws_ping_interval.clone(),
            pong_timeout: self.ws_pong_timeout.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_lists_parse_and_reject_nonsense() {
        assert_eq!(
            OriginPolicy::parse::<&str>(&[]).unwrap(),
            OriginPolicy::SameHost
        );
        assert_eq!(OriginPolicy::parse(&["*"]).unwrap(), OriginPolicy::Any);
        assert_eq!(
            OriginPolicy::parse(&["https://App.Example.com/", " http://x:3000 "]).unwrap(),
            OriginPolicy::List(vec![
                "https://app.example.com".into(),
                "http://x:3000".into()
            ])
        );
        for bad in [
            "app.example.com",
            "https://",
            "https://*.example.com",
            "ftp://x",
        ] {
            assert!(
                OriginPolicy::parse(&[bad]).is_err(),
                "{bad} should be rejected"
            );
        }
    }

    #[test]
    fn origin_checks_follow_the_policy() {
        let same = OriginPolicy::SameHost;
        assert!(
            same.allows(None, Some("a:8080")),
            "non-browser clients send no Origin"
        );
        assert!(same.allows(Some("http://a:8080"), Some("a:8080")));
        assert!(!same.allows(Some("http://evil:8080"), Some("a:8080")));
        assert!(!same.allows(Some("http://a:8080"), None));
        assert!(!same.allows(Some("null"), Some("a:8080")));

        let list = OriginPolicy::parse(&["https://app.example.com"]).unwrap();
        assert!(list.allows(Some("https://APP.example.com"), Some("api:1")));
        assert!(!list.allows(Some("https://app.example.com.evil"), Some("api:1")));
        assert!(OriginPolicy::Any.allows(Some("https://anything"), None));
    }

    #[test]
    fn limits_are_validated() {
        let zero_rooms = WsLayer {
            max_rooms_per_session: Some(0),
            ..Default::default()
        };
        assert!(WsSettings::default().apply(zero_rooms).is_err());
        let bad_rate = WsLayer {
            rate_per_second: Some(f64::NAN),
            ..Default::default()
        };
        assert!(WsSettings::default().apply(bad_rate).is_err());
        let zero_ping = WsLayer {
            ping_interval: Some("0s".into()),
            ..Default::default()
        };
        assert!(WsSettings::default().apply(zero_ping).is_err());
        let fine = WsLayer {
            outbound_queue: Some(8),
            ping_interval: Some("100ms".into()),
            ..Default::default()
        };
        let settings = WsSettings::default().apply(fine).unwrap();
        assert_eq!(settings.outbound_queue, 8);
        assert_eq!(settings.ping_interval, Duration::from_millis(100));
    }
}
