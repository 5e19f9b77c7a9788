//! Reading and validating the registry file (`models/models.yaml`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::build::build_spec;
use super::entry::ModelEntry;
use super::env_overrides::apply_env_overrides;
use super::spec::ModelSpec;

/// A registry problem, naming the file, the model and the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}{}{message}", file.display(), model.as_ref().map(|m| format!(": model '{m}'")).unwrap_or_default(), field.as_ref().map(|f| format!(": field '{f}'")).unwrap_or_default())]
pub struct RegistryError {
    pub file: PathBuf,
    pub model: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

impl RegistryError {
    pub(super) fn new(file: &Path, model: Option<&str>, field: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            model: model.map(str::to_owned),
            field: field.map(str::to_owned),
            message: format!(": {}", message.into()),
        }
    }
}

/// The file as written; every optional field falls back to [`config`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistryFile {
    default_model: Option<String>,
    #[serde(default)]
    models: Vec<ModelEntry>,
}

/// The validated registry.
#[derive(Debug, Clone)]
pub struct Registry {
    pub file: PathBuf,
    pub default_model: String,
    pub models: Vec<ModelSpec>,
}

impl Registry {
    /// Load `file`, apply environment overrides and validate. Relative model
    /// paths are resolved against `models_dir`.
    /// GGUF files in `models_dir` that the file does not list are added as
    /// chat models with default settings.
    pub fn load(file: &Path, models_dir: &Path) -> Result<Self, RegistryError> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| RegistryError::new(file, None, None, format!("cannot read: {e}")))?;
        let mut registry = Self::parse(&text, file, models_dir, |key| std::env::var(key).ok())?;
        let found = super::scan::discover_gguf_models(models_dir, &registry.models);
        registry.models.extend(found);
        Ok(registry)
    }

    /// Parse registry text. `env` looks up environment variables (injected
    /// so tests need not touch the process environment).
    pub fn parse(
        text: &str,
        file: &Path,
        models_dir: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, RegistryError> {
        let raw: RegistryFile = serde_yaml::from_str(text)
            .map_err(|e| RegistryError::new(file, None, None, format!("invalid YAML: {e}")))?;
        let mut seen = HashSet::new();
        let mut models = Vec::with_capacity(raw.models.len());
        for entry in raw.models {
            if entry.id.trim().is_empty() {
                return Err(RegistryError::new(
                    file,
                    None,
                    Some("id"),
                    "model ids must not be empty",
                ));
            }
            if !seen.insert(entry.id.clone()) {
                return Err(RegistryError::new(
                    file,
                    Some(&entry.id),
                    Some("id"),
                    "duplicate model id",
                ));
            }
            let id = entry.id.clone();
            let entry = apply_env_overrides(entry, &env)
                .map_err(|(key, msg)| RegistryError::new(file, Some(&id), Some(&key), msg))?;
            models.push(build_spec(entry, file, models_dir, &env)?);
        }
        if models.is_empty() {
            return Err(RegistryError::new(
                file,
                None,
                Some("models"),
                "the registry lists no models",
            ));
        }
        let default_model = raw.default_model.unwrap_or_else(|| models[0].id.clone());
        if !models.iter().any(|m| m.id == default_model) {
            return Err(RegistryError::new(
                file,
                None,
                Some("default_model"),
                format!("'{default_model}' is not a model of this registry"),
            ));
        }
        Ok(Self {
            file: file.to_path_buf(),
            default_model,
            models,
        })
    }

    pub fn get(&self, id: &str) -> Option<&ModelSpec> {
        self.models.iter().find(|m| m.id == id)
    }

    /// The model for `id`, or a not-found error listing what exists.
    pub fn require(&self, id: &str) -> crate::Result<&ModelSpec> {
        self.get(id).ok_or_else(|| {
            let known: Vec<&str> = self.models.iter().map(|m| m.id.as_str()).collect();
            crate::Error::not_found(format!(
                "model '{}' does not exist; known models: {}",
                crate::text::echo(id),
                known.join(", ")
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    const GOOD: &str = r#"
default_model: small
models:
  - id: small
    kind: chat
    backend: llama
    path: small.gguf
    context_size: 2048
    sampling: { temperature: 0.2 }
  - id: abs
    kind: chat
    backend: llama
    path: /opt/m.gguf
    reasoning_format: think_tags
    tool_call_format: hermes
"#;

    fn parse(text: &str) -> Result<Registry, RegistryError> {
        parse_env(text, &[])
    }

    fn parse_env(text: &str, vars: &[(&str, &str)]) -> Result<Registry, RegistryError> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Registry::parse(text, Path::new("models.yaml"), Path::new("/models"), move |k| {
            vars.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
        })
    }

    /// The llama settings of model `id`, which must be a llama model.
    fn llama<'r>(registry: &'r Registry, id: &str) -> &'r crate::registry::LlamaSettings {
        registry.get(id).unwrap().backend.llama().expect("a llama model")
    }

    #[test]
    fn resolves_defaults_and_paths() {
        let r = parse(GOOD).unwrap();
        assert_eq!(r.default_model, "small");
        let small = r.get("small").unwrap();
        assert_eq!(small.path, PathBuf::from("/models/small.gguf"));
        assert_eq!(llama(&r, "small").context_size, 2048);
        assert_eq!(llama(&r, "small").batch_size, config::DEFAULT_BATCH_SIZE);
        assert_eq!(small.sampling.temperature, Some(0.2));
        assert_eq!(r.get("abs").unwrap().path, PathBuf::from("/opt/m.gguf"));
        assert_eq!(llama(&r, "abs").context_size, config::DEFAULT_CONTEXT_SIZE);
        assert_eq!(
            llama(&r, "abs").reasoning_format,
            Some(crate::stream::ReasoningFormat::ThinkTags)
        );
        assert_eq!(llama(&r, "small").tool_call_format, None);
    }

    #[test]
    fn env_names_an_image_models_architecture_and_a_llama_models_gpu() {
        let text = "models:\n  - {id: pic, kind: image, backend: candle, path: pic}\n";
        let r = parse_env(text, &[("LLMLAB_MODEL__PIC__ARCHITECTURE", "stable-diffusion-xl")]).unwrap();
        let candle = r.get("pic").unwrap().backend.candle().unwrap();
        assert_eq!(candle.architecture, Some(crate::registry::ImageArchitecture::StableDiffusionXl));
        let r = parse_env(text, &[("LLMLAB_MODEL__PIC__ARCHITECTURE", "flux")]).unwrap();
        let candle = r.get("pic").unwrap().backend.candle().unwrap();
        assert_eq!(candle.architecture, Some(crate::registry::ImageArchitecture::Flux));
        let err = parse_env(text, &[("LLMLAB_MODEL__PIC__ARCHITECTURE", "kandinsky")]).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("LLMLAB_MODEL__PIC__ARCHITECTURE"));
        assert!(err.to_string().contains("got 'kandinsky'"), "{err}");
        // Not on a chat model, whoever writes it.
        assert!(parse_env(GOOD, &[("LLMLAB_MODEL__SMALL__ARCHITECTURE", "stable-diffusion")]).is_err());

        let r = parse_env(GOOD, &[("LLMLAB_MODEL__SMALL__MAIN_GPU", "1")]).unwrap();
        assert_eq!(llama(&r, "small").main_gpu, Some(1));
        assert_eq!(llama(&r, "small").gpu_layers, None, "all that fit unless set");
    }

    #[test]
    fn env_overrides_a_model_field() {
        let r = parse_env(
            GOOD,
            &[("LLMLAB_MODEL__SMALL__CONTEXT_SIZE", "8192"), ("LLMLAB_THREADS", "3")],
        )
        .unwrap();
        assert_eq!(llama(&r, "small").context_size, 8192);
        assert_eq!(llama(&r, "small").threads, 3);
        let err = parse_env(GOOD, &[("LLMLAB_MODEL__SMALL__CONTEXT_SIZE", "big")]).unwrap_err();
        assert_eq!(err.model.as_deref(), Some("small"));
        assert_eq!(err.field.as_deref(), Some("LLMLAB_MODEL__SMALL__CONTEXT_SIZE"));

        assert!(!llama(&r, "small").batch_invariant, "off unless asked for");
        let r = parse_env(GOOD, &[("LLMLAB_MODEL__SMALL__BATCH_INVARIANT", "true")]).unwrap();
        assert!(llama(&r, "small").batch_invariant);
        let err = parse_env(GOOD, &[("LLMLAB_MODEL__SMALL__BATCH_INVARIANT", "maybe")]).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("LLMLAB_MODEL__SMALL__BATCH_INVARIANT"));
    }

    #[test]
    fn env_may_not_give_a_candle_model_a_llama_setting() {
        let text = "models:\n  - {id: mini, kind: embedding, backend: candle, path: mini}\n";
        let moved = parse_env(text, &[("LLMLAB_MODEL__MINI__PATH", "/elsewhere")]).unwrap();
        assert_eq!(moved.get("mini").unwrap().path, PathBuf::from("/elsewhere"));
        // The global thread count is for llama models; a candle model ignores it.
        assert!(parse_env(text, &[("LLMLAB_THREADS", "3")]).is_ok());
        for key in ["LLMLAB_MODEL__MINI__THREADS", "LLMLAB_MODEL__MINI__CHAT_TEMPLATE_FILE"] {
            let err = parse_env(text, &[(key, "2")]).unwrap_err();
            assert_eq!(err.model.as_deref(), Some("mini"));
            assert_eq!(err.field.as_deref(), Some(key));
            assert!(
                err.to_string()
                    .ends_with("applies to llama models only, and this model's backend is candle"),
                "{err}"
            );
        }
    }

    #[test]
    fn errors_name_file_model_and_field() {
        let bad = GOOD.replace("context_size: 2048", "context_size: 8");
        let err = parse(&bad).unwrap_err();
        assert_eq!(err.model.as_deref(), Some("small"));
        assert_eq!(err.field.as_deref(), Some("context_size"));
        let text = err.to_string();
        assert!(
            text.starts_with("models.yaml: model 'small': field 'context_size': must be at least"),
            "{text}"
        );
    }

    #[test]
    fn rejects_bad_registries() {
        let cases = [
            (
                GOOD.replace("temperature: 0.2", "temperature: -1"),
                "sampling.temperature",
            ),
            (
                GOOD.replace("default_model: small", "default_model: nope"),
                "default_model",
            ),
            (GOOD.replace("id: abs", "id: small"), "id"),
            (
                GOOD.replace("backend: llama\n    path: small", "backend: candle\n    path: small"),
                "backend",
            ),
            (GOOD.replace("path: small.gguf", "path: ''"), "path"),
            (GOOD.replace("context_size: 2048", "keep_alive: soon"), "keep_alive"),
            (GOOD.replace("context_size: 2048", "max_queue: 0"), "max_queue"),
            (GOOD.replace("context_size: 2048", "parallel: 0"), "parallel"),
        ];
        for (text, field) in cases {
            let err = parse(&text).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{err}");
        }
        let unknown = parse(&GOOD.replace("context_size: 2048", "context_sise: 2048")).unwrap_err();
        assert!(
            unknown.to_string().contains("unknown field `context_sise`"),
            "{unknown}"
        );
        let kind = parse(&GOOD.replace("kind: chat", "kind: chatt")).unwrap_err();
        assert!(kind.to_string().contains("unknown variant `chatt`"), "{kind}");
        assert!(parse("models: []").unwrap_err().to_string().contains("lists no models"));
    }
}
