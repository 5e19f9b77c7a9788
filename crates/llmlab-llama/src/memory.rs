//! Memory a GGUF model will need, estimated before loading it from the
//! file's metadata: the weights (file size), the KV cache for the configured
//! context (f16 keys and values for every layer), and a margin for llama.cpp's
//! compute buffers.

use llama_cpp_2::gguf::GgufContext;

use llmlab_core::registry::ModelSpec;
use llmlab_core::{Error, Result};

/// Compute buffers and logits: a fixed floor plus a share of the weights.
const MARGIN_FIXED_BYTES: u64 = 256 * 1024 * 1024;
const MARGIN_WEIGHT_FRACTION: f64 = 0.10;
const F16_BYTES: u64 = 2;

pub fn estimate_bytes(spec: &ModelSpec) -> Result<u64> {
    let weights = std::fs::metadata(&spec.path)
        .map_err(|e| Error::unavailable(format!("model file for '{}' at {}: {e}", spec.id, spec.path.display())))?
        .len();
    let kv = GgufContext::from_file(&spec.path).map_or(0, |gguf| kv_cache_bytes(&gguf, spec.context_size));
    Ok(weights + kv + MARGIN_FIXED_BYTES + (weights as f64 * MARGIN_WEIGHT_FRACTION) as u64)
}

fn kv_cache_bytes(gguf: &GgufContext, context: u32) -> u64 {
    let Some(arch) = string(gguf, "general.architecture") else {
        return 0;
    };
    let key = |name: &str| format!("{arch}.{name}");
    let layers = number(gguf, &key("block_count"));
    let heads = number(gguf, &key("attention.head_count"));
    let kv_heads = number(gguf, &key("attention.head_count_kv")).or(heads);
    let width = number(gguf, &key("embedding_length"));
    let head_dim = number(gguf, &key("attention.key_length")).or_else(|| Some(width? / heads.filter(|h| *h > 0)?));
    match (layers, kv_heads, head_dim) {
        (Some(layers), Some(kv_heads), Some(head_dim)) => {
            2 * layers * kv_heads * head_dim * u64::from(context) * F16_BYTES
        }
        _ => 0,
    }
}

fn string<'a>(gguf: &'a GgufContext, key: &str) -> Option<&'a str> {
    let idx = gguf.find_key(key);
    (idx >= 0).then(|| gguf.val_str(idx)).flatten()
}

/// A scalar u32 (some models store per-layer arrays; those are skipped).
fn number(gguf: &GgufContext, key: &str) -> Option<u64> {
    let idx = gguf.find_key(key);
    (idx >= 0 && gguf.kv_type(idx) == llama_cpp_sys_2::GGUF_TYPE_UINT32).then(|| u64::from(gguf.val_u32(idx)))
}
