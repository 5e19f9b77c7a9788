//! Circuit breaker of one model. Consecutive failures (failed loads, engine
//! errors, deadline overruns) open it; while open, requests fail fast. After
//! a cooldown one probe request is let through (half-open): its success
//! closes the breaker, its failure opens it again for another cooldown.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// Seconds the breaker stays open before it lets a probe through.
    pub cooldown_secs: f64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            cooldown_secs: 30.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The value of the `llmlab_circuit_breaker_state` gauge.
    pub fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }
}

/// Whether a request may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// The one request that tests a half-open breaker.
    Probe,
    /// Refused; try again in this many seconds.
    Refused {
        retry_after_secs: u64,
    },
}

#[derive(Debug)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    state: BreakerState,
    consecutive_failures: u32,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
}

impl CircuitBreaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: BreakerState::Closed,
            consecutive_failures: 0,
            opened_at: None,
            probe_in_flight: false,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    fn cooldown(&self) -> Duration {
        Duration::from_secs_f64(self.settings.cooldown_secs.max(0.0))
    }

    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state {
            BreakerState::Closed => Admission::Allowed,
            BreakerState::Open => {
                let opened_at = self.opened_at.unwrap_or(now);
                let ready_at = opened_at + self.cooldown();
                if now >= ready_at {
                    self.state = BreakerState::HalfOpen;
                    self.probe_in_flight = true;
                    Admission::Probe
                } else {
                    Admission::Refused {
                        retry_after_secs: (ready_at - now).as_secs_f64().ceil().max(1.0) as u64,
                    }
                }
            }
            BreakerState::HalfOpen if self.probe_in_flight => Admission::Refused { retry_after_secs: 1 },
            BreakerState::HalfOpen => {
                self.probe_in_flight = true;
                Admission::Probe
            }
        }
    }

    pub fn record_success(&mut self) {
        self.state = BreakerState::Closed;
        self.consecutive_failures = 0;
        self.opened_at = None;
        self.probe_in_flight = false;
    }

    /// The probe ended without a verdict (the client left): let another in.
    pub fn abandon_probe(&mut self) {
        self.probe_in_flight = false;
    }

    pub fn record_failure(&mut self, now: Instant) {
        self.consecutive_failures += 1;
        let trips = match self.state {
            BreakerState::HalfOpen => true,
            BreakerState::Closed => self.consecutive_failures >= self.settings.failure_threshold.max(1),
            BreakerState::Open => false,
        };
        if trips {
            self.state = BreakerState::Open;
            self.opened_at = Some(now);
        }
        self.probe_in_flight = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerSettings {
            failure_threshold: 3,
            cooldown_secs: 30.0,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_open_it_and_a_success_in_between_resets_the_count() {
        let mut b = breaker();
        let now = Instant::now();
        b.record_failure(now);
        b.record_failure(now);
        b.record_success();
        b.record_failure(now);
        b.record_failure(now);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(now), Admission::Allowed);
        b.record_failure(now);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(now), Admission::Refused { retry_after_secs: 30 });
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_cooldown_one_probe_goes_through_and_its_result_decides() {
        let mut b = breaker();
        let start = Instant::now();
        for _ in 0..3 {
            b.record_failure(start);
        }
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(b.admit(Instant::now()), Admission::Refused { retry_after_secs: 10 });
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.admit(Instant::now()), Admission::Probe);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        // Only one probe at a time.
        assert!(matches!(b.admit(Instant::now()), Admission::Refused { .. }));
        // The probe fails: open again for a whole cooldown.
        b.record_failure(Instant::now());
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(Instant::now()), Admission::Refused { retry_after_secs: 30 });
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(b.admit(Instant::now()), Admission::Probe);
        b.record_success();
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.admit(Instant::now()), Admission::Allowed);
        assert_eq!(b.consecutive_failures(), 0);
    }
}
