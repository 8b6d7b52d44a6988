//! A token bucket with fractional refill (not whole seconds), driven by the caller's clock
//! so it is tested without sleeping.

use std::time::Instant;

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

    /// Takes one token if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.updated = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
}
