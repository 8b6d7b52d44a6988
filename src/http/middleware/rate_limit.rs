//! Per-client rate limiting for HTTP: one token per request from the client's bucket in
//! the [`RateLimiters`] actors. The client is the JWT subject when a valid bearer token is
//! sent, otherwise its IP (read from `X-Forwarded-For` only when the peer is a trusted
//! proxy). Over the limit: `429` with `Retry-After`; every answer carries the IETF draft's
//! `RateLimit-Policy` and `RateLimit` headers. Health probes are never limited.

use std::net::IpAddr;

use actix_web::{
    body::{EitherBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, RETRY_AFTER},
    middleware::Next,
    web, HttpMessage, HttpRequest, HttpResponse,
};
use serde_json::json;

use crate::{
    actors::rate_limit::{address_key, subject_key, Decision, Quota, RateLimiters},
    auth::bearer_token,
    http::HttpState,
};

/// Paths that are never limited (probes must see the truth under load).
const EXEMPT: [&str; 4] = ["/livez", "/readyz", "/health", "/metrics"];

/// WebSocket upgrades take their token too, but their session asks once upgraded (see
/// [`crate::http::routes::ws`]), so the upgrade answers without waiting on another thread.
const ADMITTED_BY_SESSION: &str = "/ws";

/// What the middleware needs.
#[derive(Clone)]
pub struct RateLimitState {
    /// The limiter shards.
    pub limiters: RateLimiters,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
}

/// `from_fn` middleware; see the module docs.
pub async fn rate_limit<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let state = req.app_data::<web::Data<HttpState>>().cloned();
    let limited = !EXEMPT.contains(&req.path()) && req.path() != ADMITTED_BY_SESSION;
    let Some(state) = state.filter(|_| limited) else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let limits = &state.rate_limit;
    let key = client_key(&state, &req);
    let decision = match limits.limiters.check(key).await {
        Ok(decision) => decision,
        Err(error) => {
            // Failing open: a stalled limiter must not take the API down with it.
            tracing::warn!(%error, "rate limiter unavailable; request allowed");
            return Ok(next.call(req).await?.map_into_left_body());
        }
    };
    if !decision.allowed {
        let response = too_many_requests(&state, decision);
        return Ok(req.into_response(response).map_into_right_body());
    }
    let mut response = next.call(req).await?;
    add_headers(response.headers_mut(), limits.limiters.quota(), decision);
    Ok(response.map_into_left_body())
}

/// The `429` for a refused `decision`, with `Retry-After` and the `RateLimit` headers;
/// counted in the rejections metric.
pub fn too_many_requests(state: &HttpState, decision: Decision) -> HttpResponse {
    state
        .metrics
        .rate_limited
        .with_label_values(&["http"])
        .inc();
    let retry_after = decision.retry_after.as_secs_f64().ceil().max(1.0) as u64;
    let mut response = HttpResponse::TooManyRequests().json(json!({
        "error": "rate limit exceeded",
        "retry_after_seconds": retry_after,
    }));
    response
        .headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after));
    add_headers(
        response.headers_mut(),
        state.rate_limit.limiters.quota(),
        decision,
    );
    response
}

/// `RateLimit-Policy: "default";q=<burst>;w=<seconds to refill>` and
/// `RateLimit: "default";r=<remaining>;t=<seconds until a request is allowed>`.
fn add_headers(headers: &mut HeaderMap, quota: Quota, decision: Decision) {
    let window = (f64::from(quota.burst) / quota.per_second).ceil().max(1.0) as u64;
    let policy = format!("\"default\";q={};w={window}", quota.burst);
    let wait = decision.retry_after.as_secs_f64().ceil() as u64;
    let current = format!("\"default\";r={};t={wait}", decision.remaining);
    for (name, value) in [("ratelimit-policy", policy), ("ratelimit", current)] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    }
}

/// `sub:<subject>` for a valid bearer token, else `ip:<client ip>`. Verified claims are
/// left in the request extensions, so handlers do not verify the token again.
fn client_key(state: &HttpState, req: &ServiceRequest) -> String {
    let claims = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .and_then(|token| state.chat.auth.verify(token).ok());
    if let Some(claims) = claims {
        let key = subject_key(&claims.sub);
        req.extensions_mut().insert(claims);
        return key;
    }
    ip_key(state, req.request())
}

/// `ip:<client ip>`: the peer, or the client a trusted proxy forwarded.
pub fn ip_key(state: &HttpState, req: &HttpRequest) -> String {
    let peer = req.peer_addr().map(|a| a.ip());
    let ip = match peer {
        Some(peer) if state.rate_limit.trusted_proxies.contains(&peer) => {
            forwarded_client(req.headers(), &state.rate_limit.trusted_proxies).unwrap_or(peer)
        }
        Some(peer) => peer,
        None => return address_key("unknown"),
    };
    address_key(ip)
}

/// The rightmost `X-Forwarded-For` address that is not a trusted proxy: the first hop the
/// trusted chain cannot vouch for.
fn forwarded_client(headers: &HeaderMap, trusted: &[IpAddr]) -> Option<IpAddr> {
    let chain: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|hop| hop.trim().parse().ok())
        .collect();
    chain.into_iter().rev().find(|ip| !trusted.contains(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_the_first_untrusted_hop_from_the_right() {
        let trusted: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()];
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("x-forwarded-for"),
            HeaderValue::from_static("6.6.6.6, 203.0.113.7, 10.0.0.2"),
        );
        assert_eq!(
            forwarded_client(&headers, &trusted),
            Some("203.0.113.7".parse().unwrap()),
            "a spoofed leftmost entry is ignored"
        );
        assert_eq!(forwarded_client(&HeaderMap::new(), &trusted), None);
    }
}
