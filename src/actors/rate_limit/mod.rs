//! Per-client rate limiting: token buckets with continuous, fractional refill, one per key
//! (a JWT subject or a client IP), kept by a few shard actors so no single mailbox carries
//! every request. Buckets that have refilled completely are forgotten on a sweep, and each
//! shard holds at most a fixed number of keys, so memory stays bounded under many clients.
//!
//! In cluster mode the decision is taken in Redis instead ([`cluster`]), and these local
//! buckets decide only while Redis does not answer.

pub mod cluster;
pub mod messages;

use std::{
    collections::HashMap,
    hash::BuildHasher,
    time::{Duration, Instant},
};

use actix::{Actor, Addr, Arbiter, AsyncContext, Context, Handler};

pub use cluster::{ClusterLimits, LimiterStats};
pub use messages::*;

use crate::rate::TokenBucket;

/// The limit every key gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quota {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed in a burst.
    pub burst: u32,
}

/// One shard: the buckets of the keys that hash to it.
pub struct RateLimiter {
    quota: Quota,
    buckets: HashMap<String, TokenBucket>,
    max_keys: usize,
    sweep_every: Duration,
}

impl RateLimiter {
    /// A shard holding at most `max_keys` buckets, sweeping full ones every `sweep_every`.
    pub fn new(quota: Quota, max_keys: usize, sweep_every: Duration) -> Self {
        Self {
            quota,
            buckets: HashMap::new(),
            max_keys: max_keys.max(1),
            sweep_every,
        }
    }

    fn sweep(&mut self, now: Instant) -> usize {
        let before = self.buckets.len();
        self.buckets.retain(|_, bucket| !bucket.is_full(now));
        before - self.buckets.len()
    }
}

impl Actor for RateLimiter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(self.sweep_every, |limiter, _ctx| {
            limiter.sweep(Instant::now());
        });
    }
}

impl Handler<Check> for RateLimiter {
    type Result = actix::MessageResult<Check>;

    fn handle(&mut self, Check { key, now }: Check, _ctx: &mut Self::Context) -> Self::Result {
        if !self.buckets.contains_key(&key) && self.buckets.len() >= self.max_keys {
            self.sweep(now);
            if self.buckets.len() >= self.max_keys {
                // Still full of active keys: drop one (its client starts over with a full
                // bucket) rather than grow without bound.
                if let Some(victim) = self.buckets.keys().next().cloned() {
                    self.buckets.remove(&victim);
                }
            }
        }
        let quota = self.quota;
        let bucket = self
            .buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::new(quota.per_second, quota.burst, now));
        let allowed = bucket.try_take(now);
        actix::MessageResult(Decision {
            allowed,
            remaining: bucket.remaining(now),
            retry_after: bucket.until_next(now),
        })
    }
}

impl Handler<Sweep> for RateLimiter {
    type Result = usize;

    fn handle(&mut self, msg: Sweep, _ctx: &mut Self::Context) -> usize {
        self.sweep(msg.now)
    }
}

impl Handler<CountKeys> for RateLimiter {
    type Result = usize;

    fn handle(&mut self, _msg: CountKeys, _ctx: &mut Self::Context) -> usize {
        self.buckets.len()
    }
}

/// The bucket key of an authenticated client, the same over HTTP, WebSocket and gRPC.
pub fn subject_key(subject: &str) -> String {
    format!("sub:{subject}")
}

/// The bucket key of an anonymous client: its address (or `unknown`).
pub fn address_key(address: impl std::fmt::Display) -> String {
    format!("ip:{address}")
}

/// The shards, addressed by key hash. Cheap to clone.
#[derive(Clone)]
pub struct RateLimiters {
    shards: Vec<Addr<RateLimiter>>,
    hasher: std::collections::hash_map::RandomState,
    quota: Quota,
    cluster: Option<std::sync::Arc<ClusterLimits>>,
}

impl RateLimiters {
    /// Starts `shards` shard actors, each on its own arbiter (returned so the caller can
    /// stop them), sharing `max_keys` between them.
    pub fn start(quota: Quota, shards: usize, max_keys: usize) -> (Self, Vec<Arbiter>) {
        let shards = shards.max(1);
        let per_shard = max_keys.div_ceil(shards);
        let sweep_every =
            Duration::from_secs_f64((f64::from(quota.burst) / quota.per_second).clamp(1.0, 60.0));
        let arbiters: Vec<Arbiter> = (0..shards).map(|_| Arbiter::new()).collect();
        let addrs = arbiters
            .iter()
            .map(|arbiter| {
                RateLimiter::start_in_arbiter(&arbiter.handle(), move |_| {
                    RateLimiter::new(quota, per_shard, sweep_every)
                })
            })
            .collect();
        (
            Self {
                shards: addrs,
                hasher: Default::default(),
                quota,
                cluster: None,
            },
            arbiters,
        )
    }

    /// The configured quota.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    fn shard(&self, key: &str) -> &Addr<RateLimiter> {
        let hash = self.hasher.hash_one(key);
        &self.shards[(hash % self.shards.len() as u64) as usize]
    }

    /// Cluster mode: decisions are taken in Redis through `cluster`; the local buckets
    /// decide only while Redis does not answer.
    pub fn cluster_wide(mut self, cluster: ClusterLimits) -> Self {
        self.cluster = Some(std::sync::Arc::new(cluster));
        self
    }

    /// Takes a token for `key` now. The answer is a `'static` future, so it can be awaited
    /// after the caller has returned (a WebSocket session awaits its upgrade's answer).
    pub fn check(
        &self,
        key: String,
    ) -> impl std::future::Future<Output = Result<Decision, actix::MailboxError>> + Send + 'static
    {
        let now = Instant::now();
        let (local, cluster) = (self.shard(&key).clone(), self.cluster.clone());
        async move {
            if let Some(cluster) = cluster {
                if let Some(decision) = cluster.decide(&key).await {
                    return Ok(decision);
                }
            }
            local.send(Check { key, now }).await
        }
    }

    /// The cluster limiter's counters (zeros on a single node).
    pub fn stats(&self) -> LimiterStats {
        self.cluster
            .as_ref()
            .map(|cluster| cluster.stats())
            .unwrap_or_default()
    }

    /// Keys tracked across all shards.
    pub async fn keys(&self) -> usize {
        let mut total = 0;
        for shard in &self.shards {
            total += shard.send(CountKeys).await.unwrap_or(0);
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUOTA: Quota = Quota {
        per_second: 2.0,
        burst: 2,
    };

    #[actix_rt::test]
    async fn each_key_has_its_own_bucket() {
        let limiter = RateLimiter::new(QUOTA, 100, Duration::from_secs(60)).start();
        let now = Instant::now();
        let check = |key: &str| Check {
            key: key.into(),
            now,
        };
        assert!(limiter.send(check("a")).await.unwrap().allowed);
        assert!(limiter.send(check("a")).await.unwrap().allowed);
        let refused = limiter.send(check("a")).await.unwrap();
        assert!(!refused.allowed);
        assert_eq!(refused.remaining, 0);
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        assert!(
            limiter.send(check("b")).await.unwrap().allowed,
            "b is not a"
        );
    }

    #[actix_rt::test]
    async fn refilled_buckets_are_swept_and_idle_keys_do_not_pile_up() {
        let limiter = RateLimiter::new(QUOTA, 3, Duration::from_secs(60)).start();
        let start = Instant::now();
        for key in ["a", "b", "c"] {
            limiter
                .send(Check {
                    key: key.into(),
                    now: start,
                })
                .await
                .unwrap();
        }
        assert_eq!(limiter.send(CountKeys).await.unwrap(), 3);
        let swept = limiter
            .send(Sweep {
                now: start + Duration::from_millis(400),
            })
            .await
            .unwrap();
        assert_eq!(swept, 0, "half a second has not refilled them");
        let swept = limiter
            .send(Sweep {
                now: start + Duration::from_secs(1),
            })
            .await
            .unwrap();
        assert_eq!(swept, 3);

        // At the cap, a new key first sweeps, then evicts, never grows past the cap.
        for (i, key) in ["d", "e", "f", "g", "h"].into_iter().enumerate() {
            let now = start + Duration::from_secs(2) + Duration::from_millis(i as u64);
            limiter
                .send(Check {
                    key: key.into(),
                    now,
                })
                .await
                .unwrap();
        }
        assert_eq!(limiter.send(CountKeys).await.unwrap(), 3);
    }
}
