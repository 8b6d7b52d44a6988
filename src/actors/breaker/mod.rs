//! The circuit breaker guarding the database: requests that need it ask for a permit and
//! report how the call went; while open they fail fast instead of piling onto a dead
//! database. The health monitor opens it when pings fail. See [`state`] for the rules.

pub mod state;

use std::time::Instant;

use actix::{Actor, Context, Handler, Message, MessageResult};
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
    /// Whether the dependency answered properly.
    pub success: bool,
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
        self.breaker.record(msg.permit, msg.success, Instant::now());
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
