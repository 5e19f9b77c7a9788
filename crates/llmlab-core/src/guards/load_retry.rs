//! Loading a model again after a failed load, with back-off. Once the file
//! has been read as a model, what makes a load fail is nearly always memory
//! (the KV cache, the compute buffers, VRAM for offloaded layers), so each
//! retry may ask for less: the backend's degradation ladder (llama's is in
//! `llmlab-llama/src/degrade.rs`) says what the next attempt gives up. This
//! file keeps only what every backend shares: the waits, the attempts, and
//! the error that lists them.

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::registry::ModelSpec;
use crate::{Error, ErrorKind, Result};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoadRetrySettings {
    /// Loads tried in all, the first as configured (1 = never retry).
    pub attempts: u32,
    /// Seconds before the first retry; each later wait doubles.
    pub backoff_secs: f64,
    /// Longest wait between two attempts, in seconds.
    pub max_backoff_secs: f64,
    /// A ladder never halves the context below this many tokens (llama).
    pub min_context_size: u32,
}

impl Default for LoadRetrySettings {
    fn default() -> Self {
        Self {
            attempts: 4,
            backoff_secs: 0.5,
            max_backoff_secs: 8.0,
            min_context_size: 512,
        }
    }
}

/// Most attempts a registry entry may ask for.
pub const MAX_LOAD_ATTEMPTS: u32 = 16;

impl LoadRetrySettings {
    /// Reject settings that cannot work, naming the field under `load_retry.`.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, rule: &str| Err(Error::invalid_param(format!("load_retry.{field}"), rule.to_owned()));
        if !(1..=MAX_LOAD_ATTEMPTS).contains(&self.attempts) {
            return bad("attempts", &format!("must be between 1 and {MAX_LOAD_ATTEMPTS}"));
        }
        for (field, secs) in [
            ("backoff_secs", self.backoff_secs),
            ("max_backoff_secs", self.max_backoff_secs),
        ] {
            if !secs.is_finite() || !(0.0..=3600.0).contains(&secs) {
                return bad(field, "must be between 0 and 3600 seconds");
            }
        }
        if self.min_context_size < 64 {
            return bad("min_context_size", "must be at least 64 tokens");
        }
        Ok(())
    }

    fn first_backoff(&self) -> Duration {
        Duration::from_secs_f64(self.backoff_secs)
    }

    fn max_backoff(&self) -> Duration {
        Duration::from_secs_f64(self.max_backoff_secs)
    }
}

/// One try at loading a model: the spec to load and, when it is not the
/// configuration, what it gave up to fit, for people ("context 2048, batch
/// 256"). Backends with a degradation ladder make these for retries
/// (`PipelineFactory::degrade`).
#[derive(Debug, Clone, PartialEq)]
pub struct LoadAttempt {
    pub spec: ModelSpec,
    /// `None`: the spec is the configuration itself.
    pub degraded: Option<String>,
}

impl LoadAttempt {
    /// The configuration itself: the first attempt, and every retry of a
    /// backend without a ladder.
    pub fn as_configured(spec: &ModelSpec) -> Self {
        Self {
            spec: spec.clone(),
            degraded: None,
        }
    }

    fn describe(&self) -> &str {
        self.degraded.as_deref().unwrap_or("as configured")
    }
}

/// A model that loaded, and what it gave up to load, if anything.
#[derive(Debug)]
pub struct Loaded<T> {
    pub value: T,
    /// `Some("context 2048")` when the load succeeded only down the ladder.
    pub degraded: Option<String>,
}

/// Run `load` until it succeeds, with the back-off of `spec.load_retry`.
/// Retry `n` (1 for the first) loads what `degrade(spec, n)` gives: the
/// backend's ladder steps down from the configuration, and `None` (nothing
/// left to give up) ends the retries. Giving up, the error lists every
/// attempt and its failure. Cancellation and invalid requests are not
/// retried.
pub async fn load_with_retry<T, D, F, Fut>(spec: &ModelSpec, mut degrade: D, mut load: F) -> Result<Loaded<T>>
where
    D: FnMut(&ModelSpec, usize) -> Option<LoadAttempt>,
    F: FnMut(ModelSpec) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let settings = spec.load_retry;
    let mut attempt = LoadAttempt::as_configured(spec);
    let mut backoff = settings.first_backoff();
    let mut tried: Vec<String> = Vec::new();
    loop {
        let error = match load(attempt.spec.clone()).await {
            Ok(value) => {
                if let Some(what) = &attempt.degraded {
                    tracing::warn!(model = %spec.id, degraded = %what, "model loaded with reduced settings");
                }
                return Ok(Loaded {
                    value,
                    degraded: attempt.degraded,
                });
            }
            Err(error) => error,
        };
        tried.push(format!("{}: {}", attempt.describe(), error.message));
        let final_kind = matches!(error.kind, ErrorKind::Cancelled | ErrorKind::InvalidRequest);
        let next = if final_kind || tried.len() >= settings.attempts as usize {
            None
        } else {
            degrade(spec, tried.len())
        };
        let Some(next) = next else {
            if tried.len() == 1 {
                return Err(error);
            }
            return Err(Error::unavailable(format!(
                "model '{}' failed to load after {} attempts: {}",
                spec.id,
                tried.len(),
                tried.join("; ")
            )));
        };
        attempt = next;
        tracing::warn!(
            model = %spec.id, error = %error, retry_in_ms = backoff.as_millis() as u64, next = %attempt.describe(),
            "model load failed; retrying"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(settings.max_backoff());
    }
}
