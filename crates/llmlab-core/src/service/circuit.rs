//! A circuit breaker per model (see `guards::breaker`): failed loads, engine
//! errors and deadlines that run out through the model's fault (decided by
//! `guards::deadline`, which knows the timings) count against it; while it
//! is open requests fail fast with 503 and `Retry-After` instead of loading
//! a broken model again and again.

use super::records::Models;
use super::Service;
#[cfg(test)]
use crate::guards::BreakerState;
use crate::guards::{Admission, BreakerSettings, CircuitBreaker, GuardKind};
use crate::registry::ModelSpec;
use crate::{metrics, ChatEvent, Error, ErrorKind, FinishReason, Result, StreamObserver};

/// Whether an error is the model's fault (it counts against the breaker)
/// rather than the request's or the client's. Timeouts are judged where
/// they happen (see `BreakerWatch::model_fault`), not by their kind.
fn counts_against_the_model(error: &Error) -> bool {
    matches!(error.kind, ErrorKind::Internal | ErrorKind::Unavailable)
}

/// Work on a model's breaker (made with `settings` on first use), logging
/// and exporting any change of state.
fn with_breaker<T>(
    models: &Models,
    model: &str,
    settings: BreakerSettings,
    f: impl FnOnce(&mut CircuitBreaker) -> T,
) -> T {
    models.with(model, |record| {
        let breaker = record.breaker.get_or_insert_with(|| CircuitBreaker::new(settings));
        let before = breaker.state();
        let result = f(breaker);
        if breaker.state() != before {
            metrics::circuit_state(model, breaker.state());
            tracing::warn!(model, from = ?before, to = ?breaker.state(), failures = breaker.consecutive_failures(), "circuit breaker changed state");
        }
        result
    })
}

impl Service {
    /// Let a request through the model's breaker, or refuse it fast.
    /// Returns whether the request is the half-open probe.
    pub(super) fn pass_breaker(&self, spec: &ModelSpec) -> Result<bool> {
        let now = tokio::time::Instant::now();
        let (admission, failures) = with_breaker(&self.models, &spec.id, spec.breaker, |b| {
            (b.admit(now), b.consecutive_failures())
        });
        match admission {
            Admission::Allowed => Ok(false),
            Admission::Probe => Ok(true),
            Admission::Refused { retry_after_secs } => Err(Error::unavailable(format!(
                "model '{}' failed {failures} times in a row; its circuit breaker is open, retry in {retry_after_secs}s",
                spec.id
            ))
            .with_retry_after(retry_after_secs)),
        }
    }

    /// Report a failure that happened outside a stream (a failed load).
    pub(super) fn breaker_failure(&self, spec: &ModelSpec, error: &Error) {
        if counts_against_the_model(error) {
            let now = tokio::time::Instant::now();
            with_breaker(&self.models, &spec.id, spec.breaker, |b| b.record_failure(now));
        }
    }

    /// Report a success outside a stream (an explicit load).
    pub(super) fn breaker_success(&self, spec: &ModelSpec) {
        with_breaker(&self.models, &spec.id, spec.breaker, CircuitBreaker::record_success);
    }

    #[cfg(test)]
    pub(super) fn breaker_state(&self, model: &str) -> (BreakerState, u32) {
        self.models
            .read(model, |record| {
                record.breaker.as_ref().map(|b| (b.state(), b.consecutive_failures()))
            })
            .flatten()
            .unwrap_or((BreakerState::Closed, 0))
    }

    /// Watches one request's stream and reports its outcome to the breaker.
    pub(super) fn breaker_watch(&self, spec: &ModelSpec, probe: bool) -> BreakerWatch {
        BreakerWatch {
            models: self.models.clone(),
            model: spec.id.clone(),
            settings: spec.breaker,
            probe,
            settled: false,
        }
    }
}

pub(super) struct BreakerWatch {
    models: Models,
    model: String,
    settings: BreakerSettings,
    probe: bool,
    settled: bool,
}

impl StreamObserver for BreakerWatch {
    fn observe(&mut self, event: &ChatEvent) {
        if self.settled {
            return;
        }
        let now = tokio::time::Instant::now();
        match event {
            // Deadlines report their own verdict (`model_fault`); for this
            // watch the request ended without one.
            ChatEvent::Stopped(trip) if trip.kind == GuardKind::Deadline => self.abandon_probe(),
            ChatEvent::Error(error) if error.kind == ErrorKind::Timeout => self.abandon_probe(),
            ChatEvent::Stopped(_) => return,
            ChatEvent::Error(error) if counts_against_the_model(error) => {
                with_breaker(&self.models, &self.model, self.settings, |b| b.record_failure(now));
            }
            ChatEvent::Done { finish_reason } if *finish_reason != FinishReason::Cancelled => {
                with_breaker(&self.models, &self.model, self.settings, CircuitBreaker::record_success);
            }
            ChatEvent::Done { .. } | ChatEvent::Error(_) => {}
            _ => return,
        }
        self.settled = true;
    }
}

impl BreakerWatch {
    /// What the request's deadlines call when one runs out through the
    /// model's fault.
    pub(super) fn model_fault(&self) -> crate::guards::ModelFault {
        let (models, model, settings) = (self.models.clone(), self.model.clone(), self.settings);
        Box::new(move || {
            let now = tokio::time::Instant::now();
            with_breaker(&models, &model, settings, |b| b.record_failure(now));
        })
    }

    /// Give a half-open breaker's probe turn back without a verdict.
    fn abandon_probe(&mut self) {
        if self.probe {
            with_breaker(&self.models, &self.model, self.settings, CircuitBreaker::abandon_probe);
            self.probe = false;
        }
    }

    /// Report the outcome of a request that answers at once (no stream).
    /// An error that is not the model's fault gives a probe's turn back.
    pub(super) fn settle<T>(mut self, outcome: &Result<T>) {
        let now = tokio::time::Instant::now();
        match outcome {
            Ok(_) => with_breaker(&self.models, &self.model, self.settings, CircuitBreaker::record_success),
            Err(error) if counts_against_the_model(error) => {
                with_breaker(&self.models, &self.model, self.settings, |b| b.record_failure(now));
            }
            Err(_) => return,
        }
        self.settled = true;
    }
}

impl Drop for BreakerWatch {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            with_breaker(&self.models, &self.model, self.settings, CircuitBreaker::abandon_probe);
        }
    }
}
