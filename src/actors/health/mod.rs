//! The health monitor: pings the database on an interval (with a timeout), marks it
//! unhealthy after [`UNHEALTHY_AFTER`] failures in a row and healthy again on the first
//! success, logs each transition once, keeps the circuit breaker open while it is
//! unhealthy, and tells the gRPC health service (`NOT_SERVING` while unreachable).

use std::time::{Duration, Instant};

use actix::{
    Actor, ActorFutureExt, Addr, AsyncContext, Context, Handler, Message, MessageResult, WrapFuture,
};
use serde::Serialize;
use tokio::sync::watch;
use tonic_health::{server::HealthReporter, ServingStatus};

use crate::{
    actors::breaker::{CircuitBreaker, DependencyDown},
    db::Database,
};

/// Consecutive failed pings that mark the database unhealthy.
pub const UNHEALTHY_AFTER: u32 = 2;

/// Owns the database's health history. Start one per server.
pub struct HealthMonitor {
    /// The database it pings.
    db: Database,
    /// Where gRPC health is published.
    reporter: HealthReporter,
    /// How often to ping.
    interval: Duration,
    /// Set during shutdown, when health belongs to the shutdown sequence.
    draining: watch::Receiver<bool>,
    /// Whether a ping is under way (pings never overlap).
    pinging: bool,
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
        db: Database,
        reporter: HealthReporter,
        interval: Duration,
        draining: watch::Receiver<bool>,
        breaker: Addr<CircuitBreaker>,
    ) -> Self {
        Self {
            db,
            reporter,
            interval,
            draining,
            pinging: false,
            state: HealthState::default(),
            breaker,
        }
    }

    fn check(&mut self, ctx: &mut Context<Self>) {
        if self.pinging || *self.draining.borrow() {
            return;
        }
        self.pinging = true;
        let db = self.db.clone();
        let timeout = self.interval.max(Duration::from_secs(1));
        ctx.spawn(async move { db.ping(timeout).await }.into_actor(self).map(
            |result, monitor, ctx| {
                monitor.pinging = false;
                monitor.record(result.is_ok(), ctx);
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

impl Handler<GetHealth> for HealthMonitor {
    type Result = MessageResult<GetHealth>;

    fn handle(&mut self, _msg: GetHealth, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(self.state.clone())
    }
}
