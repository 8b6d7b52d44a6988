//! [`Probe`]: a database connection of its own for health pings.
//!
//! Health checks must tell whether the *database* answers, not whether the pool has a
//! connection to spare: pinging through the pool would make a pool exhausted by client
//! load look like a database outage (and open the circuit breaker for everyone), and
//! unthrottled probes would compete with requests for pooled connections. The probe keeps
//! one connection outside the pool, opens it on first use and again after a failure.

use std::time::{Duration, Instant};

use diesel::{connection::SimpleConnection, SqliteConnection};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{connect_postgres, open_sqlite, DbError};

/// Where a probe connects (what [`super::Database::probe`] hands out).
#[derive(Clone)]
pub(crate) enum Target {
    Postgres {
        url: String,
        /// The runtime that drives PostgreSQL connections (not an actor's thread).
        runtime: tokio::runtime::Handle,
        connect_timeout: Duration,
    },
    Sqlite {
        path: String,
        busy_timeout: Duration,
    },
}

enum Connection {
    // Boxed: one probe per server, and it moves in and out of every ping.
    Postgres(Box<AsyncPgConnection>),
    Sqlite(SqliteConnection),
}

/// One connection, outside the pool, for health pings. Owned by the health monitor.
pub struct Probe {
    target: Target,
    connection: Option<Connection>,
}

impl Probe {
    pub(crate) fn new(target: Target) -> Self {
        Self {
            target,
            connection: None,
        }
    }

    /// Runs `SELECT 1` within `timeout` (opening the connection first if needed) and
    /// reports the round trip. Takes the probe and gives it back, so its owner can run
    /// the ping as a detached future; a failed ping drops the connection, and the next
    /// one opens a fresh connection.
    pub async fn ping(mut self, timeout: Duration) -> (Self, Result<Duration, DbError>) {
        let started = Instant::now();
        let connection = self.connection.take();
        let target = self.target.clone();
        let attempt = tokio::time::timeout(timeout, ping(target, connection)).await;
        let result = match attempt {
            Ok(Ok(connection)) => {
                self.connection = Some(connection);
                Ok(started.elapsed())
            }
            Ok(Err(error)) => Err(error),
            Err(_) => Err(DbError::Unavailable(format!(
                "ping timed out after {timeout:?}"
            ))),
        };
        (self, result)
    }
}

async fn ping(target: Target, connection: Option<Connection>) -> Result<Connection, DbError> {
    match (target, connection) {
        (
            Target::Postgres {
                url,
                runtime,
                connect_timeout,
            },
            connection,
        ) => {
            let mut connection = match connection {
                Some(Connection::Postgres(connection)) => connection,
                _ => Box::new(
                    runtime
                        .spawn(async move { connect_postgres(&url, connect_timeout).await })
                        .await
                        .map_err(|e| DbError::Unavailable(format!("probe task failed: {e}")))?
                        .map_err(DbError::connect)?,
                ),
            };
            diesel::sql_query("SELECT 1")
                .execute(&mut *connection)
                .await
                .map_err(|e| DbError::Unavailable(e.to_string()))?;
            Ok(Connection::Postgres(connection))
        }
        (Target::Sqlite { path, busy_timeout }, connection) => {
            tokio::task::spawn_blocking(move || {
                let mut connection = match connection {
                    Some(Connection::Sqlite(connection)) => connection,
                    _ => open_sqlite(&path, busy_timeout).map_err(DbError::connect)?,
                };
                // Reads the schema, so the file itself must be readable, not only open.
                connection
                    .batch_execute("SELECT count(*) FROM sqlite_master")
                    .map_err(|e| DbError::Unavailable(e.to_string()))?;
                Ok(Connection::Sqlite(connection))
            })
            .await
            .map_err(|e| DbError::Unavailable(format!("probe task failed: {e}")))?
        }
    }
}
