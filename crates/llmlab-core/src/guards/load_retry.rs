//! Loading a model again after a failed load: with back-off, and each time a
//! step further down a degradation ladder (smaller context, fewer GPU layers,
//! smaller batch). Once the file has been read as a model, what makes a load
//! fail is nearly always memory (the KV cache, the compute buffers, VRAM for
//! offloaded layers), and each rung asks for less of it.

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
    /// The ladder never halves the context below this many tokens.
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

/// The resource a rung of the ladder gives up, in the order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rung {
    Context,
    GpuLayers,
    Batch,
}

const LADDER: [Rung; 3] = [Rung::Context, Rung::GpuLayers, Rung::Batch];

/// The smallest batch the ladder goes down to: one token of every parallel
/// sequence must fit, and below 32 prompt processing crawls.
fn min_batch(spec: &ModelSpec) -> u32 {
    spec.parallel.max(32)
}

impl Rung {
    /// Halve this rung's resource; `false` when it is already at its floor.
    fn apply(self, spec: &mut ModelSpec, settings: &LoadRetrySettings) -> bool {
        let (value, floor) = match self {
            Self::Context => (&mut spec.context_size, settings.min_context_size),
            Self::GpuLayers => (&mut spec.gpu_layers, 0),
            Self::Batch => {
                let floor = min_batch(spec);
                (&mut spec.batch_size, floor)
            }
        };
        let halved = (*value / 2).max(floor);
        if halved >= *value {
            return false;
        }
        *value = halved;
        true
    }
}

/// Where a retrying load stands on the ladder. Rungs are taken in turn, round
/// after round, each skipped once at its floor, until the attempts run out or
/// nothing is left to give up.
#[derive(Debug, Clone)]
pub struct DegradationLadder {
    configured: ModelSpec,
    current: ModelSpec,
    next_rung: usize,
}

impl DegradationLadder {
    pub fn new(spec: &ModelSpec) -> Self {
        Self {
            configured: spec.clone(),
            current: spec.clone(),
            next_rung: 0,
        }
    }

    /// The spec of the next attempt.
    pub fn current(&self) -> &ModelSpec {
        &self.current
    }

    /// Step one rung down; `false` when every resource is at its floor.
    pub fn step_down(&mut self, settings: &LoadRetrySettings) -> bool {
        for _ in 0..LADDER.len() {
            let rung = LADDER[self.next_rung % LADDER.len()];
            self.next_rung += 1;
            if rung.apply(&mut self.current, settings) {
                return true;
            }
        }
        false
    }

    /// What the current attempt changed from the configuration, for people:
    /// "as configured" or, say, "context 2048, batch 256".
    pub fn describe(&self) -> String {
        let (was, now) = (&self.configured, &self.current);
        let changes: Vec<String> = [
            ("context", was.context_size, now.context_size),
            ("gpu layers", was.gpu_layers, now.gpu_layers),
            ("batch", was.batch_size, now.batch_size),
        ]
        .into_iter()
        .filter(|(_, was, now)| was != now)
        .map(|(name, _, now)| format!("{name} {now}"))
        .collect();
        if changes.is_empty() {
            "as configured".to_owned()
        } else {
            changes.join(", ")
        }
    }

    fn is_degraded(&self) -> bool {
        self.configured != self.current
    }
}

/// A model that loaded, and what it gave up to load, if anything.
#[derive(Debug)]
pub struct Loaded<T> {
    pub value: T,
    /// `Some("context 2048")` when the load succeeded only down the ladder.
    pub degraded: Option<String>,
}

/// Run `load` until it succeeds, with back-off and the degradation ladder of
/// `spec.load_retry`. Giving up, the error lists every attempt and its
/// failure. Cancellation and invalid requests are not retried.
pub async fn load_with_retry<T, F, Fut>(spec: &ModelSpec, mut load: F) -> Result<Loaded<T>>
where
    F: FnMut(ModelSpec) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let settings = spec.load_retry;
    let mut ladder = DegradationLadder::new(spec);
    let mut backoff = settings.first_backoff();
    let mut tried: Vec<String> = Vec::new();
    loop {
        let error = match load(ladder.current().clone()).await {
            Ok(value) => {
                let degraded = ladder.is_degraded().then(|| ladder.describe());
                if let Some(what) = &degraded {
                    tracing::warn!(model = %spec.id, degraded = %what, "model loaded with reduced settings");
                }
                return Ok(Loaded { value, degraded });
            }
            Err(error) => error,
        };
        tried.push(format!("{}: {}", ladder.describe(), error.message));
        let final_kind = matches!(error.kind, ErrorKind::Cancelled | ErrorKind::InvalidRequest);
        if final_kind || tried.len() >= settings.attempts as usize || !ladder.step_down(&settings) {
            if tried.len() == 1 {
                return Err(error);
            }
            return Err(Error::unavailable(format!(
                "model '{}' failed to load after {} attempts: {}",
                spec.id,
                tried.len(),
                tried.join("; ")
            )));
        }
        tracing::warn!(
            model = %spec.id, error = %error, retry_in_ms = backoff.as_millis() as u64, next = %ladder.describe(),
            "model load failed; retrying with less"
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(settings.max_backoff());
    }
}
