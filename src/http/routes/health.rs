//! `/livez`, `/readyz` and `/health`.

use std::time::Duration;

use actix_web::{http::header::ContentType, web, HttpResponse};
use serde_json::json;

use crate::{
    actors::{
        breaker::{BreakerState, GetBreaker},
        events::GetEventStats,
        hub::GetStats,
    },
    http::HttpState,
};

/// How long a health or readiness probe waits for the database.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Registers the health routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/livez", web::get().to(livez))
        .route("/readyz", web::get().to(readyz))
        .route("/health", web::get().to(health));
}

/// The process is up and serving HTTP.
async fn livez() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "pass" }))
}

/// 200 only when the database answers and no shutdown is under way.
async fn readyz(state: web::Data<HttpState>) -> HttpResponse {
    if *state.draining.borrow() {
        return HttpResponse::ServiceUnavailable()
            .json(json!({ "status": "fail", "reason": "shutting down" }));
    }
    match state.db.ping(PING_TIMEOUT).await {
        Ok(_) => HttpResponse::Ok().json(json!({ "status": "pass" })),
        Err(error) => HttpResponse::ServiceUnavailable()
            .json(json!({ "status": "fail", "reason": error.to_string() })),
    }
}

/// The overall report in the `application/health+json` style.
async fn health(state: web::Data<HttpState>) -> HttpResponse {
    let ping = state.db.ping(PING_TIMEOUT).await;
    let mut database = match &ping {
        Ok(latency) => json!({
            "status": "pass",
            "latency_ms": latency.as_secs_f64() * 1000.0,
        }),
        Err(error) => json!({ "status": "fail", "output": error.to_string() }),
    };
    database["backend"] = json!(state.db.backend());
    database["pool"] = json!(state.db.pool_status());
    database["queries"] = json!(state.db.stats());

    let hub = match state.chat.hub.send(GetStats).await {
        Ok(stats) => json!({ "status": "pass", "stats": stats }),
        Err(_) => json!({ "status": "fail", "output": "chat hub unavailable" }),
    };

    let events = match state.events.send(GetEventStats).await {
        Ok(stats) => json!({ "status": "pass", "stats": stats }),
        Err(_) => json!({ "status": "fail", "output": "event service unavailable" }),
    };

    let breaker = match state.breaker.send(GetBreaker).await {
        Ok(report) => json!({
            "status": if report.state == BreakerState::Closed { "pass" } else { "warn" },
            "state": report.state,
            "transitions": report.transitions,
        }),
        Err(_) => json!({ "status": "fail", "output": "circuit breaker unavailable" }),
    };
    let rate_limiter = json!({
        "status": "pass",
        "keys": state.rate_limit.limiters.keys().await,
    });

    // Overall: fail when the database does not answer; warn while a component is degraded.
    let degraded = [&breaker, &hub, &events]
        .iter()
        .any(|check| check["status"] != "pass");
    let status = match (ping.is_ok(), degraded) {
        (false, _) => "fail",
        (true, true) => "warn",
        (true, false) => "pass",
    };
    let body = json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": state.started_at.elapsed().as_secs(),
        "checks": {
            "database": database,
            "circuit_breaker": breaker,
            "hub": hub,
            "events": events,
            "rate_limiter": rate_limiter,
        },
    });
    let mut response = if ping.is_ok() {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    response
        .insert_header(ContentType(
            "application/health+json"
                .parse()
                .expect("a valid media type"),
        ))
        .body(body.to_string())
}
