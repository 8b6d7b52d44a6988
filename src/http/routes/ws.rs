//! `GET /ws`: the WebSocket upgrade. Checks the origin and the token, then hands the
//! connection to a new [`Session`] actor.

use actix_web::{
    http::header::{self, HeaderValue},
    web, HttpMessage, HttpRequest, HttpResponse,
};
use actix_web_actors::ws;
use serde::Deserialize;
use serde_json::json;

use crate::{
    actors::session::Session,
    auth::{bearer_token, Claims},
    chat::Identity,
    domain::UserName,
    http::HttpState,
};

/// Registers the route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws", web::get().to(upgrade));
}

/// Query parameters of the upgrade URL.
#[derive(Debug, Deserialize)]
struct Params {
    /// A JWT (browsers cannot set headers on a WebSocket).
    token: Option<String>,
    /// The seed's parameter: a guest's display name.
    user_id: Option<String>,
}

fn refuse(status: actix_web::http::StatusCode, error: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "error": error.into() }))
}

async fn upgrade(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, actix_web::Error> {
    use actix_web::http::StatusCode;

    let settings = &state.chat.settings;
    if *state.draining.borrow() {
        return Ok(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        ));
    }
    if let Err(error) = ws::handshake(&req) {
        let reason = format!("not a WebSocket upgrade: {error}");
        return Ok(refuse(StatusCode::BAD_REQUEST, reason));
    }
    let origin = header_str(&req, header::ORIGIN);
    if !settings
        .allowed_origins
        .allows(origin, header_str(&req, header::HOST))
    {
        tracing::info!(origin = origin.unwrap_or(""), "WebSocket origin refused");
        return Ok(refuse(
            StatusCode::FORBIDDEN,
            format!("origin {} is not allowed", origin.unwrap_or("")),
        ));
    }
    let params = match web::Query::<Params>::from_query(req.query_string()) {
        Ok(params) => params.into_inner(),
        Err(error) => return Ok(refuse(StatusCode::BAD_REQUEST, error.to_string())),
    };
    let header_token = header_str(&req, header::AUTHORIZATION).and_then(bearer_token);
    let verified = req.extensions().get::<Claims>().cloned();
    let identity = match (params.token.as_deref(), header_token, verified) {
        // The header's token was verified by the rate-limit middleware.
        (None, Some(_), Some(claims)) => Identity::user(&claims.sub, claims.is_admin()),
        (Some(token), _, _) | (None, Some(token), None) => match state.chat.auth.verify(token) {
            Ok(claims) => Identity::user(&claims.sub, claims.is_admin()),
            Err(error) => return Ok(unauthorized(error.to_string())),
        },
        (None, None, _) if settings.require_auth => {
            return Ok(unauthorized(
                "a token is required: pass ?token=<jwt> or an Authorization: Bearer header",
            ))
        }
        (None, None, _) => {
            let name = match params.user_id.as_deref().map(UserName::parse).transpose() {
                Ok(name) => name.map(|n| n.as_str().to_owned()),
                Err(error) => {
                    let reason = format!("invalid user_id: {}", error.reason);
                    return Ok(refuse(StatusCode::BAD_REQUEST, reason));
                }
            };
            Identity::guest(name)
        }
    };
    let session = Session::new(identity, state.chat.hub.clone(), settings.clone());
    ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(settings.max_message_size)
        .start()
}

fn header_str(req: &HttpRequest, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn unauthorized(error: impl Into<String>) -> HttpResponse {
    let mut response = refuse(actix_web::http::StatusCode::UNAUTHORIZED, error);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"switchboard\""),
    );
    response
}
