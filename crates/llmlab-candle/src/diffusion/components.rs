//! Reading the parts of a diffusers folder that every pipeline family
//! shares: its JSON configs, its weight files (whole or sharded), its CLIP
//! text towers and its VAE. Errors name the file at fault relative to the
//! folder, never the server's path.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;

use super::clip_tokenizer::ClipTokenizer;
use super::configs::{self, read_json};
use super::text_encoder::{TextEncoder, TextEncoderConfig};
use super::vae::Vae;

/// A tokenizer and the CLIP text encoder it feeds.
pub(crate) struct TextTower {
    pub tokenizer: ClipTokenizer,
    pub encoder: TextEncoder,
    pub width: usize,
    /// Width of the pooled (projected) embedding.
    pub pooled_width: usize,
}

/// A diffusers folder and the device its networks go to.
pub(crate) struct Folder<'a> {
    pub path: &'a Path,
    pub device: Device,
}

impl Folder<'_> {
    /// The first of `names` the folder lacks, as an error.
    pub fn require(&self, names: &[&str]) -> Result<(), String> {
        match names.iter().find(|name| !self.path.join(name).is_file()) {
            Some(name) => Err(format!("the diffusers folder lacks {name}")),
            None => Ok(()),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.path.join(name).exists()
    }

    pub fn config(&self, name: &str) -> Result<Value, String> {
        read_json(&self.path.join(name)).map_err(|e| format!("{name}: {e}"))
    }

    /// Every tensor of `component/<file>.safetensors` (or its fp16
    /// variant, or the shards its `.index.json` lists), on the device as
    /// stored.
    pub fn tensors(&self, component: &str, file: &str) -> Result<HashMap<String, Tensor>, String> {
        let mut tensors = HashMap::new();
        for path in weight_files(self.path, component, file)? {
            let shown = path.strip_prefix(self.path).unwrap_or(&path).display().to_string();
            let part = candle_core::safetensors::load(&path, &self.device).map_err(|e| format!("{shown}: {e}"))?;
            tensors.extend(part);
        }
        Ok(tensors)
    }

    /// `component/<file>` as a VarBuilder handing out F32 tensors.
    pub fn weights(&self, component: &str, file: &str) -> Result<VarBuilder<'static>, String> {
        Ok(VarBuilder::from_tensors(
            self.tensors(component, file)?,
            DType::F32,
            &self.device,
        ))
    }

    /// `text_encoder<suffix>/` and `tokenizer<suffix>/`: a CLIP text model.
    pub fn clip_tower(&self, suffix: &str) -> Result<TextTower, String> {
        let component = format!("text_encoder{suffix}");
        let encoder_config = TextEncoderConfig::from_json(&self.config(&format!("{component}/config.json"))?)
            .map_err(|e| format!("{component}/config.json: {e}"))?;
        let tokenizer = ClipTokenizer::load(&self.path.join(format!("tokenizer{suffix}")))
            .map_err(|e| format!("tokenizer{suffix}: {e}"))?;
        let encoder = TextEncoder::load(self.weights(&component, "model")?, &encoder_config)
            .map_err(|e| format!("{component}/model.safetensors: {e}"))?;
        Ok(TextTower {
            tokenizer,
            width: encoder_config.width(),
            pooled_width: encoder.pooled_width(),
            encoder,
        })
    }

    /// `vae/`, its decoder in `decoder_dtype`.
    pub fn vae(&self, decoder_dtype: DType) -> Result<Vae, String> {
        let shape = configs::vae(&self.config("vae/config.json")?).map_err(|e| format!("vae/config.json: {e}"))?;
        Vae::load(&self.weights("vae", "diffusion_pytorch_model")?, &shape, decoder_dtype)
            .map_err(|e| format!("vae/diffusion_pytorch_model.safetensors: {e}"))
    }
}

/// The files holding `component/<file>`: one `.safetensors` (or
/// `.fp16.safetensors`), or the shards named by its `.safetensors.index.json`.
fn weight_files(folder: &Path, component: &str, file: &str) -> Result<Vec<PathBuf>, String> {
    let directory = folder.join(component);
    for name in [format!("{file}.safetensors"), format!("{file}.fp16.safetensors")] {
        if directory.join(&name).is_file() {
            return Ok(vec![directory.join(name)]);
        }
    }
    for name in [
        format!("{file}.safetensors.index.json"),
        format!("{file}.safetensors.index.fp16.json"),
    ] {
        let index = directory.join(&name);
        if !index.is_file() {
            continue;
        }
        let shown = format!("{component}/{name}");
        let json = read_json(&index).map_err(|e| format!("{shown}: {e}"))?;
        let shards: BTreeSet<&str> = json
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| format!("{shown}: weight_map is missing"))?
            .values()
            .filter_map(Value::as_str)
            .collect();
        return shards
            .into_iter()
            .map(|shard| {
                // A shard name is a plain file name beside the index.
                let path = directory.join(shard);
                if shard.contains('/') || shard.contains("..") || !path.is_file() {
                    Err(format!("the diffusers folder lacks {component}/{shard}"))
                } else {
                    Ok(path)
                }
            })
            .collect();
    }
    Err(format!("the diffusers folder lacks {component}/{file}.safetensors"))
}
