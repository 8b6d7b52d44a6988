//! The circuit breaker guarding the database: requests that need it ask for a permit and
//! report how the call went; while open they fail fast instead of piling onto a dead
//! database. The health monitor opens it when pings fail. See [`state`] for the rules.

pub mod state;

use std::time::Instant;

use actix::{Actor, Addr, Context, Handler, Message, MessageResult};
use serde::Serialize;

pub use state::{BreakerConfig, BreakerState, Permit, Rejected};

use state::Breaker;

/// Owns the breaker state. Start one per guarded dependency.
pub struct CircuitBreaker {
    breaker: Breaker,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            breaker: Breaker::new(config, Instant::now()),
        }
    }
}

impl Actor for CircuitBreaker {
    type Context = Context<Self>;
}

/// Ask to make a call.
#[derive(Debug, Message)]
#[rtype(result = "Result<Permit, Rejected>")]
pub struct Acquire;

/// How a permitted call went.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Record {
    /// The call's permit.
    pub permit: Permit,
    /// What the call says about the dependency.
    pub outcome: Outcome,
}

/// What a call says about the guarded dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The dependency answered (whatever the answer meant for the request).
    Healthy,
    /// The dependency could not be reached.
    Unreachable,
    /// Nothing: the call was abandoned, or failed for a reason of its own (bad input, an
    /// overloaded pool, a bug). Counted neither way; a trial's place is freed.
    Unknown,
}

/// A permit that is given back when dropped unrecorded — a call abandoned by its client
/// (a cancelled request, a dropped future) must neither count nor keep a half-open trial
/// place until the trial timeout.
#[derive(Debug)]
pub struct Guarded {
    breaker: Addr<CircuitBreaker>,
    permit: Option<Permit>,
}

impl Guarded {
    /// Wraps a permit of `breaker`.
    pub fn new(breaker: Addr<CircuitBreaker>, permit: Permit) -> Self {
        Self {
            breaker,
            permit: Some(permit),
        }
    }

    /// Reports how the call went.
    pub fn record(mut self, outcome: Outcome) {
        if let Some(permit) = self.permit.take() {
            self.breaker.do_send(Record { permit, outcome });
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.breaker.do_send(Record {
                permit,
                outcome: Outcome::Unknown,
            });
        }
    }
}

/// The health monitor's verdict: the dependency is down.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct DependencyDown;

/// The breaker's state and transition count.
#[derive(Debug, Message)]
#[rtype(result = "BreakerReport")]
pub struct GetBreaker;

/// For `/health` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BreakerReport {
    /// Where it is.
    pub state: BreakerState,
    /// Transitions since start.
    pub transitions: u64,
}

impl Handler<Acquire> for CircuitBreaker {
    type Result = Result<Permit, Rejected>;

    fn handle(&mut self, _msg: Acquire, _ctx: &mut Self::Context) -> Self::Result {
        self.breaker.acquire(Instant::now())
    }
}

impl Handler<Record> for CircuitBreaker {
    type Result = ();

    fn handle(&mut self, msg: Record, _ctx: &mut Self::Context) {
        let now = Instant::now();
        match msg.outcome {
            Outcome::Healthy => self.breaker.record(msg.permit, true, now),
            Outcome::Unreachable => self.breaker.record(msg.permit, false, now),
            Outcome::Unknown => self.breaker.release(msg.permit, now),
        }
    }
}

impl Handler<DependencyDown> for CircuitBreaker {
    type Result = ();

    fn handle(&mut self, _msg: DependencyDown, _ctx: &mut Self::Context) {
        self.breaker.force_open(Instant::now());
    }
}

impl Handler<GetBreaker> for CircuitBreaker {
    type Result = MessageResult<GetBreaker>;

    fn handle(&mut self, _msg: GetBreaker, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(BreakerReport {
            state: self.breaker.state(Instant::now()),
            transitions: self.breaker.transitions,
        })
    }
}
