//! `spawn_app()` and isolated databases.
//!
//! Every test gets its own database: a fresh SQLite file in a temporary directory, or a
//! fresh PostgreSQL database (created through `SWITCHBOARD_TEST_POSTGRES_URL`, by default
//! the local server at `postgres://postgres@127.0.0.1:5432/postgres`, dropped after the
//! test). When that server is unreachable PostgreSQL tests are skipped with a printed
//! reason, except under `CI=true`, where a missing PostgreSQL fails the test.

use std::{net::SocketAddr, sync::Once, time::Duration};

use switchboard::{
    config::{DatabaseSettings, DatabaseUrl, JwtSecret, LogSettings, Settings},
    db::{migrate, Database},
    startup::Application,
};
use tokio::sync::oneshot;

/// The secret every test server signs tokens with.
pub const TEST_JWT_SECRET: &str = "integration-test-secret-0123456789";

fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Quiet by default; `TEST_LOG=debug cargo test` shows the servers' logs.
        if let Ok(level) = std::env::var("TEST_LOG") {
            switchboard::telemetry::init(&LogSettings {
                level: Some(level),
                ..Default::default()
            });
        }
    });
}

/// Whether we run under CI, where skipping a service-backed test is a failure.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The PostgreSQL server tests create their databases on unless
/// `SWITCHBOARD_TEST_POSTGRES_URL` names another.
pub const DEFAULT_TEST_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// An isolated database that is removed when dropped.
pub struct TestDb {
    /// Settings pointing at it.
    pub settings: DatabaseSettings,
    _dir: Option<tempfile::TempDir>,
    postgres: Option<PgCleanup>,
    /// A private cluster holding the primary and the shards (stopped when dropped).
    _cluster: Option<crate::private_pg::PrivateCluster>,
}

struct PgCleanup {
    admin_url: String,
    name: String,
}

impl TestDb {
    /// A new SQLite file in a temporary directory.
    pub fn sqlite() -> Self {
        init_logs();
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("test.db");
        Self {
            settings: test_db_settings(DatabaseUrl::Sqlite(path)),
            _dir: Some(dir),
            postgres: None,
            _cluster: None,
        }
    }

    /// A new PostgreSQL database, or `None` (after printing why) when PostgreSQL is not
    /// configured or not reachable outside CI.
    pub async fn postgres() -> Option<Self> {
        init_logs();
        let admin_url = std::env::var("SWITCHBOARD_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| DEFAULT_TEST_POSTGRES_URL.to_owned());
        let name = format!("sb_test_{}", uuid::Uuid::new_v4().simple());
        if let Err(error) = pg_admin(&admin_url, &format!("CREATE DATABASE {name}")).await {
            assert!(!in_ci(), "CI=true but PostgreSQL is unusable: {error}");
            eprintln!("skipping PostgreSQL test: cannot create a database on {admin_url}: {error}");
            return None;
        }
        let url = database_url_with_name(&admin_url, &name);
        Some(Self {
            settings: test_db_settings(url.parse().expect("a valid PostgreSQL URL")),
            _dir: None,
            postgres: Some(PgCleanup { admin_url, name }),
            _cluster: None,
        })
    }

    /// A primary and `shards` shard databases on a private PostgreSQL cluster of their own
    /// (two-phase commit needs `max_prepared_transactions`, which the shared server does
    /// not set), or `None` (after printing why) outside CI without PostgreSQL binaries.
    pub async fn sharded(shards: usize) -> Option<Self> {
        init_logs();
        let cluster = crate::private_pg::PrivateCluster::start_with(
            "max_prepared_transactions = 64\nmax_connections = 200",
        )?;
        let mut names = vec!["sb_primary".to_owned()];
        names.extend((0..shards).map(|i| format!("sb_shard_{i}")));
        for name in &names {
            pg_admin(&cluster.url, &format!("CREATE DATABASE {name}"))
                .await
                .expect("the private cluster creates a database");
        }
        let mut settings = test_db_settings(cluster.url_of(&names[0]).parse().unwrap());
        settings.shards = names[1..]
            .iter()
            .map(|name| cluster.url_of(name).parse().unwrap())
            .collect();
        settings.tx_recovery_interval = Duration::from_millis(500);
        settings.tx_in_doubt_grace = Duration::from_secs(2);
        Some(Self {
            settings,
            _dir: None,
            postgres: None,
            _cluster: Some(cluster),
        })
    }

    /// The same database for another server (several cluster nodes on one database);
    /// this one must outlive it, as it removes the database when dropped.
    pub fn share(&self) -> Self {
        Self {
            settings: self.settings.clone(),
            _dir: None,
            postgres: None,
            _cluster: None,
        }
    }

    /// Migrates the database and opens a pool to it.
    pub async fn open(&self) -> Database {
        migrate::run_pending(&self.settings)
            .await
            .expect("migrations apply");
        Database::connect(&self.settings)
            .await
            .expect("the test database opens")
    }

    /// Drops the PostgreSQL database now, e.g. to simulate the database going away.
    pub async fn drop_postgres_database(&self) {
        let pg = self.postgres.as_ref().expect("a PostgreSQL test database");
        pg_admin(
            &pg.admin_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", pg.name),
        )
        .await
        .expect("the test database drops");
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(pg) = self.postgres.take() else {
            return;
        };
        // Drop runs inside async tests; do the async clean-up on a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a clean-up runtime");
            let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", pg.name);
            if let Err(error) = runtime.block_on(pg_admin(&pg.admin_url, &sql)) {
                eprintln!("could not drop test database {}: {error}", pg.name);
            }
        })
        .join();
    }
}

fn test_db_settings(url: DatabaseUrl) -> DatabaseSettings {
    DatabaseSettings {
        url,
        max_connections: 5,
        connect_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

pub(crate) async fn pg_admin(admin_url: &str, sql: &str) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await?;
    let driver = tokio::spawn(connection);
    let result = client.batch_execute(sql).await;
    drop(client);
    let _ = driver.await;
    result
}

/// `admin_url` with its database name replaced by `name`.
fn database_url_with_name(admin_url: &str, name: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (admin_url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(slash) => &base[..scheme_end + slash],
        None => base,
    };
    format!("{base}/{name}{query}")
}

/// Settings for a test server on ephemeral ports.
pub fn test_settings(db: &TestDb) -> Settings {
    let mut settings = Settings {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        database: db.settings.clone(),
        jwt_secret: Some(JwtSecret::parse(TEST_JWT_SECRET).unwrap()),
        shutdown_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    // The suite runs in parallel on a busy 2-core machine, where the hub's thread may be
    // descheduled for longer than the default 100 ms: a test that is not about the hub's
    // lag must not see its publishes refused as overloaded. The lag test sets its own.
    settings.websocket.overload_lag = Duration::from_secs(30);
    settings
}

/// A server running on its own thread (with its own actix System), as in production.
pub struct TestApp {
    /// Bound HTTP address.
    pub http_addr: SocketAddr,
    /// Bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// An HTTP client for it.
    pub http: reqwest::Client,
    /// The server's own database handle: writes through it reach the server's actors
    /// (e.g. live `StreamUsers` subscribers), as writes from any front door do.
    pub database: Database,
    /// The database it uses (taken only when the server is dropped).
    db: Option<TestDb>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl TestApp {
    /// The database the server uses.
    pub fn db(&self) -> &TestDb {
        self.db.as_ref().expect("present while the server runs")
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
    }

    /// `GET path` (whatever the status).
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("the server answers")
    }

    /// The status of `GET path`.
    pub async fn get_status(&self, path: &str) -> reqwest::StatusCode {
        self.get(path).await.status()
    }

    /// The body of `GET path` as text (whatever the status), e.g. a `/metrics` scrape.
    pub async fn get_text(&self, path: &str) -> String {
        self.get(path).await.text().await.expect("a text body")
    }

    /// `POST /graphql` with a JSON `body`, and `Authorization: Bearer <token>` when given
    /// (whatever the status).
    pub async fn post_graphql(
        &self,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        let mut request = self.http.post(self.url("/graphql")).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("the server answers")
    }

    /// `GET path`, parsed as JSON (whatever the status).
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.get(path).await.json().await.expect("a JSON body")
    }

    /// Shuts down gracefully (the server must stop cleanly) and hands back its database,
    /// e.g. to inspect what was written or to start another server on it.
    pub async fn stop_keeping_db(mut self) -> TestDb {
        let db = self.db.take().expect("present while the server runs");
        self.shutdown()
            .await
            .unwrap_or_else(|e| panic!("the server stops cleanly: {e}"));
        db
    }

    /// Starts a graceful shutdown and waits for the server thread to finish.
    pub async fn shutdown(mut self) -> Result<(), String> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let thread = self.thread.take().expect("the server thread");
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .expect("join task")
            .map_err(|_| "the server thread panicked".to_owned())?
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // The database must outlive the server. On a current-thread runtime, joining here
        // would block the thread that drives the clients' connections, which the server's
        // graceful shutdown waits for; there a helper thread waits and drops the database
        // (the runtime's end closes those connections). Elsewhere we wait in place, so
        // PostgreSQL test databases are always dropped before the process exits.
        let Some(thread) = self.thread.take() else {
            return;
        };
        let db = self.db.take();
        let finish = move || {
            let _ = thread.join();
            drop(db);
        };
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::CurrentThread) => {
                std::thread::spawn(finish);
            }
            Ok(_) => tokio::task::block_in_place(finish),
            Err(_) => finish(),
        }
    }
}

/// A server on SQLite.
pub async fn spawn_app() -> TestApp {
    spawn_app_on(TestDb::sqlite()).await
}

/// A server on the given database.
pub async fn spawn_app_on(db: TestDb) -> TestApp {
    let settings = test_settings(&db);
    spawn_app_with(db, settings).await
}

/// A server with explicit settings (which should point at `db`).
pub async fn spawn_app_with(db: TestDb, settings: Settings) -> TestApp {
    init_logs();
    let (ready_tx, ready_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            match Application::build(settings).await {
                Ok(app) => {
                    let addresses = (app.http_addr(), app.grpc_addr(), app.database().clone());
                    let _ = ready_tx.send(Ok(addresses));
                    app.run_until_stopped(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .map_err(|e| e.to_string())
                }
                Err(error) => {
                    let message = error.to_string();
                    let _ = ready_tx.send(Err(message.clone()));
                    Err(message)
                }
            }
        })
    });
    let (http_addr, grpc_addr, database) = ready_rx
        .await
        .expect("the server thread reports readiness")
        .unwrap_or_else(|e| panic!("the test server failed to start: {e}"));
    TestApp {
        http_addr,
        grpc_addr,
        database,
        http: reqwest::Client::new(),
        db: Some(db),
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}

/// Defines one test per backend for each listed `async fn NAME(db: &TestDb)` (or, after
/// `owned:`, `async fn NAME(db: TestDb)`, e.g. to hand the database to a server):
/// `NAME::sqlite` always runs; `NAME::postgres` runs when PostgreSQL is reachable.
#[macro_export]
/// As [`on_both_backends`] (`owned:` form), plus a third test on sharded PostgreSQL:
/// a primary and three shards on a private cluster.
macro_rules! on_every_backend {
    (owned: $($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::TestDb::sqlite()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = $crate::helpers::TestDb::postgres().await else { return };
                super::$name(db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sharded() {
                let Some(db) = $crate::helpers::TestDb::sharded(3).await else { return };
                super::$name(db).await;
            }
        }
    )*};
}

/// Defines one test per backend: SQLite and PostgreSQL (see [`on_every_backend`] for
/// sharded PostgreSQL too).
#[macro_export]
macro_rules! on_both_backends {
    (owned: $($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::TestDb::sqlite()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = $crate::helpers::TestDb::postgres().await else { return };
                super::$name(db).await;
            }
        }
    )*};
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = $crate::helpers::TestDb::sqlite();
                super::$name(&db).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(db) = $crate::helpers::TestDb::postgres().await else { return };
                super::$name(&db).await;
            }
        }
    )*};
}

/// A gRPC channel to `addr` (`IP:PORT`).
pub async fn grpc_channel(addr: impl std::fmt::Display) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid endpoint")
        .connect()
        .await
        .expect("the gRPC server accepts connections")
}

#[cfg(test)]
mod tests {
    use super::database_url_with_name;

    #[test]
    fn database_names_are_swapped_in_urls() {
        let cases = [
            (
                "postgres://postgres@127.0.0.1:5432/postgres",
                "postgres://postgres@127.0.0.1:5432/x",
            ),
            (
                "postgres://u:p@h/db?sslmode=disable",
                "postgres://u:p@h/x?sslmode=disable",
            ),
            ("postgres://h", "postgres://h/x"),
        ];
        for (admin, expected) in cases {
            assert_eq!(database_url_with_name(admin, "x"), expected);
        }
    }
}
