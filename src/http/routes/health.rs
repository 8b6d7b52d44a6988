//! `/livez`, `/readyz` and `/health`.
//!
//! Neither probe opens a database connection: both ask the `HealthMonitor` for a ping on
//! its own connection (concurrent probes share one ping), so probes can neither drain the
//! pool nor be failed by a pool that client load has exhausted. Every actor is asked with
//! a timeout, so one that is stuck shows as failing instead of hanging the report.

use std::time::Duration;

use actix_web::{http::header::ContentType, web, HttpResponse};
use serde_json::json;

use crate::{
    actors::{
        breaker::{BreakerState, GetBreaker},
        events::GetEventStats,
        health::{PingNow, PingResult, PING_TIMEOUT},
        history::GetHistoryStats,
        hub::GetStats,
    },
    http::HttpState,
};

/// How long `/health` waits for each actor's answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Registers the health routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/livez", super::get_or_head().to(livez))
        .route("/readyz", super::get_or_head().to(readyz))
        .route("/health", super::get_or_head().to(health));
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
    match ping(&state).await {
        Ok(_) => HttpResponse::Ok().json(json!({ "status": "pass" })),
        Err(reason) => {
            HttpResponse::ServiceUnavailable().json(json!({ "status": "fail", "reason": reason }))
        }
    }
}

/// A fresh ping from the health monitor.
async fn ping(state: &HttpState) -> PingResult {
    state
        .health
        .send(PingNow)
        .timeout(PING_TIMEOUT + ASK_TIMEOUT)
        .await
        .unwrap_or_else(|error| Err(format!("the health monitor did not answer: {error}")))
}

/// The overall report in the `application/health+json` style.
async fn health(state: web::Data<HttpState>) -> HttpResponse {
    let ping = ping(&state).await;
    let mut database = match &ping {
        Ok(latency) => json!({
            "status": "pass",
            "latency_ms": latency.as_secs_f64() * 1000.0,
        }),
        Err(error) => json!({ "status": "fail", "output": error }),
    };
    database["backend"] = json!(state.db.backend());
    database["pool"] = json!(state.db.pool_status());
    database["queries"] = json!(state.db.stats());

    let hub = match state.chat.hub.send(GetStats).timeout(ASK_TIMEOUT).await {
        Ok(stats) if stats.overloaded_rooms > 0 || stats.lagging => json!({
            "status": "warn",
            "output": "overloaded: publishes are being refused",
            "stats": stats,
        }),
        Ok(stats) => json!({ "status": "pass", "stats": stats }),
        Err(_) => json!({ "status": "fail", "output": "chat hub unavailable" }),
    };

    let events = match state.events.send(GetEventStats).timeout(ASK_TIMEOUT).await {
        Ok(stats) => json!({ "status": "pass", "stats": stats }),
        Err(_) => json!({ "status": "fail", "output": "event service unavailable" }),
    };

    let breaker = match state.breaker.send(GetBreaker).timeout(ASK_TIMEOUT).await {
        Ok(report) => json!({
            "status": if report.state == BreakerState::Closed { "pass" } else { "warn" },
            "state": report.state,
            "transitions": report.transitions,
        }),
        Err(_) => json!({ "status": "fail", "output": "circuit breaker unavailable" }),
    };
    let rate_limiter =
        match tokio::time::timeout(ASK_TIMEOUT, state.rate_limit.limiters.keys()).await {
            Ok(keys) => json!({ "status": "pass", "keys": keys }),
            Err(_) => json!({ "status": "fail", "output": "rate limiter unavailable" }),
        };

    let history = match &state.history {
        None => json!({ "status": "pass", "enabled": false }),
        Some(writer) => match writer.send(GetHistoryStats).timeout(ASK_TIMEOUT).await {
            Ok(stats) if stats.problems.is_empty() => json!({ "status": "pass", "stats": stats }),
            Ok(stats) => json!({
                "status": "warn",
                "output": stats.problems.join("; "),
                "stats": stats,
            }),
            Err(_) => json!({ "status": "fail", "output": "history writer unavailable" }),
        },
    };

    // Overall: fail when the database does not answer; warn while a component is degraded.
    let degraded = [&breaker, &hub, &events, &rate_limiter, &history]
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
            "history": history,
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
