//! Cluster-wide rate limits: one decision per request in Redis, so a client spread over
//! N nodes gets the configured rate, not N times it.
//!
//! The decision is GCRA (the generic cell rate algorithm, as `redis-cell` and
//! `go-redis/redis_rate` use): per key Redis keeps one number, the theoretical arrival
//! time of the next request, and a Lua script compares it with Redis's own clock (`TIME`,
//! so the nodes' clocks do not matter) and moves it — one round trip, atomic. It admits
//! exactly what the node-local token bucket admits: `burst` at once, `rate` per second
//! sustained, with the same `remaining` and `retry_after` for the headers.
//!
//! When Redis does not answer within [`DECISION_TIMEOUT`], the node-local limiter decides
//! instead (logged once when it starts and once when Redis is back, counted in
//! `/metrics`), and Redis is tried again after [`RETRY_AFTER`].

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use redis::aio::ConnectionManager;

use super::{Decision, Quota};

/// Longest wait for Redis's decision before the local limiter decides.
pub const DECISION_TIMEOUT: Duration = Duration::from_millis(250);

/// After Redis failed, how long the local limiter decides alone before Redis is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

const GCRA: &str = r"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local interval = 1000000 / rate
local tolerance = interval * burst
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local next_tat = tat + interval
local allow_at = next_tat - tolerance
if allow_at > now then
  return {0, 0, math.ceil(allow_at - now)}
end
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil((next_tat - now) / 1000) + 1)
local spare = now - allow_at
local remaining = math.floor(spare / interval)
local wait = 0
if remaining < 1 then wait = math.ceil(interval - spare) end
return {1, remaining, wait}
";

/// Counters of the cluster limiter, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimiterStats {
    /// Decisions taken in Redis.
    pub cluster_decisions: u64,
    /// Decisions the local limiter took because Redis did not answer.
    pub fallback_decisions: u64,
    /// Whether the local limiter decides now.
    pub degraded: bool,
}

/// The Redis side of the limiter. Shared by the front doors (`Arc`); its only state is
/// counters and when to try Redis again.
pub struct ClusterLimits {
    redis: ConnectionManager,
    script: redis::Script,
    prefix: String,
    quota: Quota,
    started: Instant,
    /// Milliseconds since `started` before which Redis is not asked (after a failure).
    retry_at: AtomicU64,
    degraded: AtomicBool,
    cluster_decisions: AtomicU64,
    fallback_decisions: AtomicU64,
}

impl ClusterLimits {
    /// Limits `quota` per key in Redis under `<prefix>:rate:`.
    pub fn new(redis: ConnectionManager, prefix: &str, quota: Quota) -> Self {
        Self {
            redis,
            script: redis::Script::new(GCRA),
            prefix: prefix.to_owned(),
            quota,
            started: Instant::now(),
            retry_at: AtomicU64::new(0),
            degraded: AtomicBool::new(false),
            cluster_decisions: AtomicU64::new(0),
            fallback_decisions: AtomicU64::new(0),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Redis's decision for `key`, or `None` when the local limiter must decide.
    pub async fn decide(&self, key: &str) -> Option<Decision> {
        if self.elapsed_ms() < self.retry_at.load(Ordering::Relaxed) {
            self.fallback_decisions.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut redis = self.redis.clone();
        let mut invocation = self.script.key(format!("{}:rate:{key}", self.prefix));
        invocation.arg(self.quota.per_second).arg(self.quota.burst);
        let answer = tokio::time::timeout(
            DECISION_TIMEOUT,
            invocation.invoke_async::<(i64, i64, i64)>(&mut redis),
        )
        .await;
        match answer {
            Ok(Ok((allowed, remaining, wait_us))) => {
                self.cluster_decisions.fetch_add(1, Ordering::Relaxed);
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("Redis answers again: rate limits are cluster-wide again");
                }
                Some(Decision {
                    allowed: allowed == 1,
                    remaining: u32::try_from(remaining.max(0)).unwrap_or(u32::MAX),
                    retry_after: Duration::from_micros(u64::try_from(wait_us.max(0)).unwrap_or(0)),
                })
            }
            failed => {
                let reason = match failed {
                    Ok(Err(error)) => error.to_string(),
                    _ => format!("no answer within {DECISION_TIMEOUT:?}"),
                };
                self.retry_at.store(
                    self.elapsed_ms() + RETRY_AFTER.as_millis() as u64,
                    Ordering::Relaxed,
                );
                self.fallback_decisions.fetch_add(1, Ordering::Relaxed);
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        %reason,
                        "Redis unreachable: rate limits are enforced by each node alone \
                         until it is back"
                    );
                }
                None
            }
        }
    }

    /// The counters.
    pub fn stats(&self) -> LimiterStats {
        LimiterStats {
            cluster_decisions: self.cluster_decisions.load(Ordering::Relaxed),
            fallback_decisions: self.fallback_decisions.load(Ordering::Relaxed),
            degraded: self.degraded.load(Ordering::Relaxed),
        }
    }
}
