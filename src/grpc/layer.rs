//! The tower layer around every gRPC call: request id, deadline, and one log line with
//! the method, final status code, duration and peer — which an interceptor cannot do,
//! since it never sees the response (streaming calls end in trailers).

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use http::{HeaderMap, HeaderValue};
use http_body::{Body as HttpBody, Frame};
use tonic::{body::Body, transport::server::TcpConnectInfo, Status};
use tower_layer::Layer;
use tower_service::Service;

use actix::Addr;

use crate::{
    actors::{
        breaker::{Acquire, CircuitBreaker, Guarded, Outcome},
        rate_limit::{address_key, subject_key, RateLimiters},
    },
    auth::{bearer_token, Claims, JwtAuth},
    metrics::Metrics,
    telemetry::trace::TraceContext,
};

/// The metadata key that carries the request id both ways.
pub const REQUEST_ID: &str = "request-id";
/// Deadlines are answered a tenth early (at most this much), so `DEADLINE_EXCEEDED`
/// reaches the caller before its own timer (and tonic's, which says `CANCELLED`) fires.
const MAX_DEADLINE_MARGIN: Duration = Duration::from_millis(100);
/// Longest incoming request id accepted.
const MAX_ID_LEN: usize = 128;

/// Calls to these services need the database, so they pass the circuit breaker.
const GUARDED_PREFIX: &str = "/userservice.UserService/";

/// Calls that are never rate limited (health must tell the truth under load).
const UNLIMITED_PREFIX: &str = "/grpc.health.v1.";

/// Adds [`Call`] around a service.
#[derive(Clone)]
pub struct CallLayer {
    /// Where calls are counted.
    pub metrics: Arc<Metrics>,
    /// Guards the database calls.
    pub breaker: Addr<CircuitBreaker>,
    /// Per-client rate limits (shared with HTTP).
    pub limiters: RateLimiters,
    /// Reads the caller's subject for the rate-limit key.
    pub auth: JwtAuth,
}

impl<S> Layer<S> for CallLayer {
    type Service = Call<S>;

    fn layer(&self, inner: S) -> Call<S> {
        Call {
            inner,
            shared: self.clone(),
        }
    }
}

/// See the module docs.
#[derive(Clone)]
pub struct Call<S> {
    inner: S,
    shared: CallLayer,
}

/// What the log line needs, carried to wherever the call ends. Every call is logged and
/// counted exactly once: with its status when it finishes, or — dropped before that
/// (the client reset the stream or went away) — as `1` (`CANCELLED`).
struct CallLog {
    id: String,
    method: String,
    peer: String,
    started: Instant,
    metrics: Arc<Metrics>,
    trace: TraceContext,
    /// Logged already.
    done: bool,
}

impl CallLog {
    fn finish(mut self, code: &str) {
        self.record(code, "grpc call completed");
    }

    fn record(&mut self, code: &str, message: &'static str) {
        self.done = true;
        self.metrics
            .grpc_calls
            .with_label_values(&[self.method.as_str(), code])
            .inc();
        self.metrics
            .grpc_duration
            .with_label_values(&[self.method.as_str()])
            .observe(self.started.elapsed().as_secs_f64());
        // The ids in a span named like HTTP's, with the same field names, so one query
        // (`span.request_id`, `span.trace_id`) finds a call on either front door.
        let span = tracing::info_span!(
            "grpc_call",
            request_id = %self.id,
            trace_id = %self.trace.trace_id,
            span_id = %self.trace.span_id,
        );
        span.in_scope(|| {
            tracing::info!(
                method = %self.method,
                peer = %self.peer,
                grpc_status = code,
                elapsed_ms = self.started.elapsed().as_secs_f64() * 1000.0,
                "{message}"
            )
        });
    }
}

impl Drop for CallLog {
    fn drop(&mut self) {
        if !self.done {
            self.record("CANCELLED", "grpc call cancelled before it finished");
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for Call<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let id = request_id(request.headers());
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        if let Ok(value) = HeaderValue::from_str(&id) {
            request.headers_mut().insert(REQUEST_ID, value);
        }
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        let trace = TraceContext::from_headers(
            header("traceparent"),
            header("tracestate"),
            header("x-trace-id"),
            header("x-span-id"),
        );
        let log = CallLog {
            peer: request
                .extensions()
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr)
                .map_or_else(|| "unknown".to_owned(), |a| a.to_string()),
            method: request.uri().path().to_owned(),
            id,
            started: Instant::now(),
            metrics: self.shared.metrics.clone(),
            trace,
            done: false,
        };
        // Verified once here; the authentication interceptor reuses the claims.
        let claims = bearer_claims(&self.shared.auth, request.headers());
        let limit_key = (!log.method.starts_with(UNLIMITED_PREFIX))
            .then(|| rate_limit_key(claims.as_ref(), &log.peer));
        if let Some(claims) = claims {
            request.extensions_mut().insert(claims);
        }
        let limiters = self.shared.limiters.clone();
        // The clone that was driven to readiness serves this call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let breaker = log
            .method
            .starts_with(GUARDED_PREFIX)
            .then(|| self.shared.breaker.clone());
        Box::pin(async move {
            if let Some(key) = limit_key {
                if let Ok(decision) = limiters.check(key).await {
                    if !decision.allowed {
                        log.metrics.rate_limited.with_label_values(&["grpc"]).inc();
                        let wait = decision.retry_after.as_secs_f64().ceil().max(1.0);
                        let status = Status::resource_exhausted(format!(
                            "rate limit exceeded; retry in {wait}s"
                        ));
                        log.finish("8");
                        return Ok(status.into_http());
                    }
                }
            }
            let permit = match &breaker {
                None => None,
                Some(breaker) => match breaker.send(Acquire).await {
                    Ok(Ok(permit)) => Some(Guarded::new(breaker.clone(), permit)),
                    Ok(Err(rejected)) => {
                        let status = Status::unavailable(format!(
                            "the database is unavailable (circuit breaker open); retry in {}s",
                            rejected.retry_after.as_secs_f64().ceil().max(1.0)
                        ));
                        log.finish("14");
                        return Ok(status.into_http());
                    }
                    Err(_) => None,
                },
            };
            let call = inner.call(request);
            let mut response = match deadline {
                None => call.await?,
                Some(deadline) => {
                    let budget = deadline - (deadline / 10).min(MAX_DEADLINE_MARGIN);
                    match tokio::time::timeout(budget, call).await {
                        Ok(response) => response?,
                        Err(_) => Status::deadline_exceeded(format!(
                            "the call did not finish within its {deadline:?} deadline"
                        ))
                        .into_http(),
                    }
                }
            };
            if let Some(permit) = permit {
                let code = response.headers().get("grpc-status").map(|v| v.as_bytes());
                let outcome = if response
                    .headers()
                    .contains_key(super::status::SHARD_UNAVAILABLE)
                {
                    // One shard down says nothing about the rest.
                    Outcome::Unknown
                } else {
                    breaker_outcome(code)
                };
                permit.record(outcome);
            }
            if let Ok(value) = HeaderValue::from_str(&log.id) {
                response.headers_mut().insert(REQUEST_ID, value);
            }
            if let Ok(value) = HeaderValue::from_str(&log.trace.traceparent()) {
                response.headers_mut().insert("traceparent", value);
            }
            // A trailers-only answer (every error) has its status in the headers; otherwise
            // the status comes in the trailers at the end of the body.
            if let Some(code) = response.headers().get("grpc-status") {
                log.finish(code_name(Some(code.as_bytes())));
                return Ok(response);
            }
            Ok(response.map(|body| {
                Body::new(Logged {
                    inner: body,
                    log: Some(log),
                })
            }))
        })
    }
}

/// The canonical name of a `grpc-status` value; a missing or unreadable one is
/// `UNKNOWN`, as clients take it.
fn code_name(status: Option<&[u8]>) -> &'static str {
    super::code_name(status.map_or(tonic::Code::Unknown, tonic::Code::from_bytes))
}

/// What a call's status says about the database: only `UNAVAILABLE` says it could not be
/// reached. `INTERNAL`, `RESOURCE_EXHAUSTED` (an overloaded pool) and `DEADLINE_EXCEEDED`
/// say nothing either way; any other code (or a streaming answer's head) means the
/// database answered.
fn breaker_outcome(code: Option<&[u8]>) -> Outcome {
    match code {
        Some(b"14") => Outcome::Unreachable,
        Some(b"4" | b"8" | b"13") => Outcome::Unknown,
        _ => Outcome::Healthy,
    }
}

/// The claims of a valid `authorization: Bearer` token, if one was sent.
fn bearer_claims(auth: &JwtAuth, headers: &HeaderMap) -> Option<Claims> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .and_then(|token| auth.verify(token).ok())
}

/// `sub:<subject>` for a valid bearer token, else `ip:<peer ip>` (the same keys as HTTP).
fn rate_limit_key(claims: Option<&Claims>, peer: &str) -> String {
    match claims {
        Some(claims) => subject_key(&claims.sub),
        None => {
            let ip = peer
                .parse::<std::net::SocketAddr>()
                .map(|a| a.ip().to_string());
            address_key(ip.unwrap_or_else(|_| peer.to_owned()))
        }
    }
}

/// The caller's id when it sent a sane one, otherwise a fresh UUIDv7.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| {
            !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_graphic())
        })
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// Parses a `grpc-timeout` value: up to 8 digits and a unit (`H M S m u n`).
pub fn parse_grpc_timeout(raw: &str) -> Option<Duration> {
    if raw.len() < 2 || raw.len() > 9 {
        return None;
    }
    let (digits, unit) = raw.split_at(raw.len() - 1);
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value * 3600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// A response body that logs the call when its trailers pass (dropped unfinished, the
/// client went away: its `CallLog` says so).
struct Logged {
    inner: Body,
    log: Option<CallLog>,
}

impl HttpBody for Logged {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(trailers) = frame.trailers_ref() {
                if let Some(log) = self.log.take() {
                    let code = trailers.get("grpc-status").map(|v| v.as_bytes());
                    log.finish(code_name(code));
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_are_named_as_grpc_names_them() {
        assert_eq!(code_name(Some(b"0")), "OK");
        assert_eq!(code_name(Some(b"5")), "NOT_FOUND");
        assert_eq!(code_name(Some(b"8")), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(Some(b"16")), "UNAUTHENTICATED");
        assert_eq!(code_name(Some(b"99")), "UNKNOWN");
        assert_eq!(code_name(None), "UNKNOWN");
    }

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("100n"), Some(Duration::from_nanos(100)));
        for bad in ["", "5", "S", "123456789S", "5x", "-5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_unavailable_counts_against_the_database() {
        let cases: [(Option<&[u8]>, Outcome); 8] = [
            (Some(b"14"), Outcome::Unreachable),
            (Some(b"13"), Outcome::Unknown),
            (Some(b"8"), Outcome::Unknown),
            (Some(b"4"), Outcome::Unknown),
            (Some(b"0"), Outcome::Healthy),
            (Some(b"3"), Outcome::Healthy),
            (Some(b"5"), Outcome::Healthy),
            (None, Outcome::Healthy),
        ];
        for (code, expected) in cases {
            assert_eq!(breaker_outcome(code), expected, "{code:?}");
        }
    }
}
