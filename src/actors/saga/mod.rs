//! The `Saga` supervisor: runs durable multi-step workflows with compensation.
//!
//! One supervisor actor per server owns which sagas this server runs, the waiters of
//! each, the definitions and the counters; each run is a task it spawns ([`run`]),
//! reporting back with [`Progress`]. The state that matters lives in the saga log in the
//! primary database ([`log`]): a step is recorded as started before its side effect and
//! as done (with its output) after it, so a run can always be continued from the log —
//! by this server after a restart, or by another one.
//!
//! Semantics (Temporal's and Eventuate's): a failure before the pivot compensates, in
//! reverse, the steps that are done and a started one whose outcome is unknown — never
//! one that never ran or that certainly failed; after the pivot, steps are retried until
//! they succeed. Retries back off exponentially with jitter; each attempt has a time
//! limit; a step that keeps failing marks the saga stuck (logged once, counted, listed)
//! and is still retried.
//!
//! Ownership is a lease in the saga's row: claimed by compare-and-swap when unowned or
//! expired, renewed while the run lasts, and checked by every write, so two servers on
//! one database never run the same saga at once. At start and every
//! `--saga-resume-interval`, unfinished sagas whose lease ran out are claimed and resumed.

pub mod definition;
pub mod delete_user;
pub mod log;
mod run;

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use actix::prelude::*;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;

pub use definition::{Definition, StepContext, StepError, StepSpec};
pub use log::{SagaLog, SagaRecord, StepRecord};
pub use run::backoff;

use crate::db::{Database, DbError};
use run::{Ended, Run};

/// How sagas are run.
#[derive(Debug, Clone)]
pub struct SagaConfig {
    /// How long a server holds a saga without renewing (`--saga-lease`).
    pub lease: Duration,
    /// How often unfinished, unowned sagas are looked for (`--saga-resume-interval`).
    pub resume_interval: Duration,
    /// Time limit of one attempt of a step or compensation (`--saga-step-timeout`).
    pub step_timeout: Duration,
    /// First retry delay (`--saga-retry-initial`); doubles each attempt.
    pub retry_initial: Duration,
    /// Longest retry delay (`--saga-retry-max`).
    pub retry_max: Duration,
    /// Failed attempts of one step after which the saga is marked stuck
    /// (`--saga-stuck-after`).
    pub stuck_after: u32,
    /// Attempts a step before the pivot gets when its outcome is unknown, before the
    /// saga compensates.
    pub pre_pivot_attempts: u32,
    /// Finished runs (and deletion marks) older than this are deleted
    /// (`--saga-retention`).
    pub retention: Duration,
    /// Test-only fault injection (else `SWITCHBOARD_FAULT_SAGA` is read).
    pub fault: Option<Arc<Fault>>,
}

impl Default for SagaConfig {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(15),
            resume_interval: Duration::from_secs(5),
            step_timeout: Duration::from_secs(60),
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            stuck_after: 8,
            pre_pivot_attempts: 3,
            retention: Duration::from_secs(7 * 24 * 3600),
            fault: None,
        }
    }
}

/// Test-only fault injection, named by `SWITCHBOARD_FAULT_SAGA=<kind>:<point>[:<path>]`:
/// `fail:<point>` fails every attempt there (a refusal); `fail-while:<point>:<path>`
/// fails (outcome unknown) while the file exists; `pause:<point>:<path>` waits there
/// while the file exists. A point is a step name, or `<step>/batch` after a step's first
/// batch.
#[derive(Debug, Clone)]
pub struct Fault {
    kind: FaultKind,
    point: String,
    path: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FaultKind {
    Fail,
    FailWhile,
    Pause,
}

impl Fault {
    /// The fault named by `SWITCHBOARD_FAULT_SAGA`, if any.
    pub fn from_env() -> Option<Arc<Self>> {
        Self::parse(&std::env::var("SWITCHBOARD_FAULT_SAGA").ok()?)
    }

    /// The fault `spec` names (see [`Fault`]); `None` (logged) when it names none.
    pub fn parse(spec: &str) -> Option<Arc<Self>> {
        let mut parts = spec.splitn(3, ':');
        let kind = match parts.next()? {
            "fail" => FaultKind::Fail,
            "fail-while" => FaultKind::FailWhile,
            "pause" => FaultKind::Pause,
            other => {
                tracing::warn!(fault = other, "unknown SWITCHBOARD_FAULT_SAGA ignored");
                return None;
            }
        };
        let point = parts.next()?.to_owned();
        let path = parts.next().map(PathBuf::from);
        if kind != FaultKind::Fail && path.is_none() {
            tracing::warn!(%spec, "SWITCHBOARD_FAULT_SAGA needs a file path; ignored");
            return None;
        }
        tracing::warn!(%spec, "saga fault injection on");
        Some(Arc::new(Self { kind, point, path }))
    }

    /// Applies the fault if `point` is its point.
    pub async fn at(&self, point: &str) -> Result<(), StepError> {
        if self.point != point {
            return Ok(());
        }
        let exists = || self.path.as_ref().is_some_and(|p| p.exists());
        match self.kind {
            FaultKind::Fail => Err(StepError::definite(format!("injected failure at {point}"))),
            FaultKind::FailWhile if exists() => {
                Err(StepError::unknown(format!("injected failure at {point}")))
            }
            FaultKind::FailWhile => Ok(()),
            FaultKind::Pause => {
                while exists() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(())
            }
        }
    }

    async fn before(&self, step: &str) -> Result<(), StepError> {
        self.at(step).await
    }
}

/// The longest pause between two prunings of finished runs.
const PRUNE_AT_MOST_EVERY: Duration = Duration::from_secs(600);

/// Where a saga has got to, for a caller waiting on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reached {
    /// The pivot is done: the saga will complete.
    Pivot,
    /// Every step is done.
    Completed,
    /// It was compensated after this error.
    Compensated(String),
}

/// Start a saga of `saga_type` about `key` (or join the live one about the same key),
/// answering once it has passed its pivot, completed, or been compensated.
#[derive(Debug, Message)]
#[rtype(result = "Result<Started, StartError>")]
pub struct Start {
    /// A registered definition's name.
    pub saga_type: &'static str,
    /// What it is about: one live saga per type and key.
    pub key: String,
    /// Its input, stored with it.
    pub input: Value,
}

/// A started (or joined) saga that got past its pivot.
#[derive(Debug, Clone, Serialize)]
pub struct Started {
    /// Its id.
    pub id: String,
    /// Whether an earlier call started it.
    pub joined: bool,
    /// Whether it has completed already.
    pub completed: bool,
}

/// Why [`Start`] did not get past the pivot.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The saga was compensated.
    #[error("{error}")]
    Compensated {
        /// Its id.
        id: String,
        /// Why.
        error: String,
    },
    /// The saga log could not be written or read.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The saga is still before its pivot (run by another server, or this server is
    /// stopping); it goes on.
    #[error("saga {id} is still running; see /admin/sagas/{id}")]
    Pending {
        /// Its id.
        id: String,
    },
}

/// From a run to the supervisor.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub(crate) struct Progress {
    id: String,
    event: SagaEvent,
}

#[derive(Debug)]
pub(crate) enum SagaEvent {
    Reached(Reached),
    Retry,
    Compensation,
    Stuck(bool),
}

#[derive(Debug, Message)]
#[rtype(result = "()")]
struct RunEnded {
    id: String,
    ended: Ended,
}

/// Look for unfinished sagas whose lease ran out and resume them now (it also runs on
/// an interval); answers how many were claimed.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct Resume;

/// The server is stopping: stop every run here and give up their leases, so another
/// server (or this one, restarted) resumes them at once; answers how many.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct Release;

/// The supervisor's counters.
#[derive(Debug, Message)]
#[rtype(result = "SagaStats")]
pub struct GetSagaStats;

/// Counters since start.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SagaStats {
    /// Runs started or resumed here, by type.
    pub started: HashMap<&'static str, u64>,
    /// Runs that completed here, by type.
    pub completed: HashMap<&'static str, u64>,
    /// Runs compensated here, by type.
    pub compensated: HashMap<&'static str, u64>,
    /// Runs this server holds now.
    pub running: usize,
    /// Of those, runs marked stuck.
    pub stuck: usize,
    /// Failed attempts of steps and compensations (each followed by a retry or by
    /// compensation).
    pub step_retries: u64,
    /// Compensation attempts.
    pub compensations: u64,
    /// Runs resumed from the log (after a crash or another server's lease ran out).
    pub resumed: u64,
    /// Runs this server stopped because it lost the lease or the log.
    pub abandoned: u64,
}

struct Running {
    saga_type: &'static str,
    waiters: Vec<oneshot::Sender<Reached>>,
    pivot_passed: bool,
    stuck: bool,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The supervisor actor. One per server.
pub struct Saga {
    log: SagaLog,
    node: Arc<str>,
    config: SagaConfig,
    definitions: HashMap<&'static str, Arc<dyn Definition>>,
    running: HashMap<String, Running>,
    stats: SagaStats,
    fault: Option<Arc<Fault>>,
    resuming: bool,
    stopping: bool,
    /// When finished runs were last pruned.
    pruned_at: Option<std::time::Instant>,
}

impl Saga {
    /// A supervisor over the saga log in `primary`.
    pub fn new(primary: Database, config: SagaConfig) -> Self {
        let node = crate::actors::broker::random_node_id();
        let fault = config.fault.clone().or_else(Fault::from_env);
        Self {
            log: SagaLog::new(primary),
            node: node.into(),
            config,
            definitions: HashMap::new(),
            running: HashMap::new(),
            stats: SagaStats::default(),
            fault,
            resuming: false,
            stopping: false,
            pruned_at: None,
        }
    }

    /// Registers a definition.
    pub fn with_definition(mut self, definition: Arc<dyn Definition>) -> Self {
        self.definitions.insert(definition.saga_type(), definition);
        self
    }

    /// The fault injected by the environment, for definitions' batch points.
    pub fn fault(&self) -> Option<Arc<Fault>> {
        self.fault.clone()
    }

    fn spawn(&mut self, id: String, definition: Arc<dyn Definition>, ctx: &mut Context<Self>) {
        let saga_type = definition.saga_type();
        *self.stats.started.entry(saga_type).or_default() += 1;
        self.running.entry(id.clone()).or_insert(Running {
            saga_type,
            waiters: Vec::new(),
            pivot_passed: false,
            stuck: false,
            task: None,
        });
        let run = Run {
            id: id.clone(),
            owner: self.node.clone(),
            log: self.log.clone(),
            definition,
            config: self.config.clone(),
            supervisor: ctx.address(),
            fault: self.fault.clone(),
        };
        let supervisor = ctx.address();
        let key = id.clone();
        let task = actix::spawn(async move {
            let ended = run.execute().await;
            supervisor.do_send(RunEnded { id, ended });
        });
        if let Some(running) = self.running.get_mut(&key) {
            running.task = Some(task);
        }
    }
}

impl Actor for Saga {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        tracing::info!(node = %self.node, "saga supervisor started");
        ctx.notify(Resume);
        ctx.run_interval(self.config.resume_interval, |_, ctx| ctx.notify(Resume));
    }
}

impl Handler<Start> for Saga {
    type Result = ResponseActFuture<Self, Result<Started, StartError>>;

    fn handle(&mut self, msg: Start, _ctx: &mut Self::Context) -> Self::Result {
        if self.stopping {
            return Box::pin(actix::fut::ready(Err(StartError::Db(
                DbError::Unavailable("the server is shutting down".into()),
            ))));
        }
        let Some(definition) = self.definitions.get(msg.saga_type).cloned() else {
            return Box::pin(actix::fut::ready(Err(StartError::Db(
                DbError::Unavailable(format!("no saga type `{}`", msg.saga_type)),
            ))));
        };
        let id = uuid::Uuid::now_v7().to_string();
        let (log, node, lease) = (self.log.clone(), self.node.clone(), self.config.lease);
        let input = msg.input.to_string();
        let names: Vec<&'static str> = definition.steps().iter().map(|s| s.name).collect();
        let (saga_type, key) = (msg.saga_type, msg.key);
        let pivot = definition.steps()[definition.pivot()].name;
        Box::pin(
            async move {
                let created = log
                    .create(&id, saga_type, &key, &input, &names, &node, lease)
                    .await?;
                Ok::<_, StartError>((id, created))
            }
            .into_actor(self)
            .then(move |created, this, ctx| {
                let plan = match created {
                    Err(error) => Err(error),
                    Ok((id, log::Created::New)) => {
                        let (tx, rx) = oneshot::channel();
                        this.spawn(id.clone(), definition, ctx);
                        if let Some(running) = this.running.get_mut(&id) {
                            running.waiters.push(tx);
                        }
                        Ok((Some(rx), id, false))
                    }
                    Ok((_, log::Created::Existing(id))) => match this.running.get_mut(&id) {
                        Some(running) if running.pivot_passed => Ok((None, id, true)),
                        Some(running) => {
                            let (tx, rx) = oneshot::channel();
                            running.waiters.push(tx);
                            Ok((Some(rx), id, true))
                        }
                        None => Ok((None, id, true)),
                    },
                };
                let log = this.log.clone();
                async move {
                    let (reached, id, joined) = plan?;
                    wait(log, id, joined, reached, pivot).await
                }
                .into_actor(this)
            }),
        )
    }
}

/// Waits for a saga to pass its pivot: through the run's notifications when this server
/// runs it, else by reading the log.
async fn wait(
    log: SagaLog,
    id: String,
    joined: bool,
    reached: Option<oneshot::Receiver<Reached>>,
    pivot: &str,
) -> Result<Started, StartError> {
    let outcome = match reached {
        Some(rx) => rx.await.ok(),
        None => None,
    };
    let outcome = match outcome {
        Some(outcome) => outcome,
        None => poll(&log, &id, pivot).await?,
    };
    match outcome {
        Reached::Pivot => Ok(Started {
            id,
            joined,
            completed: false,
        }),
        Reached::Completed => Ok(Started {
            id,
            joined,
            completed: true,
        }),
        Reached::Compensated(error) => Err(StartError::Compensated { id, error }),
    }
}

/// Reads the log until the saga is past its pivot or finished (for a saga another server
/// runs, or one whose run here ended without telling).
async fn poll(log: &SagaLog, id: &str, pivot: &str) -> Result<Reached, StartError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((saga, steps)) = log.load(id).await? {
            match saga.state.as_str() {
                log::state::COMPLETED => return Ok(Reached::Completed),
                log::state::COMPENSATED => {
                    return Ok(Reached::Compensated(saga.last_error.unwrap_or_default()))
                }
                log::state::RUNNING
                    if steps
                        .iter()
                        .any(|s| s.state == log::step_state::DONE && s.name == pivot) =>
                {
                    return Ok(Reached::Pivot)
                }
                _ => {}
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StartError::Pending { id: id.to_owned() });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

impl Handler<Progress> for Saga {
    type Result = ();

    fn handle(&mut self, msg: Progress, _ctx: &mut Self::Context) {
        match msg.event {
            SagaEvent::Retry => self.stats.step_retries += 1,
            SagaEvent::Compensation => self.stats.compensations += 1,
            SagaEvent::Stuck(stuck) => {
                if let Some(running) = self.running.get_mut(&msg.id) {
                    running.stuck = stuck;
                }
            }
            SagaEvent::Reached(reached) => {
                let Some(running) = self.running.get_mut(&msg.id) else {
                    return;
                };
                if reached == Reached::Pivot {
                    running.pivot_passed = true;
                }
                for waiter in running.waiters.drain(..) {
                    let _ = waiter.send(reached.clone());
                }
            }
        }
    }
}

impl Handler<RunEnded> for Saga {
    type Result = ();

    fn handle(&mut self, msg: RunEnded, _ctx: &mut Self::Context) {
        let Some(running) = self.running.remove(&msg.id) else {
            return;
        };
        match &msg.ended {
            Ended::Completed => {
                *self.stats.completed.entry(running.saga_type).or_default() += 1;
                tracing::info!(saga = %msg.id, saga_type = running.saga_type, "saga completed");
            }
            Ended::Compensated(error) => {
                *self.stats.compensated.entry(running.saga_type).or_default() += 1;
                tracing::warn!(saga = %msg.id, saga_type = running.saga_type, %error, "saga compensated");
            }
            Ended::Abandoned(reason) => {
                self.stats.abandoned += 1;
                if !self.stopping {
                    tracing::warn!(saga = %msg.id, %reason, "saga run stopped; it will be resumed from the log");
                }
            }
        }
        // Waiters still waiting (an abandoned run) read the log instead.
        drop(running.waiters);
    }
}

impl Handler<Resume> for Saga {
    type Result = ResponseActFuture<Self, usize>;

    fn handle(&mut self, _msg: Resume, _ctx: &mut Self::Context) -> Self::Result {
        if self.resuming || self.stopping {
            return Box::pin(actix::fut::ready(0));
        }
        self.resuming = true;
        let (log, node, lease) = (self.log.clone(), self.node.clone(), self.config.lease);
        let known: Vec<String> = self.running.keys().cloned().collect();
        let retention = self.config.retention;
        // Pruning is housekeeping: every tenth of the retention period, at most every
        // ten minutes.
        let prune_every = (retention / 10).min(PRUNE_AT_MOST_EVERY);
        let prune = self.pruned_at.is_none_or(|at| at.elapsed() >= prune_every);
        if prune {
            self.pruned_at = Some(std::time::Instant::now());
        }
        Box::pin(
            async move {
                if prune {
                    let cutoff = chrono::Utc::now().naive_utc()
                        - chrono::Duration::from_std(retention)
                            .unwrap_or(chrono::Duration::MAX);
                    match log.prune(cutoff).await {
                        Ok(0) => {}
                        Ok(pruned) => {
                            tracing::info!(pruned, "finished sagas past retention deleted")
                        }
                        Err(error) => tracing::debug!(%error, "could not prune finished sagas"),
                    }
                }
                let mut claimed = Vec::new();
                let candidates = match log.claimable(100).await {
                    Ok(ids) => ids,
                    Err(error) => {
                        tracing::debug!(%error, "could not look for sagas to resume");
                        return claimed;
                    }
                };
                for id in candidates {
                    if known.contains(&id) {
                        continue;
                    }
                    match log.claim(&id, &node, lease).await {
                        Ok(true) => match log.load(&id).await {
                            Ok(Some((saga, _))) => claimed.push((id, saga.saga_type)),
                            _ => claimed.push((id, String::new())),
                        },
                        Ok(false) => {}
                        Err(error) => tracing::debug!(%error, saga = %id, "could not claim saga"),
                    }
                }
                claimed
            }
            .into_actor(self)
            .map(|claimed, this, ctx| {
                this.resuming = false;
                let count = claimed.len();
                for (id, saga_type) in claimed {
                    match this.definitions.get(saga_type.as_str()).cloned() {
                        Some(definition) => {
                            tracing::info!(saga = %id, %saga_type, "resuming saga");
                            this.stats.resumed += 1;
                            this.spawn(id, definition, ctx);
                        }
                        None => tracing::error!(saga = %id, %saga_type, "cannot resume a saga of an unknown type"),
                    }
                }
                count
            }),
        )
    }
}

impl Handler<Release> for Saga {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, _msg: Release, _ctx: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        // Runs are tasks on this actor's thread: aborted here, none is polled again.
        let ids: Vec<String> = self
            .running
            .iter_mut()
            .map(|(id, running)| {
                if let Some(task) = running.task.take() {
                    task.abort();
                }
                id.clone()
            })
            .collect();
        self.running.clear();
        let (log, node) = (self.log.clone(), self.node.clone());
        Box::pin(async move {
            let mut released = 0;
            for id in ids {
                match log.release(&id, &node).await {
                    Ok(()) => released += 1,
                    Err(error) => {
                        tracing::warn!(saga = %id, %error, "could not give up the saga's lease; it is resumed once the lease runs out")
                    }
                }
            }
            if released > 0 {
                tracing::info!(released, "running sagas handed back for resumption");
            }
            released
        })
    }
}

impl Handler<GetSagaStats> for Saga {
    type Result = MessageResult<GetSagaStats>;

    fn handle(&mut self, _msg: GetSagaStats, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(SagaStats {
            running: self.running.len(),
            stuck: self.running.values().filter(|r| r.stuck).count(),
            ..self.stats.clone()
        })
    }
}
