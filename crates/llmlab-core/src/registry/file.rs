//! Reading and validating the registry file (`models/models.yaml`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::entry::ModelEntry;
use super::env_overrides::apply_env_overrides;
use super::source::resolve_source;
use super::spec::{BackendKind, ModelKind, ModelSpec};
use crate::config;

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
    fn new(file: &Path, model: Option<&str>, field: Option<&str>, message: impl Into<String>) -> Self {
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
            let entry = apply_env_overrides(entry, &env)
                .map_err(|(field, msg)| RegistryError::new(file, None, Some(&field), msg))?;
            models.push(resolve(entry, file, models_dir, &env)?);
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

fn resolve(
    entry: ModelEntry,
    file: &Path,
    models_dir: &Path,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<ModelSpec, RegistryError> {
    let id = entry.id.clone();
    let err = |field: &str, msg: String| RegistryError::new(file, Some(&id), Some(field), msg);

    let backend_ok = matches!(
        (entry.kind, entry.backend),
        (
            ModelKind::Chat | ModelKind::Embedding | ModelKind::VisionLanguage,
            BackendKind::Llama
        ) | (
            ModelKind::Embedding | ModelKind::TextToImage | ModelKind::ImageToImage,
            BackendKind::Candle
        )
    );
    if !backend_ok {
        return Err(err(
            "backend",
            format!(
                "backend {:?} cannot serve kind '{}'",
                entry.backend,
                entry.kind.as_str()
            ),
        ));
    }
    if entry.path.trim().is_empty() {
        return Err(err("path", "must not be empty".into()));
    }
    let path = PathBuf::from(&entry.path);
    let path = if path.is_absolute() {
        path
    } else {
        models_dir.join(path)
    };

    let context_size = entry.context_size.unwrap_or(config::DEFAULT_CONTEXT_SIZE);
    if context_size < config::MIN_CONTEXT_SIZE {
        return Err(err(
            "context_size",
            format!("must be at least {}, got {context_size}", config::MIN_CONTEXT_SIZE),
        ));
    }
    let global_threads = env(config::ENV_THREADS)
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|n| *n > 0);
    let threads = entry.threads.or(global_threads).unwrap_or_else(config::default_threads);
    if threads == 0 {
        return Err(err("threads", "must be at least 1".into()));
    }
    let batch_size = entry.batch_size.unwrap_or(config::DEFAULT_BATCH_SIZE);
    if batch_size == 0 {
        return Err(err("batch_size", "must be at least 1".into()));
    }
    let parallel = entry.parallel.unwrap_or(config::DEFAULT_PARALLEL);
    if !(1..=config::MAX_PARALLEL).contains(&parallel) {
        return Err(err(
            "parallel",
            format!("must be between 1 and {}, got {parallel}", config::MAX_PARALLEL),
        ));
    }
    if batch_size < parallel {
        return Err(err(
            "batch_size",
            format!("must hold one token of each of the {parallel} parallel sequences, got {batch_size}"),
        ));
    }
    entry
        .guards
        .validate()
        .map_err(|e| err(e.param.as_deref().unwrap_or("guards"), e.message))?;
    entry
        .load_retry
        .validate()
        .map_err(|e| err(e.param.as_deref().unwrap_or("load_retry"), e.message))?;
    entry
        .sampling
        .validate()
        .map_err(|e| err(&format!("sampling.{}", e.param.unwrap_or_default()), e.message))?;

    let chat_template = match (entry.chat_template, entry.chat_template_file) {
        (Some(_), Some(_)) => {
            return Err(err(
                "chat_template",
                "set chat_template or chat_template_file, not both".into(),
            ))
        }
        (Some(inline), None) => Some(inline),
        (None, Some(template_file)) => {
            let template_path = file.parent().unwrap_or(Path::new(".")).join(&template_file);
            Some(std::fs::read_to_string(&template_path).map_err(|e| {
                err(
                    "chat_template_file",
                    format!("cannot read {}: {e}", template_path.display()),
                )
            })?)
        }
        (None, None) => None,
    };
    let source = match entry.source {
        Some(source) => Some(resolve_source(source).map_err(|(field, msg)| err(&field, msg))?),
        None => None,
    };

    Ok(ModelSpec {
        id: entry.id,
        kind: entry.kind,
        backend: entry.backend,
        path,
        context_size,
        threads,
        batch_size,
        parallel,
        gpu_layers: entry.gpu_layers.unwrap_or(0),
        chat_template,
        max_queue: match entry.max_queue {
            Some(0) => return Err(err("max_queue", "must be at least 1".into())),
            other => other.unwrap_or(config::DEFAULT_MAX_QUEUE),
        },
        pinned: entry.pinned,
        preload: entry.preload,
        keep_alive: match &entry.keep_alive {
            None => crate::keep_alive::KeepAlive::For(config::DEFAULT_KEEP_ALIVE),
            Some(text) => crate::keep_alive::KeepAlive::parse(text).map_err(|e| err("keep_alive", e.message))?,
        },
        reasoning_format: entry.reasoning_format,
        tool_call_format: entry.tool_call_format,
        sampling: entry.sampling,
        guards: entry.guards,
        breaker: entry.breaker,
        load_retry: entry.load_retry,
        pooling: entry.pooling,
        matryoshka: entry.matryoshka,
        source,
        description: entry.description,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn resolves_defaults_and_paths() {
        let r = parse(GOOD).unwrap();
        assert_eq!(r.default_model, "small");
        let small = r.get("small").unwrap();
        assert_eq!(small.path, PathBuf::from("/models/small.gguf"));
        assert_eq!(small.context_size, 2048);
        assert_eq!(small.batch_size, config::DEFAULT_BATCH_SIZE);
        assert_eq!(small.sampling.temperature, Some(0.2));
        assert_eq!(r.get("abs").unwrap().path, PathBuf::from("/opt/m.gguf"));
        assert_eq!(r.get("abs").unwrap().context_size, config::DEFAULT_CONTEXT_SIZE);
        assert_eq!(
            r.get("abs").unwrap().reasoning_format,
            Some(crate::stream::ReasoningFormat::ThinkTags)
        );
        assert_eq!(small.tool_call_format, None);
    }

    #[test]
    fn env_overrides_a_model_field() {
        let r = parse_env(
            GOOD,
            &[("LLMLAB_MODEL__SMALL__CONTEXT_SIZE", "8192"), ("LLMLAB_THREADS", "3")],
        )
        .unwrap();
        assert_eq!(r.get("small").unwrap().context_size, 8192);
        assert_eq!(r.get("small").unwrap().threads, 3);
        let err = parse_env(GOOD, &[("LLMLAB_MODEL__SMALL__CONTEXT_SIZE", "big")]).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("LLMLAB_MODEL__SMALL__CONTEXT_SIZE"));
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
