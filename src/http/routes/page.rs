//! `GET /`: a small chat page (one HTML file with its script and styles, compiled into
//! the binary), and `GET /stats`: the hub's counters it shows.

use actix_web::{http::header, web, HttpResponse};
use serde_json::json;

use crate::{actors::hub::GetStats, http::HttpState};

/// The page, embedded at build time: no CDN, no build step, nothing read from disk.
const INDEX: &str = include_str!("../static/index.html");

/// Registers the routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", super::get_or_head().to(index))
        .route("/favicon.svg", super::get_or_head().to(favicon))
        .route("/stats", web::get().to(stats));
}

/// The page's icon: a switchboard plug in the page's blue.
const FAVICON: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="7" fill="#1d2330"/><circle cx="10" cy="11" r="3.5" fill="#3b7dd8"/><circle cx="22" cy="21" r="3.5" fill="#3b7dd8"/><path d="M10 11 C 16 11, 16 21, 22 21" stroke="#fff" stroke-width="2.2" fill="none"/></svg>"##;

async fn favicon() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("image/svg+xml")
        .insert_header((header::CACHE_CONTROL, "public, max-age=86400"))
        .body(FAVICON)
}

async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self' ws: wss:",
        ))
        .body(INDEX)
}

async fn stats(state: web::Data<HttpState>) -> HttpResponse {
    match state.chat.hub.send(GetStats).await {
        Ok(stats) => HttpResponse::Ok().json(json!({
            "sessions": stats.sessions,
            "users": stats.users,
            "rooms": stats.rooms,
            "messages_in": stats.messages_in,
            "frames_out": stats.frames_out,
            "slow_consumer_disconnects": stats.slow_consumer_disconnects,
            "uptime_seconds": state.started_at.elapsed().as_secs(),
            "node": state.chat.node.as_deref(),
        })),
        Err(_) => {
            HttpResponse::ServiceUnavailable().json(json!({ "error": "chat hub unavailable" }))
        }
    }
}
