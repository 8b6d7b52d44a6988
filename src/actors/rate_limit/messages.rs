//! Messages the [`RateLimiter`](super::RateLimiter) shards handle.

use std::time::{Duration, Instant};

use actix::Message;

/// Take one request's token for `key` at `now`.
#[derive(Debug, Message)]
#[rtype(result = "Decision")]
pub struct Check {
    /// Who is asking: a JWT subject or a client IP.
    pub key: String,
    /// The time of the request (explicit, so tests control the clock).
    pub now: Instant,
}

/// The answer to [`Check`], with what the `RateLimit` headers need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may pass.
    pub allowed: bool,
    /// Whole requests left right now.
    pub remaining: u32,
    /// Until the next request would be allowed (zero when one would be now).
    pub retry_after: Duration,
}

/// Forget keys whose buckets have refilled completely by `now`.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct Sweep {
    /// The sweep's clock.
    pub now: Instant,
}

/// How many keys the shard tracks.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct CountKeys;
