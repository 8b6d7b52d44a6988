//! Redis for the cluster tests: the shared local server (with a key prefix per test), or
//! a private `redis-server` on a spare port that a test may stop and start.

use std::{
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::helpers::in_ci;

/// The shared local Redis, or `None` (after printing why) when it is not running outside
/// CI.
pub fn shared_redis() -> Option<String> {
    match TcpStream::connect_timeout(&"127.0.0.1:6379".parse().unwrap(), Duration::from_secs(2)) {
        Ok(_) => Some("redis://127.0.0.1:6379".into()),
        Err(error) => {
            assert!(
                !in_ci(),
                "CI=true but Redis on 127.0.0.1:6379 is unusable: {error}"
            );
            eprintln!("skipping cluster test: no Redis on 127.0.0.1:6379 ({error})");
            None
        }
    }
}

/// Deletes every key under `prefix` (best effort: the shared Redis is left as found).
pub async fn forget(redis: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(redis) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
    }
}

/// A prefix no other test uses.
pub fn test_prefix() -> String {
    format!("sbtest-{}", uuid::Uuid::new_v4().simple())
}

/// A `redis-server` of this test's own, stopped when dropped.
pub struct PrivateRedis {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts one on a free port, or `None` (after printing why) outside CI without
    /// `redis-server`.
    pub fn start() -> Option<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Self { port, child: None };
        match redis.spawn() {
            Ok(()) => Some(redis),
            Err(error) => {
                assert!(!in_ci(), "CI=true but redis-server cannot start: {error}");
                eprintln!("skipping test: cannot start redis-server ({error})");
                None
            }
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                return Err("redis-server did not listen within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills it (`SIGKILL`): what a crash or a network cut looks like to its clients.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port (empty).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn().expect("redis-server restarts");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
