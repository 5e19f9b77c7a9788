//! The degradation ladder of a llama model that failed to load: each retry
//! gives up a little more memory than the one before, halving the context
//! (the KV cache), then the GPU layers (VRAM), then the batch (compute
//! buffers), round after round. The service keeps the back-off and the
//! attempts (`llmlab_core::guards::load_with_retry`); this file says what
//! each retry tries.

use llmlab_core::guards::LoadAttempt;
use llmlab_core::registry::{LlamaSettings, ModelSpec};

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
fn min_batch(settings: &LlamaSettings) -> u32 {
    settings.parallel.max(32)
}

impl Rung {
    /// Halve this rung's resource; `false` when it is already at its floor.
    fn apply(self, settings: &mut LlamaSettings, min_context_size: u32) -> bool {
        let (value, floor) = match self {
            Self::Context => (&mut settings.context_size, min_context_size),
            Self::GpuLayers => match settings.gpu_layers.as_mut() {
                Some(layers) => (layers, 0),
                None => return false,
            },
            Self::Batch => {
                let floor = min_batch(settings);
                (&mut settings.batch_size, floor)
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

/// Where a retrying load stands on the ladder. Rungs are taken in turn, each
/// skipped once at its floor, until nothing is left to give up.
#[derive(Debug, Clone)]
struct Ladder {
    settings: LlamaSettings,
    min_context_size: u32,
    next_rung: usize,
}

impl Ladder {
    /// Step one rung down; `false` when every resource is at its floor.
    fn step_down(&mut self) -> bool {
        for _ in 0..LADDER.len() {
            let rung = LADDER[self.next_rung % LADDER.len()];
            self.next_rung += 1;
            if rung.apply(&mut self.settings, self.min_context_size) {
                return true;
            }
        }
        false
    }
}

/// What retry `step` (1 for the first) of a failed load of `configured`
/// tries: the configuration `step` rungs down the ladder, never below
/// `load_retry.min_context_size` nor a batch of `max(parallel, 32)`. `None`
/// once every resource is at its floor, or for a model of another backend.
/// Each call replays the ladder from the configuration, so the answer
/// depends on `step` alone.
pub fn degrade(configured: &ModelSpec, step: usize) -> Option<LoadAttempt> {
    let mut was = configured.backend.llama()?.clone();
    if was.gpu_layers.is_none() {
        // "All that fit": the ladder halves the count that fits now.
        was.gpu_layers = crate::memory::with_gpu_plan(configured, &was)
            .ok()
            .and_then(|planned| planned.gpu_layers)
            .filter(|layers| *layers > 0);
    }
    let mut ladder = Ladder {
        settings: was.clone(),
        min_context_size: configured.load_retry.min_context_size,
        next_rung: 0,
    };
    for _ in 0..step {
        if !ladder.step_down() {
            return None;
        }
    }
    let degraded = describe(&was, &ladder.settings);
    let mut spec = configured.clone();
    *spec.backend.llama_mut()? = ladder.settings;
    Some(LoadAttempt { spec, degraded })
}

/// What `now` gave up from `was`, for people: "context 2048, batch 256";
/// `None` when nothing changed.
fn describe(was: &LlamaSettings, now: &LlamaSettings) -> Option<String> {
    let changes: Vec<String> = [
        ("context", was.context_size, now.context_size),
        ("gpu layers", was.gpu_layers.unwrap_or(0), now.gpu_layers.unwrap_or(0)),
        ("batch", was.batch_size, now.batch_size),
    ]
    .into_iter()
    .filter(|(_, was, now)| was != now)
    .map(|(name, _, now)| format!("{name} {now}"))
    .collect();
    (!changes.is_empty()).then(|| changes.join(", "))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use llmlab_core::registry::Registry;

    use super::*;

    /// The one model of a registry holding `entry` (a flow mapping's fields).
    fn spec(entry: &str) -> ModelSpec {
        let text = format!("models:\n  - {{id: m, path: m.gguf, {entry}}}\n");
        let registry = Registry::parse(&text, Path::new("t.yaml"), Path::new("/models"), |_| None).unwrap();
        registry.get("m").unwrap().clone()
    }

    /// Context, GPU layers and batch of every step until the ladder ends.
    fn whole_ladder(configured: &ModelSpec) -> Vec<(u32, u32, u32, String)> {
        (1..)
            .map_while(|step| degrade(configured, step))
            .map(|attempt| {
                let llama = attempt.spec.backend.llama().unwrap().clone();
                let said = attempt.degraded.expect("every step gives something up");
                (llama.context_size, llama.gpu_layers.unwrap_or(0), llama.batch_size, said)
            })
            .collect()
    }

    #[test]
    fn without_gpu_layers_the_ladder_halves_context_and_batch_in_turn() {
        let configured = spec("kind: chat, backend: llama");
        let steps = whole_ladder(&configured);
        let first: Vec<(u32, u32, u32, &str)> = steps
            .iter()
            .take(3)
            .map(|(c, g, b, said)| (*c, *g, *b, said.as_str()))
            .collect();
        assert_eq!(
            first,
            [
                (2048, 0, 512, "context 2048"),
                (2048, 0, 256, "context 2048, batch 256"),
                (1024, 0, 256, "context 1024, batch 256"),
            ]
        );
        // Down to the floors (context 512, batch 32), then nothing more.
        assert_eq!(steps.len(), 3 + 4);
        let last = steps.last().unwrap();
        assert_eq!((last.0, last.1, last.2), (512, 0, 32));
        assert!(degrade(&configured, 8).is_none());
    }

    #[test]
    fn gpu_layers_are_given_up_after_the_context() {
        let configured = spec("kind: chat, backend: llama, context_size: 8192, gpu_layers: 40");
        let said: Vec<String> = whole_ladder(&configured).into_iter().take(3).map(|s| s.3).collect();
        assert_eq!(
            said,
            [
                "context 4096",
                "context 4096, gpu layers 20",
                "context 4096, gpu layers 20, batch 256"
            ]
        );
    }

    #[test]
    fn floors_come_from_the_registry_and_the_parallel_sequences() {
        let configured = spec(
            "kind: chat, backend: llama, context_size: 4096, parallel: 64, batch_size: 128, \
             load_retry: {min_context_size: 1024}",
        );
        let steps = whole_ladder(&configured);
        assert!(steps
            .iter()
            .all(|(context, _, batch, _)| *context >= 1024 && *batch >= 64));
        let last = steps.last().unwrap();
        assert_eq!((last.0, last.2), (1024, 64));
        // Already at every floor: no step at all.
        let floored = spec("kind: chat, backend: llama, context_size: 512, batch_size: 32");
        assert!(degrade(&floored, 1).is_none());
    }

    #[test]
    fn only_the_llama_settings_change() {
        let configured = spec("kind: embedding, backend: llama, pooling: cls, max_queue: 3");
        let attempt = degrade(&configured, 2).unwrap();
        let mut expected = configured.clone();
        let llama = expected.backend.llama_mut().unwrap();
        llama.context_size = 2048;
        llama.batch_size = 256;
        assert_eq!(attempt.spec, expected);
        // Step 0 is the configuration itself.
        assert_eq!(degrade(&configured, 0), Some(LoadAttempt::as_configured(&configured)));
    }

    #[test]
    fn a_model_of_another_backend_has_no_ladder() {
        assert!(degrade(&spec("kind: embedding, backend: candle"), 1).is_none());
    }
}
