//! Memory a GGUF model will need, estimated before loading it from the
//! file's metadata: the weights (file size), the KV cache for the configured
//! context of every parallel sequence (f16 keys and values for every layer),
//! and a margin for llama.cpp's compute buffers. When layers are offloaded
//! to a GPU, their share of weights and KV cache (and a compute buffer) is
//! GPU memory instead of RAM (`gpu.rs` plans and splits).

use llama_cpp_2::gguf::GgufContext;

use llmlab_core::registry::{LlamaSettings, ModelSpec};
use llmlab_core::service::MemoryEstimate;
use llmlab_core::{Error, Result};

use crate::gpu::{self, ModelBytes, MARGIN_FIXED_BYTES};

const F16_BYTES: u64 = 2;

pub fn estimate_memory(spec: &ModelSpec) -> Result<MemoryEstimate> {
    let settings = crate::settings::llama_settings(spec)?;
    let model = model_bytes(spec, settings)?;
    let gpus = gpu::gpus();
    let (ram, vram) = gpu::split(&model, gpu::plan_layers(settings, &model, &gpus)?);
    Ok(MemoryEstimate { ram, vram })
}

/// `settings` with the GPU layers decided: the count the registry gave, or
/// all that fit in the GPUs' free memory now (see [`gpu::plan_layers`]).
/// Called where a load starts; on a machine without a GPU nothing is read.
pub(crate) fn with_gpu_plan(spec: &ModelSpec, settings: &LlamaSettings) -> Result<LlamaSettings> {
    let gpus = gpu::gpus();
    let layers = if gpus.is_empty() {
        0
    } else {
        gpu::plan_layers(settings, &model_bytes(spec, settings)?, &gpus)?
    };
    if settings.gpu_layers.is_none() && !gpus.is_empty() {
        tracing::info!(model = %spec.id, gpu_layers = layers, gpus = gpus.len(), "GPU layers planned from free GPU memory");
    }
    Ok(LlamaSettings {
        gpu_layers: Some(layers),
        ..settings.clone()
    })
}

/// Weights (the projector's too), KV cache and layer count of `spec`.
fn model_bytes(spec: &ModelSpec, settings: &LlamaSettings) -> Result<ModelBytes> {
    let weights = std::fs::metadata(&spec.path)
        .map_err(|e| {
            tracing::warn!(model = %spec.id, path = %spec.path.display(), error = %e, "cannot read the model file");
            Error::unavailable(format!("cannot read the model file of '{}': {}", spec.id, e.kind()))
        })?
        .len();
    // The projector's weights, and room for its compute graph.
    let projector = settings
        .mmproj
        .as_ref()
        .and_then(|path| std::fs::metadata(path).ok())
        .map_or(0, |m| m.len() + MARGIN_FIXED_BYTES);
    let shape = GgufContext::from_file(&spec.path).and_then(|gguf| Shape::read(&gguf));
    Ok(ModelBytes {
        weights: weights + projector,
        kv: shape.map_or(0, |s| {
            s.kv_cache_bytes(settings.context_size.saturating_mul(settings.parallel))
        }),
        layers: shape.and_then(|s| u32::try_from(s.layers).ok()),
    })
}

/// Free memory of the GPUs llama.cpp can use, now (other processes' use
/// already taken off); `None` on a CPU-only build or machine.
pub fn gpu_memory_free() -> Option<u64> {
    let gpus = gpu::gpus();
    (!gpus.is_empty()).then(|| gpus.iter().map(|g| g.free).sum())
}

/// What the KV cache size depends on.
#[derive(Debug, Clone, Copy)]
struct Shape {
    layers: u64,
    kv_heads: u64,
    head_dim: u64,
}

impl Shape {
    fn read(gguf: &GgufContext) -> Option<Self> {
        let arch = string(gguf, "general.architecture")?;
        let key = |name: &str| format!("{arch}.{name}");
        let heads = number(gguf, &key("attention.head_count"));
        let width = number(gguf, &key("embedding_length"));
        Some(Self {
            layers: number(gguf, &key("block_count"))?,
            kv_heads: number(gguf, &key("attention.head_count_kv")).or(heads)?,
            head_dim: number(gguf, &key("attention.key_length"))
                .or_else(|| Some(width? / heads.filter(|h| *h > 0)?))?,
        })
    }

    fn kv_cache_bytes(&self, context: u32) -> u64 {
        2 * self.layers * self.kv_heads * self.head_dim * u64::from(context) * F16_BYTES
    }
}

pub(crate) fn string<'a>(gguf: &'a GgufContext, key: &str) -> Option<&'a str> {
    let idx = gguf.find_key(key);
    (idx >= 0).then(|| gguf.val_str(idx)).flatten()
}

/// A scalar u32 (some models store per-layer arrays; those are skipped).
pub(crate) fn number(gguf: &GgufContext, key: &str) -> Option<u64> {
    let idx = gguf.find_key(key);
    (idx >= 0 && gguf.kv_type(idx) == llama_cpp_sys_2::GGUF_TYPE_UINT32).then(|| u64::from(gguf.val_u32(idx)))
}
