//! A PostgreSQL cluster of the test's own (initdb + pg_ctl in a temp dir, on a free port),
//! so a test can stop the database under a running server and start it again.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use crate::helpers::in_ci;

/// A private cluster; stopped and removed when dropped.
pub struct PrivateCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    /// `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub url: String,
}

fn as_postgres(bin: &Path, tool: &str) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--"]).arg(bin.join(tool));
    command
}

fn run(mut command: Command, what: &str) -> Result<(), String> {
    let output = command.output().map_err(|e| format!("{what}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl PrivateCluster {
    /// Starts a fresh cluster, or `None` (after printing why) when the PostgreSQL server
    /// binaries or `runuser` are missing outside CI.
    pub fn start() -> Option<Self> {
        Self::start_with("")
    }

    /// As [`PrivateCluster::start`], with more `postgresql.conf` lines (e.g.
    /// `max_prepared_transactions = 64`).
    pub fn start_with(conf: &str) -> Option<Self> {
        match Self::try_start(conf) {
            Ok(cluster) => Some(cluster),
            Err(reason) => {
                assert!(
                    !in_ci(),
                    "CI=true but a private PostgreSQL cluster failed: {reason}"
                );
                eprintln!("skipping: cannot run a private PostgreSQL cluster: {reason}");
                None
            }
        }
    }

    fn try_start(conf: &str) -> Result<Self, String> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|e| format!("no /usr/lib/postgresql: {e}"))?
            .filter_map(Result::ok)
            .map(|entry| entry.path().join("bin"))
            .find(|bin| bin.join("initdb").exists())
            .ok_or("no initdb under /usr/lib/postgresql")?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        run(
            {
                let mut chown = Command::new("chown");
                chown.arg("postgres:postgres").arg(dir.path());
                chown
            },
            "chown",
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let mut initdb = as_postgres(&bin, "initdb");
        initdb
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(dir.path().join("data"));
        run(initdb, "initdb")?;
        let cluster = Self {
            bin,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
            dir,
        };
        std::fs::write(
            cluster.dir.path().join("data/postgresql.auto.conf"),
            format!(
                "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\nfsync = off\n{conf}\n",
                cluster.dir.path().display()
            ),
        )
        .map_err(|e| e.to_string())?;
        cluster.resume()?;
        Ok(cluster)
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut command = as_postgres(&self.bin, "pg_ctl");
        command
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(args);
        command
    }

    /// Starts (or restarts) the server and waits until it accepts connections.
    pub fn resume(&self) -> Result<(), String> {
        let log = self.dir.path().join("server.log");
        let mut start = self.pg_ctl(&["-w", "-l"]);
        start.arg(log).arg("start");
        run(start, "pg_ctl start")
    }

    /// The URL of database `name` on this cluster.
    pub fn url_of(&self, name: &str) -> String {
        let (base, _) = self.url.rsplit_once('/').expect("a URL with a database");
        format!("{base}/{name}")
    }

    /// Stops the server at once (connections are cut).
    pub fn halt(&self) {
        run(
            self.pg_ctl(&["-w", "-m", "immediate", "stop"]),
            "pg_ctl stop",
        )
        .expect("the cluster stops");
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-w", "-m", "immediate", "stop"]).output();
    }
}

/// A sharded layout whose shard 2 can be stopped alone: the primary and shards 0 and 1
/// on one private cluster (`main`), shard 2 on another (`lone`).
pub struct SplitClusters {
    /// Kept running until dropped (it holds the primary and shards 0 and 1).
    _main: PrivateCluster,
    pub lone: PrivateCluster,
    pub primary: String,
    pub shards: [String; 3],
}

impl SplitClusters {
    /// Starts both clusters (with `max_prepared_transactions`) and creates the
    /// databases; `None` (after printing why) outside CI without PostgreSQL binaries.
    pub async fn start() -> Option<Self> {
        let conf = "max_prepared_transactions = 64\nmax_connections = 200";
        let main = PrivateCluster::start_with(conf)?;
        let lone = PrivateCluster::start_with(conf)?;
        for name in ["sb_primary", "sb_shard_0", "sb_shard_1"] {
            crate::helpers::pg_admin(&main.url, &format!("CREATE DATABASE {name}"))
                .await
                .unwrap();
        }
        crate::helpers::pg_admin(&lone.url, "CREATE DATABASE sb_shard_2")
            .await
            .unwrap();
        Some(Self {
            primary: main.url_of("sb_primary"),
            shards: [
                main.url_of("sb_shard_0"),
                main.url_of("sb_shard_1"),
                lone.url_of("sb_shard_2"),
            ],
            _main: main,
            lone,
        })
    }

    /// Points `settings` at these databases, with a short connect timeout (a stopped
    /// shard is found out fast) and quick two-phase-commit recovery.
    pub fn apply(&self, settings: &mut switchboard::config::Settings) {
        let database = &mut settings.database;
        database.url = self.primary.parse().unwrap();
        database.shards = self.shards.iter().map(|u| u.parse().unwrap()).collect();
        database.connect_timeout = std::time::Duration::from_secs(1);
        database.tx_recovery_interval = std::time::Duration::from_millis(500);
        database.tx_in_doubt_grace = std::time::Duration::from_secs(2);
    }
}
