//! The model registry: which models exist, where their files are, and how
//! to run them.

mod backend_settings;
mod build;
mod entry;
mod env_overrides;
mod file;
mod scan;
mod source;
mod spec;

pub use backend_settings::{BackendSettings, CandleSettings, ImageArchitecture, LlamaSettings};
pub use file::{Registry, RegistryError};
pub use scan::discover_gguf_models;
pub use spec::{BackendKind, EmbeddingSettings, ModelKind, ModelSource, ModelSpec, PypiPart, SourceFile};
