//! What a request needs a model for, and which kinds of model can do it.

use crate::registry::{ModelKind, ModelSpec, Registry};
use crate::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    Chat,
    Embedding,
    Image,
    /// Loading by name (admin, preload): any kind will do.
    Any,
}

impl Purpose {
    /// The model used when a request names none.
    pub(super) fn default_model(self, registry: &Registry) -> Result<String> {
        match self {
            Self::Chat | Self::Any => Ok(registry.default_model.clone()),
            Self::Embedding => registry
                .models
                .iter()
                .find(|m| m.kind == ModelKind::Embedding)
                .map(|m| m.id.clone())
                .ok_or_else(|| Error::invalid_param("model", "no embedding model is registered")),
            Self::Image => registry
                .models
                .iter()
                .find(|m| m.kind == ModelKind::Image)
                .map(|m| m.id.clone())
                .ok_or_else(|| Error::invalid_param("model", "no image model is registered")),
        }
    }

    /// Refuse a model of the wrong kind, naming what it is.
    pub(super) fn check(self, spec: &ModelSpec) -> Result<()> {
        let (fits, verb) = match self {
            Self::Chat => (matches!(spec.kind, ModelKind::Chat | ModelKind::VisionLanguage), "chat"),
            Self::Embedding => (spec.kind == ModelKind::Embedding, "make embeddings"),
            Self::Image => (spec.kind == ModelKind::Image, "make images"),
            Self::Any => (true, ""),
        };
        if fits {
            return Ok(());
        }
        Err(Error::invalid_param(
            "model",
            format!(
                "model '{}' is a {} model and cannot {verb}",
                spec.id,
                spec.kind.as_str()
            ),
        ))
    }
}
