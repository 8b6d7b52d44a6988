//! A token bucket with fractional refill (not whole seconds), driven by the caller's clock
//! so it is tested without sleeping.

use std::time::{Duration, Instant};

/// Allows `burst` messages at once and `rate` per second sustained.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(per_second: f64, burst: u32, now: Instant) -> Self {
        let capacity = f64::from(burst.max(1));
        Self {
            capacity,
            per_second,
            tokens: capacity,
            updated: now,
        }
    }

    /// Brings the bucket up to `now`.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.updated = now.max(self.updated);
    }

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl TokenBucket {
    /// Whole tokens left at `now`.
    pub fn remaining(&mut self, now: Instant) -> u32 {
        self.refill(now);
        self.tokens.floor() as u32
    }

    /// How long until one token is available (zero when one is).
    pub fn until_next(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.per_second)
        }
    }

    /// Whether the bucket has refilled completely by `now` (then it can be forgotten:
    /// a new full bucket behaves the same).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.capacity
    }

    /// How long an empty bucket takes to fill completely.
    pub fn window(&self) -> Duration {
        Duration::from_secs_f64(self.capacity / self.per_second)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_refused() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1.0, 3, start);
        assert!((0..3).all(|_| bucket.try_take(start)));
        assert!(!bucket.try_take(start));
    }

    #[test]
    fn tokens_refill_fractionally() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 1, start);
        assert!(bucket.try_take(start));
        assert!(
            !bucket.try_take(start + Duration::from_millis(50)),
            "half a token"
        );
        assert!(
            bucket.try_take(start + Duration::from_millis(100)),
            "a whole token"
        );
    }

    #[test]
    fn refill_never_exceeds_the_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(100.0, 2, start);
        let later = start + Duration::from_secs(60);
        assert!(bucket.try_take(later));
        assert!(bucket.try_take(later));
        assert!(!bucket.try_take(later));
    }

    #[test]
    fn remaining_and_wait_follow_the_refill() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(4.0, 2, start);
        assert_eq!(bucket.remaining(start), 2);
        assert!(bucket.try_take(start) && bucket.try_take(start));
        assert_eq!(bucket.remaining(start), 0);
        assert_eq!(bucket.until_next(start), Duration::from_millis(250));
        let later = start + Duration::from_millis(100);
        assert_eq!(bucket.until_next(later), Duration::from_millis(150));
        assert!(!bucket.is_full(start + Duration::from_millis(400)));
        assert!(bucket.is_full(start + Duration::from_millis(500)));
        assert_eq!(bucket.window(), Duration::from_millis(500));
    }
}
