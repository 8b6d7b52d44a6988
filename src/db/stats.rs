//! Query statistics (the seed's `DBStats`, made lock-free and complete).
//!
//! Every SQL statement a pooled connection runs is observed through diesel's
//! [`Instrumentation`] hook, so the counts are exact whichever repository method ran it.
//! The counters are atomics: they are telemetry, not domain state.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::{Duration, Instant},
};

use diesel::connection::{Instrumentation, InstrumentationEvent};
use serde::Serialize;

/// Upper bounds (milliseconds) of the latency histogram's buckets; the last is open-ended.
pub const LATENCY_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000];

/// Shared counters for one database.
#[derive(Debug)]
pub struct DbStats {
    total: AtomicU64,
    failed: AtomicU64,
    slow: AtomicU64,
    total_micros: AtomicU64,
    /// One counter per bucket of [`LATENCY_BUCKETS_MS`], plus one for slower queries.
    buckets: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    slow_threshold: Duration,
}

impl DbStats {
    /// New, zeroed counters; queries at or above `slow_threshold` count as slow.
    pub fn new(slow_threshold: Duration) -> Self {
        Self {
            total: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            slow: AtomicU64::new(0),
            total_micros: AtomicU64::new(0),
            buckets: Default::default(),
            slow_threshold,
        }
    }

    /// Records one finished statement.
    pub fn record(&self, elapsed: Duration, failed: bool) {
        self.total.fetch_add(1, Relaxed);
        if failed {
            self.failed.fetch_add(1, Relaxed);
        }
        if elapsed >= self.slow_threshold {
            self.slow.fetch_add(1, Relaxed);
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.total_micros.fetch_add(micros, Relaxed);
        let millis = micros.div_ceil(1000);
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|&bound| millis <= bound)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
    }

    /// Records a failure that never reached the database (e.g. no pooled connection).
    pub fn record_unavailable(&self) {
        self.total.fetch_add(1, Relaxed);
        self.failed.fetch_add(1, Relaxed);
    }

    /// A consistent-enough copy of the counters.
    pub fn snapshot(&self) -> DbStatsSnapshot {
        let total = self.total.load(Relaxed);
        let total_micros = self.total_micros.load(Relaxed);
        DbStatsSnapshot {
            total_queries: total,
            failed_queries: self.failed.load(Relaxed),
            slow_queries: self.slow.load(Relaxed),
            mean_latency_ms: if total == 0 {
                0.0
            } else {
                total_micros as f64 / total as f64 / 1000.0
            },
            latency_histogram: LATENCY_BUCKETS_MS
                .iter()
                .map(|&le| Some(le))
                .chain([None])
                .zip(&self.buckets)
                .map(|(le_ms, count)| LatencyBucket {
                    le_ms,
                    count: count.load(Relaxed),
                })
                .collect(),
        }
    }
}

/// A copy of [`DbStats`], for `/health` and tests.
#[derive(Debug, Clone, Serialize)]
pub struct DbStatsSnapshot {
    /// Statements run (plus attempts that found no connection).
    pub total_queries: u64,
    /// Statements that returned an error.
    pub failed_queries: u64,
    /// Statements at or above the slow-query threshold.
    pub slow_queries: u64,
    /// Mean statement latency.
    pub mean_latency_ms: f64,
    /// Non-cumulative counts per latency bucket.
    pub latency_histogram: Vec<LatencyBucket>,
}

/// One histogram bucket: statements that took at most `le_ms` (and more than the previous
/// bucket's bound); `le_ms: null` is the open-ended last bucket.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyBucket {
    /// Upper bound in milliseconds, `None` for "slower than every bound".
    pub le_ms: Option<u64>,
    /// Statements in this bucket.
    pub count: u64,
}

/// Per-connection observer that times each statement and reports it to [`DbStats`].
pub(crate) struct QueryObserver {
    stats: Arc<DbStats>,
    started: Option<Instant>,
}

impl QueryObserver {
    pub(crate) fn new(stats: Arc<DbStats>) -> Self {
        Self {
            stats,
            started: None,
        }
    }
}

impl Instrumentation for QueryObserver {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        match event {
            InstrumentationEvent::StartQuery { .. } => self.started = Some(Instant::now()),
            InstrumentationEvent::FinishQuery { query, error, .. } => {
                let elapsed = self.started.take().map(|s| s.elapsed()).unwrap_or_default();
                self.stats.record(elapsed, error.is_some());
                if elapsed >= self.stats.slow_threshold {
                    tracing::warn!(
                        elapsed_ms = elapsed.as_millis() as u64,
                        sql = %query,
                        "slow query"
                    );
                }
                if let Some(error) = error {
                    tracing::debug!(%error, sql = %query, "query failed");
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_land_in_the_right_bucket_and_counters() {
        let stats = DbStats::new(Duration::from_millis(100));
        stats.record(Duration::from_micros(300), false); // <= 1 ms
        stats.record(Duration::from_millis(7), true); // <= 10 ms
        stats.record(Duration::from_millis(150), false); // slow, <= 250 ms
        stats.record(Duration::from_secs(9), false); // slow, open-ended
        stats.record_unavailable();

        let snap = stats.snapshot();
        assert_eq!(snap.total_queries, 5);
        assert_eq!(snap.failed_queries, 2);
        assert_eq!(snap.slow_queries, 2);
        let count = |le: Option<u64>| {
            snap.latency_histogram
                .iter()
                .find(|b| b.le_ms == le)
                .map(|b| b.count)
                .unwrap()
        };
        assert_eq!(count(Some(1)), 1);
        assert_eq!(count(Some(10)), 1);
        assert_eq!(count(Some(250)), 1);
        assert_eq!(count(None), 1);
        let histogram_total: u64 = snap.latency_histogram.iter().map(|b| b.count).sum();
        assert_eq!(histogram_total, 4, "unavailable attempts have no latency");
    }
}
