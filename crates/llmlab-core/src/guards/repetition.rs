//! Repetition guard over generated token ids. Two signals:
//! - a loop at the tail: the last tokens repeat with a period of at most
//!   `max_period` tokens, `min_repeats` times or more, over at least
//!   `min_span` tokens (a sentence said again and again);
//! - heavy n-gram repetition: within the last `window` tokens, too few of the
//!   `ngram`-token sequences are new (a loop with small variations).
//!
//! Both are updated in O(`max_period`) per token; nothing rescans history.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::{GuardKind, GuardTrip};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepetitionSettings {
    pub enabled: bool,
    /// Longest loop period looked for, in tokens.
    pub max_period: usize,
    /// Times the period must occur back to back.
    pub min_repeats: usize,
    /// Tokens the repeated tail must cover (short stutters are natural).
    pub min_span: usize,
    /// N-gram length of the variation-tolerant check.
    pub ngram: usize,
    /// Tokens the n-gram check looks at.
    pub window: usize,
    /// Trip when fewer than this share of the window's n-grams are distinct.
    pub min_distinct_ratio: f64,
}

impl Default for RepetitionSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_period: 64,
            min_repeats: 4,
            min_span: 48,
            ngram: 4,
            window: 256,
            min_distinct_ratio: 0.35,
        }
    }
}

#[derive(Debug)]
pub struct RepetitionGuard {
    settings: RepetitionSettings,
    tokens: Vec<u32>,
    /// `run[p]`: how many tokens at the tail equal the token `p` before them.
    run: Vec<usize>,
    window: VecDeque<u32>,
    ngram_counts: HashMap<Vec<u32>, usize>,
    distinct: usize,
}

impl RepetitionGuard {
    pub fn new(settings: RepetitionSettings) -> Self {
        Self {
            run: vec![0; settings.max_period + 1],
            settings,
            tokens: Vec::new(),
            window: VecDeque::new(),
            ngram_counts: HashMap::new(),
            distinct: 0,
        }
    }

    pub fn observe(&mut self, token: u32) -> Option<GuardTrip> {
        self.tokens.push(token);
        let n = self.tokens.len() - 1;
        let mut trip = None;
        for period in 1..=self.settings.max_period.min(n) {
            if self.tokens[n - period] == token {
                self.run[period] += 1;
            } else {
                self.run[period] = 0;
            }
            let span = self.run[period] + period;
            let repeats = span / period;
            if trip.is_none()
                && self.run[period] > 0
                && repeats >= self.settings.min_repeats
                && span >= self.settings.min_span
            {
                trip = Some(GuardTrip {
                    kind: GuardKind::Repetition,
                    figure: repeats as f64,
                    detail: format!("the last {span} tokens repeat a {period}-token sequence {repeats} times"),
                });
            }
        }
        trip.or_else(|| self.observe_ngrams(token))
    }

    fn observe_ngrams(&mut self, token: u32) -> Option<GuardTrip> {
        let (n, size) = (self.settings.ngram.max(1), self.settings.window);
        self.window.push_back(token);
        if self.window.len() > size {
            // The n-gram that starts with the token leaving the window.
            let oldest: Vec<u32> = self.window.iter().take(n).copied().collect();
            self.forget(&oldest);
            self.window.pop_front();
        }
        if self.window.len() >= n {
            let newest: Vec<u32> = self.window.iter().skip(self.window.len() - n).copied().collect();
            let count = self.ngram_counts.entry(newest).or_insert(0);
            *count += 1;
            if *count == 1 {
                self.distinct += 1;
            }
        }
        if self.window.len() < size {
            return None;
        }
        let total = size + 1 - n;
        let ratio = self.distinct as f64 / total as f64;
        (ratio < self.settings.min_distinct_ratio).then(|| GuardTrip {
            kind: GuardKind::Repetition,
            figure: ratio,
            detail: format!(
                "only {:.0}% of the last {size} tokens' {n}-grams are distinct",
                ratio * 100.0
            ),
        })
    }

    fn forget(&mut self, ngram: &[u32]) {
        if ngram.len() < self.settings.ngram.max(1) {
            return;
        }
        if let Some(count) = self.ngram_counts.get_mut(ngram) {
            *count -= 1;
            if *count == 0 {
                self.ngram_counts.remove(ngram);
                self.distinct -= 1;
            }
        }
    }
}
