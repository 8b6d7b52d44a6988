//! The circuit breaker's state machine, driven by the caller's clock so every transition
//! is tested without sleeping.
//!
//! Closed → Open when, over the last `window` calls (at least `min_calls` of them), the
//! failure rate reaches `failure_rate`, or after `consecutive_failures` in a row.
//! Open → HalfOpen once `open_for` has passed. HalfOpen admits at most `trial_calls` at a
//! time; `trial_calls` successes close it, any failure reopens it, and a trial that has not
//! reported within `trial_timeout` counts as a failure, so a lost call cannot wedge it.

use std::{
    collections::{HashMap, VecDeque},
    time::{Duration, Instant},
};

use serde::Serialize;

/// Thresholds and timings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Calls remembered for the failure rate.
    pub window: usize,
    /// Calls needed in the window before the rate counts.
    pub min_calls: usize,
    /// Failure rate (0–1) that opens the breaker.
    pub failure_rate: f64,
    /// Failures in a row that open the breaker.
    pub consecutive_failures: u32,
    /// How long it stays open before trying again.
    pub open_for: Duration,
    /// Trial calls admitted at once while half-open (and successes needed to close).
    pub trial_calls: usize,
    /// A trial that has not reported after this long counts as failed.
    pub trial_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window: 20,
            min_calls: 10,
            failure_rate: 0.5,
            consecutive_failures: 5,
            open_for: Duration::from_secs(5),
            trial_calls: 2,
            trial_timeout: Duration::from_secs(10),
        }
    }
}

/// Where the breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls fail fast.
    Open,
    /// A few trial calls probe the dependency.
    HalfOpen,
}

/// A call's ticket; report its outcome with [`Breaker::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    id: u64,
    trial: bool,
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// When trying again makes sense.
    pub retry_after: Duration,
}

/// The breaker.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    /// Recent outcomes while closed (`true` = failure).
    outcomes: VecDeque<bool>,
    consecutive: u32,
    open_until: Instant,
    trials: HashMap<u64, Instant>,
    trial_successes: usize,
    next_permit: u64,
    /// Transitions since start.
    pub transitions: u64,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig, now: Instant) -> Self {
        Self {
            config,
            state: BreakerState::Closed,
            outcomes: VecDeque::with_capacity(config.window),
            consecutive: 0,
            open_until: now,
            trials: HashMap::new(),
            trial_successes: 0,
            next_permit: 0,
            transitions: 0,
        }
    }

    /// The state at `now` (an expired open period reads as half-open).
    pub fn state(&mut self, now: Instant) -> BreakerState {
        self.advance(now);
        self.state
    }

    fn transition(&mut self, to: BreakerState, now: Instant) {
        if self.state == to {
            return;
        }
        tracing::warn!(from = ?self.state, to = ?to, "circuit breaker transition");
        self.state = to;
        self.transitions += 1;
        match to {
            BreakerState::Open => {
                self.open_until = now + self.config.open_for;
                self.trials.clear();
            }
            BreakerState::HalfOpen => {
                self.trials.clear();
                self.trial_successes = 0;
            }
            BreakerState::Closed => {
                self.outcomes.clear();
                self.consecutive = 0;
            }
        }
    }

    /// Applies the passage of time: open → half-open, and lost trials → reopen.
    fn advance(&mut self, now: Instant) {
        if self.state == BreakerState::Open && now >= self.open_until {
            self.transition(BreakerState::HalfOpen, now);
        }
        if self.state == BreakerState::HalfOpen {
            let timeout = self.config.trial_timeout;
            if self
                .trials
                .values()
                .any(|started| now.duration_since(*started) >= timeout)
            {
                self.transition(BreakerState::Open, now);
            }
        }
    }

    /// Asks to make a call at `now`.
    pub fn acquire(&mut self, now: Instant) -> Result<Permit, Rejected> {
        self.advance(now);
        self.next_permit += 1;
        let id = self.next_permit;
        match self.state {
            BreakerState::Closed => Ok(Permit { id, trial: false }),
            BreakerState::Open => Err(Rejected {
                retry_after: self.open_until.saturating_duration_since(now),
            }),
            BreakerState::HalfOpen if self.trials.len() < self.config.trial_calls => {
                self.trials.insert(id, now);
                Ok(Permit { id, trial: true })
            }
            BreakerState::HalfOpen => Err(Rejected {
                retry_after: Duration::from_secs(1),
            }),
        }
    }

    /// Reports how a permitted call went.
    pub fn record(&mut self, permit: Permit, success: bool, now: Instant) {
        self.advance(now);
        match self.state {
            BreakerState::HalfOpen if permit.trial => {
                if self.trials.remove(&permit.id).is_none() {
                    return; // a trial from an earlier half-open period
                }
                if !success {
                    self.transition(BreakerState::Open, now);
                } else {
                    self.trial_successes += 1;
                    if self.trial_successes >= self.config.trial_calls {
                        self.transition(BreakerState::Closed, now);
                    }
                }
            }
            BreakerState::Closed if !permit.trial => {
                if self.outcomes.len() == self.config.window {
                    self.outcomes.pop_front();
                }
                self.outcomes.push_back(!success);
                self.consecutive = if success { 0 } else { self.consecutive + 1 };
                let failures = self.outcomes.iter().filter(|f| **f).count();
                let rate_tripped = self.outcomes.len() >= self.config.min_calls
                    && failures as f64 / self.outcomes.len() as f64 >= self.config.failure_rate;
                if rate_tripped || self.consecutive >= self.config.consecutive_failures {
                    self.transition(BreakerState::Open, now);
                }
            }
            // Outcomes of calls admitted in another state say nothing about this one.
            _ => {}
        }
    }

    /// Gives back a permit whose call says nothing about the dependency (it was abandoned
    /// before an answer, or failed for a reason of its own): nothing is counted, and a
    /// trial's place is freed for another call.
    pub fn release(&mut self, permit: Permit, now: Instant) {
        self.advance(now);
        if permit.trial {
            self.trials.remove(&permit.id);
        }
    }

    /// The health monitor found the dependency down: open now.
    pub fn force_open(&mut self, now: Instant) {
        self.advance(now);
        if self.state == BreakerState::Open {
            self.open_until = now + self.config.open_for;
        } else {
            self.transition(BreakerState::Open, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: 10,
            min_calls: 4,
            failure_rate: 0.5,
            consecutive_failures: 3,
            open_for: Duration::from_secs(5),
            trial_calls: 2,
            trial_timeout: Duration::from_secs(2),
        }
    }

    fn call(breaker: &mut Breaker, success: bool, now: Instant) {
        let permit = breaker.acquire(now).expect("admitted");
        breaker.record(permit, success, now);
    }

    #[test]
    fn consecutive_failures_open_it() {
        let now = Instant::now();
        let mut breaker = Breaker::new(config(), now);
        call(&mut breaker, false, now);
        call(&mut breaker, false, now);
        assert_eq!(breaker.state(now), BreakerState::Closed);
        call(&mut breaker, false, now);
        assert_eq!(breaker.state(now), BreakerState::Open);
        let rejected = breaker.acquire(now + Duration::from_secs(1)).unwrap_err();
        assert_eq!(rejected.retry_after, Duration::from_secs(4));
    }

    #[test]
    fn the_failure_rate_counts_only_after_the_minimum_calls() {
        let now = Instant::now();
        let mut breaker = Breaker::new(config(), now);
        for success in [false, true, false] {
            call(&mut breaker, success, now);
        }
        assert_eq!(breaker.state(now), BreakerState::Closed, "3 calls < min 4");
        call(&mut breaker, true, now);
        assert_eq!(
            breaker.state(now),
            BreakerState::Open,
            "2 of 4 failed = 50%"
        );
    }

    #[test]
    fn half_open_admits_a_limited_number_of_trials_then_closes_on_success() {
        let start = Instant::now();
        let mut breaker = Breaker::new(config(), start);
        breaker.force_open(start);
        let later = start + Duration::from_secs(5);
        assert_eq!(breaker.state(later), BreakerState::HalfOpen);
        let first = breaker.acquire(later).unwrap();
        let second = breaker.acquire(later).unwrap();
        assert!(breaker.acquire(later).is_err(), "only two trials at once");
        breaker.record(first, true, later);
        assert_eq!(breaker.state(later), BreakerState::HalfOpen);
        breaker.record(second, true, later);
        assert_eq!(breaker.state(later), BreakerState::Closed);
    }

    #[test]
    fn a_failed_trial_reopens_it() {
        let start = Instant::now();
        let mut breaker = Breaker::new(config(), start);
        breaker.force_open(start);
        let later = start + Duration::from_secs(5);
        let trial = breaker.acquire(later).unwrap();
        breaker.record(trial, false, later);
        assert_eq!(breaker.state(later), BreakerState::Open);
        assert!(breaker.acquire(later + Duration::from_secs(4)).is_err());
        assert_eq!(
            breaker.state(later + Duration::from_secs(5)),
            BreakerState::HalfOpen
        );
    }

    #[test]
    fn a_trial_that_never_reports_cannot_wedge_it() {
        let start = Instant::now();
        let mut breaker = Breaker::new(config(), start);
        breaker.force_open(start);
        let half_open = start + Duration::from_secs(5);
        let _lost = breaker.acquire(half_open).unwrap();
        let _also_lost = breaker.acquire(half_open).unwrap();
        assert!(breaker.acquire(half_open).is_err());
        let after_timeout = half_open + Duration::from_secs(2);
        assert_eq!(
            breaker.state(after_timeout),
            BreakerState::Open,
            "lost trials count as failures"
        );
        let next_round = after_timeout + Duration::from_secs(5);
        assert!(
            breaker.acquire(next_round).is_ok(),
            "and a new round of trials starts"
        );
    }

    #[test]
    fn an_abandoned_trial_counts_neither_way_and_frees_its_place() {
        let start = Instant::now();
        let mut breaker = Breaker::new(config(), start);
        breaker.force_open(start);
        let half_open = start + Duration::from_secs(5);
        let abandoned = breaker.acquire(half_open).unwrap();
        let trial = breaker.acquire(half_open).unwrap();
        assert!(breaker.acquire(half_open).is_err(), "both places taken");
        breaker.release(abandoned, half_open);
        assert_eq!(breaker.state(half_open), BreakerState::HalfOpen);
        let replacement = breaker.acquire(half_open).expect("the place is free again");
        breaker.record(trial, true, half_open);
        breaker.record(replacement, true, half_open);
        assert_eq!(breaker.state(half_open), BreakerState::Closed);
        // While closed, released calls leave the window untouched.
        for _ in 0..10 {
            let permit = breaker.acquire(half_open).unwrap();
            breaker.release(permit, half_open);
        }
        assert_eq!(breaker.state(half_open), BreakerState::Closed);
        assert!(breaker.outcomes.is_empty());
    }

    #[test]
    fn transitions_are_counted() {
        let start = Instant::now();
        let mut breaker = Breaker::new(config(), start);
        breaker.force_open(start);
        let later = start + Duration::from_secs(5);
        for _ in 0..2 {
            let permit = breaker.acquire(later).unwrap();
            breaker.record(permit, true, later);
        }
        assert_eq!(breaker.transitions, 3, "closed→open→half-open→closed");
    }
}
