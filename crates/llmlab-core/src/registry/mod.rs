//! The model registry: which models exist, where their files are, and how
//! to run them.

mod entry;
mod env_overrides;
mod file;
mod scan;
mod source;
mod spec;

pub use file::{Registry, RegistryError};
pub use scan::discover_gguf_models;
pub use spec::{BackendKind, ModelKind, ModelSource, ModelSpec, PypiPart, SourceFile};
