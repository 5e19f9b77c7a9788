//! Guards that stop bad generations while they happen. They see every
//! sampled token id (and, for the perplexity guard, its log-probability)
//! and may stop the sequence with a reason the client sees.

mod breaker;
mod deadline;
mod load_retry;
mod perplexity;
mod queue_wait;
mod repetition;

use serde::{Deserialize, Serialize};

pub use breaker::{Admission, BreakerSettings, BreakerState, CircuitBreaker};
pub use deadline::{with_deadlines, DeadlineSettings, ModelFault};
pub use load_retry::{load_with_retry, LoadAttempt, LoadRetrySettings, Loaded, MAX_LOAD_ATTEMPTS};
pub use perplexity::{PerplexityGuard, PerplexitySettings};
pub use queue_wait::QueueWaitEstimator;
pub use repetition::{RepetitionGuard, RepetitionSettings};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardKind {
    Repetition,
    Perplexity,
    /// A deadline ran out after some output (before any, it is an error).
    Deadline,
}

impl GuardKind {
    /// The `stop_reason` clients see.
    pub fn stop_reason(self) -> &'static str {
        match self {
            Self::Repetition => "repetition_guard",
            Self::Perplexity => "perplexity_guard",
            Self::Deadline => "deadline",
        }
    }
}

/// A guard stopped a sequence: which one, its figure (repeats, distinct
/// n-gram ratio or mean negative log-likelihood) and a sentence for people.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuardTrip {
    pub kind: GuardKind,
    pub figure: f64,
    pub detail: String,
}

/// Settings of every guard: per model in the registry (`guards:`), and per
/// request, where a guard named replaces the model's settings for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardSettings {
    pub repetition: RepetitionSettings,
    pub perplexity: PerplexitySettings,
    pub deadlines: DeadlineSettings,
}

/// Longest loop period a request may ask the repetition guard to track.
pub const MAX_REPETITION_PERIOD: usize = 1024;

impl GuardSettings {
    /// Reject settings that could never work, naming the field (under
    /// `guards.`) the way the transports report parameters.
    pub fn validate(&self) -> crate::Result<()> {
        let bad =
            |field: &str, rule: &str| Err(crate::Error::invalid_param(format!("guards.{field}"), rule.to_owned()));
        let r = &self.repetition;
        if !(1..=MAX_REPETITION_PERIOD).contains(&r.max_period) {
            return bad(
                "repetition.max_period",
                &format!("must be between 1 and {MAX_REPETITION_PERIOD}"),
            );
        }
        if r.min_repeats < 2 {
            return bad("repetition.min_repeats", "must be at least 2");
        }
        if r.ngram == 0 || r.window <= r.ngram {
            return bad(
                "repetition.window",
                "must be larger than repetition.ngram, which must be at least 1",
            );
        }
        if !(0.0..=1.0).contains(&r.min_distinct_ratio) {
            return bad("repetition.min_distinct_ratio", "must be between 0 and 1");
        }
        self.deadlines.validate()?;
        let p = &self.perplexity;
        if p.window == 0 {
            return bad("perplexity.window", "must be at least 1");
        }
        if p.max_mean_nll.is_nan() || p.max_mean_nll <= 0.0 {
            return bad("perplexity.max_mean_nll", "must be a positive number of nats");
        }
        Ok(())
    }
}

/// A request's guards, fed one sampled token at a time.
#[derive(Debug)]
pub struct GuardSet {
    repetition: Option<RepetitionGuard>,
    perplexity: Option<PerplexityGuard>,
}

impl GuardSet {
    pub fn new(settings: &GuardSettings) -> Self {
        Self {
            repetition: settings
                .repetition
                .enabled
                .then(|| RepetitionGuard::new(settings.repetition)),
            perplexity: settings
                .perplexity
                .enabled
                .then(|| PerplexityGuard::new(settings.perplexity)),
        }
    }

    /// Whether the engine must compute each sampled token's log-probability.
    pub fn needs_logprobs(&self) -> bool {
        self.perplexity.is_some()
    }

    /// Record a sampled token; the first guard that trips stops the sequence.
    pub fn observe(&mut self, token: u32, logprob: Option<f32>) -> Option<GuardTrip> {
        let repetition = self.repetition.as_mut().and_then(|g| g.observe(token));
        repetition.or_else(|| {
            let (guard, logprob) = (self.perplexity.as_mut()?, logprob?);
            guard.observe(logprob)
        })
    }
}

#[cfg(test)]
mod tests;
