//! The saga log in the primary database: one `sagas` row per run and one `saga_steps` row
//! per step. Every write of a running saga is fenced by its lease: it only lands while
//! this server still owns the saga, and it extends the lease.

use std::time::Duration;

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde::Serialize;

use crate::db::{
    schema::{saga_steps, sagas, user_deletions},
    with_conn, Database, DbError,
};

/// A saga's state.
pub mod state {
    /// Running its steps forward.
    pub const RUNNING: &str = "running";
    /// Undoing its steps after a failure before the pivot.
    pub const COMPENSATING: &str = "compensating";
    /// Every step done.
    pub const COMPLETED: &str = "completed";
    /// Every started step undone.
    pub const COMPENSATED: &str = "compensated";
}

/// A step's state.
pub mod step_state {
    /// Not started.
    pub const PENDING: &str = "pending";
    /// Started, outcome not recorded (in progress, failed with an unknown outcome, or
    /// interrupted by a crash).
    pub const STARTED: &str = "started";
    /// Done; its output is stored.
    pub const DONE: &str = "done";
    /// Failed and certainly left nothing behind.
    pub const FAILED: &str = "failed";
    /// Being undone.
    pub const COMPENSATING: &str = "compensating";
    /// Undone (or nothing needed undoing).
    pub const COMPENSATED: &str = "compensated";
}

/// One saga run, as stored.
#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = sagas)]
pub struct SagaRecord {
    /// Its id.
    pub id: String,
    /// Its definition's name.
    pub saga_type: String,
    /// What it is about (one live saga per type and key).
    pub saga_key: String,
    /// `running`, `compensating`, `completed` or `compensated`.
    pub state: String,
    /// Its input, JSON.
    pub input: String,
    /// A step or compensation kept failing past the limit (it is still retried).
    pub stuck: bool,
    /// The server running it.
    pub owner: Option<String>,
    /// Until when `owner` holds it (UTC).
    pub lease_until: Option<NaiveDateTime>,
    /// Why it is compensating or compensated, or its latest step error.
    pub last_error: Option<String>,
    /// Started (UTC).
    pub created_at: NaiveDateTime,
    /// Last written (UTC).
    pub updated_at: NaiveDateTime,
}

/// One step of a run, as stored.
#[derive(Debug, Clone, Queryable, Selectable, Serialize)]
#[diesel(table_name = saga_steps)]
pub struct StepRecord {
    /// The saga.
    #[serde(skip)]
    pub saga_id: String,
    /// Its position.
    #[serde(rename = "index")]
    pub step_index: i32,
    /// Its name.
    pub name: String,
    /// See [`step_state`].
    pub state: String,
    /// Times its action was started.
    pub attempts: i32,
    /// Times its compensation was started.
    pub compensation_attempts: i32,
    /// Its output, JSON, once done.
    pub output: Option<String>,
    /// Its latest error.
    pub last_error: Option<String>,
    /// Last written (UTC).
    pub updated_at: NaiveDateTime,
}

/// A write of a running saga.
#[derive(Debug, Clone, Copy)]
pub enum Record<'a> {
    /// Extend the lease only.
    Renew,
    /// The step's action is about to run.
    StepStarted(usize),
    /// The step's action succeeded with this output.
    StepDone(usize, &'a str),
    /// A step succeeded with this output, and in the same write: the next step is about
    /// to run, or the saga is complete (one commit instead of two).
    Advance {
        /// The step that succeeded.
        done: usize,
        /// Its output.
        output: &'a str,
        /// What comes next.
        next: Next,
    },
    /// The step's action failed; `definite`: it certainly left nothing behind.
    StepFailed {
        /// The step.
        step: usize,
        /// Why.
        error: &'a str,
        /// See [`super::StepError::definite`].
        definite: bool,
    },
    /// The step's compensation is about to run.
    CompensationStarted(usize),
    /// The step is undone.
    Compensated(usize),
    /// The step's compensation failed.
    CompensationFailed(usize, &'a str),
    /// The saga changed state; a final state releases the lease.
    State(&'static str, Option<&'a str>),
    /// The saga is (or is no longer) stuck.
    Stuck(bool),
}

/// What an [`Record::Advance`] also records.
#[derive(Debug, Clone, Copy)]
pub enum Next {
    /// This step is about to run.
    Start(usize),
    /// Every step is done: the saga is complete (and its lease released).
    Complete,
}

/// Why a write did not land.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Another server owns the saga now: this one must stop running it.
    #[error("the saga's lease was lost")]
    LeaseLost,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<diesel::result::Error> for LogError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Db(error.into())
    }
}

/// What [`SagaLog::create`] found.
#[derive(Debug)]
pub enum Created {
    /// A new run, owned by the caller.
    New,
    /// A live run for the same type and key already exists.
    Existing(String),
}

fn now() -> NaiveDateTime {
    chrono::Utc::now().naive_utc()
}

fn until(lease: Duration) -> NaiveDateTime {
    now() + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(30))
}

/// The saga log of one primary database.
#[derive(Debug, Clone)]
pub struct SagaLog {
    db: Database,
}

impl SagaLog {
    /// The log in `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    /// Stores a new run owned by `owner`, with every step pending; or finds the live run
    /// with the same type and key.
    #[allow(clippy::too_many_arguments)]
    pub async fn create(
        &self,
        id: &str,
        saga_type: &str,
        key: &str,
        input: &str,
        steps: &[&str],
        owner: &str,
        lease: Duration,
    ) -> Result<Created, DbError> {
        let at = now();
        let saga = (
            sagas::id.eq(id),
            sagas::saga_type.eq(saga_type),
            sagas::saga_key.eq(key),
            sagas::state.eq(state::RUNNING),
            sagas::input.eq(input),
            sagas::stuck.eq(false),
            sagas::owner.eq(Some(owner)),
            sagas::lease_until.eq(Some(until(lease))),
            sagas::created_at.eq(at),
            sagas::updated_at.eq(at),
        );
        let rows: Vec<_> = steps
            .iter()
            .enumerate()
            .map(|(index, name)| {
                (
                    saga_steps::saga_id.eq(id),
                    saga_steps::step_index.eq(index as i32),
                    saga_steps::name.eq(*name),
                    saga_steps::state.eq(step_state::PENDING),
                    saga_steps::updated_at.eq(at),
                )
            })
            .collect();
        let mut conn = self.db.conn().await?;
        let inserted = with_conn!(&mut conn, |c| {
            c.transaction::<_, diesel::result::Error, _>(async |c| {
                diesel::insert_into(sagas::table)
                    .values(saga)
                    .execute(c)
                    .await?;
                for row in &rows {
                    diesel::insert_into(saga_steps::table)
                        .values(*row)
                        .execute(c)
                        .await?;
                }
                Ok(())
            })
            .await
        });
        match inserted {
            Ok(()) => Ok(Created::New),
            Err(e) if crate::db::is_unique_violation(&e) => {
                let existing: Option<String> = with_conn!(&mut conn, |c| {
                    sagas::table
                        .filter(sagas::saga_type.eq(saga_type))
                        .filter(sagas::saga_key.eq(key))
                        .filter(sagas::state.ne(state::COMPENSATED))
                        .select(sagas::id)
                        .first(c)
                        .await
                        .optional()
                })?;
                match existing {
                    Some(id) => Ok(Created::Existing(id)),
                    // It was compensated in between: the caller may try again.
                    None => Err(DbError::Conflict(
                        "a saga for the same key ended meanwhile; try again".into(),
                    )),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The live run of `saga_type` for `key`, or the latest finished one.
    pub async fn find(&self, saga_type: &str, key: &str) -> Result<Option<SagaRecord>, DbError> {
        let mut conn = self.db.conn().await?;
        Ok(with_conn!(&mut conn, |c| {
            sagas::table
                .filter(sagas::saga_type.eq(saga_type))
                .filter(sagas::saga_key.eq(key))
                .order((
                    (sagas::state.eq(state::COMPENSATED)).asc(),
                    sagas::created_at.desc(),
                ))
                .select(SagaRecord::as_select())
                .first(c)
                .await
                .optional()
        })?)
    }

    /// Runs that are unfinished and unowned (their owner's lease ran out), oldest first.
    pub async fn claimable(&self, limit: i64) -> Result<Vec<String>, DbError> {
        let at = now();
        let mut conn = self.db.conn().await?;
        Ok(with_conn!(&mut conn, |c| {
            sagas::table
                .filter(sagas::state.eq_any([state::RUNNING, state::COMPENSATING]))
                .filter(sagas::owner.is_null().or(sagas::lease_until.lt(at)))
                .order(sagas::created_at.asc())
                .select(sagas::id)
                .limit(limit)
                .load(c)
                .await
        })?)
    }

    /// Takes over `id` for `owner` if it is unfinished and its lease ran out (a
    /// compare-and-swap on the row): `true` when this caller now owns it.
    pub async fn claim(&self, id: &str, owner: &str, lease: Duration) -> Result<bool, DbError> {
        let at = now();
        let mut conn = self.db.conn().await?;
        let claimed = with_conn!(&mut conn, |c| {
            diesel::update(
                sagas::table
                    .find(id)
                    .filter(sagas::state.eq_any([state::RUNNING, state::COMPENSATING]))
                    .filter(sagas::owner.is_null().or(sagas::lease_until.lt(at))),
            )
            .set((
                sagas::owner.eq(Some(owner)),
                sagas::lease_until.eq(Some(until(lease))),
            ))
            .execute(c)
            .await
        })?;
        Ok(claimed == 1)
    }

    /// A run and its steps.
    pub async fn load(&self, id: &str) -> Result<Option<(SagaRecord, Vec<StepRecord>)>, DbError> {
        let mut conn = self.db.conn().await?;
        Ok(with_conn!(&mut conn, |c| {
            let saga: Option<SagaRecord> = sagas::table
                .find(id)
                .select(SagaRecord::as_select())
                .first(c)
                .await
                .optional()?;
            let Some(saga) = saga else {
                return Ok(None);
            };
            let steps = saga_steps::table
                .filter(saga_steps::saga_id.eq(id))
                .order(saga_steps::step_index.asc())
                .select(StepRecord::as_select())
                .load(c)
                .await?;
            Ok::<_, diesel::result::Error>(Some((saga, steps)))
        })?)
    }

    /// Runs, newest first: all, or those in `state` (`stuck`: those marked stuck).
    pub async fn list(&self, state: Option<&str>, limit: i64) -> Result<Vec<SagaRecord>, DbError> {
        let mut conn = self.db.conn().await?;
        Ok(with_conn!(&mut conn, |c| {
            let mut query = sagas::table
                .select(SagaRecord::as_select())
                .order(sagas::created_at.desc())
                .limit(limit)
                .into_boxed();
            match state {
                Some("stuck") => query = query.filter(sagas::stuck.eq(true)),
                Some(state) => query = query.filter(sagas::state.eq(state)),
                None => {}
            }
            query.load(c).await
        })?)
    }

    /// Gives up `owner`'s lease on `id` (a clean stop), so another server may resume it
    /// at once.
    pub async fn release(&self, id: &str, owner: &str) -> Result<(), DbError> {
        let mut conn = self.db.conn().await?;
        with_conn!(&mut conn, |c| {
            diesel::update(sagas::table.find(id).filter(sagas::owner.eq(owner)))
                .set((
                    sagas::owner.eq(None::<String>),
                    sagas::lease_until.eq(None::<NaiveDateTime>),
                ))
                .execute(c)
                .await
        })?;
        Ok(())
    }

    /// Deletes finished runs last written before `cutoff` (and their steps), and the
    /// deletion marks whose saga is gone; answers how many runs.
    pub async fn prune(&self, cutoff: NaiveDateTime) -> Result<usize, DbError> {
        let mut conn = self.db.conn().await?;
        // A read first: on SQLite even a DELETE that matches nothing takes the write lock.
        let due: i64 = with_conn!(&mut conn, |c| {
            let sagas: i64 = sagas::table
                .filter(sagas::state.eq_any([state::COMPLETED, state::COMPENSATED]))
                .filter(sagas::updated_at.lt(cutoff))
                .count()
                .get_result(c)
                .await?;
            let marks: i64 = user_deletions::table
                .filter(user_deletions::created_at.lt(cutoff))
                .filter(diesel::dsl::not(
                    user_deletions::saga_id.eq_any(sagas::table.select(sagas::id)),
                ))
                .count()
                .get_result(c)
                .await?;
            Ok::<_, diesel::result::Error>(sagas + marks)
        })?;
        if due == 0 {
            return Ok(0);
        }
        Ok(with_conn!(&mut conn, |c| {
            c.transaction::<_, diesel::result::Error, _>(async |c| {
                let finished = sagas::table
                    .filter(sagas::state.eq_any([state::COMPLETED, state::COMPENSATED]))
                    .filter(sagas::updated_at.lt(cutoff))
                    .select(sagas::id);
                diesel::delete(saga_steps::table.filter(saga_steps::saga_id.eq_any(finished)))
                    .execute(c)
                    .await?;
                let pruned = diesel::delete(
                    sagas::table
                        .filter(sagas::state.eq_any([state::COMPLETED, state::COMPENSATED]))
                        .filter(sagas::updated_at.lt(cutoff)),
                )
                .execute(c)
                .await?;
                diesel::delete(user_deletions::table.filter(
                    user_deletions::created_at.lt(cutoff).and(diesel::dsl::not(
                        user_deletions::saga_id.eq_any(sagas::table.select(sagas::id)),
                    )),
                ))
                .execute(c)
                .await?;
                Ok(pruned)
            })
            .await
        })?)
    }

    /// Writes `record` for `id` if `owner` still owns it, extending the lease by `lease`.
    pub async fn write(
        &self,
        id: &str,
        owner: &str,
        lease: Duration,
        record: Record<'_>,
    ) -> Result<(), LogError> {
        let at = now();
        let lease_until = match record {
            Record::State(state::COMPLETED | state::COMPENSATED, _)
            | Record::Advance {
                next: Next::Complete,
                ..
            } => None,
            _ => Some(until(lease)),
        };
        let mut conn = self.db.conn().await?;
        with_conn!(&mut conn, |c| {
            c.transaction::<_, LogError, _>(async |c| {
                let fence = sagas::table.find(id).filter(sagas::owner.eq(owner));
                let held = match record {
                    Record::State(state, error) => {
                        let released = lease_until.is_none();
                        diesel::update(fence)
                            .set((
                                sagas::state.eq(state),
                                sagas::last_error.eq(error),
                                sagas::updated_at.eq(at),
                                sagas::lease_until.eq(lease_until),
                                sagas::owner.eq((!released).then_some(owner)),
                            ))
                            .execute(c)
                            .await?
                    }
                    Record::Advance {
                        next: Next::Complete,
                        ..
                    } => {
                        diesel::update(fence)
                            .set((
                                sagas::state.eq(state::COMPLETED),
                                sagas::last_error.eq(None::<String>),
                                sagas::updated_at.eq(at),
                                sagas::lease_until.eq(None::<NaiveDateTime>),
                                sagas::owner.eq(None::<String>),
                            ))
                            .execute(c)
                            .await?
                    }
                    Record::Stuck(stuck) => {
                        diesel::update(fence)
                            .set((
                                sagas::stuck.eq(stuck),
                                sagas::updated_at.eq(at),
                                sagas::lease_until.eq(lease_until),
                            ))
                            .execute(c)
                            .await?
                    }
                    _ => {
                        diesel::update(fence)
                            .set((sagas::updated_at.eq(at), sagas::lease_until.eq(lease_until)))
                            .execute(c)
                            .await?
                    }
                };
                if held == 0 {
                    return Err(LogError::LeaseLost);
                }
                let step = |index: usize| saga_steps::table.find((id.to_owned(), index as i32));
                match record {
                    Record::Renew | Record::State(..) | Record::Stuck(_) => 0,
                    Record::Advance { done, output, next } => {
                        diesel::update(step(done))
                            .set((
                                saga_steps::state.eq(step_state::DONE),
                                saga_steps::output.eq(Some(output)),
                                saga_steps::updated_at.eq(at),
                            ))
                            .execute(c)
                            .await?;
                        match next {
                            Next::Start(index) => {
                                diesel::update(step(index))
                                    .set((
                                        saga_steps::state.eq(step_state::STARTED),
                                        saga_steps::attempts.eq(saga_steps::attempts + 1),
                                        saga_steps::updated_at.eq(at),
                                    ))
                                    .execute(c)
                                    .await?
                            }
                            Next::Complete => 0,
                        }
                    }
                    Record::StepStarted(index) => {
                        diesel::update(step(index))
                            .set((
                                saga_steps::state.eq(step_state::STARTED),
                                saga_steps::attempts.eq(saga_steps::attempts + 1),
                                saga_steps::updated_at.eq(at),
                            ))
                            .execute(c)
                            .await?
                    }
                    Record::StepDone(index, output) => {
                        diesel::update(step(index))
                            .set((
                                saga_steps::state.eq(step_state::DONE),
                                saga_steps::output.eq(Some(output)),
                                saga_steps::updated_at.eq(at),
                            ))
                            .execute(c)
                            .await?
                    }
                    Record::StepFailed {
                        step: index,
                        error,
                        definite,
                    } => {
                        let state = if definite {
                            step_state::FAILED
                        } else {
                            step_state::STARTED
                        };
                        diesel::update(step(index))
                            .set((
                                saga_steps::state.eq(state),
                                saga_steps::last_error.eq(Some(error)),
                                saga_steps::updated_at.eq(at),
                            ))
                            .execute(c)
                            .await?
                    }
                    Record::CompensationStarted(index) => {
                        diesel::update(step(index))
                            .set((
                                saga_steps::state.eq(step_state::COMPENSATING),
                                saga_steps::compensation_attempts
                                    .eq(saga_steps::compensation_attempts + 1),
                                saga_steps::updated_at.eq(at),
                            ))
                            .execute(c)
                            .await?
                    }
                    Record::Compensated(index) => {
                        diesel::update(step(index))
                            .set((
                                saga_steps::state.eq(step_state::COMPENSATED),
                                saga_steps::updated_at.eq(at),
                            ))
                            .execute(c)
                            .await?
                    }
                    Record::CompensationFailed(index, error) => {
                        diesel::update(step(index))
                            .set((
                                saga_steps::last_error.eq(Some(error)),
                                saga_steps::updated_at.eq(at),
                            ))
                            .execute(c)
                            .await?
                    }
                };
                Ok(())
            })
            .await
        })
    }
}
