//! A real server for the end-to-end benchmarks.

use std::net::SocketAddr;

use switchboard::{
    config::{DatabaseSettings, DatabaseUrl, JwtSecret, Settings},
    db::Database,
    startup::Application,
};

/// The secret the bench server signs tokens with.
pub const SECRET: &str = "bench-secret-0123456789abcdef";

/// A running bench server.
#[allow(dead_code)]
pub struct BenchServer {
    /// HTTP address.
    pub http: SocketAddr,
    /// gRPC address.
    pub grpc: SocketAddr,
    /// The server's own database handle.
    pub database: Database,
}

/// Starts a server on SQLite in `dir`, on its own thread, until the process exits.
#[allow(dead_code)]
pub fn start_server(dir: &tempfile::TempDir) -> BenchServer {
    start_server_on(DatabaseUrl::Sqlite(dir.path().join("bench.db")))
}

/// Starts a server on the database at `url`, on its own thread, until the process exits.
#[allow(dead_code)]
pub fn start_server_on(url: DatabaseUrl) -> BenchServer {
    start_server_with(url, |_| {})
}

/// [`start_server_on`] with `change` applied to the settings first.
pub fn start_server_with(url: DatabaseUrl, change: impl FnOnce(&mut Settings)) -> BenchServer {
    let mut settings = Settings {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        jwt_secret: Some(JwtSecret::parse(SECRET).unwrap()),
        // The benches measure the request path, not the per-client limit (one client
        // sends everything).
        rate_limit_per_second: 1e9,
        rate_limit_burst: 1_000_000_000,
        database: DatabaseSettings {
            url,
            ..Default::default()
        },
        ..Default::default()
    };
    change(&mut settings);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let app = Application::build(settings)
                .await
                .expect("the server starts");
            tx.send(BenchServer {
                http: app.http_addr(),
                grpc: app.grpc_addr(),
                database: app.database().clone(),
            })
            .unwrap();
            app.run_until_stopped(std::future::pending()).await.unwrap();
        })
    });
    rx.recv().unwrap()
}

/// Adds the bearer token to every gRPC call.
#[allow(dead_code)]
#[derive(Clone)]
pub struct Bearer(tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

/// A user-service client sending a token for `bench`.
#[allow(dead_code)]
pub type Client = switchboard::grpc::pb::user_service_client::UserServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
>;

/// A user-service client for the server at `addr`, decoding answers up to 64 MiB.
#[allow(dead_code)]
pub async fn grpc_client(addr: SocketAddr) -> Client {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let token = switchboard::auth::JwtAuth::new(&JwtSecret::parse(SECRET).unwrap())
        .issue("bench", std::time::Duration::from_secs(3600), None)
        .unwrap();
    let bearer = format!("Bearer {token}").parse().unwrap();
    switchboard::grpc::pb::user_service_client::UserServiceClient::with_interceptor(
        channel,
        Bearer(bearer),
    )
    .max_decoding_message_size(64 << 20)
}

/// The PostgreSQL server the benches create databases on (`BENCH_POSTGRES_URL`).
fn postgres_admin_url() -> String {
    std::env::var("BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh PostgreSQL database (its URL and name), or `None` when PostgreSQL is not
/// reachable.
#[allow(dead_code)]
pub async fn postgres_database() -> Option<(String, String)> {
    let admin = postgres_admin_url();
    let name = format!("sb_bench_{}", uuid::Uuid::new_v4().simple());
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .ok()?;
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .ok()?;
    admin
        .rsplit_once('/')
        .map(|(base, _)| (format!("{base}/{name}"), name))
}

/// Drops the bench's PostgreSQL databases (with FORCE: the servers still hold
/// connections).
#[allow(dead_code)]
pub async fn drop_databases(names: &[String]) {
    let admin = postgres_admin_url();
    if let Ok((client, connection)) = tokio_postgres::connect(&admin, tokio_postgres::NoTls).await {
        tokio::spawn(connection);
        for name in names {
            let _ = client
                .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
                .await;
        }
    }
}
