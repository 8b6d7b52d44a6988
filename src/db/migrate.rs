//! Embedded migrations: applied at start-up (unless switched off) and by
//! `switchboard migrate run|revert|status`.
//!
//! diesel's migration harness is synchronous, so every operation runs on tokio's blocking
//! pool: over a plain `SqliteConnection`, or over PostgreSQL through
//! `AsyncConnectionWrapper`, which drives the async connection from that blocking thread.

use diesel::backend::Backend;
use diesel_async::{async_connection_wrapper::AsyncConnectionWrapper, AsyncPgConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use serde::Serialize;

use super::{connect_postgres, open_sqlite, DbError};
use crate::config::{DatabaseSettings, DatabaseUrl};

/// Every migration under `migrations/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// One migration and whether the database has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrationState {
    /// Version and name, e.g. `2026-11-24-000001_create_users`.
    pub name: String,
    /// Whether it is applied.
    pub applied: bool,
}

/// What to do with the migrations.
#[derive(Debug, Clone, Copy)]
enum Op {
    Run,
    Revert,
    Status,
}

/// Applies every pending migration; returns the names applied.
pub async fn run_pending(settings: &DatabaseSettings) -> Result<Vec<String>, DbError> {
    execute(settings, Op::Run).await.map(names)
}

/// Reverts the most recently applied migration; returns its name, if any was applied.
pub async fn revert_last(settings: &DatabaseSettings) -> Result<Option<String>, DbError> {
    execute(settings, Op::Revert).await.map(|s| names(s).pop())
}

/// Lists every known migration with its state, oldest first.
pub async fn status(settings: &DatabaseSettings) -> Result<Vec<MigrationState>, DbError> {
    execute(settings, Op::Status).await
}

fn names(states: Vec<MigrationState>) -> Vec<String> {
    states.into_iter().map(|s| s.name).collect()
}

/// Runs `op` on tokio's blocking pool. Must be called inside a multi-threaded runtime.
async fn execute(settings: &DatabaseSettings, op: Op) -> Result<Vec<MigrationState>, DbError> {
    let task = match &settings.url {
        DatabaseUrl::Postgres(url) => {
            // Connect asynchronously (with the connect timeout), then hand the connection
            // to a blocking thread that drives it through the sync wrapper.
            let conn = connect_postgres(url, settings.connect_timeout)
                .await
                .map_err(DbError::connect)?;
            tokio::task::spawn_blocking(move || {
                let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::from(conn);
                apply(&mut conn, op)
            })
        }
        DatabaseUrl::Sqlite(path) => {
            let path = path.to_string_lossy().into_owned();
            let busy_timeout = settings.sqlite_busy_timeout;
            tokio::task::spawn_blocking(move || {
                let mut conn = open_sqlite(&path, busy_timeout).map_err(DbError::connect)?;
                apply(&mut conn, op)
            })
        }
    };
    task.await
        .map_err(|e| DbError::Unavailable(format!("migration task failed: {e}")))?
}

fn apply<DB: Backend>(
    harness: &mut impl MigrationHarness<DB>,
    op: Op,
) -> Result<Vec<MigrationState>, DbError> {
    let failed = |e: Box<dyn std::error::Error + Send + Sync>| {
        DbError::Unavailable(format!("migration failed: {e}"))
    };
    match op {
        Op::Run => Ok(harness
            .run_pending_migrations(MIGRATIONS)
            .map_err(failed)?
            .iter()
            .map(|v| applied(v.to_string()))
            .collect()),
        Op::Revert => {
            let has_applied = !harness.applied_migrations().map_err(failed)?.is_empty();
            if !has_applied {
                return Ok(Vec::new());
            }
            let version = harness.revert_last_migration(MIGRATIONS).map_err(failed)?;
            Ok(vec![applied(version.to_string())])
        }
        Op::Status => {
            let done: Vec<String> = harness
                .applied_migrations()
                .map_err(failed)?
                .iter()
                .map(ToString::to_string)
                .collect();
            let all = diesel::migration::MigrationSource::<DB>::migrations(&MIGRATIONS)
                .map_err(failed)?;
            Ok(all
                .iter()
                .map(|m| {
                    let name = m.name().to_string();
                    let version = m.name().version().to_string();
                    MigrationState {
                        applied: done.contains(&version),
                        name,
                    }
                })
                .collect())
        }
    }
}

fn applied(name: String) -> MigrationState {
    MigrationState {
        name,
        applied: true,
    }
}
