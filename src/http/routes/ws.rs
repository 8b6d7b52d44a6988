//! `GET /ws`: the WebSocket upgrade. Checks the origin and the token, then hands the
//! connection to a new [`Session`] actor.
//!
//! A guest (no token) gets a new `guest-…` id, and in its welcome a `resume_token`:
//! connecting again with `?guest=<resume_token>` gives it the same id (and name) back.
//!
//! The upgrade takes a token from its client's HTTP rate-limit bucket like any request,
//! but the answer is awaited by the session, after the `101`: an accepted upgrade never
//! waits on the limiter's thread (a refused one does, and is answered `429` when over). A refused client gets close code `1013` (try again
//! later) with the wait in the reason — which, unlike a `429`, a browser can read.
//! (It also keeps actix's per-worker request pools small: every request in flight at once
//! leaves a pooled request head of ~6 KiB behind.)

use std::time::Duration;

use actix_web::{
    http::header::{self, HeaderValue},
    web, HttpRequest, HttpResponse,
};
use actix_web_actors::ws;
use serde::Deserialize;
use serde_json::json;

use crate::{
    actors::{
        rate_limit::subject_key,
        session::{Admission, Session, Start},
    },
    auth::bearer_token,
    chat::Identity,
    domain::UserName,
    http::{
        frame_limit::FrameLimit,
        middleware::{ip_key, too_many_requests},
        HttpState,
    },
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
    /// A guest's resume token (from an earlier welcome): the same guest id again.
    guest: Option<String>,
}

/// A refusal with its reason as JSON (boxed: it travels in a `Result`'s error side).
fn refuse(status: actix_web::http::StatusCode, error: impl Into<String>) -> Box<HttpResponse> {
    Box::new(HttpResponse::build(status).json(json!({ "error": error.into() })))
}

async fn upgrade(
    req: HttpRequest,
    stream: web::Payload,
    state: web::Data<HttpState>,
) -> Result<HttpResponse, actix_web::Error> {
    let (identity, welcome) = match identify(&req, &state) {
        Ok(identified) => identified,
        Err(refusal) => return Ok(refused(&state, &req, *refusal).await),
    };
    let settings = &state.chat.settings;
    let admission = state
        .chat
        .limit_upgrades
        .then(|| admission(&state, &req, &identity));
    let session = Session::new(
        identity,
        state.chat.hub.clone(),
        settings.clone(),
        Start { admission, welcome },
    );
    // The codec checks a frame's size only once it has all arrived; `FrameLimit` refuses
    // a header announcing too much before its payload is buffered.
    let stream = FrameLimit::new(stream, settings.max_message_size);
    ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(settings.max_message_size)
        .start()
}

/// A refused upgrade takes a token from its client's bucket too (by IP), and a client
/// over the limit hears `429` instead, so refused upgrades cannot be hammered. Refusals
/// are rare, so waiting on the limiter here costs nothing.
async fn refused(state: &HttpState, req: &HttpRequest, refusal: HttpResponse) -> HttpResponse {
    if !state.chat.limit_upgrades {
        return refusal;
    }
    match state.rate_limit.limiters.check(ip_key(state, req)).await {
        Ok(decision) if !decision.allowed => too_many_requests(state, decision),
        _ => refusal,
    }
}

/// What the welcome adds for a guest: its resume token, and whether it came back.
type WelcomeExtras = serde_json::Map<String, serde_json::Value>;

/// Who is upgrading (and what their welcome should add), or the answer that refuses them.
fn identify(
    req: &HttpRequest,
    state: &HttpState,
) -> Result<(Identity, WelcomeExtras), Box<HttpResponse>> {
    use actix_web::http::StatusCode;

    let settings = &state.chat.settings;
    if *state.draining.borrow() {
        return Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        ));
    }
    if let Err(error) = ws::handshake(req) {
        let reason = format!("not a WebSocket upgrade: {error}");
        return Err(refuse(StatusCode::BAD_REQUEST, reason));
    }
    let origin = header_str(req, header::ORIGIN);
    if !settings
        .allowed_origins
        .allows(origin, header_str(req, header::HOST))
    {
        tracing::info!(origin = origin.unwrap_or(""), "WebSocket origin refused");
        return Err(refuse(
            StatusCode::FORBIDDEN,
            format!("origin {} is not allowed", origin.unwrap_or("")),
        ));
    }
    let params = match web::Query::<Params>::from_query(req.query_string()) {
        Ok(params) => params.into_inner(),
        Err(error) => return Err(refuse(StatusCode::BAD_REQUEST, error.to_string())),
    };
    let header_token = header_str(req, header::AUTHORIZATION).and_then(bearer_token);
    let mut extras = WelcomeExtras::new();
    if let Some(node) = &state.chat.node {
        extras.insert("node".into(), node.as_ref().into());
    }
    let identity = match params.token.as_deref().or(header_token) {
        Some(token) => match state.chat.auth.verify(token) {
            // A name claim that would not pass as a guest's name is not shown.
            Ok(claims) => Identity::user(&claims.sub, claims.is_admin()).named(
                claims
                    .name
                    .as_deref()
                    .and_then(|name| UserName::parse(name).ok())
                    .map(|name| name.as_str().to_owned()),
            ),
            Err(error) => return Err(unauthorized(error.to_string())),
        },
        None if settings.require_auth => {
            return Err(unauthorized(
                "a token is required: pass ?token=<jwt> or an Authorization: Bearer header",
            ))
        }
        None => {
            let name = match params.user_id.as_deref().map(UserName::parse).transpose() {
                Ok(name) => name.map(|n| n.as_str().to_owned()),
                Err(error) => {
                    let reason = format!("invalid user_id: {}", error.reason);
                    return Err(refuse(StatusCode::BAD_REQUEST, reason));
                }
            };
            let identity = guest(state, params.guest.as_deref(), name, &mut extras);
            if settings.guest_ttl > Duration::ZERO {
                match state.chat.auth.issue_guest(
                    &identity.user_id,
                    identity.name.as_deref(),
                    settings.guest_ttl,
                ) {
                    Ok(token) => {
                        extras.insert("resume_token".into(), token.into());
                    }
                    Err(error) => tracing::warn!(%error, "could not issue a guest resume token"),
                }
            }
            identity
        }
    };
    Ok((identity, extras))
}

/// A guest: the one its resume token names (keeping its name unless a new one is given),
/// or a new one. A token that does not verify is no reason to refuse the connection —
/// the browser could not even tell why — so the guest starts afresh and the welcome says
/// `resumed: false` with the reason.
fn guest(
    state: &HttpState,
    token: Option<&str>,
    name: Option<String>,
    extras: &mut WelcomeExtras,
) -> Identity {
    let Some(token) = token else {
        return Identity::guest(name);
    };
    match state.chat.auth.verify_guest(token) {
        Ok(claims) => {
            extras.insert("resumed".into(), true.into());
            let name = name.or_else(|| {
                let kept = claims.name.as_deref().map(UserName::parse)?.ok()?;
                Some(kept.as_str().to_owned())
            });
            Identity::resumed_guest(&claims.sub, name)
        }
        Err(error) => {
            extras.insert("resumed".into(), false.into());
            extras.insert("resume_error".into(), error.to_string().into());
            Identity::guest(name)
        }
    }
}

/// Asks the rate limiter for this upgrade's token (keyed like the HTTP middleware: the
/// token's subject, else the client IP); the session awaits the answer. A limiter that
/// does not answer lets the client in, as the middleware does.
fn admission(state: &HttpState, req: &HttpRequest, identity: &Identity) -> Admission {
    let key = if identity.guest {
        ip_key(state, req)
    } else {
        subject_key(&identity.user_id)
    };
    let answer = state.rate_limit.limiters.check(key);
    let refused = state.metrics.rate_limited.with_label_values(&["ws"]);
    Box::pin(async move {
        match answer.await {
            Ok(decision) if !decision.allowed => {
                refused.inc();
                Err(decision.retry_after)
            }
            Ok(_) => Ok(()),
            Err(error) => {
                tracing::warn!(%error, "rate limiter unavailable; upgrade allowed");
                Ok(())
            }
        }
    })
}

fn header_str(req: &HttpRequest, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

fn unauthorized(error: impl Into<String>) -> Box<HttpResponse> {
    let mut response = refuse(actix_web::http::StatusCode::UNAUTHORIZED, error);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"switchboard\""),
    );
    response
}
