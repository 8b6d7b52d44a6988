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
pub fn start_server(dir: &tempfile::TempDir) -> BenchServer {
    let settings = Settings {
        http_addr: "127.0.0.1:0".parse().unwrap(),
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        jwt_secret: Some(JwtSecret::parse(SECRET).unwrap()),
        // The benches measure the request path, not the per-client limit (one client
        // sends everything).
        rate_limit_per_second: 1e9,
        rate_limit_burst: 1_000_000_000,
        database: DatabaseSettings {
            url: DatabaseUrl::Sqlite(dir.path().join("bench.db")),
            ..Default::default()
        },
        ..Default::default()
    };
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
