//! The HTTP front door: actix-web routes and middleware.

pub mod middleware;
pub mod routes;

use std::time::Instant;

use actix_web::{web, HttpResponse};
use serde_json::json;
use tokio::sync::watch;

use crate::db::Database;

/// What HTTP handlers need, shared through `web::Data`. Handles only, no domain state.
#[derive(Clone)]
pub struct HttpState {
    /// The primary database.
    pub db: Database,
    /// When the server started, for `/health`'s uptime.
    pub started_at: Instant,
    /// Becomes `true` when a graceful shutdown begins (readiness then fails).
    pub draining: watch::Receiver<bool>,
}

/// Registers every route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    routes::health::configure(cfg);
    cfg.default_service(web::to(not_found));
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound().json(json!({ "error": "not found" }))
}
