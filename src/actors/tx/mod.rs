//! The `TxCoordinator`: atomic writes across shards by two-phase commit.
//!
//! A write that touches one shard commits there in one phase. One that touches several
//! runs each shard's part in a transaction begun through diesel-async's transaction
//! manager, `PREPARE TRANSACTION`s it under a global id (gid), records the commit decision
//! in the primary database — committing that row *is* the commit point — and then
//! `COMMIT PREPARED`s every part, retrying until each succeeds. A failure before the
//! decision rolls every prepared part back; once the decision row may exist, nothing is
//! rolled back except by recovery, which reads the log (Citus's scheme).
//!
//! Recovery ([`Recover`], at start and on an interval) lists the prepared transactions on
//! each shard whose gid carries this deployment's prefix, twice around reading the
//! decision log, and resolves those seen both times that are older than the grace period
//! and not in flight here: committed when a decision exists, rolled back otherwise
//! (presumed abort). Decision rows nothing refers to any more are then deleted.
//!
//! Gids are `sb_<deployment>_<node>_<sequence>_<shard>`: the deployment id comes from the
//! shard map, the node id is random per process, and the shard index keeps the gids of one
//! transaction distinct when several shards share a PostgreSQL server (gids are unique
//! per server). They hold only `[a-z0-9_]`, so they can be written into the statements.

mod protocol;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use actix::prelude::*;
use diesel_async::AsyncPgConnection;
use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::db::{Database, DbError};

pub use protocol::{InDoubt, RecoveryReport};

/// One shard's part of a write: statements to run on its connection inside the
/// transaction the coordinator opens (and prepares, or commits).
pub type Work =
    Box<dyn for<'c> FnOnce(&'c mut AsyncPgConnection) -> BoxFuture<'c, Result<(), DbError>> + Send>;

/// A shard and its part of a write.
pub struct Part {
    /// The shard's index in the shard map.
    pub shard: usize,
    /// What to run there.
    pub work: Work,
    /// Prepared before the other parts (see [`Part::first`]).
    pub first: bool,
}

impl Part {
    /// A part for `shard`.
    pub fn new(
        shard: usize,
        work: impl for<'c> FnOnce(&'c mut AsyncPgConnection) -> BoxFuture<'c, Result<(), DbError>>
            + Send
            + 'static,
    ) -> Self {
        Self {
            shard,
            work: Box::new(work),
            first: false,
        }
    }

    /// A part prepared before the others: the one that claims something unique (an email
    /// index row). Writers racing for the same key then queue on it alone, and one that
    /// loses fails before it has touched — and locked — anything else, so two writes can
    /// never each hold a prepared part the other waits for.
    pub fn first(
        shard: usize,
        work: impl for<'c> FnOnce(&'c mut AsyncPgConnection) -> BoxFuture<'c, Result<(), DbError>>
            + Send
            + 'static,
    ) -> Self {
        Self {
            first: true,
            ..Self::new(shard, work)
        }
    }
}

/// Runs a write: in one phase when every part is on one shard, else by two-phase commit.
/// `Ok` once the write is committed (for a distributed one: once the decision is durable,
/// even if a participant's `COMMIT PREPARED` is still being retried).
#[derive(Message)]
#[rtype(result = "Result<(), DbError>")]
pub struct Execute {
    /// The parts, at least one.
    pub parts: Vec<Part>,
}

/// Resolves in-doubt prepared transactions now (it also runs on an interval).
#[derive(Message)]
#[rtype(result = "RecoveryReport")]
pub struct Recover;

/// The coordinator's counters.
#[derive(Message)]
#[rtype(result = "TxStats")]
pub struct GetTxStats;

/// What the coordinator has done since start.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TxStats {
    /// Writes committed on one shard.
    pub one_phase: u64,
    /// Distributed transactions committed.
    pub committed: u64,
    /// Distributed transactions rolled back before the decision.
    pub aborted: u64,
    /// Distributed transactions whose decision outcome was unknown (left to recovery).
    pub unknown: u64,
    /// Distributed transactions running now.
    pub in_flight: usize,
    /// Prepared transactions recovery committed.
    pub recovered_commits: u64,
    /// Prepared transactions recovery rolled back.
    pub recovered_rollbacks: u64,
    /// Last observed in-doubt prepared transactions, per shard.
    pub in_doubt: Vec<InDoubt>,
    /// Total time spent preparing, deciding and committing, in microseconds.
    pub prepare_us: u64,
    /// See `prepare_us`.
    pub decide_us: u64,
    /// See `prepare_us`.
    pub commit_us: u64,
}

/// How the coordinator behaves.
#[derive(Debug, Clone)]
pub struct TxConfig {
    /// How often recovery runs.
    pub recovery_interval: Duration,
    /// Prepared transactions younger than this are left to their coordinator.
    pub grace: Duration,
    /// Fault injection for crash tests (never set in production).
    pub fault: Option<Fault>,
}

/// Where a crash test wants the coordinator to stop, so it can `kill -9` the process
/// there: set by `SWITCHBOARD_FAULT_TX=pause-after-prepare|pause-after-decision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Every part prepared, no decision logged yet.
    PauseAfterPrepare,
    /// Decision logged, nothing committed yet.
    PauseAfterDecision,
}

impl Fault {
    /// The fault named by `SWITCHBOARD_FAULT_TX`, if any.
    pub fn from_env() -> Option<Self> {
        match std::env::var("SWITCHBOARD_FAULT_TX").ok()?.as_str() {
            "pause-after-prepare" => Some(Self::PauseAfterPrepare),
            "pause-after-decision" => Some(Self::PauseAfterDecision),
            other => {
                tracing::warn!(fault = other, "unknown SWITCHBOARD_FAULT_TX ignored");
                None
            }
        }
    }
}

/// The coordinator actor. One per server.
pub struct TxCoordinator {
    primary: Database,
    shards: Arc<[Database]>,
    deployment: String,
    node: String,
    next: u64,
    in_flight: HashSet<String>,
    stats: TxStats,
    config: TxConfig,
    recovering: bool,
}

impl TxCoordinator {
    /// A coordinator over `shards`, logging decisions in `primary`.
    pub fn new(
        primary: Database,
        shards: Vec<Database>,
        deployment: String,
        config: TxConfig,
    ) -> Self {
        let node = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
        Self {
            primary,
            shards: shards.into(),
            deployment,
            node,
            next: 0,
            in_flight: HashSet::new(),
            stats: TxStats::default(),
            config,
            recovering: false,
        }
    }

    /// The gid prefix of this deployment's transactions.
    fn prefix(&self) -> String {
        format!("sb_{}_", self.deployment)
    }
}

impl Actor for TxCoordinator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.notify(Recover);
        ctx.run_interval(self.config.recovery_interval, |_, ctx| ctx.notify(Recover));
    }
}

impl Handler<Execute> for TxCoordinator {
    type Result = ResponseActFuture<Self, Result<(), DbError>>;

    fn handle(&mut self, msg: Execute, _ctx: &mut Self::Context) -> Self::Result {
        // Per shard: its works (first ones first), and whether it holds a first part.
        let mut by_shard: HashMap<usize, (bool, Vec<(bool, Work)>)> = HashMap::new();
        for part in msg.parts {
            let entry = by_shard.entry(part.shard).or_default();
            entry.0 |= part.first;
            entry.1.push((part.first, part.work));
        }
        let mut groups: Vec<(usize, bool, Vec<Work>)> = by_shard
            .into_iter()
            .map(|(shard, (first, mut works))| {
                works.sort_by_key(|(first, _)| !*first);
                (shard, first, works.into_iter().map(|(_, w)| w).collect())
            })
            .collect();
        groups.sort_by_key(|(shard, _, _)| *shard);
        if let Some((shard, _, _)) = groups
            .iter()
            .find(|(shard, _, _)| *shard >= self.shards.len())
        {
            let error = DbError::Unavailable(format!("no shard {shard}"));
            return Box::pin(fut::ready(Err(error)));
        }
        if groups.len() <= 1 {
            let Some((shard, _, works)) = groups.pop() else {
                return Box::pin(fut::ready(Ok(())));
            };
            let db = self.shards[shard].clone();
            return Box::pin(protocol::one_phase(db, works).into_actor(self).map(
                |result, act, _| {
                    if result.is_ok() {
                        act.stats.one_phase += 1;
                    }
                    result
                },
            ));
        }
        self.next += 1;
        let base = format!("{}{}_{}", self.prefix(), self.node, self.next);
        self.in_flight.insert(base.clone());
        let participants = groups
            .into_iter()
            .map(|(shard, first, works)| (shard, self.shards[shard].clone(), works, first))
            .collect();
        let run = protocol::two_phase(
            self.primary.clone(),
            base.clone(),
            participants,
            self.config.fault,
        );
        Box::pin(run.into_actor(self).map(move |(result, timing), act, _| {
            act.in_flight.remove(&base);
            act.stats.prepare_us += timing.prepare.as_micros() as u64;
            act.stats.decide_us += timing.decide.as_micros() as u64;
            act.stats.commit_us += timing.commit.as_micros() as u64;
            match &result {
                Ok(()) => act.stats.committed += 1,
                Err(protocol::Failure::Aborted(_)) => act.stats.aborted += 1,
                Err(protocol::Failure::Unknown(_)) => act.stats.unknown += 1,
            }
            result.map_err(protocol::Failure::into_error)
        }))
    }
}

impl Handler<Recover> for TxCoordinator {
    type Result = ResponseActFuture<Self, RecoveryReport>;

    fn handle(&mut self, _: Recover, _ctx: &mut Self::Context) -> Self::Result {
        if self.recovering {
            return Box::pin(fut::ready(RecoveryReport::default()));
        }
        self.recovering = true;
        let started = Instant::now();
        let run = protocol::recover(
            self.primary.clone(),
            self.shards.clone(),
            self.prefix(),
            self.in_flight.clone(),
            self.config.grace,
        );
        Box::pin(run.into_actor(self).map(move |report, act, _| {
            act.recovering = false;
            act.stats.recovered_commits += report.committed;
            act.stats.recovered_rollbacks += report.rolled_back;
            act.stats.in_doubt = report.in_doubt.clone();
            if report.committed + report.rolled_back > 0 || !report.errors.is_empty() {
                tracing::info!(
                    committed = report.committed,
                    rolled_back = report.rolled_back,
                    errors = ?report.errors,
                    took_ms = started.elapsed().as_millis() as u64,
                    "two-phase commit recovery"
                );
            }
            report
        }))
    }
}

impl Handler<GetTxStats> for TxCoordinator {
    type Result = MessageResult<GetTxStats>;

    fn handle(&mut self, _: GetTxStats, _ctx: &mut Self::Context) -> Self::Result {
        let mut stats = self.stats.clone();
        stats.in_flight = self.in_flight.len();
        MessageResult(stats)
    }
}
