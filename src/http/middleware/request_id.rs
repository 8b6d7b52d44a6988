//! Request ids: every request gets one (an incoming `X-Request-ID` is honoured when it is
//! sane, otherwise a UUIDv7 is generated). It is carried in the request's tracing span,
//! stored in the request extensions and returned in the response, and one access-log line
//! is written per request.

use std::time::Instant;

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::header::{HeaderName, HeaderValue},
    middleware::Next,
    web, HttpMessage,
};
use tracing::Instrument;

use crate::http::HttpState;

/// The header that carries the id in both directions.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being handled (in the request extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

/// Longest incoming id accepted; longer (or non-printable) ids are replaced.
const MAX_LEN: usize = 128;

fn acceptable(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

/// `from_fn` middleware: assigns the id, opens the span, logs the outcome.
pub async fn request_id<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<B>, actix_web::Error> {
    let id = req
        .headers()
        .get(&REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable(v))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));

    let span = tracing::info_span!(
        "http_request",
        request_id = %id,
        method = %req.method(),
        path = %req.path(),
    );
    let started = Instant::now();
    // Handler errors are already responses here; an `Err` can only come from another
    // middleware and is passed on (holding a clone of the request would break routing,
    // which needs the request uniquely).
    let mut response = next.call(req).instrument(span.clone()).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    let elapsed = started.elapsed();
    span.in_scope(|| {
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_ms = elapsed.as_secs_f64() * 1000.0,
            "request completed"
        )
    });
    if let Some(state) = response.request().app_data::<web::Data<HttpState>>() {
        // The route pattern, not the path, keeps the label set small.
        let route = response
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        let method = response.request().method().as_str().to_owned();
        let status = response.status().as_u16().to_string();
        state
            .metrics
            .http_requests
            .with_label_values(&[&method, &route, &status])
            .inc();
        state
            .metrics
            .http_duration
            .with_label_values(&[&method, &route])
            .observe(elapsed.as_secs_f64());
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::acceptable;

    #[test]
    fn only_sane_incoming_ids_are_kept() {
        assert!(acceptable("abc-123"));
        assert!(!acceptable(""));
        assert!(!acceptable("has space"));
        assert!(!acceptable(&"x".repeat(129)));
    }
}
