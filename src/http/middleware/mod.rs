//! HTTP middleware, applied in the order listed in [`crate::startup`].

mod breaker;
mod rate_limit;
mod request_id;

pub use breaker::{circuit_breaker, DatabaseUnavailable};
pub use rate_limit::{ip_key, rate_limit, too_many_requests, RateLimitState};
pub use request_id::{request_id, RequestId, REQUEST_ID_HEADER};
