//! Perplexity guard: the mean negative log-likelihood of the sampled tokens
//! (under the model's own distribution, before temperature) over a sliding
//! window. Noise, such as text sampled at a very high temperature, is
//! improbable token after token; fluent text is not.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::{GuardKind, GuardTrip};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PerplexitySettings {
    pub enabled: bool,
    /// Tokens generated before the guard may trip.
    pub min_tokens: usize,
    /// Tokens the mean is taken over.
    pub window: usize,
    /// Trip above this mean negative log-likelihood (nats per token; 6.0 is
    /// a perplexity of about 400).
    pub max_mean_nll: f64,
}

impl Default for PerplexitySettings {
    fn default() -> Self {
        Self {
            enabled: true,
            min_tokens: 32,
            window: 32,
            max_mean_nll: 6.0,
        }
    }
}

#[derive(Debug)]
pub struct PerplexityGuard {
    settings: PerplexitySettings,
    seen: usize,
    window: VecDeque<f64>,
    sum: f64,
}

impl PerplexityGuard {
    pub fn new(settings: PerplexitySettings) -> Self {
        Self {
            settings,
            seen: 0,
            window: VecDeque::new(),
            sum: 0.0,
        }
    }

    /// `logprob`: natural log of the sampled token's probability.
    pub fn observe(&mut self, logprob: f32) -> Option<GuardTrip> {
        let nll = -f64::from(logprob).max(-1e4);
        self.seen += 1;
        self.window.push_back(nll);
        self.sum += nll;
        if self.window.len() > self.settings.window.max(1) {
            self.sum -= self.window.pop_front().unwrap_or(0.0);
        }
        if self.seen < self.settings.min_tokens.max(self.settings.window) {
            return None;
        }
        let mean = self.sum / self.window.len() as f64;
        (mean > self.settings.max_mean_nll).then(|| GuardTrip {
            kind: GuardKind::Perplexity,
            figure: mean,
            detail: format!(
                "the last {} tokens average {mean:.2} nats of surprise (limit {:.2})",
                self.window.len(),
                self.settings.max_mean_nll
            ),
        })
    }
}
