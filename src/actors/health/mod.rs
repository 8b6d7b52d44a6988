//! The health monitor: pings the database on an interval (with a timeout), marks it
//! unhealthy after [`UNHEALTHY_AFTER`] failures in a row and healthy again on the first
//! success, logs each transition once, keeps the circuit breaker open while it is
//! unhealthy, and tells the gRPC health service (`NOT_SERVING` while unreachable).
//!
//! It pings over a connection of its own ([`Probe`]), never a pooled one: a pool that
//! client load has exhausted is overload, not an outage. `/readyz` and `/health` ask it
//! for a fresh ping ([`PingNow`]) rather than opening connections themselves; asks that
//! arrive while a ping is under way share its answer, so probes cannot pile up.

use std::time::{Duration, Instant};

use actix::{
    Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, MessageResult,
    ResponseFuture, WrapFuture,
};
use serde::Serialize;
use tokio::sync::{oneshot, watch};
use tonic_health::{server::HealthReporter, ServingStatus};

use crate::{
    actors::breaker::{CircuitBreaker, DependencyDown},
    db::{Database, Probe},
};

/// Consecutive failed pings that mark the database unhealthy.
pub const UNHEALTHY_AFTER: u32 = 2;
/// Longest a ping may take before it counts as failed.
pub const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Owns the database's health history. Start one per server.
pub struct HealthMonitor {
    /// Its own connection to the database (`None` while a ping has it).
    probe: Option<Probe>,
    /// Where gRPC health is published.
    reporter: HealthReporter,
    /// How often to ping.
    interval: Duration,
    /// Set during shutdown, when health belongs to the shutdown sequence.
    draining: watch::Receiver<bool>,
    /// Asks waiting for the ping under way.
    waiters: Vec<oneshot::Sender<PingResult>>,
    /// What the pings found.
    state: HealthState,
    /// Opened while the database is unhealthy.
    breaker: Addr<CircuitBreaker>,
}

/// The monitor's view, for `/health`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HealthState {
    /// Whether the last ping succeeded (`None` before the first).
    pub database_up: Option<bool>,
    /// Consecutive failed pings.
    pub consecutive_failures: u32,
    /// Times the status flipped between up and down.
    pub transitions: u64,
    /// When the last ping finished.
    #[serde(skip)]
    pub last_checked: Option<Instant>,
}

impl HealthMonitor {
    /// A monitor pinging `db` every `interval`.
    pub fn new(
        db: &Database,
        reporter: HealthReporter,
        interval: Duration,
        draining: watch::Receiver<bool>,
        breaker: Addr<CircuitBreaker>,
    ) -> Self {
        Self {
            probe: Some(db.probe()),
            reporter,
            interval,
            draining,
            waiters: Vec::new(),
            state: HealthState::default(),
            breaker,
        }
    }

    /// The interval's ping (none while shutting down).
    fn check(&mut self, ctx: &mut Context<Self>) {
        if !*self.draining.borrow() {
            self.ping(ctx);
        }
    }

    /// Starts a ping unless one is under way; its result answers every waiter.
    fn ping(&mut self, ctx: &mut Context<Self>) {
        let Some(probe) = self.probe.take() else {
            return; // a ping is under way
        };
        ctx.spawn(probe.ping(PING_TIMEOUT).into_actor(self).map(
            |(probe, result), monitor, ctx| {
                monitor.probe = Some(probe);
                monitor.record(result.is_ok(), ctx);
                let answer = result.map_err(|error| error.to_string());
                for waiter in monitor.waiters.drain(..) {
                    let _ = waiter.send(answer.clone());
                }
            },
        ));
    }

    fn record(&mut self, ping_ok: bool, ctx: &mut Context<Self>) {
        self.state.last_checked = Some(Instant::now());
        self.state.consecutive_failures = if ping_ok {
            0
        } else {
            self.state.consecutive_failures + 1
        };
        // Healthy again on the first success; unhealthy only after several failures.
        let up = ping_ok || self.state.consecutive_failures < UNHEALTHY_AFTER;
        if !up {
            // Keeps the breaker open for as long as the pings fail.
            self.breaker.do_send(DependencyDown);
        }
        if self.state.database_up == Some(up) || *self.draining.borrow() {
            return;
        }
        if self.state.database_up.is_some() {
            self.state.transitions += 1;
        }
        self.state.database_up = Some(up);
        if up {
            tracing::info!("database reachable: gRPC health SERVING");
        } else {
            tracing::warn!("database unreachable: gRPC health NOT_SERVING");
        }
        let status = if up {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        let reporter = self.reporter.clone();
        ctx.spawn(
            async move {
                for service in crate::grpc::HEALTH_SERVICES {
                    reporter.set_service_status(service, status).await;
                }
            }
            .into_actor(self),
        );
    }
}

impl Actor for HealthMonitor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.check(ctx);
        ctx.run_interval(self.interval, Self::check);
    }
}

/// The monitor's current view.
#[derive(Debug, Message)]
#[rtype(result = "HealthState")]
pub struct GetHealth;

/// A ping's round trip, or why it failed.
pub type PingResult = Result<Duration, String>;

/// Ping the database now (joining the ping under way, if any) and say how it went.
#[derive(Debug, Message)]
#[rtype(result = "PingResult")]
pub struct PingNow;

impl Handler<PingNow> for HealthMonitor {
    type Result = ResponseFuture<PingResult>;

    fn handle(&mut self, _msg: PingNow, ctx: &mut Self::Context) -> Self::Result {
        let (answer, answered) = oneshot::channel();
        self.waiters.push(answer);
        self.ping(ctx);
        Box::pin(async move {
            answered
                .await
                .unwrap_or_else(|_| Err("the health monitor stopped".to_owned()))
        })
    }
}

impl Handler<GetHealth> for HealthMonitor {
    type Result = MessageResult<GetHealth>;

    fn handle(&mut self, _msg: GetHealth, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.state.clone())
    }
}
