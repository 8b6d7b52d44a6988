//! Database settings: which database to open and how the pool behaves.

use std::{fmt, path::PathBuf, str::FromStr, time::Duration};

use serde::Deserialize;

use super::{at_least, parse_duration, positive, ConfigError};

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
    /// PostgreSQL databases that hold the users, posts and history, spread by key; empty:
    /// everything lives in the primary (`url`). With shards the primary keeps the shard
    /// map and the transaction coordinator's decision log.
    pub shards: Vec<DatabaseUrl>,
    /// How often in-doubt prepared transactions on the shards are resolved.
    pub tx_recovery_interval: Duration,
    /// A prepared transaction younger than this is left to the server running it.
    pub tx_in_doubt_grace: Duration,
    /// How sagas (a user's deletion) are run; their log is in the primary.
    pub saga: crate::actors::saga::SagaConfig,
    /// Users kept in memory for `GetUser` / GraphQL `user` (0: no cache).
    pub user_cache_size: usize,
    /// How long a cached user may be served before it is read again.
    pub user_cache_ttl: Duration,
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
            shards: Vec::new(),
            tx_recovery_interval: Duration::from_secs(30),
            tx_in_doubt_grace: Duration::from_secs(10),
            saga: crate::actors::saga::SagaConfig::default(),
            user_cache_size: 10_000,
            user_cache_ttl: Duration::from_secs(60),
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
    /// Where the database is, without credentials: `host:port/dbname` for PostgreSQL
    /// (what the shard map records and compares), the path for SQLite.
    pub fn location(&self) -> String {
        match self {
            DatabaseUrl::Postgres(url) => match url.parse::<tokio_postgres::Config>() {
                Ok(config) => {
                    let host = config
                        .get_hosts()
                        .iter()
                        .map(|host| match host {
                            tokio_postgres::config::Host::Tcp(name) => name.clone(),
                            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
                        })
                        .collect::<Vec<_>>()
                        .join(",");
                    let port = config.get_ports().first().copied().unwrap_or(5432);
                    let user = config.get_user().unwrap_or("");
                    let db = config.get_dbname().unwrap_or(user);
                    format!("{host}:{port}/{db}")
                }
                Err(_) => redact_password(url),
            },
            DatabaseUrl::Sqlite(path) => path.display().to_string(),
        }
    }

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
    /// See [`DatabaseSettings::shards`].
    pub shards: Option<Vec<String>>,
    /// See [`DatabaseSettings::tx_recovery_interval`].
    pub tx_recovery_interval: Option<String>,
    /// See [`DatabaseSettings::tx_in_doubt_grace`].
    pub tx_in_doubt_grace: Option<String>,
    /// See [`SagaConfig::lease`](crate::actors::saga::SagaConfig::lease).
    pub saga_lease: Option<String>,
    /// See [`SagaConfig::resume_interval`](crate::actors::saga::SagaConfig::resume_interval).
    pub saga_resume_interval: Option<String>,
    /// See [`SagaConfig::step_timeout`](crate::actors::saga::SagaConfig::step_timeout).
    pub saga_step_timeout: Option<String>,
    /// See [`SagaConfig::retry_initial`](crate::actors::saga::SagaConfig::retry_initial).
    pub saga_retry_initial: Option<String>,
    /// See [`SagaConfig::retry_max`](crate::actors::saga::SagaConfig::retry_max).
    pub saga_retry_max: Option<String>,
    /// See [`SagaConfig::stuck_after`](crate::actors::saga::SagaConfig::stuck_after).
    pub saga_stuck_after: Option<u32>,
    /// See [`SagaConfig::retention`](crate::actors::saga::SagaConfig::retention).
    pub saga_retention: Option<String>,
    /// See [`DatabaseSettings::user_cache_size`].
    pub user_cache_size: Option<usize>,
    /// See [`DatabaseSettings::user_cache_ttl`] (e.g. `"60s"`).
    pub user_cache_ttl: Option<String>,
}

impl DatabaseSettings {
    pub(super) fn apply(mut self, layer: DatabaseLayer) -> Result<Self, ConfigError> {
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
        if let Some(raw) = layer.tx_recovery_interval {
            self.tx_recovery_interval = positive("transaction recovery interval", &raw)?;
        }
        if let Some(raw) = layer.tx_in_doubt_grace {
            self.tx_in_doubt_grace = parse_duration("transaction in-doubt grace", &raw)?;
        }
        if let Some(raw) = layer.saga_lease {
            self.saga.lease = positive("saga lease", &raw)?;
            if self.saga.lease < Duration::from_secs(1) {
                return Err(ConfigError::invalid(
                    "saga lease",
                    format!("{raw} is too short: at least 1s"),
                ));
            }
        }
        if let Some(raw) = layer.saga_resume_interval {
            self.saga.resume_interval = positive("saga resume interval", &raw)?;
        }
        if let Some(raw) = layer.saga_step_timeout {
            self.saga.step_timeout = positive("saga step timeout", &raw)?;
        }
        if let Some(raw) = layer.saga_retry_initial {
            self.saga.retry_initial = positive("saga retry initial delay", &raw)?;
        }
        if let Some(raw) = layer.saga_retry_max {
            self.saga.retry_max = positive("saga retry max delay", &raw)?;
        }
        if self.saga.retry_initial > self.saga.retry_max {
            return Err(ConfigError::invalid(
                "saga retry delays",
                "the initial delay is longer than the max delay",
            ));
        }
        if let Some(raw) = layer.saga_retention {
            self.saga.retention = positive("saga retention", &raw)?;
        }
        if let Some(n) = layer.saga_stuck_after {
            self.saga.stuck_after = at_least("saga stuck-after attempts", n as usize, 1)? as u32;
        }
        if let Some(size) = layer.user_cache_size {
            self.user_cache_size = size;
        }
        if let Some(raw) = layer.user_cache_ttl {
            self.user_cache_ttl = positive("user cache ttl", &raw)?;
        }
        if let Some(shards) = layer.shards {
            self.shards = shards
                .iter()
                .filter(|raw| !raw.trim().is_empty())
                .map(|raw| raw.parse())
                .collect::<Result<_, _>>()
                .map_err(|e: ConfigError| ConfigError::invalid("database shards", e))?;
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

impl DatabaseSettings {
    /// Checks that the shards can work: all PostgreSQL, a PostgreSQL primary, none twice.
    /// Called once every layer is applied (the primary may come from a later layer).
    pub fn check_shards(&self) -> Result<(), ConfigError> {
        if self.shards.is_empty() {
            return Ok(());
        }
        if let DatabaseUrl::Sqlite(path) = &self.url {
            return Err(ConfigError::invalid(
                "database shards",
                format!(
                    "shards need PostgreSQL, but the primary database (--database-url) is the \
                     SQLite file {}; set --database-url to a postgres:// URL",
                    path.display()
                ),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for shard in &self.shards {
            if let DatabaseUrl::Sqlite(path) = shard {
                return Err(ConfigError::invalid(
                    "database shards",
                    format!(
                        "every shard must be a postgres:// URL (got SQLite {})",
                        path.display()
                    ),
                ));
            }
            if !seen.insert(shard.location()) {
                return Err(ConfigError::invalid(
                    "database shards",
                    format!("{shard} is listed twice"),
                ));
            }
        }
        Ok(())
    }
}

fn nonzero(duration: Duration) -> Option<Duration> {
    (!duration.is_zero()).then_some(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_need_postgres_everywhere_and_each_once() {
        let pg = |db: &str| format!("postgres://u:secret@db.example:5433/{db}");
        let settings = |primary: &str, shards: Vec<String>| {
            DatabaseSettings::default()
                .apply(DatabaseLayer {
                    url: Some(primary.to_owned()),
                    shards: Some(shards),
                    ..DatabaseLayer::default()
                })
                .unwrap()
        };
        assert!(settings(&pg("main"), vec![pg("s1"), pg("s2")])
            .check_shards()
            .is_ok());
        let sqlite_primary = settings("x.db", vec![pg("s1")]).check_shards().unwrap_err();
        assert!(
            sqlite_primary.to_string().contains("SQLite file x.db"),
            "{sqlite_primary}"
        );
        let sqlite_shard = settings(&pg("main"), vec!["s.db".into()])
            .check_shards()
            .unwrap_err();
        assert!(
            sqlite_shard.to_string().contains("postgres://"),
            "{sqlite_shard}"
        );
        let twice = settings(
            &pg("main"),
            vec![pg("s1"), pg("s1").replace("secret", "other")],
        )
        .check_shards()
        .unwrap_err();
        assert!(twice.to_string().contains("listed twice"), "{twice}");
        assert!(
            !twice.to_string().contains("secret"),
            "no password: {twice}"
        );
        assert_eq!(
            "postgres://u:pw@h:5433/shard_1"
                .parse::<DatabaseUrl>()
                .unwrap()
                .location(),
            "h:5433/shard_1"
        );
    }

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
}
