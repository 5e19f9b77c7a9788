//! Reading a BERT checkpoint: `config.json` fields and the named tensors of
//! `model.safetensors`, as plain row-major f32.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

/// The `config.json` fields the encoder reads (Hugging Face BERT names).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_activation")]
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_activation() -> String {
    "gelu".to_owned()
}
fn default_type_vocab() -> usize {
    2
}
fn default_layer_norm_eps() -> f64 {
    1e-12
}

impl BertConfig {
    /// Reject shapes the encoder cannot run, with the reason.
    pub fn check(&self) -> Result<(), String> {
        if self.hidden_size.checked_rem(self.num_attention_heads) != Some(0) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if let Some(kind) = self.position_embedding_type.as_deref() {
            if kind != "absolute" {
                return Err(format!(
                    "position_embedding_type '{kind}' is not supported (only 'absolute')"
                ));
            }
        }
        if self.type_vocab_size == 0 {
            return Err("type_vocab_size is 0".to_owned());
        }
        Ok(())
    }
}

/// The checkpoint's tensors by name, taken one at a time.
pub(crate) struct Checkpoint {
    tensors: HashMap<String, Tensor>,
    /// `""` or the model-type prefix some checkpoints put on every name
    /// (`bert.`).
    prefix: String,
}

const WORD_EMBEDDINGS: &str = "embeddings.word_embeddings.weight";

impl Checkpoint {
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self, String> {
        let tensors = candle_core::safetensors::load_buffer(bytes, &Device::Cpu).map_err(|e| e.to_string())?;
        let prefix = tensors
            .keys()
            .find_map(|name| name.strip_suffix(WORD_EMBEDDINGS))
            .ok_or_else(|| format!("no tensor named like '{WORD_EMBEDDINGS}'"))?
            .to_owned();
        Ok(Self { tensors, prefix })
    }

    /// The tensor `name` (after the prefix) as f32, checked to be `shape`.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, String> {
        let full = format!("{}{name}", self.prefix);
        let tensor = self
            .tensors
            .remove(&full)
            .ok_or_else(|| format!("tensor '{full}' is missing"))?;
        if tensor.dims() != shape {
            return Err(format!("tensor '{full}' is {:?}, expected {shape:?}", tensor.dims()));
        }
        tensor
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| format!("tensor '{full}': {e}"))
    }

    /// A layer norm's scale and shift, under either naming (`weight`/`bias`
    /// or the older `gamma`/`beta`).
    pub fn take_norm(&mut self, name: &str, width: usize) -> Result<(Vec<f32>, Vec<f32>), String> {
        if self.tensors.contains_key(&format!("{}{name}.gamma", self.prefix)) {
            Ok((
                self.take(&format!("{name}.gamma"), &[width])?,
                self.take(&format!("{name}.beta"), &[width])?,
            ))
        } else {
            Ok((
                self.take(&format!("{name}.weight"), &[width])?,
                self.take(&format!("{name}.bias"), &[width])?,
            ))
        }
    }
}
