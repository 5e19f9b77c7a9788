//! The settings only one backend reads, held apart from the fields every
//! model has ([`super::ModelSpec`]), so that a model carries only what its
//! backend can use and a backend takes its settings in one place.
//!
//! The registry file keeps writing them flat beside `backend:`;
//! `build.rs` checks that each belongs to the model's backend.

use serde::{Deserialize, Serialize};

use super::spec::BackendKind;
use crate::config;
use crate::stream::{ReasoningFormat, ToolCallFormat};

/// A model's backend and the settings that only it reads. Serialized flat,
/// as the registry writes it: `backend: llama` beside its settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum BackendSettings {
    Llama(LlamaSettings),
    Candle(CandleSettings),
}

impl BackendSettings {
    pub fn kind(&self) -> BackendKind {
        match self {
            Self::Llama(_) => BackendKind::Llama,
            Self::Candle(_) => BackendKind::Candle,
        }
    }

    /// The llama.cpp settings; `None` for a model of another backend.
    pub fn llama(&self) -> Option<&LlamaSettings> {
        match self {
            Self::Llama(settings) => Some(settings),
            Self::Candle(_) => None,
        }
    }

    pub fn llama_mut(&mut self) -> Option<&mut LlamaSettings> {
        match self {
            Self::Llama(settings) => Some(settings),
            Self::Candle(_) => None,
        }
    }

    /// The candle settings; `None` for a model of another backend.
    pub fn candle(&self) -> Option<&CandleSettings> {
        match self {
            Self::Candle(settings) => Some(settings),
            Self::Llama(_) => None,
        }
    }

    pub fn candle_mut(&mut self) -> Option<&mut CandleSettings> {
        match self {
            Self::Candle(settings) => Some(settings),
            Self::Llama(_) => None,
        }
    }
}

/// How llama.cpp runs a GGUF model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LlamaSettings {
    /// Tokens one sequence may hold, prompt and answer together.
    pub context_size: u32,
    pub threads: u32,
    /// Tokens one decode call takes in.
    pub batch_size: u32,
    /// Sequences decoded together; each may use the whole `context_size`.
    pub parallel: u32,
    /// Layers offloaded to the GPU (0: the CPU runs the whole model;
    /// `None`: all that fit in the GPUs' free memory when the model loads,
    /// none on a machine or build without a GPU).
    pub gpu_layers: Option<u32>,
    /// The GPU that holds the whole model (`None`: layers split over every
    /// GPU in proportion to their free memory, llama.cpp's rule).
    pub main_gpu: Option<u32>,
    /// Jinja chat template that replaces the one in the model file.
    pub chat_template: Option<String>,
    /// How the model marks reasoning; `None` = detect from the chat template.
    pub reasoning_format: Option<ReasoningFormat>,
    /// How the model writes tool calls; `None` = detect from the chat template.
    pub tool_call_format: Option<ToolCallFormat>,
    /// Every request decoded as if alone (a request may still choose):
    /// answers never depend on what else runs, at a cost in throughput.
    pub batch_invariant: bool,
    /// The vision projector (llama.cpp's mmproj GGUF), absolute: the model
    /// then reads images in chat messages.
    pub mmproj: Option<std::path::PathBuf>,
    /// The most tokens one image may become (`None`: the projector's own
    /// limit; only dynamic-resolution projectors read it).
    pub image_max_tokens: Option<u32>,
}

impl Default for LlamaSettings {
    /// Every setting at its [`config`] default: what a registry entry that
    /// sets none of them, or a GGUF file found in the models folder, gets.
    fn default() -> Self {
        Self {
            context_size: config::DEFAULT_CONTEXT_SIZE,
            threads: config::default_threads(),
            batch_size: config::DEFAULT_BATCH_SIZE,
            parallel: config::DEFAULT_PARALLEL,
            gpu_layers: None,
            main_gpu: None,
            chat_template: None,
            reasoning_format: None,
            tool_call_format: None,
            batch_invariant: false,
            mmproj: None,
            image_max_tokens: None,
        }
    }
}

/// How candle runs a safetensors model. The BERT encoder reads everything
/// it needs from the model folder; an image model may name its pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CandleSettings {
    /// Image models: the pipeline to build, where it is not (or not
    /// rightly) the one the folder's `model_index.json` names; with it, a
    /// folder needs no `model_index.json`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architecture: Option<ImageArchitecture>,
}

/// The image pipelines a diffusers folder can be read as. Inpainting
/// follows from the UNet's input channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageArchitecture {
    /// SD 1.x and 2.x: one CLIP text encoder.
    StableDiffusion,
    /// SDXL (and Turbo): two text encoders, pooled text and size conditions.
    StableDiffusionXl,
    /// SD3 and 3.5: an MMDiT transformer on two CLIP encoders and T5,
    /// sampled as a rectified flow.
    #[serde(rename = "stable-diffusion-3")]
    StableDiffusion3,
    /// Flux.1 (schnell, dev): a rectified-flow transformer on CLIP's pooled
    /// text and T5.
    Flux,
}

impl ImageArchitecture {
    /// The names the registry accepts, for error messages.
    pub const NAMES: &'static str = "stable-diffusion, stable-diffusion-xl, stable-diffusion-3 or flux";
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::registry::Registry;

    /// `llmlab models list --json` prints specs: they keep the registry's
    /// flat shape, each model with only its own backend's settings.
    #[test]
    fn a_spec_serializes_flat_as_the_registry_writes_it() {
        let text = "models:\n  - {id: chat, kind: chat, backend: llama, path: c.gguf, context_size: 2048}\n  \
                    - {id: mini, kind: embedding, backend: candle, path: mini, pooling: cls}\n";
        let registry = Registry::parse(text, Path::new("t.yaml"), Path::new("/m"), |_| None).unwrap();
        let json = serde_json::to_value(&registry.models).unwrap();
        let (chat, mini) = (&json[0], &json[1]);
        assert_eq!(chat["backend"], "llama");
        assert_eq!(chat["context_size"], 2048);
        assert_eq!(chat["pooling"], serde_json::Value::Null);
        assert_eq!(chat["matryoshka"], false);
        assert_eq!(mini["backend"], "candle");
        assert_eq!(mini["pooling"], "cls");
        assert!(mini.get("context_size").is_none(), "{mini}");
        assert_eq!(mini["path"], "/m/mini");
    }
}
