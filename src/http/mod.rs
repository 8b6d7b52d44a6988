//! The HTTP front door: actix-web routes and middleware.

pub mod frame_limit;
pub mod middleware;
pub mod routes;

use std::{sync::Arc, time::Instant};

use actix_web::{web, HttpResponse};
use serde_json::json;
use tokio::sync::watch;

use crate::{
    actors::{events::Events, hub::Hub},
    auth::JwtAuth,
    config::WsSettings,
    db::Database,
};

/// What HTTP handlers need, shared through `web::Data`. Handles only, no domain state.
#[derive(Clone)]
pub struct HttpState {
    /// The primary database.
    pub db: Database,
    /// When the server started, for `/health`'s uptime.
    pub started_at: Instant,
    /// Becomes `true` when a graceful shutdown begins (readiness then fails).
    pub draining: watch::Receiver<bool>,
    /// The domain-event actor (for `/health`).
    pub events: actix::Addr<Events>,
    /// Runs sagas; admin routes read their log.
    pub sagas: actix::Addr<crate::actors::saga::Saga>,
    /// The link to the other nodes, in cluster mode.
    pub broker: Option<actix::Addr<crate::actors::broker::Broker>>,
    /// The server API for backends (`/api/v1/…`).
    pub server_api: crate::server_api::ServerApi,
    /// The user cache, when on (for `/metrics`).
    pub user_cache: Option<actix::Addr<crate::actors::user_cache::UserCache>>,
    /// What the WebSocket and room routes need.
    pub chat: ChatState,
    /// What the GraphQL routes need.
    pub graphql: routes::graphql::GraphqlState,
    /// Per-client rate limiting.
    pub rate_limit: middleware::RateLimitState,
    /// Prometheus metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The circuit breaker guarding the database.
    pub breaker: actix::Addr<crate::actors::breaker::CircuitBreaker>,
    /// Pings the database for readiness and `/health` (on its own connection).
    pub health: actix::Addr<crate::actors::health::HealthMonitor>,
    /// The chat history writer (`None` when history is off), for `/health` and `/metrics`.
    pub history: Option<actix::Addr<crate::actors::history::HistoryWriter>>,
}

/// Handles for the chat routes.
#[derive(Clone)]
pub struct ChatState {
    /// The chat hub, shared by every session: cloning an `Addr` allocates its own
    /// sender state, an `Arc` clone does not.
    pub hub: Arc<actix::Addr<Hub>>,
    /// Verifies WebSocket tokens.
    pub auth: JwtAuth,
    /// WebSocket policies and limits.
    pub settings: Arc<WsSettings>,
    /// Whether upgrades take a token from their client's HTTP rate-limit bucket (off
    /// with the rest of the middleware chain).
    pub limit_upgrades: bool,
    /// This node's id in a cluster (shown in welcomes and `/stats`).
    pub node: Option<Arc<str>>,
}

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    routes::health::configure(cfg);
    routes::admin::configure(cfg);
    routes::api::configure(cfg);
    routes::rooms::configure(cfg);
    routes::metrics::configure(cfg);
    routes::graphql::configure(cfg);
    routes::console::configure(cfg);
    routes::ws::configure(cfg);
    routes::page::configure(cfg);
    cfg.default_service(web::to(not_found));
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(json!({ "error": "not found" }))
}
