//! Where a llama model's layers go on a machine with GPUs: how many layers
//! to offload (all that fit in the GPUs' free memory, unless the registry
//! says) and on which GPUs. The plan is made from the same figures as the
//! memory estimate (`memory.rs`), so what the budget reserves is what the
//! load then takes.

use llama_cpp_2::{list_llama_ggml_backend_devices, LlamaBackendDeviceType};

use llmlab_core::config;
use llmlab_core::registry::LlamaSettings;
use llmlab_core::{Error, Result};

/// One GPU as llama.cpp sees it, memory read when asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    pub name: String,
    pub free: u64,
    pub total: u64,
}

/// The GPUs llama.cpp can use, in its order (`main_gpu` counts in it);
/// empty on a CPU-only build or machine.
pub fn gpus() -> Vec<Gpu> {
    list_llama_ggml_backend_devices()
        .into_iter()
        .filter(|d| matches!(d.device_type, LlamaBackendDeviceType::Gpu))
        .map(|d| Gpu {
            name: d.description,
            free: d.memory_free as u64,
            total: d.memory_total as u64,
        })
        .collect()
}

/// What a model needs, read from its files before loading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ModelBytes {
    /// Weights, the projector's included.
    pub weights: u64,
    /// The KV cache of every parallel sequence at the configured context.
    pub kv: u64,
    /// Repeating layers (`None` when the file's metadata does not say).
    pub layers: Option<u32>,
}

/// Compute buffers and logits: a fixed floor plus a share of the weights,
/// in RAM or in GPU memory for the part that runs there.
pub(crate) const MARGIN_FIXED_BYTES: u64 = 256 * 1024 * 1024;
const MARGIN_WEIGHT_FRACTION: f64 = 0.10;

/// RAM and GPU memory of `model` with `gpu_layers` offloaded. llama.cpp
/// counts the output layer as one past the last repeating layer, so any
/// count from `layers` up offloads everything.
pub(crate) fn split(model: &ModelBytes, gpu_layers: u32) -> (u64, u64) {
    let on_gpu_share = match model.layers {
        Some(layers) if layers > 0 => f64::from(gpu_layers.min(layers)) / f64::from(layers),
        // A shape we cannot read: all or nothing.
        _ if gpu_layers > 0 => 1.0,
        _ => 0.0,
    };
    let margin = |weights: f64| MARGIN_FIXED_BYTES + (weights * MARGIN_WEIGHT_FRACTION) as u64;
    let total = model.weights + model.kv;
    if on_gpu_share == 0.0 {
        return (total + margin(model.weights as f64), 0);
    }
    let on_gpu = (total as f64 * on_gpu_share) as u64;
    let weights_on_gpu = model.weights as f64 * on_gpu_share;
    let ram = total - on_gpu + margin(model.weights as f64 - weights_on_gpu);
    (ram, on_gpu + margin(weights_on_gpu))
}

/// The layer count to hand llama.cpp (`n_gpu_layers`).
///
/// - No GPU: 0, whatever was asked.
/// - `gpu_layers` set: that many (capped at every layer).
/// - Unset: every layer when the whole model fits in [`config::budget_share`]
///   of the free memory of the GPUs it may use (`main_gpu`'s alone, or
///   all of them), else as many as fit; 0 when not even one does.
pub(crate) fn plan_layers(settings: &LlamaSettings, model: &ModelBytes, gpus: &[Gpu]) -> Result<u32> {
    let usable: Vec<&Gpu> = match settings.main_gpu {
        _ if gpus.is_empty() => return Ok(0),
        Some(index) => vec![gpus.get(index as usize).ok_or_else(|| {
            Error::unavailable(format!(
                "main_gpu is {index}, but this machine has {} GPU{} (numbered from 0)",
                gpus.len(),
                if gpus.len() == 1 { "" } else { "s" }
            ))
        })?],
        None => gpus.iter().collect(),
    };
    let every_layer = model.layers.map_or(i32::MAX as u32, |layers| layers + 1);
    if let Some(asked) = settings.gpu_layers {
        return Ok(asked.min(every_layer));
    }
    let room = config::budget_share(usable.iter().map(|g| g.free).sum());
    let fits = |layers: u32| split(model, layers).1 <= room;
    if fits(every_layer) {
        return Ok(every_layer);
    }
    let Some(layers) = model.layers else {
        return Ok(0);
    };
    Ok((1..layers).rev().find(|&n| fits(n)).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn gpu(free: u64) -> Gpu {
        Gpu {
            name: "fake GPU".into(),
            free,
            total: free,
        }
    }

    /// An 8B-shaped Q4_K_M model: 4.6 GiB of weights, 32 layers, 0.5 GiB KV.
    fn eight_b() -> ModelBytes {
        ModelBytes {
            weights: 46 * GIB / 10,
            kv: GIB / 2,
            layers: Some(32),
        }
    }

    fn settings(gpu_layers: Option<u32>, main_gpu: Option<u32>) -> LlamaSettings {
        LlamaSettings {
            gpu_layers,
            main_gpu,
            ..LlamaSettings::default()
        }
    }

    #[test]
    fn without_a_gpu_nothing_is_offloaded_even_when_asked() {
        assert_eq!(plan_layers(&settings(None, None), &eight_b(), &[]).unwrap(), 0);
        assert_eq!(plan_layers(&settings(Some(99), None), &eight_b(), &[]).unwrap(), 0);
    }

    #[test]
    fn a_model_that_fits_goes_whole_output_layer_included() {
        let plan = plan_layers(&settings(None, None), &eight_b(), &[gpu(80 * GIB)]).unwrap();
        assert_eq!(plan, 33);
        let (ram, vram) = split(&eight_b(), plan);
        assert!(vram > eight_b().weights + eight_b().kv, "{vram}");
        assert_eq!(ram, MARGIN_FIXED_BYTES, "only the fixed margin stays in RAM");
    }

    #[test]
    fn a_model_too_large_gets_as_many_layers_as_fit_in_the_budget_share() {
        let model = eight_b();
        let small = gpu(3 * GIB);
        let plan = plan_layers(&settings(None, None), &model, std::slice::from_ref(&small)).unwrap();
        assert!(plan > 0 && plan < 32, "{plan}");
        let room = config::budget_share(small.free);
        assert!(split(&model, plan).1 <= room);
        assert!(split(&model, plan + 1).1 > room, "one more layer would not fit");
    }

    #[test]
    fn a_gpu_too_small_for_one_layer_gets_none() {
        assert_eq!(plan_layers(&settings(None, None), &eight_b(), &[gpu(GIB / 4)]).unwrap(), 0);
    }

    #[test]
    fn free_memory_of_every_gpu_counts_unless_main_gpu_picks_one() {
        let two = [gpu(4 * GIB), gpu(4 * GIB)];
        assert_eq!(plan_layers(&settings(None, None), &eight_b(), &two).unwrap(), 33);
        let one = plan_layers(&settings(None, Some(1)), &eight_b(), &two).unwrap();
        assert!(one < 32, "{one}");
    }

    #[test]
    fn a_main_gpu_past_the_last_is_a_clear_error() {
        let err = plan_layers(&settings(None, Some(2)), &eight_b(), &[gpu(GIB), gpu(GIB)]).unwrap_err();
        assert_eq!(err.message, "main_gpu is 2, but this machine has 2 GPUs (numbered from 0)");
    }

    #[test]
    fn asked_layers_are_kept_but_capped_at_every_layer() {
        let plan = |n| plan_layers(&settings(Some(n), None), &eight_b(), &[gpu(GIB)]).unwrap();
        assert_eq!(plan(10), 10, "the registry's count is not second-guessed");
        assert_eq!(plan(999), 33);
        assert_eq!(plan(0), 0);
    }

    #[test]
    fn a_model_of_unknown_shape_is_offloaded_whole_or_not_at_all() {
        let unknown = ModelBytes {
            layers: None,
            ..eight_b()
        };
        assert!(plan_layers(&settings(None, None), &unknown, &[gpu(80 * GIB)]).unwrap() > 0);
        assert_eq!(plan_layers(&settings(None, None), &unknown, &[gpu(3 * GIB)]).unwrap(), 0);
    }

    #[test]
    fn the_split_moves_weights_and_cache_from_ram_to_the_gpu_in_proportion() {
        let model = eight_b();
        let (cpu_ram, none) = split(&model, 0);
        assert_eq!(none, 0);
        let (half_ram, half_vram) = split(&model, 16);
        let whole = model.weights + model.kv;
        assert_eq!(half_vram - (MARGIN_FIXED_BYTES + (model.weights as f64 * 0.5 * 0.1) as u64), whole / 2);
        assert!(half_ram < cpu_ram);
    }
}
