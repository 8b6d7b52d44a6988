//! The steps of one-phase and two-phase commit and of recovery, as plain async functions
//! the coordinator runs (it keeps the state: in-flight gids and counters).

use std::{
    collections::HashSet,
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::Utc;
use diesel::{
    prelude::*,
    sql_types::{Double, Text},
};
use diesel_async::{
    AnsiTransactionManager, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection,
    TransactionManager,
};
use futures_util::future::join_all;
use serde::Serialize;

use super::{Fault, Work};
use crate::db::{schema::tx_decisions, Database, DbError};

/// How a distributed transaction failed.
pub(super) enum Failure {
    /// Rolled back everywhere (or never prepared): nothing happened.
    Aborted(DbError),
    /// The decision could not be confirmed: recovery will commit or roll back.
    Unknown(DbError),
}

impl Failure {
    pub(super) fn into_error(self) -> DbError {
        match self {
            Failure::Aborted(error) => error,
            Failure::Unknown(error) => DbError::Unavailable(format!(
                "the outcome of a cross-shard write is not known yet (it will be committed or \
                 rolled back by recovery): {error}"
            )),
        }
    }
}

/// Time spent in each phase.
#[derive(Debug, Default)]
pub(super) struct Timing {
    pub prepare: Duration,
    pub decide: Duration,
    pub commit: Duration,
}

/// Runs `works` in one transaction on `db`.
pub(super) async fn one_phase(db: Database, works: Vec<Work>) -> Result<(), DbError> {
    one_phase_on(&db, works).await.map_err(|e| db.scoped(e))
}

async fn one_phase_on(db: &Database, works: Vec<Work>) -> Result<(), DbError> {
    let mut conn = db.pg_conn().await?;
    let c: &mut AsyncPgConnection = &mut conn;
    AnsiTransactionManager::begin_transaction(c).await?;
    for work in works {
        if let Err(error) = work(c).await {
            let _ = AnsiTransactionManager::rollback_transaction(c).await;
            return Err(error);
        }
    }
    AnsiTransactionManager::commit_transaction(c).await?;
    Ok(())
}

/// How long a part of a distributed transaction waits for a lock.
const LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '5s'";

/// The gid of `shard`'s part of transaction `base`.
fn gid(base: &str, shard: usize) -> String {
    format!("{base}_{shard}")
}

/// The transaction a part's gid belongs to.
fn base_of(gid: &str) -> &str {
    gid.rsplit_once('_').map_or(gid, |(base, _)| base)
}

/// Runs `works` on `db` and prepares them under `gid`; the connection comes back out of
/// any transaction (the prepared one lives on in the server).
async fn prepare(
    db: &Database,
    works: Vec<Work>,
    gid: &str,
) -> Result<bb8::PooledConnection<'static, crate::db::PgManager>, DbError> {
    let mut conn = db.pg_conn().await?;
    let c: &mut AsyncPgConnection = &mut conn;
    // Begun through the manager: a future dropped from here on leaves it at depth 1, and
    // the pool then discards the connection instead of lending out an open transaction.
    AnsiTransactionManager::begin_transaction(c).await?;
    // Waiting on a lock across shards can form a cycle no single server sees (each
    // write holding a prepared part the other waits for): a part that waits this long
    // gives up, its write fails with `Conflict`, and the other goes through.
    if let Err(error) = c.batch_execute(LOCK_TIMEOUT).await {
        let _ = AnsiTransactionManager::rollback_transaction(c).await;
        return Err(error.into());
    }
    for work in works {
        if let Err(error) = work(c).await {
            let _ = AnsiTransactionManager::rollback_transaction(c).await;
            return Err(error);
        }
    }
    if let Err(error) = c
        .batch_execute(&format!("PREPARE TRANSACTION '{gid}'"))
        .await
    {
        // A failed PREPARE is a ROLLBACK on the server; the manager's own finds nothing.
        let _ = AnsiTransactionManager::rollback_transaction(c).await;
        return Err(prepare_error(error));
    }
    // PREPARE ended the transaction on the server; let the manager close its depth (its
    // COMMIT finds no transaction and only warns).
    AnsiTransactionManager::commit_transaction(c).await?;
    Ok(conn)
}

fn prepare_error(error: diesel::result::Error) -> DbError {
    let text = error.to_string();
    if text.contains("max_prepared_transactions")
        || text.contains("prepared transactions are disabled")
    {
        return DbError::Unavailable(format!(
            "two-phase commit is not possible on a shard: {text} (set max_prepared_transactions)"
        ));
    }
    error.into()
}

/// `COMMIT PREPARED` or `ROLLBACK PREPARED` of `gid` on `conn`; an unknown gid (42704:
/// already resolved) counts as done.
async fn finish_on(conn: &mut AsyncPgConnection, gid: &str, commit: bool) -> Result<(), DbError> {
    let verb = if commit { "COMMIT" } else { "ROLLBACK" };
    match conn
        .batch_execute(&format!("{verb} PREPARED '{gid}'"))
        .await
    {
        Ok(()) => Ok(()),
        Err(error) if error.to_string().contains("does not exist") => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// [`finish_on`] over a connection of its own: never one from the pool, whose
/// connections may all be waiting for the locks this transaction holds.
async fn finish(db: &Database, gid: &str, commit: bool) -> Result<(), DbError> {
    let mut conn = db.direct_pg_conn().await?;
    finish_on(&mut conn, gid, commit).await
}

/// Two-phase commit of `participants` (shard index, database, work) under `base`.
pub(super) async fn two_phase(
    primary: Database,
    base: String,
    participants: Vec<(usize, Database, Vec<Work>, bool)>,
    fault: Option<Fault>,
) -> (Result<(), Failure>, Timing) {
    let mut timing = Timing::default();
    let started = Instant::now();
    // The parts that claim unique keys first, then the rest (see `Part::first`).
    let (firsts, rest): (Vec<_>, Vec<_>) = participants.into_iter().partition(|p| p.3);
    let mut shards: Vec<(usize, Database)> = Vec::new();
    let mut prepared = Vec::new();
    for stage in [firsts, rest] {
        if prepared.iter().any(Result::is_err) {
            break;
        }
        shards.extend(stage.iter().map(|(shard, db, _, _)| (*shard, db.clone())));
        prepared.extend(
            join_all(stage.into_iter().map(|(shard, db, works, _)| {
                let gid = gid(&base, shard);
                async move { prepare(&db, works, &gid).await.map_err(|e| db.scoped(e)) }
            }))
            .await,
        );
    }
    timing.prepare = started.elapsed();
    let mut failure = None;
    let mut ready = Vec::new();
    for ((shard, db), result) in shards.into_iter().zip(prepared) {
        match result {
            Ok(conn) => ready.push((shard, db, conn)),
            Err(error) => {
                // A request error (a taken email) says more than an unreachable shard.
                let unreachable = |e: &DbError| {
                    matches!(
                        e,
                        DbError::Unavailable(_) | DbError::ShardUnavailable { .. }
                    )
                };
                let better = match &failure {
                    None => true,
                    Some(current) if unreachable(current) => !unreachable(&error),
                    Some(_) => false,
                };
                if better {
                    failure = Some(error);
                }
            }
        }
    }
    if let Some(error) = failure {
        rollback_all(&base, ready).await;
        return (Err(Failure::Aborted(error)), timing);
    }

    pause_if(fault, Fault::PauseAfterPrepare, &base).await;

    // The decision. No connection to the primary: nothing was written, roll back.
    let deciding = Instant::now();
    let mut primary_conn = match primary.pg_conn().await {
        Ok(conn) => conn,
        Err(error) => {
            rollback_all(&base, ready).await;
            timing.decide = deciding.elapsed();
            return (Err(Failure::Aborted(error)), timing);
        }
    };
    let participants_text = ready
        .iter()
        .map(|(shard, _, _)| shard.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let decided = diesel::insert_into(tx_decisions::table)
        .values((
            tx_decisions::gid.eq(&base),
            tx_decisions::participants.eq(&participants_text),
            tx_decisions::created_at.eq(Utc::now().naive_utc()),
        ))
        .execute(&mut *primary_conn)
        .await;
    timing.decide = deciding.elapsed();
    if let Err(error) = decided {
        // The insert may or may not have committed: only recovery, reading the log, may
        // resolve the prepared parts now.
        tracing::warn!(gid = %base, %error, "commit decision not confirmed; left to recovery");
        return (Err(Failure::Unknown(error.into())), timing);
    }

    pause_if(fault, Fault::PauseAfterDecision, &base).await;

    // Committed. Finish every part, retrying; what still fails is left to recovery.
    let committing = Instant::now();
    let finished = join_all(ready.into_iter().map(|(shard, db, mut conn)| {
        let gid = gid(&base, shard);
        async move {
            // First on the connection that prepared it (so a pool whose connections all
            // wait for this transaction's locks cannot stop it), then on fresh ones.
            if finish_on(&mut conn, &gid, true).await.is_ok() {
                return true;
            }
            drop(conn);
            let mut wait = Duration::from_millis(20);
            for attempt in 1..=5 {
                match finish(&db, &gid, true).await {
                    Ok(()) => return true,
                    Err(error) if attempt == 5 => {
                        tracing::warn!(%gid, %error, "COMMIT PREPARED failed; recovery will retry");
                    }
                    Err(_) => {
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                }
            }
            false
        }
    }))
    .await;
    timing.commit = committing.elapsed();
    if finished.iter().all(|done| *done) {
        // Nothing refers to the decision any more.
        let _ = diesel::delete(tx_decisions::table.find(&base))
            .execute(&mut *primary_conn)
            .await;
    }
    (Ok(()), timing)
}

/// Crash tests: stops here for good (the test kills the process) when `fault` is `at`.
async fn pause_if(fault: Option<Fault>, at: Fault, gid: &str) {
    if fault == Some(at) {
        tracing::warn!(%gid, fault = ?at, "fault injection: transaction paused");
        std::future::pending::<()>().await;
    }
}

async fn rollback_all(
    base: &str,
    ready: Vec<(
        usize,
        Database,
        bb8::PooledConnection<'static, crate::db::PgManager>,
    )>,
) {
    join_all(ready.into_iter().map(|(shard, db, mut conn)| {
        let gid = gid(base, shard);
        async move {
            if finish_on(&mut conn, &gid, false).await.is_ok() {
                return;
            }
            drop(conn);
            if let Err(error) = finish(&db, &gid, false).await {
                // Still prepared: recovery finds no decision and rolls it back.
                tracing::warn!(%gid, %error, "ROLLBACK PREPARED failed; recovery will retry");
            }
        }
    }))
    .await;
}

/// In-doubt prepared transactions on one shard, as recovery last saw them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct InDoubt {
    /// The shard's index.
    pub shard: usize,
    /// Whether the shard answered.
    pub reachable: bool,
    /// Prepared transactions of this deployment.
    pub prepared: usize,
    /// Those older than the grace period.
    pub older_than_grace: usize,
    /// Age of the oldest, in seconds.
    pub oldest_seconds: f64,
}

/// What one recovery pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RecoveryReport {
    /// Prepared transactions committed (their decision was logged).
    pub committed: u64,
    /// Prepared transactions rolled back (no decision: presumed abort).
    pub rolled_back: u64,
    /// Decision rows deleted.
    pub forgotten: u64,
    /// Per shard.
    pub in_doubt: Vec<InDoubt>,
    /// What failed (a shard or the primary unreachable).
    pub errors: Vec<String>,
}

#[derive(QueryableByName)]
struct PreparedRow {
    #[diesel(sql_type = Text)]
    gid: String,
    #[diesel(sql_type = Double)]
    age: f64,
}

/// This deployment's prepared transactions in `db`'s database, with their age.
async fn list_prepared(
    conn: &mut AsyncPgConnection,
    prefix: &str,
) -> Result<Vec<(String, f64)>, DbError> {
    let rows: Vec<PreparedRow> = diesel::sql_query(
        "SELECT gid, EXTRACT(EPOCH FROM (now() - prepared))::float8 AS age \
         FROM pg_prepared_xacts \
         WHERE database = current_database() AND left(gid, length($1)) = $1",
    )
    .bind::<Text, _>(prefix)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.gid, r.age)).collect())
}

/// The logged decisions of this deployment, with their age in seconds.
async fn decisions(primary: &Database, prefix: &str) -> Result<Vec<(String, f64)>, DbError> {
    let mut conn = primary.pg_conn().await?;
    let rows: Vec<(String, chrono::NaiveDateTime)> = tx_decisions::table
        .select((tx_decisions::gid, tx_decisions::created_at))
        .filter(tx_decisions::gid.like(format!("{}%", prefix.replace('_', "\\_"))))
        .load(&mut *conn)
        .await?;
    let now = Utc::now().naive_utc();
    Ok(rows
        .into_iter()
        .map(|(gid, at)| (gid, (now - at).num_milliseconds() as f64 / 1000.0))
        .collect())
}

/// [`list_prepared`] on every shard's connection (an error where there is none).
async fn list_all(
    conns: &mut [Result<AsyncPgConnection, String>],
    prefix: &str,
) -> Vec<Result<Vec<(String, f64)>, String>> {
    join_all(conns.iter_mut().map(|conn| async move {
        match conn {
            Ok(conn) => list_prepared(conn, prefix).await.map_err(|e| e.to_string()),
            Err(error) => Err(error.clone()),
        }
    }))
    .await
}

/// One recovery pass (see the module documentation).
pub(super) async fn recover(
    primary: Database,
    shards: Arc<[Database]>,
    prefix: String,
    in_flight: HashSet<String>,
    grace: Duration,
) -> RecoveryReport {
    let mut report = RecoveryReport::default();
    let grace_s = grace.as_secs_f64();
    // One connection per shard for the whole pass, outside the pool (see `finish`).
    let mut conns: Vec<Result<AsyncPgConnection, String>> =
        join_all(shards.iter().map(|db| db.direct_pg_conn()))
            .await
            .into_iter()
            .map(|c| c.map_err(|e| e.to_string()))
            .collect();
    let first = list_all(&mut conns, &prefix).await;
    let logged = decisions(&primary, &prefix).await;
    let second = list_all(&mut conns, &prefix).await;
    let logged: Option<HashSet<String>> = match &logged {
        Ok(rows) => Some(rows.iter().map(|(gid, _)| gid.clone()).collect()),
        Err(error) => {
            report.errors.push(format!("primary: {error}"));
            None
        }
    };
    let mut referenced: HashSet<String> = HashSet::new();
    let mut every_shard_listed = true;
    for (shard, (first, second)) in first.into_iter().zip(second).enumerate() {
        let (first, second) = match (first, second) {
            (Ok(first), Ok(second)) => (first, second),
            (Err(error), _) | (_, Err(error)) => {
                every_shard_listed = false;
                report.errors.push(format!("shard {shard}: {error}"));
                report.in_doubt.push(InDoubt {
                    shard,
                    ..InDoubt::default()
                });
                continue;
            }
        };
        let still: HashSet<&str> = second.iter().map(|(gid, _)| gid.as_str()).collect();
        let mut seen = InDoubt {
            shard,
            reachable: true,
            prepared: second.len(),
            ..InDoubt::default()
        };
        for (_, age) in &second {
            if *age > grace_s {
                seen.older_than_grace += 1;
            }
            seen.oldest_seconds = seen.oldest_seconds.max(*age);
        }
        for (gid, age) in &first {
            let base = base_of(gid).to_owned();
            referenced.insert(base.clone());
            // Seen before and after reading the log, old enough, and not running here.
            if !still.contains(gid.as_str()) || *age <= grace_s || in_flight.contains(&base) {
                continue;
            }
            let Some(logged) = &logged else { continue };
            let commit = logged.contains(&base);
            let Ok(conn) = &mut conns[shard] else {
                continue;
            };
            match finish_on(conn, gid, commit).await {
                Ok(()) if commit => report.committed += 1,
                Ok(()) => report.rolled_back += 1,
                Err(error) => report.errors.push(format!("shard {shard}: {gid}: {error}")),
            }
        }
        report.in_doubt.push(seen);
    }
    // Decisions no prepared transaction refers to any more (every shard listed) are done.
    if let (true, Ok(rows)) = (every_shard_listed, decisions(&primary, &prefix).await) {
        let done: Vec<String> = rows
            .into_iter()
            .filter(|(gid, age)| {
                *age > grace_s && !referenced.contains(gid) && !in_flight.contains(gid)
            })
            .map(|(gid, _)| gid)
            .collect();
        if !done.is_empty() {
            if let Ok(mut conn) = primary.pg_conn().await {
                if let Ok(n) =
                    diesel::delete(tx_decisions::table.filter(tx_decisions::gid.eq_any(&done)))
                        .execute(&mut *conn)
                        .await
                {
                    report.forgotten = n as u64;
                }
            }
        }
    }
    report
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_parts_gid_names_its_transaction_and_shard() {
        let gid = super::gid("sb_0a1b2c3d_99aabbcc_42", 3);
        assert_eq!(gid, "sb_0a1b2c3d_99aabbcc_42_3");
        assert_eq!(super::base_of(&gid), "sb_0a1b2c3d_99aabbcc_42");
        assert!(gid.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    }
}
