//! Memory a GGUF model will need, estimated before loading it from the
//! file's metadata: the weights (file size), the KV cache for the configured
//! context of every parallel sequence (f16 keys and values for every layer),
//! and a margin for llama.cpp's compute buffers. When layers are offloaded
//! to a GPU, their share of weights and KV cache (and a compute buffer) is
//! GPU memory instead of RAM.

use llama_cpp_2::gguf::GgufContext;
use llama_cpp_2::{list_llama_ggml_backend_devices, LlamaBackendDeviceType};

use llmlab_core::registry::ModelSpec;
use llmlab_core::service::MemoryEstimate;
use llmlab_core::{Error, Result};

/// Compute buffers and logits: a fixed floor plus a share of the weights.
const MARGIN_FIXED_BYTES: u64 = 256 * 1024 * 1024;
const MARGIN_WEIGHT_FRACTION: f64 = 0.10;
const F16_BYTES: u64 = 2;

pub fn estimate_memory(spec: &ModelSpec) -> Result<MemoryEstimate> {
    let weights = std::fs::metadata(&spec.path)
        .map_err(|e| {
            tracing::warn!(model = %spec.id, path = %spec.path.display(), error = %e, "cannot read the model file");
            Error::unavailable(format!("cannot read the model file of '{}': {}", spec.id, e.kind()))
        })?
        .len();
    let settings = crate::settings::llama_settings(spec)?;
    // The projector's weights, and room for its compute graph.
    let projector = settings
        .mmproj
        .as_ref()
        .and_then(|path| std::fs::metadata(path).ok())
        .map_or(0, |m| m.len() + MARGIN_FIXED_BYTES);
    let weights = weights + projector;
    let shape = GgufContext::from_file(&spec.path).and_then(|gguf| Shape::read(&gguf));
    let kv = shape.map_or(0, |s| {
        s.kv_cache_bytes(settings.context_size.saturating_mul(settings.parallel))
    });
    let margin = MARGIN_FIXED_BYTES + (weights as f64 * MARGIN_WEIGHT_FRACTION) as u64;
    let offloaded = match shape {
        Some(shape) if settings.gpu_layers > 0 && gpu_memory_total().is_some() => {
            f64::from(settings.gpu_layers.min(shape.layers as u32)) / shape.layers.max(1) as f64
        }
        _ => 0.0,
    };
    if offloaded == 0.0 {
        return Ok(MemoryEstimate::ram(weights + kv + margin));
    }
    let on_gpu = ((weights + kv) as f64 * offloaded) as u64;
    Ok(MemoryEstimate {
        ram: weights + kv - on_gpu + margin,
        vram: on_gpu + MARGIN_FIXED_BYTES,
    })
}

/// Total memory of the GPUs llama.cpp can use; `None` on a CPU-only build
/// or machine.
pub fn gpu_memory_total() -> Option<u64> {
    let total: u64 = list_llama_ggml_backend_devices()
        .iter()
        .filter(|d| matches!(d.device_type, LlamaBackendDeviceType::Gpu))
        .map(|d| d.memory_total as u64)
        .sum();
    (total > 0).then_some(total)
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
