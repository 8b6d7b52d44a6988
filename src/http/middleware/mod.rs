//! HTTP middleware, applied in the order listed in [`crate::startup`].

mod rate_limit;
mod request_id;

pub use rate_limit::{rate_limit, RateLimitState};
pub use request_id::{request_id, RequestId, REQUEST_ID_HEADER};
