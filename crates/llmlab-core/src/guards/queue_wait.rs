//! Admission by expected wait: a request that would sit in a model's queue
//! longer than its first-token deadline is refused at once (429 with
//! `Retry-After`) instead of being admitted only to time out there. Work the
//! server cannot start in time is better refused while the client can still
//! go elsewhere, and it never counts as the model's failure.

use std::sync::Mutex;
use std::time::Duration;

use crate::{Error, ErrorKind, Result};

/// Weight of the newest request in the running mean of slot hold times:
/// recent enough to follow a change of load, smooth enough that one long
/// answer does not shut the door.
const HOLD_TIME_WEIGHT: f64 = 0.2;

/// Estimates a new request's wait from how long requests hold a slot.
#[derive(Debug)]
pub struct QueueWaitEstimator {
    slots: usize,
    /// Running mean of seconds from taking a slot to giving it back; `None`
    /// until a request has finished (no estimate: admit).
    mean_hold_secs: Mutex<Option<f64>>,
}

impl QueueWaitEstimator {
    pub fn new(slots: usize) -> Self {
        Self {
            slots: slots.max(1),
            mean_hold_secs: Mutex::new(None),
        }
    }

    /// A request gave its slot back after holding it for `held`.
    pub fn record_hold(&self, held: Duration) {
        let secs = held.as_secs_f64();
        let mut mean = self
            .mean_hold_secs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *mean = Some(match *mean {
            Some(m) => m + HOLD_TIME_WEIGHT * (secs - m),
            None => secs,
        });
    }

    /// How long a request arriving now waits for a slot, with `waiting`
    /// requests ahead of it and `running` holding slots. With every slot
    /// busy, slots free up at `slots / mean hold` per second and this
    /// request needs `waiting + 1` of them.
    pub fn expected_wait(&self, waiting: usize, running: usize) -> Duration {
        if running + waiting < self.slots {
            return Duration::ZERO;
        }
        let mean = *self
            .mean_hold_secs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(mean) = mean else {
            return Duration::ZERO;
        };
        let ahead = (waiting + running + 1).saturating_sub(self.slots) as f64;
        Duration::from_secs_f64(ahead * mean / self.slots as f64)
    }

    /// Refuse a request whose expected wait is longer than its first-token
    /// deadline (`None`: no deadline, always admitted).
    pub fn admit(&self, model: &str, waiting: usize, running: usize, first_token: Option<Duration>) -> Result<()> {
        let Some(deadline) = first_token else {
            return Ok(());
        };
        let wait = self.expected_wait(waiting, running);
        if wait <= deadline {
            return Ok(());
        }
        let retry_after = (wait - deadline).as_secs_f64().ceil().max(1.0) as u64;
        Err(Error::new(
            ErrorKind::Overloaded,
            format!(
                "model '{model}' is busy: {waiting} requests wait for {} slots and this one would wait about {:.0}s, \
                 longer than its first-token limit of {:.0}s; retry later",
                self.slots,
                wait.as_secs_f64(),
                deadline.as_secs_f64()
            ),
        )
        .with_retry_after(retry_after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_free_slot_or_no_history_means_no_wait() {
        let estimator = QueueWaitEstimator::new(4);
        assert_eq!(estimator.expected_wait(10, 4), Duration::ZERO, "no history yet");
        estimator.record_hold(10 * SECOND);
        assert_eq!(estimator.expected_wait(0, 3), Duration::ZERO);
    }

    #[test]
    fn the_wait_grows_with_the_queue_over_the_slots() {
        let estimator = QueueWaitEstimator::new(4);
        estimator.record_hold(10 * SECOND);
        // All 4 busy: the next slot frees in 10/4 s on average.
        assert_eq!(estimator.expected_wait(0, 4), Duration::from_secs_f64(2.5));
        // 64 waiting ahead: 65 slots must free up.
        assert_eq!(estimator.expected_wait(64, 4), Duration::from_secs_f64(162.5));
    }

    #[test]
    fn requests_that_cannot_start_in_time_are_refused_with_a_retry_hint() {
        let estimator = QueueWaitEstimator::new(4);
        estimator.record_hold(10 * SECOND);
        assert!(estimator.admit("m", 40, 4, Some(120 * SECOND)).is_ok());
        let refused = estimator.admit("m", 64, 4, Some(120 * SECOND)).unwrap_err();
        assert_eq!(refused.kind, ErrorKind::Overloaded);
        assert_eq!(refused.retry_after_secs, Some(43));
        assert!(refused.message.contains("first-token limit"), "{}", refused.message);
        assert!(estimator.admit("m", 64, 4, None).is_ok(), "no deadline, no refusal");
    }

    #[test]
    fn the_mean_follows_recent_requests() {
        let estimator = QueueWaitEstimator::new(1);
        estimator.record_hold(10 * SECOND);
        estimator.record_hold(20 * SECOND);
        assert_eq!(estimator.expected_wait(0, 1), Duration::from_secs_f64(12.0));
    }
}
