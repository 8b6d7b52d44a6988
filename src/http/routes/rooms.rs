//! `GET /rooms`: the rooms that have members, with their counts.

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::{actors::hub::ListRooms, http::HttpState};

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/rooms", web::get().to(list));
}

async fn list(state: web::Data<HttpState>) -> HttpResponse {
    match state.chat.hub.send(ListRooms).await {
        Ok(rooms) => HttpResponse::Ok().json(json!({ "count": rooms.len(), "rooms": rooms })),
        Err(_) => {
            HttpResponse::ServiceUnavailable().json(json!({ "error": "chat hub unavailable" }))
        }
    }
}
