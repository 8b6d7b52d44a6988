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
        broker::GetBrokerStats,
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
    if let Some(broker) = &state.broker {
        match broker.send(GetBrokerStats).timeout(ASK_TIMEOUT).await {
            Ok(stats) if stats.connected => {}
            Ok(stats) => {
                let reason = format!(
                    "Redis unreachable: {}",
                    stats.error.as_deref().unwrap_or("not connected yet")
                );
                return HttpResponse::ServiceUnavailable()
                    .json(json!({ "status": "fail", "reason": reason }));
            }
            Err(_) => {
                return HttpResponse::ServiceUnavailable().json(
                    json!({ "status": "fail", "reason": "the cluster broker did not answer" }),
                )
            }
        }
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

/// One check in draft-inadarei-api-health-check's shape: `status` and `time`, the
/// measurement as `observedValue`/`observedUnit`, a failure's reason as `output`, and —
/// as the draft allows — Switchboard's own details (`stats`, `pool`, …) alongside.
fn check(
    status: &str,
    component_type: &str,
    observed: serde_json::Value,
    unit: Option<&str>,
    details: serde_json::Value,
) -> serde_json::Value {
    let mut check = json!({
        "componentType": component_type,
        "status": status,
        "time": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    if !observed.is_null() {
        check["observedValue"] = observed;
    }
    if let Some(unit) = unit {
        check["observedUnit"] = json!(unit);
    }
    if let (Some(check), serde_json::Value::Object(details)) = (check.as_object_mut(), details) {
        check.extend(details);
    }
    check
}

/// The overall report, `application/health+json` (draft-inadarei-api-health-check-06):
/// `checks` maps `component:measurement` to a list of check objects.
async fn health(state: web::Data<HttpState>) -> HttpResponse {
    let ping = ping(&state).await;
    let backend = state.db.backend();
    let pool = json!(state.db.pool_status());
    let queries = json!(state.db.stats());
    let database = match &ping {
        Ok(latency) => check(
            "pass",
            "datastore",
            json!(latency.as_secs_f64() * 1000.0),
            Some("ms"),
            json!({ "componentId": backend, "backend": backend, "pool": pool, "queries": queries }),
        ),
        Err(error) => check(
            "fail",
            "datastore",
            serde_json::Value::Null,
            None,
            json!({ "componentId": backend, "backend": backend, "output": error,
                    "pool": pool, "queries": queries }),
        ),
    };

    let hub = match state.chat.hub.send(GetStats).timeout(ASK_TIMEOUT).await {
        Ok(stats) => {
            let overloaded = stats.overloaded_rooms > 0 || stats.lagging;
            let mut details = json!({ "stats": stats });
            if overloaded {
                details["output"] = json!("overloaded: publishes are being refused");
            }
            check(
                if overloaded { "warn" } else { "pass" },
                "component",
                json!(stats.sessions),
                Some("connections"),
                details,
            )
        }
        Err(_) => unavailable("chat hub unavailable"),
    };

    let events = match state.events.send(GetEventStats).timeout(ASK_TIMEOUT).await {
        Ok(stats) => check(
            "pass",
            "component",
            json!(stats.subscribers),
            Some("subscriptions"),
            json!({ "stats": stats }),
        ),
        Err(_) => unavailable("event service unavailable"),
    };

    let breaker = match state.breaker.send(GetBreaker).timeout(ASK_TIMEOUT).await {
        Ok(report) => {
            let closed = report.state == BreakerState::Closed;
            let mut details = json!({ "state": report.state, "transitions": report.transitions });
            if !closed {
                details["output"] =
                    json!("the database circuit is not closed: calls fail fast or are probing");
            }
            check(
                if closed { "pass" } else { "warn" },
                "component",
                json!(report.state),
                None,
                details,
            )
        }
        Err(_) => unavailable("circuit breaker unavailable"),
    };
    let rate_limiter =
        match tokio::time::timeout(ASK_TIMEOUT, state.rate_limit.limiters.keys()).await {
            Ok(keys) => check("pass", "component", json!(keys), Some("keys"), json!({})),
            Err(_) => unavailable("rate limiter unavailable"),
        };

    let history = match &state.history {
        None => check(
            "pass",
            "component",
            json!(0),
            Some("messages"),
            json!({ "enabled": false }),
        ),
        Some(writer) => match writer.send(GetHistoryStats).timeout(ASK_TIMEOUT).await {
            Ok(stats) => {
                let mut details = json!({ "enabled": true, "stats": stats });
                let status = if stats.problems.is_empty() {
                    "pass"
                } else {
                    details["output"] = json!(stats.problems.join("; "));
                    "warn"
                };
                check(
                    status,
                    "component",
                    json!(stats.pending),
                    Some("messages"),
                    details,
                )
            }
            Err(_) => unavailable("history writer unavailable"),
        },
    };

    // Sagas this server runs; `warn` while one is stuck (still retried).
    let sagas = match state
        .sagas
        .send(crate::actors::saga::GetSagaStats)
        .timeout(ASK_TIMEOUT)
        .await
    {
        Ok(stats) => {
            let mut details = json!({ "stats": stats });
            let status = if stats.stuck == 0 {
                "pass"
            } else {
                details["output"] = json!(format!(
                    "{} saga(s) stuck; see /admin/sagas?state=stuck",
                    stats.stuck
                ));
                "warn"
            };
            check(status, "component", json!(stats.running), None, details)
        }
        Err(_) => unavailable("saga supervisor unavailable"),
    };

    // In cluster mode: Redis (latency, live nodes).
    let cluster = match &state.broker {
        None => None,
        Some(broker) => Some(
            match broker.send(GetBrokerStats).timeout(ASK_TIMEOUT).await {
                Ok(stats) => {
                    let mut details = json!({ "componentId": stats.node, "stats": stats });
                    match stats.latency_ms {
                        Some(ms) if stats.connected => {
                            check("pass", "datastore", json!(ms), Some("ms"), details)
                        }
                        _ => {
                            details["output"] = json!(format!(
                                "Redis unreachable: {}",
                                stats.error.as_deref().unwrap_or("not connected yet")
                            ));
                            check("fail", "datastore", serde_json::Value::Null, None, details)
                        }
                    }
                }
                Err(_) => unavailable("cluster broker unavailable"),
            },
        ),
    };

    // With shards: one check per shard (reachable, prepared transactions past the grace
    // period as recovery last saw them).
    let shards = match state.db.sharding() {
        None => None,
        Some(sharding) => Some(
            match sharding
                .coordinator
                .send(crate::actors::tx::GetTxStats)
                .timeout(ASK_TIMEOUT)
                .await
            {
                Ok(stats) => sharding
                    .map
                    .locations
                    .iter()
                    .enumerate()
                    .map(|(index, location)| {
                        let seen = stats.in_doubt.iter().find(|d| d.shard == index);
                        let details = json!({
                            "componentId": location,
                            "shard": index,
                            "prepared": seen.map_or(0, |d| d.prepared),
                            "oldestPreparedSeconds": seen.map_or(0.0, |d| d.oldest_seconds),
                        });
                        match seen {
                            Some(d) if !d.reachable => {
                                let mut details = details;
                                details["output"] = json!("unreachable at the last recovery pass");
                                check("fail", "datastore", serde_json::Value::Null, None, details)
                            }
                            Some(d) if d.older_than_grace > 0 => {
                                let mut details = details;
                                details["output"] = json!(format!(
                                    "{} prepared transaction(s) in doubt past the grace period",
                                    d.older_than_grace
                                ));
                                check(
                                    "warn",
                                    "datastore",
                                    json!(d.older_than_grace),
                                    None,
                                    details,
                                )
                            }
                            Some(d) => check(
                                "pass",
                                "datastore",
                                json!(d.older_than_grace),
                                None,
                                details,
                            ),
                            None => check("pass", "datastore", json!(0), None, details),
                        }
                    })
                    .collect::<Vec<_>>(),
                Err(_) => vec![unavailable("transaction coordinator unavailable")],
            },
        ),
    };

    // Overall: fail when the database does not answer; warn while a component is degraded.
    let degraded = [&breaker, &hub, &events, &rate_limiter, &history, &sagas]
        .into_iter()
        .chain(cluster.as_ref())
        .any(|check| check["status"] != "pass")
        || shards
            .iter()
            .flatten()
            .any(|check| check["status"] != "pass");
    let status = match (ping.is_ok(), degraded) {
        (false, _) => "fail",
        (true, true) => "warn",
        (true, false) => "pass",
    };
    let uptime = state.started_at.elapsed().as_secs();
    let body = json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "releaseId": env!("CARGO_PKG_VERSION"),
        "serviceId": "switchboard",
        "description": "Switchboard realtime server",
        "checks": {
            "database:responseTime": [database],
            "circuitBreaker:state": [breaker],
            "hub:connections": [hub],
            "events:subscriptions": [events],
            "rateLimiter:keys": [rate_limiter],
            "history:pending": [history],
            "sagas:running": [sagas],
            "uptime": [check("pass", "system", json!(uptime), Some("s"), json!({}))],
        },
    });
    let mut body = body;
    if let Some(shards) = shards {
        body["checks"]["shards:inDoubt"] = json!(shards);
    }
    if let Some(cluster) = cluster {
        body["checks"]["cluster:redis"] = json!([cluster]);
    }
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
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .body(body.to_string())
}

/// The check of a component that did not answer in time.
fn unavailable(output: &str) -> serde_json::Value {
    check(
        "fail",
        "component",
        serde_json::Value::Null,
        None,
        json!({ "output": output }),
    )
}
