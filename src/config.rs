//! Typed, layered settings.
//!
//! Precedence, lowest to highest: built-in defaults < the optional TOML file (`--config`)
//! < `SWITCHBOARD_*` environment variables (and `DATABASE_URL`) < command-line flags.
//! clap reads flags and environment together (a flag beats its variable), so loading is
//! `Settings::default()`, then the file's [`SettingsLayer`], then the CLI's layer.

use std::{fmt, net::SocketAddr, path::Path, path::PathBuf, str::FromStr, time::Duration};

use serde::Deserialize;

pub mod graphql;
pub mod websocket;

pub use graphql::{GraphqlArgs, GraphqlLayer, GraphqlSettings};
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
    /// Largest incoming gRPC message, in bytes.
    pub grpc_max_message_size: usize,
    /// How often the health monitor pings the database.
    pub health_interval: Duration,
    /// GraphQL limits, subscriptions and CORS.
    pub graphql: GraphqlSettings,
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
            grpc_max_message_size: 4 * 1024 * 1024,
            health_interval: Duration::from_secs(5),
            graphql: GraphqlSettings::default(),
            rate_limit_per_second: 50.0,
            rate_limit_burst: 100,
            trusted_proxies: Vec::new(),
            http_middleware: true,
        }
    }
}

/// Where the data lives and how the pool behaves (the seed's `DatabaseConfig`).
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// Which database to open.
    pub url: DatabaseUrl,
    /// Upper bound on pooled connections.
    pub max_connections: u32,
    /// Connections kept open even when idle; `None` lets the pool shrink to zero.
    pub min_idle: Option<u32>,
    /// A connection older than this is closed and replaced.
    pub max_lifetime: Option<Duration>,
    /// An idle connection older than this is closed.
    pub idle_timeout: Option<Duration>,
    /// How long to wait for a connection (new or from the pool) before failing.
    pub connect_timeout: Duration,
    /// Queries slower than this are counted as slow and logged.
    pub slow_query_threshold: Duration,
    /// SQLite only: how long a writer waits for a lock before failing.
    pub sqlite_busy_timeout: Duration,
    /// Apply pending migrations when the server starts.
    pub migrate_on_start: bool,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: DatabaseUrl::Sqlite(PathBuf::from("switchboard.db")),
            max_connections: 10,
            min_idle: Some(1),
            max_lifetime: Some(Duration::from_secs(30 * 60)),
            idle_timeout: Some(Duration::from_secs(10 * 60)),
            connect_timeout: Duration::from_secs(5),
            slow_query_threshold: Duration::from_millis(200),
            sqlite_busy_timeout: Duration::from_secs(5),
            migrate_on_start: true,
        }
    }
}

/// A parsed database location: `postgres://…` (or `postgresql://…`) selects PostgreSQL;
/// `sqlite://PATH`, `sqlite:PATH` or a bare path selects an embedded SQLite file.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// A PostgreSQL connection string, kept verbatim.
    Postgres(String),
    /// A SQLite database file (`:memory:` is refused: every pooled connection would see
    /// its own empty database).
    Sqlite(PathBuf),
}

impl DatabaseUrl {
    /// Short backend name used in logs and `/health`.
    pub fn backend(&self) -> &'static str {
        match self {
            DatabaseUrl::Postgres(_) => "postgres",
            DatabaseUrl::Sqlite(_) => "sqlite",
        }
    }
}

impl FromStr for DatabaseUrl {
    type Err = ConfigError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(ConfigError::invalid("database url", "it is empty"));
        }
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            // Parse now so a typo fails at start-up with a clear message, not on first use.
            raw.parse::<tokio_postgres::Config>()
                .map_err(|e| ConfigError::invalid("database url", e))?;
            return Ok(DatabaseUrl::Postgres(raw.to_owned()));
        }
        let path = raw
            .strip_prefix("sqlite://")
            .or_else(|| raw.strip_prefix("sqlite:"))
            .unwrap_or(raw);
        if let Some((scheme, _)) = raw.split_once("://") {
            if scheme != "sqlite" {
                return Err(ConfigError::invalid(
                    "database url",
                    format!("unsupported scheme `{scheme}://` (use postgres:// or a SQLite path)"),
                ));
            }
        }
        if path.is_empty() || path == ":memory:" {
            return Err(ConfigError::invalid(
                "database url",
                "SQLite needs a file path (in-memory databases are not shared across the pool)",
            ));
        }
        Ok(DatabaseUrl::Sqlite(PathBuf::from(path)))
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Postgres(url) => f.write_str(&redact_password(url)),
            DatabaseUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Hides the password of `scheme://user:password@host/…` so URLs can be logged.
fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
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

/// Optional overrides of [`DatabaseSettings`]; durations are humantime strings (`"30s"`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseLayer {
    /// See [`DatabaseSettings::url`].
    pub url: Option<String>,
    /// See [`DatabaseSettings::max_connections`].
    pub max_connections: Option<u32>,
    /// See [`DatabaseSettings::min_idle`]; `0` means none.
    pub min_idle: Option<u32>,
    /// See [`DatabaseSettings::max_lifetime`]; `"0s"` means unlimited.
    pub max_lifetime: Option<String>,
    /// See [`DatabaseSettings::idle_timeout`]; `"0s"` means unlimited.
    pub idle_timeout: Option<String>,
    /// See [`DatabaseSettings::connect_timeout`].
    pub connect_timeout: Option<String>,
    /// See [`DatabaseSettings::slow_query_threshold`].
    pub slow_query_threshold: Option<String>,
    /// See [`DatabaseSettings::sqlite_busy_timeout`].
    pub sqlite_busy_timeout: Option<String>,
    /// See [`DatabaseSettings::migrate_on_start`].
    pub migrate_on_start: Option<bool>,
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
            let valid = ["http://", "https://"]
                .iter()
                .any(|scheme| endpoint.len() > scheme.len() && endpoint.starts_with(scheme));
            if !valid {
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
        Ok(self)
    }
}

impl DatabaseSettings {
    fn apply(mut self, layer: DatabaseLayer) -> Result<Self, ConfigError> {
        if let Some(url) = layer.url {
            self.url = url.parse()?;
        }
        if let Some(max) = layer.max_connections {
            self.max_connections = at_least("database max connections", max as usize, 1)? as u32;
        }
        if let Some(min) = layer.min_idle {
            self.min_idle = (min > 0).then_some(min);
        }
        if let Some(raw) = layer.max_lifetime {
            self.max_lifetime = nonzero(parse_duration("database max lifetime", &raw)?);
        }
        if let Some(raw) = layer.idle_timeout {
            self.idle_timeout = nonzero(parse_duration("database idle timeout", &raw)?);
        }
        if let Some(raw) = layer.connect_timeout {
            self.connect_timeout = positive("database connect timeout", &raw)?;
        }
        if let Some(raw) = layer.slow_query_threshold {
            self.slow_query_threshold = parse_duration("database slow query threshold", &raw)?;
        }
        if let Some(raw) = layer.sqlite_busy_timeout {
            self.sqlite_busy_timeout = parse_duration("sqlite busy timeout", &raw)?;
        }
        if let Some(migrate) = layer.migrate_on_start {
            self.migrate_on_start = migrate;
        }
        if let Some(min) = self.min_idle {
            if min > self.max_connections {
                return Err(ConfigError::invalid(
                    "database min idle",
                    format!(
                        "{min} is more than max connections ({})",
                        self.max_connections
                    ),
                ));
            }
        }
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

fn nonzero(duration: Duration) -> Option<Duration> {
    (!duration.is_zero()).then_some(duration)
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
    fn database_urls_select_the_backend() {
        let cases = [
            ("postgres://u@localhost/db", "postgres"),
            ("postgresql://u:p@localhost:5433/db", "postgres"),
            ("switchboard.db", "sqlite"),
            ("sqlite://data/x.db", "sqlite"),
            ("sqlite:x.db", "sqlite"),
        ];
        for (raw, backend) in cases {
            let url: DatabaseUrl = raw.parse().unwrap_or_else(|e| panic!("{raw}: {e}"));
            assert_eq!(url.backend(), backend, "{raw}");
        }
    }

    #[test]
    fn unusable_database_urls_are_rejected_with_a_reason() {
        for raw in [
            "",
            "mysql://x/y",
            ":memory:",
            "sqlite://",
            "postgres://host:notaport/db",
        ] {
            let err = raw.parse::<DatabaseUrl>().expect_err(raw).to_string();
            assert!(err.starts_with("invalid database url"), "{raw}: {err}");
        }
    }

    #[test]
    fn postgres_passwords_are_not_displayed() {
        let url: DatabaseUrl = "postgres://app:hunter2@db/main".parse().unwrap();
        assert_eq!(url.to_string(), "postgres://app:***@db/main");
    }

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
