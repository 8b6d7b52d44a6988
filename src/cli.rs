//! The `switchboard` command line: `serve` (the default), `migrate`, `token`, `bench`.
//!
//! Every setting is a flag with an environment fallback. Server flags go before any
//! subcommand or after `serve`; `migrate` and `token` take only the few settings they use
//! (config file, database, secret), so their `--help` lists just those.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::{
    auth::JwtAuth,
    config::{
        parse_duration, ClusterArgs, DatabaseLayer, DatabaseUrl, GraphqlArgs, HistoryArgs,
        LogFormat, LogLayer, Settings, SettingsLayer, WsArgs,
    },
    db::migrate,
    domain::UserName,
    startup::Application,
    telemetry,
};

/// Switchboard: a realtime server for chat and live apps.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about)]
pub struct Cli {
    /// Settings (flags beat environment variables, which beat the config file).
    #[command(flatten)]
    pub settings: SettingsArgs,
    /// What to do; `serve` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server (HTTP, WebSocket, GraphQL and gRPC).
    Serve {
        /// Settings (flags beat environment variables, which beat the config file).
        #[command(flatten)]
        settings: Box<SettingsArgs>,
    },
    /// Manage the database schema.
    Migrate {
        /// What to do with the migrations.
        #[command(subcommand)]
        action: MigrateAction,
        /// The database to work on.
        #[command(flatten)]
        database: MigrateArgs,
    },
    /// Print a signed HS256 token for the configured secret.
    Token {
        /// Where the secret comes from.
        #[command(flatten)]
        secret: TokenArgs,
        /// The token's subject (the user id it speaks for).
        #[arg(long)]
        sub: String,
        /// How long the token is valid, e.g. `30m`, `1h`, `7d`.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
        /// Optional role claim: `admin`, or `service` for the server API.
        #[arg(long)]
        role: Option<String>,
        /// Optional display name claim (`name`), shown beside the subject in chat.
        #[arg(long)]
        name: Option<String>,
    },
    /// Inspect the shards (`--database-shards`).
    Shards {
        /// What to show.
        #[command(subcommand)]
        action: ShardsAction,
        /// The primary and the shards.
        #[command(flatten)]
        database: MigrateArgs,
    },
    /// Load-test a server: WebSocket fanout or gRPC calls.
    Bench {
        /// What to measure.
        #[command(subcommand)]
        target: crate::loadtest::BenchTarget,
    },
}

/// `switchboard migrate …`
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum MigrateAction {
    /// Apply every pending migration.
    Run,
    /// Revert the most recent migration.
    Revert,
    /// List migrations and whether each is applied.
    Status,
}

/// `switchboard shards …`
#[derive(Debug, Clone, Copy, Subcommand)]
pub enum ShardsAction {
    /// Each shard's location, reachability, slots, row counts and prepared transactions.
    Status,
}

/// What `migrate` reads: the config file and the database settings (given before or
/// after the action).
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// TOML file with settings (lowest precedence after the defaults).
    #[arg(long, env = "SWITCHBOARD_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// `postgres://…` or a SQLite file path [default: switchboard.db].
    #[arg(long, env = "DATABASE_URL", global = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// Comma-separated PostgreSQL shard URLs, migrated too [default: none].
    #[arg(
        long,
        env = "SWITCHBOARD_DATABASE_SHARDS",
        global = true,
        value_delimiter = ',',
        value_name = "URLS"
    )]
    pub database_shards: Option<Vec<String>>,
    /// Give up connecting after this [default: 5s].
    #[arg(
        long,
        env = "SWITCHBOARD_DB_CONNECT_TIMEOUT",
        global = true,
        value_name = "DURATION"
    )]
    pub db_connect_timeout: Option<String>,
    /// SQLite: wait this long for a write lock [default: 5s].
    #[arg(
        long,
        env = "SWITCHBOARD_SQLITE_BUSY_TIMEOUT",
        global = true,
        value_name = "DURATION"
    )]
    pub sqlite_busy_timeout: Option<String>,
}

impl MigrateArgs {
    fn settings(&self) -> SettingsArgs {
        SettingsArgs {
            config: self.config.clone(),
            database_url: self.database_url.clone(),
            database_shards: self.database_shards.clone(),
            db_connect_timeout: self.db_connect_timeout.clone(),
            sqlite_busy_timeout: self.sqlite_busy_timeout.clone(),
            ..SettingsArgs::default()
        }
    }
}

/// What `token` reads: the config file and the secret.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// TOML file with settings (for `jwt_secret`).
    #[arg(long, env = "SWITCHBOARD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// HS256 secret to sign with (at least 16 bytes).
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
}

impl TokenArgs {
    fn settings(&self) -> SettingsArgs {
        SettingsArgs {
            config: self.config.clone(),
            jwt_secret: self.jwt_secret.clone(),
            ..SettingsArgs::default()
        }
    }
}

/// Flags and environment variables for every setting.
#[derive(Debug, Default, Args)]
pub struct SettingsArgs {
    /// TOML file with settings (lowest precedence after the defaults).
    #[arg(long, env = "SWITCHBOARD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// HTTP listen address [default: 127.0.0.1:8080].
    #[arg(long, env = "SWITCHBOARD_HTTP_ADDR", value_name = "IP:PORT")]
    pub http_addr: Option<String>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long, env = "SWITCHBOARD_GRPC_ADDR", value_name = "IP:PORT")]
    pub grpc_addr: Option<String>,
    /// `postgres://…` or a SQLite file path [default: switchboard.db].
    #[arg(long, env = "DATABASE_URL", value_name = "URL")]
    pub database_url: Option<String>,
    /// Comma-separated PostgreSQL URLs the data is spread over (the primary keeps the
    /// shard map) [default: none].
    #[arg(
        long,
        env = "SWITCHBOARD_DATABASE_SHARDS",
        value_delimiter = ',',
        value_name = "URLS"
    )]
    pub database_shards: Option<Vec<String>>,
    /// How often in-doubt two-phase-commit transactions are resolved [default: 30s].
    #[arg(
        long,
        env = "SWITCHBOARD_TX_RECOVERY_INTERVAL",
        value_name = "DURATION"
    )]
    pub tx_recovery_interval: Option<String>,
    /// Prepared transactions younger than this are left to their coordinator [default: 10s].
    #[arg(long, env = "SWITCHBOARD_TX_IN_DOUBT_GRACE", value_name = "DURATION")]
    pub tx_in_doubt_grace: Option<String>,
    /// How long a server holds a saga without renewing; another may resume it after
    /// that [default: 15s].
    #[arg(long, env = "SWITCHBOARD_SAGA_LEASE", value_name = "DURATION")]
    pub saga_lease: Option<String>,
    /// How often unfinished sagas with an expired lease are resumed [default: 5s].
    #[arg(
        long,
        env = "SWITCHBOARD_SAGA_RESUME_INTERVAL",
        value_name = "DURATION"
    )]
    pub saga_resume_interval: Option<String>,
    /// Time limit of one attempt of a saga step [default: 60s].
    #[arg(long, env = "SWITCHBOARD_SAGA_STEP_TIMEOUT", value_name = "DURATION")]
    pub saga_step_timeout: Option<String>,
    /// First retry delay of a failed saga step; doubles each attempt [default: 200ms].
    #[arg(long, env = "SWITCHBOARD_SAGA_RETRY_INITIAL", value_name = "DURATION")]
    pub saga_retry_initial: Option<String>,
    /// Longest retry delay of a failed saga step [default: 30s].
    #[arg(long, env = "SWITCHBOARD_SAGA_RETRY_MAX", value_name = "DURATION")]
    pub saga_retry_max: Option<String>,
    /// Failed attempts of one step after which a saga is marked stuck [default: 8].
    #[arg(long, env = "SWITCHBOARD_SAGA_STUCK_AFTER", value_name = "N")]
    pub saga_stuck_after: Option<u32>,
    /// How long finished sagas (and the marks refusing deleted users' tokens) are kept
    /// [default: 7d].
    #[arg(long, env = "SWITCHBOARD_SAGA_RETENTION", value_name = "DURATION")]
    pub saga_retention: Option<String>,
    /// Users kept in memory for GetUser and GraphQL `user`; 0 turns the cache off
    /// [default: 10000].
    #[arg(long, env = "SWITCHBOARD_USER_CACHE_SIZE", value_name = "N")]
    pub user_cache_size: Option<usize>,
    /// How long a cached user may be served before it is read again [default: 60s].
    #[arg(long, env = "SWITCHBOARD_USER_CACHE_TTL", value_name = "DURATION")]
    pub user_cache_ttl: Option<String>,
    /// HS256 secret for tokens (at least 16 bytes); random per run when unset.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Log format [default: pretty].
    #[arg(long, env = "SWITCHBOARD_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter, e.g. `info` or `switchboard=debug` [default: RUST_LOG, else info].
    #[arg(long, env = "SWITCHBOARD_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// Export spans over OTLP/HTTP to this collector, e.g. `http://localhost:4318`
    /// [default: off].
    #[arg(long, env = "SWITCHBOARD_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Graceful shutdown limit [default: 10s].
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_TIMEOUT", value_name = "DURATION")]
    pub shutdown_timeout: Option<String>,
    /// Maximum pooled database connections [default: 10].
    #[arg(long, env = "SWITCHBOARD_DB_MAX_CONNECTIONS", value_name = "N")]
    pub db_max_connections: Option<u32>,
    /// Connections kept open when idle; 0 for none [default: 1].
    #[arg(long, env = "SWITCHBOARD_DB_MIN_IDLE", value_name = "N")]
    pub db_min_idle: Option<u32>,
    /// Replace connections older than this; 0s for never [default: 30m].
    #[arg(long, env = "SWITCHBOARD_DB_MAX_LIFETIME", value_name = "DURATION")]
    pub db_max_lifetime: Option<String>,
    /// Close connections idle longer than this; 0s for never [default: 10m].
    #[arg(long, env = "SWITCHBOARD_DB_IDLE_TIMEOUT", value_name = "DURATION")]
    pub db_idle_timeout: Option<String>,
    /// Give up connecting (or waiting for a pooled connection) after this [default: 5s].
    #[arg(long, env = "SWITCHBOARD_DB_CONNECT_TIMEOUT", value_name = "DURATION")]
    pub db_connect_timeout: Option<String>,
    /// Queries at least this slow are counted and logged [default: 200ms].
    #[arg(long, env = "SWITCHBOARD_DB_SLOW_QUERY", value_name = "DURATION")]
    pub db_slow_query: Option<String>,
    /// SQLite: wait this long for a write lock [default: 5s].
    #[arg(long, env = "SWITCHBOARD_SQLITE_BUSY_TIMEOUT", value_name = "DURATION")]
    pub sqlite_busy_timeout: Option<String>,
    /// Apply pending migrations at start-up [default: true].
    #[arg(long, env = "SWITCHBOARD_MIGRATE_ON_START", value_name = "BOOL")]
    pub migrate_on_start: Option<bool>,
    /// New users a StreamUsers call may hold for a client that does not read [default: 1024].
    #[arg(long, env = "SWITCHBOARD_GRPC_STREAM_BUFFER", value_name = "N")]
    pub grpc_stream_buffer: Option<usize>,
    /// Concurrent StreamUsers calls one client (token subject) may hold [default: 16].
    #[arg(
        long,
        env = "SWITCHBOARD_GRPC_MAX_STREAMS_PER_CLIENT",
        value_name = "N"
    )]
    pub grpc_max_streams_per_client: Option<usize>,
    /// Largest incoming gRPC message, in bytes [default: 4194304].
    #[arg(long, env = "SWITCHBOARD_GRPC_MAX_MESSAGE_SIZE", value_name = "BYTES")]
    pub grpc_max_message_size: Option<usize>,
    /// How often the database is pinged for gRPC health [default: 5s].
    #[arg(long, env = "SWITCHBOARD_HEALTH_INTERVAL", value_name = "DURATION")]
    pub health_interval: Option<String>,
    /// HTTP requests per second per client (JWT subject, else IP) [default: 50].
    #[arg(long, env = "SWITCHBOARD_RATE_LIMIT", value_name = "PER_SECOND")]
    pub rate_limit: Option<f64>,
    /// HTTP requests per client in a burst [default: 100].
    #[arg(long, env = "SWITCHBOARD_RATE_LIMIT_BURST", value_name = "N")]
    pub rate_limit_burst: Option<u32>,
    /// Comma-separated proxy IPs whose X-Forwarded-For is trusted [default: none].
    #[arg(
        long,
        env = "SWITCHBOARD_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_name = "IPS"
    )]
    pub trusted_proxies: Option<Vec<String>>,
    /// Run the HTTP middleware chain; `false` only to measure its cost [default: true].
    #[arg(long, env = "SWITCHBOARD_HTTP_MIDDLEWARE", value_name = "BOOL")]
    pub http_middleware: Option<bool>,
    /// WebSocket policies and limits.
    #[command(flatten)]
    pub websocket: WsArgs,
    /// GraphQL limits and CORS.
    #[command(flatten)]
    pub graphql: GraphqlArgs,
    /// Chat history storage and retention.
    #[command(flatten)]
    pub history: HistoryArgs,
    /// Cluster mode over Redis.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

impl SettingsArgs {
    /// The layer these flags and variables form.
    fn layer(&self) -> SettingsLayer {
        SettingsLayer {
            http_addr: self.http_addr.clone(),
            grpc_addr: self.grpc_addr.clone(),
            jwt_secret: self.jwt_secret.clone(),
            shutdown_timeout: self.shutdown_timeout.clone(),
            grpc_stream_buffer: self.grpc_stream_buffer,
            grpc_max_streams_per_client: self.grpc_max_streams_per_client,
            grpc_max_message_size: self.grpc_max_message_size,
            health_interval: self.health_interval.clone(),
            rate_limit_per_second: self.rate_limit,
            rate_limit_burst: self.rate_limit_burst,
            trusted_proxies: self.trusted_proxies.clone(),
            http_middleware: self.http_middleware,
            log: LogLayer {
                format: self.log_format,
                level: self.log_level.clone(),
                otlp_endpoint: self.otlp_endpoint.clone(),
            },
            database: DatabaseLayer {
                url: self.database_url.clone(),
                max_connections: self.db_max_connections,
                min_idle: self.db_min_idle,
                max_lifetime: self.db_max_lifetime.clone(),
                idle_timeout: self.db_idle_timeout.clone(),
                connect_timeout: self.db_connect_timeout.clone(),
                slow_query_threshold: self.db_slow_query.clone(),
                sqlite_busy_timeout: self.sqlite_busy_timeout.clone(),
                migrate_on_start: self.migrate_on_start,
                shards: self.database_shards.clone(),
                tx_recovery_interval: self.tx_recovery_interval.clone(),
                tx_in_doubt_grace: self.tx_in_doubt_grace.clone(),
                saga_lease: self.saga_lease.clone(),
                saga_resume_interval: self.saga_resume_interval.clone(),
                saga_step_timeout: self.saga_step_timeout.clone(),
                saga_retry_initial: self.saga_retry_initial.clone(),
                saga_retry_max: self.saga_retry_max.clone(),
                saga_stuck_after: self.saga_stuck_after,
                saga_retention: self.saga_retention.clone(),
                user_cache_size: self.user_cache_size,
                user_cache_ttl: self.user_cache_ttl.clone(),
            },
            websocket: self.websocket.layer(),
            graphql: self.graphql.layer(),
            history: self.history.layer(),
            cluster: self.cluster.layer(),
        }
    }

    /// Defaults, then the config file (if any), then these flags and variables.
    pub fn load(&self) -> anyhow::Result<Settings> {
        self.load_under(&SettingsArgs::default())
    }

    /// As [`SettingsArgs::load`], with a subcommand's own flags (`more`) applied last: a
    /// setting given both before and after the subcommand takes the later value.
    pub fn load_under(&self, more: &SettingsArgs) -> anyhow::Result<Settings> {
        let mut settings = Settings::default();
        if let Some(path) = more.config.as_ref().or(self.config.as_ref()) {
            settings = settings.apply(SettingsLayer::from_file(path)?)?;
        }
        Ok(settings.apply(self.layer())?.apply(more.layer())?)
    }
}

fn parse_ttl(raw: &str) -> Result<Duration, String> {
    let ttl = parse_duration("ttl", raw).map_err(|e| e.to_string())?;
    if ttl.is_zero() {
        return Err("the ttl must be greater than zero".into());
    }
    Ok(ttl)
}

/// Runs the parsed command line. Errors come back for `main` to print as one line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Bench { target }) = cli.command {
        // The load tool is a client: server settings do not apply.
        return crate::loadtest::run(target);
    }
    match cli.command {
        None => serve(cli.settings.load()?),
        Some(Command::Serve { settings }) => serve(cli.settings.load_under(&settings)?),
        Some(Command::Migrate { action, database }) => {
            migrate(cli.settings.load_under(&database.settings())?, action)
        }
        Some(Command::Shards {
            action: ShardsAction::Status,
            database,
        }) => shards_status(cli.settings.load_under(&database.settings())?),
        Some(Command::Token {
            secret,
            sub,
            ttl,
            role,
            name,
        }) => {
            let settings = cli.settings.load_under(&secret.settings())?;
            let secret = settings.jwt_secret.context(
                "no JWT secret configured: set --jwt-secret or SWITCHBOARD_JWT_SECRET \
                 (a server without one generates a new secret at every start)",
            )?;
            if let Some(name) = &name {
                UserName::parse(name).map_err(|e| anyhow::anyhow!("--name: {}", e.reason))?;
            }
            let token =
                JwtAuth::new(&secret).issue_named(&sub, ttl, role.as_deref(), name.as_deref())?;
            println!("{token}");
            Ok(())
        }
        Some(Command::Bench { .. }) => unreachable!("handled above"),
    }
}

fn serve(settings: Settings) -> anyhow::Result<()> {
    telemetry::init(&settings.log);
    telemetry::install_panic_hook();
    actix_rt::System::new().block_on(async move {
        let signal = shutdown_signal()?;
        let app = Application::build(settings).await?;
        let result = app.run_until_stopped(signal).await;
        telemetry::shutdown();
        result?;
        Ok(())
    })
}

fn migrate(settings: Settings, action: MigrateAction) -> anyhow::Result<()> {
    telemetry::init(&settings.log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let db = settings.database;
    if let (MigrateAction::Status | MigrateAction::Revert, DatabaseUrl::Sqlite(path)) =
        (action, &db.url)
    {
        // Opening a SQLite file creates it: a typo'd path would report an empty new
        // database instead of the one meant.
        if !path.exists() {
            anyhow::bail!(
                "no SQLite database at {}: nothing to report or revert (`switchboard migrate run` or starting the server creates it)",
                path.display()
            );
        }
    }
    db.check_shards()?;
    // The primary, then every shard (the same migrations everywhere).
    let mut targets = vec![(format!("primary {}", db.url.location()), db.clone())];
    for (i, url) in db.shards.iter().enumerate() {
        let mut shard = db.clone();
        shard.url = url.clone();
        shard.shards = Vec::new();
        targets.push((format!("shard {i} {}", url.location()), shard));
    }
    let sharded = targets.len() > 1;
    runtime.block_on(async move {
        for (name, db) in targets {
            let indent = if sharded {
                println!("{name}:");
                "  "
            } else {
                ""
            };
            match action {
                MigrateAction::Run => {
                    let applied = migrate::run_pending(&db)
                        .await
                        .with_context(|| name.clone())?;
                    if applied.is_empty() {
                        println!("{indent}no pending migrations");
                    }
                    for migration in applied {
                        println!("{indent}applied {migration}");
                    }
                }
                MigrateAction::Revert => {
                    match migrate::revert_last(&db)
                        .await
                        .with_context(|| name.clone())?
                    {
                        Some(migration) => println!("{indent}reverted {migration}"),
                        None => println!("{indent}nothing to revert"),
                    }
                }
                MigrateAction::Status => {
                    for state in migrate::status(&db).await.with_context(|| name.clone())? {
                        let mark = if state.applied { "applied" } else { "pending" };
                        println!("{indent}{mark:8} {}", state.name);
                    }
                }
            }
        }
        Ok(())
    })
}

fn shards_status(settings: Settings) -> anyhow::Result<()> {
    let db = settings.database;
    db.check_shards()?;
    if db.shards.is_empty() {
        anyhow::bail!(
            "no shards configured: set --database-shards (or SWITCHBOARD_DATABASE_SHARDS)"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let report = runtime.block_on(crate::db::shards::shard_status(&db))?;
    println!(
        "{:<5} {:<32} {:<9} {:>5} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "shard",
        "location",
        "reachable",
        "slots",
        "users",
        "posts",
        "emails",
        "messages",
        "prepared"
    );
    for s in &report {
        println!(
            "{:<5} {:<32} {:<9} {:>5} {:>8} {:>8} {:>8} {:>9} {:>8}",
            s.index,
            s.location,
            if s.reachable { "yes" } else { "NO" },
            s.slots,
            s.users,
            s.posts,
            s.email_index,
            s.messages,
            s.prepared
        );
        if let Some(error) = &s.error {
            println!("      {error}");
        }
    }
    if report.iter().any(|s| !s.reachable) {
        anyhow::bail!("some shards are unreachable");
    }
    Ok(())
}

/// Registers for SIGINT (Ctrl-C) and SIGTERM at once — before the server announces its
/// addresses, so a signal sent right after cannot kill it ungracefully — and returns a
/// future that resolves on either. Must be called inside a tokio runtime.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => tracing::info!("received SIGINT"),
                _ = terminate.recv() => tracing::info!("received SIGTERM"),
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
