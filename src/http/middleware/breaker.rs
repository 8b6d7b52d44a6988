//! Routes that need the database (GraphQL) ask the circuit breaker first: while it is open
//! they answer `503` at once, with `Retry-After`; otherwise the outcome goes back to the
//! breaker. Only an answer its handler marked [`DatabaseUnavailable`] counts as a failure:
//! a client's bad input, an overloaded pool or a bug says nothing about the database's
//! health, so other 5xx answers count neither way (and a request abandoned by its client
//! gives its permit back unrecorded).

use actix_web::{
    body::{EitherBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::{header::RETRY_AFTER, Method},
    middleware::Next,
    web, HttpResponse,
};
use serde_json::json;

use crate::{
    actors::breaker::{Acquire, Guarded, Outcome},
    http::HttpState,
};

/// Paths whose handlers need the database.
const GUARDED: [&str; 1] = ["/graphql"];

/// Put in a response's extensions by a handler that found the database unreachable.
#[derive(Debug, Clone, Copy)]
pub struct DatabaseUnavailable;

/// `from_fn` middleware; see the module docs.
pub async fn circuit_breaker<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    let guarded = GUARDED.contains(&req.path()) && req.method() != Method::OPTIONS;
    let state = req.app_data::<web::Data<HttpState>>().cloned();
    let Some(state) = state.filter(|_| guarded) else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let permit = match state.breaker.send(Acquire).await {
        Ok(Ok(permit)) => Guarded::new(state.breaker.clone(), permit),
        Ok(Err(rejected)) => {
            let retry_after = rejected.retry_after.as_secs_f64().ceil().max(1.0) as u64;
            let response = HttpResponse::ServiceUnavailable()
                .insert_header((RETRY_AFTER, retry_after))
                .json(json!({
                    "error": "the database is unavailable (circuit breaker open)",
                    "retry_after_seconds": retry_after,
                }));
            return Ok(req.into_response(response).map_into_right_body());
        }
        // The breaker is gone (shutting down): let the call through unguarded.
        Err(_) => return Ok(next.call(req).await?.map_into_left_body()),
    };
    let response = next.call(req).await?;
    let outcome = if response
        .response()
        .extensions()
        .contains::<DatabaseUnavailable>()
    {
        Outcome::Unreachable
    } else if response.status().is_server_error() {
        Outcome::Unknown
    } else {
        Outcome::Healthy
    };
    permit.record(outcome);
    Ok(response.map_into_left_body())
}
