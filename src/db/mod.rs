//! The data layer: one [`Database`] value per database, over PostgreSQL or embedded SQLite.
//!
//! Both backends sit behind diesel-async and a bb8 pool. Queries are written once in
//! [`repo`] inside the [`with_conn!`] macro, which the compiler checks against both
//! backends. PostgreSQL talks through `tokio-postgres` (no libpq); SQLite is bundled and
//! runs through `SyncConnectionWrapper`, which moves each statement to tokio's blocking
//! pool so no actor or HTTP worker thread ever waits on disk.
//!
//! A `Database` is a cheap-to-clone value, never a global: several can be open at once.

mod error;
pub mod migrate;
mod models;
mod probe;
pub mod repo;
pub mod schema;
pub mod shards;
mod stats;

use std::{path::Path, sync::Arc, time::Duration};

use diesel::{connection::Connection as _, connection::SimpleConnection, SqliteConnection};
use diesel_async::{
    pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, SetupCallback},
    sync_connection_wrapper::SyncConnectionWrapper,
    AsyncConnection, AsyncPgConnection,
};
use futures_util::FutureExt;
use serde::Serialize;

pub(crate) use error::is_unique_violation;
pub use error::DbError;
pub(crate) use models::UserRow;
pub use probe::Probe;

use crate::actors::events::{Change, Events, PostCreated, UsersChanged};
pub use repo::{PageCursor, Reservation, UserPage, MAX_PAGE_SIZE, REDACTED_SENDER};
pub use stats::{DbStats, DbStatsSnapshot, LatencyBucket, LATENCY_BUCKETS_MS};

use crate::config::{DatabaseSettings, DatabaseUrl};
use stats::QueryObserver;

/// The SQLite connection type used by the pool.
pub(crate) type SqliteConn = SyncConnectionWrapper<SqliteConnection>;
pub(crate) type PgManager = AsyncDieselConnectionManager<AsyncPgConnection>;
type SqliteManager = AsyncDieselConnectionManager<SqliteConn>;

/// Which database engine a [`Database`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// PostgreSQL over the network.
    Postgres,
    /// An embedded SQLite file.
    Sqlite,
}

#[derive(Clone)]
enum Pool {
    Postgres(bb8::Pool<PgManager>),
    Sqlite(bb8::Pool<SqliteManager>),
}

/// A pooled connection of either backend. Use it through [`with_conn!`].
// Lives on the stack for one repository call; boxing would cost an allocation per call.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Conn {
    Postgres(bb8::PooledConnection<'static, PgManager>),
    Sqlite(bb8::PooledConnection<'static, SqliteManager>),
}

/// Runs `$body` with `$conn` bound to the backend's `&mut` connection, once per backend.
/// This is how each query is written once and serves both PostgreSQL and SQLite.
macro_rules! with_conn {
    ($pooled:expr, |$conn:ident| $body:expr) => {
        match $pooled {
            $crate::db::Conn::Postgres(pooled) => {
                let $conn: &mut ::diesel_async::AsyncPgConnection = &mut **pooled;
                $body
            }
            $crate::db::Conn::Sqlite(pooled) => {
                let $conn: &mut $crate::db::SqliteConn = &mut **pooled;
                $body
            }
        }
    };
}
pub(crate) use with_conn;

/// A pool of connections to one database plus its query statistics. Clone freely.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    stats: Arc<DbStats>,
    max_connections: u32,
    connect_timeout: Duration,
    /// Told about users and posts after their writes commit (the `Events` actor).
    created: Option<actix::Addr<Events>>,
    /// Where `get_user_cached` looks first.
    cache: Option<actix::Addr<crate::actors::user_cache::UserCache>>,
    /// Where health probes connect.
    probe: probe::Target,
    /// With `--database-shards`: where users, posts and the email index live (this
    /// database, the primary, keeps the shard map and the decision log).
    sharding: Option<Arc<shards::Sharding>>,
    /// Set on a shard's pool: its index, named in its connection errors.
    shard: Option<usize>,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("backend", &self.backend())
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

/// Pool occupancy, for `/health`.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    /// Configured upper bound.
    pub max_connections: u32,
    /// Connections currently open.
    pub open: u32,
    /// Open connections not lent out.
    pub idle: u32,
    /// Connections lent out right now.
    pub in_use: u32,
    /// Checkouts that had to wait for a connection, since start.
    pub waited: u64,
    /// Checkouts that gave up waiting, since start.
    pub timed_out: u64,
}

impl Backend {
    /// `postgres` or `sqlite`.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }
}

impl Database {
    /// Opens a pool to the configured database, checking first that one connection can be
    /// established within the connect timeout, so a bad URL fails at start-up with the
    /// database's own error message.
    ///
    /// Call it inside a multi-threaded tokio runtime that outlives the pool: PostgreSQL
    /// connection drivers are spawned on it.
    #[tracing::instrument(name = "db_connect", skip_all, fields(backend = settings.url.backend()))]
    pub async fn connect(settings: &DatabaseSettings) -> Result<Self, DbError> {
        let stats = Arc::new(DbStats::new(settings.slow_query_threshold));
        let probe = match &settings.url {
            DatabaseUrl::Postgres(url) => probe::Target::Postgres {
                url: url.clone(),
                runtime: tokio::runtime::Handle::current(),
                connect_timeout: settings.connect_timeout,
            },
            DatabaseUrl::Sqlite(path) => probe::Target::Sqlite {
                path: path.to_string_lossy().into_owned(),
                busy_timeout: settings.sqlite_busy_timeout,
            },
        };
        let pool = match &settings.url {
            DatabaseUrl::Postgres(url) => {
                let setup = postgres_setup(settings.connect_timeout, stats.clone());
                // Fail fast with the server's own message instead of a pool time-out.
                let probe = setup(url).await.map_err(DbError::connect)?;
                drop(probe);
                let mut config = ManagerConfig::default();
                config.custom_setup = setup;
                let manager = PgManager::new_with_config(url, config);
                Pool::Postgres(pool_builder(settings).build_unchecked(manager))
            }
            DatabaseUrl::Sqlite(path) => {
                check_sqlite_path(path)?;
                let path = path.to_string_lossy().into_owned();
                let setup = sqlite_setup(settings.sqlite_busy_timeout, stats.clone());
                let probe = tokio::time::timeout(settings.connect_timeout, setup(&path))
                    .await
                    .map_err(|_| DbError::Unavailable("timed out opening the SQLite file".into()))?
                    .map_err(DbError::connect)?;
                drop(probe);
                let mut config = ManagerConfig::default();
                config.custom_setup = setup;
                let manager = SqliteManager::new_with_config(path, config);
                Pool::Sqlite(pool_builder(settings).build_unchecked(manager))
            }
        };
        Ok(Self {
            pool,
            stats,
            max_connections: settings.max_connections,
            connect_timeout: settings.connect_timeout,
            created: None,
            cache: None,
            probe,
            sharding: None,
            shard: None,
        })
    }

    /// This database, announcing every committed change to users and every new post
    /// to `events`.
    pub fn announcing_to(mut self, events: actix::Addr<Events>) -> Self {
        self.created = Some(events);
        self
    }

    /// This database, reading users by id through `cache` in
    /// [`get_user_cached`](Self::get_user_cached).
    pub fn caching_in(mut self, cache: actix::Addr<crate::actors::user_cache::UserCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// This database as shard `index`: a connection it cannot get is
    /// [`DbError::ShardUnavailable`].
    pub fn as_shard(mut self, index: usize) -> Self {
        self.shard = Some(index);
        self
    }

    /// `error` as this database's: on a shard, unreachability is
    /// [`DbError::ShardUnavailable`] (what needs this shard fails; the rest works).
    pub(crate) fn scoped(&self, error: DbError) -> DbError {
        match (self.shard, error) {
            (Some(shard), DbError::Unavailable(reason)) => {
                DbError::ShardUnavailable { shard, reason }
            }
            (_, error) => error,
        }
    }

    /// This database as the primary of `sharding`: user and post calls go to the shards.
    pub fn with_sharding(mut self, sharding: shards::Sharding) -> Self {
        self.sharding = Some(Arc::new(sharding));
        self
    }

    /// Where `room`'s history and offsets live: its shard, or this database.
    pub(crate) fn room_db(&self, room: &crate::domain::RoomId) -> &Database {
        match &self.sharding {
            Some(sharding) => &sharding.shards[sharding.map.shard_of(room.as_str())],
            None => self,
        }
    }

    /// Every database holding data: the shards, or this one.
    pub(crate) fn data_dbs(&self) -> Vec<&Database> {
        match &self.sharding {
            Some(sharding) => sharding.shards.iter().collect(),
            None => vec![self],
        }
    }

    /// The shards, when the data is sharded.
    pub fn sharding(&self) -> Option<&shards::Sharding> {
        self.sharding.as_deref()
    }

    /// Announces users whose insert has committed.
    pub(crate) fn announce(&self, users: &[crate::domain::User]) {
        if let (Some(events), false) = (&self.created, users.is_empty()) {
            events.do_send(UsersChanged {
                change: Change::Created,
                users: users.into(),
            });
        }
    }

    /// Announces a committed update or deletion of `users`, answering once every node's
    /// user cache has forgotten them (or the wait for other nodes timed out).
    pub async fn announce_change(&self, change: Change, users: &[crate::domain::User]) {
        if let (Some(events), false) = (&self.created, users.is_empty()) {
            let _ = events
                .send(UsersChanged {
                    change,
                    users: users.into(),
                })
                .await;
        }
    }

    /// Announces a post whose insert has committed.
    pub(crate) fn announce_post(&self, post: &crate::domain::Post) {
        if let Some(events) = &self.created {
            events.do_send(PostCreated {
                post: std::sync::Arc::new(post.clone()),
            });
        }
    }

    /// Which engine this is.
    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Postgres(_) => Backend::Postgres,
            Pool::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Borrows a connection from the pool, waiting at most the connect timeout. A wait that
    /// times out with every connection open and lent out is [`DbError::Busy`] (overload);
    /// one that could not open connections is [`DbError::Unavailable`].
    pub(crate) async fn conn(&self) -> Result<Conn, DbError> {
        let result = match &self.pool {
            Pool::Postgres(pool) => pool
                .get_owned()
                .await
                .map(Conn::Postgres)
                .map_err(pool_error),
            Pool::Sqlite(pool) => pool.get_owned().await.map(Conn::Sqlite).map_err(pool_error),
        };
        result.map_err(|reason| {
            let status = self.pool_status();
            if let Some(shard) = self.shard {
                self.stats.record_unavailable();
                return DbError::ShardUnavailable {
                    shard,
                    reason: format!(
                        "no connection within {:?}: {}",
                        self.connect_timeout, reason.message
                    ),
                };
            }
            if reason.timed_out && status.open >= self.max_connections && status.idle == 0 {
                return DbError::Busy {
                    max_connections: self.max_connections,
                    waited: self.connect_timeout,
                };
            }
            self.stats.record_unavailable();
            DbError::Unavailable(format!(
                "no database connection within {:?}: {}",
                self.connect_timeout, reason.message
            ))
        })
    }

    /// A pooled PostgreSQL connection: what sharding and two-phase commit work on (both
    /// are PostgreSQL-only, which the configuration checks before anything opens).
    pub(crate) async fn pg_conn(
        &self,
    ) -> Result<bb8::PooledConnection<'static, PgManager>, DbError> {
        match self.conn().await? {
            Conn::Postgres(conn) => Ok(conn),
            Conn::Sqlite(_) => Err(DbError::Unavailable(
                "this needs PostgreSQL, and the database is SQLite".into(),
            )),
        }
    }

    /// A PostgreSQL connection of its own, outside the pool (its driver on the runtime
    /// the pool's run on): what resolving prepared transactions uses, so it never waits
    /// behind pooled connections that are themselves waiting for those transactions'
    /// locks.
    pub(crate) async fn direct_pg_conn(&self) -> Result<AsyncPgConnection, DbError> {
        let probe::Target::Postgres {
            url,
            runtime,
            connect_timeout,
        } = &self.probe
        else {
            return Err(DbError::Unavailable(
                "this needs PostgreSQL, and the database is SQLite".into(),
            ));
        };
        let (url, timeout) = (url.clone(), *connect_timeout);
        let connected = runtime
            .spawn(async move { connect_postgres(&url, timeout).await })
            .await
            .map_err(|e| DbError::Unavailable(format!("connection task failed: {e}")))?;
        connected
            .map_err(DbError::connect)
            .map_err(|e| self.scoped(e))
    }

    /// PostgreSQL's `max_prepared_transactions` (0 means two-phase commit is disabled).
    pub async fn max_prepared_transactions(&self) -> Result<u32, DbError> {
        use diesel_async::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct Setting {
            #[diesel(sql_type = diesel::sql_types::Text)]
            setting: String,
        }
        let mut conn = self.pg_conn().await?;
        let row: Setting = diesel::sql_query(
            "SELECT setting FROM pg_settings WHERE name = 'max_prepared_transactions'",
        )
        .get_result(&mut *conn)
        .await?;
        row.setting
            .parse()
            .map_err(|_| DbError::Corrupt(format!("max_prepared_transactions = {}", row.setting)))
    }

    /// A connection of its own, outside the pool, for health pings (see [`Probe`]).
    pub fn probe(&self) -> Probe {
        Probe::new(self.probe.clone())
    }

    /// Current pool occupancy.
    pub fn pool_status(&self) -> PoolStatus {
        let (state, max) = match &self.pool {
            Pool::Postgres(pool) => (pool.state(), self.max_connections),
            Pool::Sqlite(pool) => (pool.state(), self.max_connections),
        };
        PoolStatus {
            max_connections: max,
            open: state.connections,
            idle: state.idle_connections,
            in_use: state.connections.saturating_sub(state.idle_connections),
            waited: state.statistics.get_waited,
            timed_out: state.statistics.get_timed_out,
        }
    }

    /// The query statistics of this database.
    pub fn stats(&self) -> DbStatsSnapshot {
        self.stats.snapshot()
    }
}

fn pool_builder<M: bb8::ManageConnection>(settings: &DatabaseSettings) -> bb8::Builder<M> {
    bb8::Pool::builder()
        .max_size(settings.max_connections)
        .min_idle(settings.min_idle)
        .max_lifetime(settings.max_lifetime)
        .idle_timeout(settings.idle_timeout)
        .connection_timeout(settings.connect_timeout)
        // A statement error must not be mistaken for a broken connection.
        .test_on_check_out(false)
}

/// Why a checkout failed.
struct CheckoutFailed {
    /// The wait ran out (rather than a connection failing to open).
    timed_out: bool,
    message: String,
}

fn pool_error<E: std::fmt::Display>(error: bb8::RunError<E>) -> CheckoutFailed {
    match error {
        bb8::RunError::User(e) => CheckoutFailed {
            timed_out: false,
            message: e.to_string(),
        },
        bb8::RunError::TimedOut => CheckoutFailed {
            timed_out: true,
            message: "timed out waiting for a free connection".to_owned(),
        },
    }
}

/// Opens one PostgreSQL connection within `timeout`; its driver task is spawned on the
/// current tokio runtime.
pub(crate) async fn connect_postgres(
    url: &str,
    timeout: Duration,
) -> diesel::ConnectionResult<AsyncPgConnection> {
    let mut config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        diesel::ConnectionError::InvalidConnectionUrl(e.to_string())
    })?;
    config.connect_timeout(timeout);
    let connect = config.connect(tokio_postgres::NoTls);
    let (client, connection) = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| {
            diesel::ConnectionError::BadConnection(format!("timed out after {timeout:?}"))
        })?
        .map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
    AsyncPgConnection::try_from_client_and_connection(client, connection).await
}

/// Opens pooled PostgreSQL connections, spawning each connection's driver on the runtime
/// that called [`Database::connect`] (not on whichever HTTP worker asked first).
fn postgres_setup(timeout: Duration, stats: Arc<DbStats>) -> SetupCallback<AsyncPgConnection> {
    let runtime = tokio::runtime::Handle::current();
    Box::new(move |url: &str| {
        let url = url.to_owned();
        let stats = stats.clone();
        let task = runtime.spawn(async move {
            let mut conn = connect_postgres(&url, timeout).await?;
            conn.set_instrumentation(QueryObserver::new(stats));
            Ok(conn)
        });
        async move {
            task.await.unwrap_or_else(|e| {
                Err(diesel::ConnectionError::BadConnection(format!(
                    "connection task failed: {e}"
                )))
            })
        }
        .boxed()
    })
}

/// Opens SQLite connections off the async threads with WAL, a busy timeout and foreign
/// keys switched on.
fn sqlite_setup(busy_timeout: Duration, stats: Arc<DbStats>) -> SetupCallback<SqliteConn> {
    Box::new(move |path: &str| {
        let path = path.to_owned();
        let stats = stats.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut conn = open_sqlite(&path, busy_timeout)?;
                conn.set_instrumentation(QueryObserver::new(stats));
                Ok(SyncConnectionWrapper::new(conn))
            })
            .await
            .unwrap_or_else(|e| {
                Err(diesel::ConnectionError::BadConnection(format!(
                    "connection task failed: {e}"
                )))
            })
        }
        .boxed()
    })
}

/// Opens a SQLite file (blocking) and applies the PRAGMAs every connection needs.
pub(crate) fn open_sqlite(
    path: &str,
    busy_timeout: Duration,
) -> diesel::ConnectionResult<SqliteConnection> {
    let mut conn = SqliteConnection::establish(path)?;
    conn.batch_execute(&format!(
        "PRAGMA busy_timeout = {}; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
         PRAGMA foreign_keys = ON;",
        busy_timeout.as_millis()
    ))
    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

/// SQLite creates the file but not its directory; say so plainly instead of
/// "unable to open database file".
fn check_sqlite_path(path: &Path) -> Result<(), DbError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => return Ok(()),
    };
    let problem = if dir.is_file() {
        "is not a directory"
    } else if !dir.exists() {
        "does not exist"
    } else {
        return Ok(());
    };
    Err(DbError::Unavailable(format!(
        "directory {} {problem}",
        dir.display()
    )))
}
