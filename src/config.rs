//! Typed, layered settings.
//!
//! Precedence, lowest to highest: built-in defaults < the optional TOML file (`--config`)
//! < `SWITCHBOARD_*` environment variables (and `DATABASE_URL`) < command-line flags.
//! clap reads flags and environment together (a flag beats its variable), so loading is
//! `Settings::default()`, then the file's [`SettingsLayer`], then the CLI's layer.

use std::{fmt, net::SocketAddr, path::Path, path::PathBuf, time::Duration};

use serde::Deserialize;

pub mod cluster;
pub mod database;
pub mod graphql;
pub mod history;
pub mod websocket;

pub use cluster::{ClusterArgs, ClusterLayer, ClusterSettings};
pub use database::{DatabaseLayer, DatabaseSettings, DatabaseUrl};
pub use graphql::{GraphqlArgs, GraphqlLayer, GraphqlSettings};
pub use history::{HistoryArgs, HistoryLayer, HistorySettings};
pub use websocket::{OriginPolicy, WsArgs, WsLayer, WsSettings};

/// Everything the server needs to start, already validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Address the HTTP server (REST, WebSocket, GraphQL) binds; port 0 picks a free port.
    pub http_addr: SocketAddr,
    /// Address the gRPC server binds; port 0 picks a free port.
    pub grpc_addr: SocketAddr,
    /// Database connection and pool settings.
    pub database: DatabaseSettings,
    /// HS256 secret for JWTs; `None` means "generate one for this run".
    pub jwt_secret: Option<JwtSecret>,
    /// Logging output.
    pub log: LogSettings,
    /// How long a graceful shutdown may take before connections are dropped.
    pub shutdown_timeout: Duration,
    /// WebSocket policies and limits.
    pub websocket: WsSettings,
    /// New users a `StreamUsers` call may hold for a client that does not read before
    /// the call ends with `RESOURCE_EXHAUSTED`.
    pub grpc_stream_buffer: usize,
    /// `StreamUsers` calls one client (token subject) may hold at once.
    pub grpc_max_streams_per_client: usize,
    /// Largest incoming gRPC message, in bytes.
    pub grpc_max_message_size: usize,
    /// How often the health monitor pings the database.
    pub health_interval: Duration,
    /// GraphQL limits, subscriptions and CORS.
    pub graphql: GraphqlSettings,
    /// Chat history: storage, retention, batching.
    pub history: HistorySettings,
    /// Cluster mode over Redis (off unless a Redis URL is set).
    pub cluster: ClusterSettings,
    /// HTTP requests per second each client (JWT subject, else IP) may make, sustained.
    pub rate_limit_per_second: f64,
    /// HTTP requests a client may make in a burst.
    pub rate_limit_burst: u32,
    /// Proxies whose `X-Forwarded-For` is believed when finding a client's IP.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Run the HTTP middleware chain (request tracking, tracing, rate limit, circuit
    /// breaker); off only to measure what the chain costs.
    pub http_middleware: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            database: DatabaseSettings::default(),
            jwt_secret: None,
            log: LogSettings::default(),
            shutdown_timeout: Duration::from_secs(10),
            websocket: WsSettings::default(),
            grpc_stream_buffer: crate::grpc::users::DEFAULT_STREAM_BUFFER,
            grpc_max_streams_per_client: 16,
            grpc_max_message_size: 4 * 1024 * 1024,
            health_interval: Duration::from_secs(5),
            graphql: GraphqlSettings::default(),
            history: HistorySettings::default(),
            cluster: ClusterSettings::default(),
            rate_limit_per_second: 50.0,
            rate_limit_burst: 100,
            trusted_proxies: Vec::new(),
            http_middleware: true,
        }
    }
}

/// The HS256 signing secret. Its `Debug` never prints the value.
#[derive(Clone, PartialEq, Eq)]
pub struct JwtSecret(String);

impl JwtSecret {
    /// Minimum length accepted from configuration, so a one-letter secret is a config error.
    pub const MIN_LEN: usize = 16;

    /// Validates a secret from configuration.
    pub fn parse(raw: &str) -> Result<Self, ConfigError> {
        if raw.len() < Self::MIN_LEN {
            return Err(ConfigError::invalid(
                "jwt secret",
                format!("it must be at least {} bytes long", Self::MIN_LEN),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// A fresh random secret for a run without a configured one.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The secret's bytes, for signing and verifying.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for JwtSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JwtSecret(***)")
    }
}

/// Log output settings.
#[derive(Debug, Clone, Default)]
pub struct LogSettings {
    /// Human-readable or JSON lines.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `switchboard=debug,info`; `None` falls back to
    /// `RUST_LOG`, then `info`.
    pub level: Option<String>,
    /// Where to export spans over OTLP/HTTP (e.g. `http://collector:4318`); off when `None`.
    pub otlp_endpoint: Option<String>,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Coloured, human-readable lines (colour only on a terminal).
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// A configuration problem, reported as one clear line before the server exits.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A setting has a value that cannot be used.
    #[error("invalid {setting}: {reason}")]
    Invalid {
        /// Which setting.
        setting: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// The `--config` file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The `--config` file is not valid TOML for these settings.
    #[error("invalid config file {path}: {message}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said.
        message: String,
    },
}

impl ConfigError {
    fn invalid(setting: &'static str, reason: impl fmt::Display) -> Self {
        Self::Invalid {
            setting,
            reason: reason.to_string(),
        }
    }
}

/// One layer of optional overrides: what the file or the command line says.
/// Every field is optional; `None` leaves the lower layer's value in place.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsLayer {
    /// See [`Settings::http_addr`].
    pub http_addr: Option<String>,
    /// See [`Settings::grpc_addr`].
    pub grpc_addr: Option<String>,
    /// See [`Settings::jwt_secret`].
    pub jwt_secret: Option<String>,
    /// See [`Settings::shutdown_timeout`] (e.g. `"10s"`).
    pub shutdown_timeout: Option<String>,
    /// See [`Settings::grpc_stream_buffer`].
    pub grpc_stream_buffer: Option<usize>,
    /// See [`Settings::grpc_max_streams_per_client`].
    pub grpc_max_streams_per_client: Option<usize>,
    /// See [`Settings::grpc_max_message_size`].
    pub grpc_max_message_size: Option<usize>,
    /// See [`Settings::health_interval`] (e.g. `"5s"`).
    pub health_interval: Option<String>,
    /// See [`Settings::rate_limit_per_second`].
    pub rate_limit_per_second: Option<f64>,
    /// See [`Settings::rate_limit_burst`].
    pub rate_limit_burst: Option<u32>,
    /// See [`Settings::trusted_proxies`].
    pub trusted_proxies: Option<Vec<String>>,
    /// See [`Settings::http_middleware`].
    pub http_middleware: Option<bool>,
    /// The `[log]` table.
    #[serde(default)]
    pub log: LogLayer,
    /// The `[database]` table.
    #[serde(default)]
    pub database: DatabaseLayer,
    /// The `[websocket]` table.
    #[serde(default)]
    pub websocket: WsLayer,
    /// The `[graphql]` table.
    #[serde(default)]
    pub graphql: GraphqlLayer,
    /// The `[history]` table.
    #[serde(default)]
    pub history: HistoryLayer,
    /// The `[cluster]` table.
    #[serde(default)]
    pub cluster: ClusterLayer,
}

/// Optional overrides of [`LogSettings`].
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLayer {
    /// See [`LogSettings::format`].
    pub format: Option<LogFormat>,
    /// See [`LogSettings::level`].
    pub level: Option<String>,
    /// See [`LogSettings::otlp_endpoint`].
    pub otlp_endpoint: Option<String>,
}

impl SettingsLayer {
    /// Reads a TOML file of settings.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })
    }
}

impl Settings {
    /// Applies one layer on top of these settings, validating every value it sets.
    pub fn apply(mut self, layer: SettingsLayer) -> Result<Self, ConfigError> {
        if let Some(addr) = layer.http_addr {
            self.http_addr = parse_addr("http address", &addr)?;
        }
        if let Some(addr) = layer.grpc_addr {
            self.grpc_addr = parse_addr("grpc address", &addr)?;
        }
        if let Some(secret) = layer.jwt_secret {
            self.jwt_secret = Some(JwtSecret::parse(&secret)?);
        }
        if let Some(timeout) = layer.shutdown_timeout {
            self.shutdown_timeout = parse_duration("shutdown timeout", &timeout)?;
        }
        if let Some(buffer) = layer.grpc_stream_buffer {
            self.grpc_stream_buffer = at_least("grpc stream buffer", buffer, 1)?;
        }
        if let Some(streams) = layer.grpc_max_streams_per_client {
            self.grpc_max_streams_per_client = at_least("grpc max streams per client", streams, 1)?;
        }
        if let Some(size) = layer.grpc_max_message_size {
            self.grpc_max_message_size = at_least("grpc max message size", size, 1024)?;
        }
        if let Some(raw) = layer.health_interval {
            self.health_interval = positive("health interval", &raw)?;
        }
        if let Some(rate) = layer.rate_limit_per_second {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(ConfigError::invalid(
                    "rate limit",
                    "it must be a positive number of requests per second",
                ));
            }
            self.rate_limit_per_second = rate;
        }
        if let Some(burst) = layer.rate_limit_burst {
            self.rate_limit_burst = at_least("rate limit burst", burst as usize, 1)? as u32;
        }
        if let Some(proxies) = layer.trusted_proxies {
            self.trusted_proxies = proxies
                .iter()
                .map(|p| {
                    p.trim().parse().map_err(|_| {
                        ConfigError::invalid(
                            "trusted proxies",
                            format!("`{p}` is not an IP address"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(enabled) = layer.http_middleware {
            self.http_middleware = enabled;
        }
        if let Some(format) = layer.log.format {
            self.log.format = format;
        }
        if let Some(level) = layer.log.level {
            tracing_subscriber::EnvFilter::try_new(&level)
                .map_err(|e| ConfigError::invalid("log level", e))?;
            self.log.level = Some(level);
        }
        if let Some(endpoint) = layer.log.otlp_endpoint {
            let endpoint = endpoint.trim();
            if !is_http_url(endpoint) {
                return Err(ConfigError::invalid(
                    "otlp endpoint",
                    format!("`{endpoint}` is not an http(s) URL like http://collector:4318"),
                ));
            }
            self.log.otlp_endpoint = Some(endpoint.to_owned());
        }
        self.database = self.database.apply(layer.database)?;
        self.websocket = self.websocket.apply(layer.websocket)?;
        self.graphql = self.graphql.apply(layer.graphql)?;
        self.history = self.history.apply(layer.history)?;
        self.cluster = self.cluster.apply(layer.cluster)?;
        Ok(self)
    }
}

/// `value`, or an error naming `setting` when it is below `min`.
fn at_least(setting: &'static str, value: usize, min: usize) -> Result<usize, ConfigError> {
    if value < min {
        return Err(ConfigError::invalid(
            setting,
            format!("it must be at least {min}"),
        ));
    }
    Ok(value)
}

/// Whether `raw` starts with `http://` or `https://` and names something after it.
fn is_http_url(raw: &str) -> bool {
    ["http://", "https://"]
        .iter()
        .any(|scheme| raw.len() > scheme.len() && raw.starts_with(scheme))
}

/// A duration that must be greater than zero.
fn positive(setting: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    let duration = parse_duration(setting, raw)?;
    if duration.is_zero() {
        return Err(ConfigError::invalid(
            setting,
            "it must be greater than zero",
        ));
    }
    Ok(duration)
}

fn parse_addr(setting: &'static str, raw: &str) -> Result<SocketAddr, ConfigError> {
    raw.trim().parse().map_err(|_| {
        ConfigError::invalid(
            setting,
            format!("`{raw}` is not an IP:port address (e.g. 127.0.0.1:8080)"),
        )
    })
}

/// Parses a humantime duration such as `250ms`, `30s` or `1h`.
pub fn parse_duration(setting: &'static str, raw: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(raw.trim())
        .map_err(|e| ConfigError::invalid(setting, format!("`{raw}`: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_layers_override_earlier_ones() {
        let file: SettingsLayer = toml::from_str(
            r#"
            http_addr = "127.0.0.1:9000"
            grpc_addr = "127.0.0.1:9001"
            [database]
            max_connections = 3
            connect_timeout = "2s"
            "#,
        )
        .unwrap();
        let flags = SettingsLayer {
            http_addr: Some("127.0.0.1:0".into()),
            ..Default::default()
        };
        let settings = Settings::default()
            .apply(file)
            .unwrap()
            .apply(flags)
            .unwrap();
        assert_eq!(settings.http_addr.port(), 0, "flag beats file");
        assert_eq!(settings.grpc_addr.port(), 9001, "file beats default");
        assert_eq!(settings.database.max_connections, 3);
        assert_eq!(settings.database.connect_timeout, Duration::from_secs(2));
        assert_eq!(settings.database.min_idle, Some(1), "default kept");
    }

    #[test]
    fn bad_values_name_the_setting() {
        let cases = [
            (
                SettingsLayer {
                    http_addr: Some("localhost".into()),
                    ..Default::default()
                },
                "invalid http address",
            ),
            (
                SettingsLayer {
                    jwt_secret: Some("short".into()),
                    ..Default::default()
                },
                "invalid jwt secret",
            ),
            (
                SettingsLayer {
                    shutdown_timeout: Some("soon".into()),
                    ..Default::default()
                },
                "invalid shutdown timeout",
            ),
            (
                SettingsLayer {
                    database: DatabaseLayer {
                        max_connections: Some(2),
                        min_idle: Some(5),
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "invalid database min idle",
            ),
        ];
        for (layer, expected) in cases {
            let err = Settings::default().apply(layer).unwrap_err().to_string();
            assert!(
                err.starts_with(expected),
                "expected `{expected}`, got `{err}`"
            );
        }
    }

    #[test]
    fn unknown_keys_in_the_file_are_errors() {
        let err = toml::from_str::<SettingsLayer>("htp_addr = \"x\"").unwrap_err();
        assert!(err.message().contains("unknown field"), "{}", err.message());
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let secret = JwtSecret::parse("a-very-long-secret-value").unwrap();
        assert!(!format!("{secret:?}").contains("very-long"));
    }
}
