//! The health monitor: pings the database on an interval and tells the gRPC health
//! service, so `grpc.health.v1` says `NOT_SERVING` while the database is unreachable and
//! `SERVING` again once it answers.

use std::time::{Duration, Instant};

use actix::{
    Actor, ActorFutureExt, AsyncContext, Context, Handler, Message, MessageResult, WrapFuture,
};
use serde::Serialize;
use tokio::sync::watch;
use tonic_health::{server::HealthReporter, ServingStatus};

use crate::db::Database;

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
    /// What the last ping found.
    state: HealthState,
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
    ) -> Self {
        Self {
            db,
            reporter,
            interval,
            draining,
            pinging: false,
            state: HealthState::default(),
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

    fn record(&mut self, up: bool, ctx: &mut Context<Self>) {
        self.state.last_checked = Some(Instant::now());
        self.state.consecutive_failures = if up {
            0
        } else {
            self.state.consecutive_failures + 1
        };
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
