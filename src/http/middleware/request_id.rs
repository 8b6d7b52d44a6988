//! Request tracking: every request gets a request id (an incoming `X-Request-ID` is
//! honoured when it is sane, otherwise a UUIDv7 is generated) and a place in a W3C trace
//! (`traceparent`, or the seed's `X-Trace-ID`/`X-Span-ID`, joined or started). Both are in
//! the request's tracing span — so in every log line of the request — in the request
//! extensions and in the response headers; one access-log line and the HTTP metrics are
//! written per request.

use std::time::Instant;

use actix_web::{
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    http::header::{HeaderName, HeaderValue},
    middleware::Next,
    web, HttpMessage,
};
use tracing::Instrument;

use crate::{http::HttpState, telemetry::trace::TraceContext};

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
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    let mut trace = TraceContext::from_headers(
        header("traceparent"),
        header("tracestate"),
        header("x-trace-id"),
        header("x-span-id"),
    );

    let span = if crate::telemetry::exporting() {
        let span = tracing::info_span!(
            "http_request",
            request_id = %id,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            method = %req.method(),
            path = %req.path(),
        );
        trace.attach(&span);
        span.record("trace_id", trace.trace_id.as_str());
        span.record("span_id", trace.span_id.as_str());
        span
    } else {
        tracing::info_span!(
            "http_request",
            request_id = %id,
            trace_id = %trace.trace_id,
            span_id = %trace.span_id,
            method = %req.method(),
            path = %req.path(),
        )
    };
    req.extensions_mut().insert(trace.clone());
    let started = Instant::now();
    // Handler errors are already responses here; an `Err` can only come from another
    // middleware and is passed on (holding a clone of the request would break routing,
    // which needs the request uniquely).
    let mut response = next.call(req).instrument(span.clone()).await?;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(REQUEST_ID_HEADER, value);
    }
    for (name, value) in [
        ("traceparent", Some(trace.traceparent())),
        ("tracestate", trace.tracestate.clone()),
        ("x-trace-id", Some(trace.trace_id.clone())),
        ("x-span-id", Some(trace.span_id.clone())),
    ] {
        if let Some(value) = value.and_then(|v| HeaderValue::from_str(&v).ok()) {
            headers.insert(HeaderName::from_static(name), value);
        }
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
