//! Turning one registry entry into a [`ModelSpec`]: the entry is flat, the
//! spec holds each backend's and each kind's settings apart. Every setting
//! is checked and defaulted here, and one written for a model whose backend
//! or kind never reads it is refused rather than silently ignored.

use std::path::{Path, PathBuf};

use super::backend_settings::{BackendSettings, CandleSettings, LlamaSettings};
use super::entry::ModelEntry;
use super::file::RegistryError;
use super::source::resolve_source;
use super::spec::{BackendKind, EmbeddingSettings, ModelKind, ModelSpec};
use crate::config;

/// A setting at fault: the field as the registry writes it, and what is wrong.
type Fault = (String, String);

fn fault(field: &str, message: impl Into<String>) -> Fault {
    (field.to_owned(), message.into())
}

/// The spec of `entry`, or an error naming the file, the model and the field.
/// `file` locates `chat_template_file`; relative paths live in `models_dir`.
pub(super) fn build_spec(
    entry: ModelEntry,
    file: &Path,
    models_dir: &Path,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<ModelSpec, RegistryError> {
    let id = entry.id.clone();
    spec_of(entry, file, models_dir, env)
        .map_err(|(field, message)| RegistryError::new(file, Some(&id), Some(&field), message))
}

fn spec_of(
    entry: ModelEntry,
    file: &Path,
    models_dir: &Path,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<ModelSpec, Fault> {
    check_backend_serves_kind(&entry)?;
    check_settings_apply(&entry)?;
    let path = in_models_dir(models_dir, &entry.path)?;
    let backend = match entry.backend {
        BackendKind::Llama => BackendSettings::Llama(llama_settings(&entry, file, models_dir, env)?),
        BackendKind::Candle => BackendSettings::Candle(CandleSettings {
            architecture: entry.architecture,
        }),
    };
    entry
        .guards
        .validate()
        .map_err(|e| fault(e.param.as_deref().unwrap_or("guards"), e.message))?;
    entry
        .load_retry
        .validate()
        .map_err(|e| fault(e.param.as_deref().unwrap_or("load_retry"), e.message))?;
    entry
        .sampling
        .validate()
        .map_err(|e| fault(&format!("sampling.{}", e.param.unwrap_or_default()), e.message))?;
    let source = entry.source.map(resolve_source).transpose()?;
    let max_queue = match entry.max_queue {
        Some(0) => return Err(fault("max_queue", "must be at least 1")),
        other => other.unwrap_or(config::DEFAULT_MAX_QUEUE),
    };
    let keep_alive = match &entry.keep_alive {
        None => crate::keep_alive::KeepAlive::For(config::DEFAULT_KEEP_ALIVE),
        Some(text) => crate::keep_alive::KeepAlive::parse(text).map_err(|e| fault("keep_alive", e.message))?,
    };

    Ok(ModelSpec {
        id: entry.id,
        kind: entry.kind,
        backend,
        path,
        keep_alive,
        pinned: entry.pinned,
        preload: entry.preload,
        max_queue,
        sampling: entry.sampling,
        guards: entry.guards,
        breaker: entry.breaker,
        embedding: EmbeddingSettings {
            pooling: entry.pooling,
            matryoshka: entry.matryoshka.unwrap_or(false),
        },
        load_retry: entry.load_retry,
        source,
        description: entry.description,
    })
}

fn check_backend_serves_kind(entry: &ModelEntry) -> Result<(), Fault> {
    let serves = match entry.backend {
        BackendKind::Llama => matches!(
            entry.kind,
            ModelKind::Chat | ModelKind::Embedding | ModelKind::VisionLanguage
        ),
        BackendKind::Candle => matches!(entry.kind, ModelKind::Embedding | ModelKind::Image),
    };
    if serves {
        return Ok(());
    }
    Err(fault(
        "backend",
        format!(
            "backend {:?} cannot serve kind '{}'",
            entry.backend,
            entry.kind.as_str()
        ),
    ))
}

/// Why a llama setting is refused for a model of `backend` (the file check
/// here and the environment overrides say it the same way).
pub(super) fn llama_only_message(backend: BackendKind) -> String {
    format!(
        "applies to llama models only, and this model's backend is {}",
        backend.as_str()
    )
}

/// Refuse the first setting written for a model whose backend or kind never
/// reads it: a `context_size` on a candle model would otherwise be ignored
/// without a word.
fn check_settings_apply(entry: &ModelEntry) -> Result<(), Fault> {
    if entry.backend != BackendKind::Llama {
        let llama_only = [
            ("context_size", entry.context_size.is_some()),
            ("threads", entry.threads.is_some()),
            ("batch_size", entry.batch_size.is_some()),
            ("parallel", entry.parallel.is_some()),
            ("gpu_layers", entry.gpu_layers.is_some()),
            ("main_gpu", entry.main_gpu.is_some()),
            ("chat_template", entry.chat_template.is_some()),
            ("chat_template_file", entry.chat_template_file.is_some()),
            ("reasoning_format", entry.reasoning_format.is_some()),
            ("tool_call_format", entry.tool_call_format.is_some()),
            ("batch_invariant", entry.batch_invariant.is_some()),
            ("mmproj", entry.mmproj.is_some()),
            ("image_max_tokens", entry.image_max_tokens.is_some()),
        ];
        if let Some((field, _)) = llama_only.iter().find(|(_, written)| *written) {
            return Err(fault(field, llama_only_message(entry.backend)));
        }
    }
    if entry.kind == ModelKind::Embedding {
        let chat_only = [
            ("mmproj", entry.mmproj.is_some()),
            ("image_max_tokens", entry.image_max_tokens.is_some()),
        ];
        if let Some((field, _)) = chat_only.iter().find(|(_, written)| *written) {
            return Err(fault(
                field,
                "applies to chat models only, and this model's kind is embedding",
            ));
        }
    }
    if entry.architecture.is_some() && entry.kind != ModelKind::Image {
        return Err(fault(
            "architecture",
            format!(
                "applies to image models only, and this model's kind is {}",
                entry.kind.as_str()
            ),
        ));
    }
    if entry.image_max_tokens.is_some() && entry.mmproj.is_none() {
        return Err(fault(
            "image_max_tokens",
            "applies to vision models only: set mmproj (the projector file) too",
        ));
    }
    if entry.kind != ModelKind::Embedding {
        let embedding_only = [
            ("pooling", entry.pooling.is_some()),
            ("matryoshka", entry.matryoshka.is_some()),
        ];
        if let Some((field, _)) = embedding_only.iter().find(|(_, written)| *written) {
            return Err(fault(
                field,
                format!(
                    "applies to embedding models only, and this model's kind is {}",
                    entry.kind.as_str()
                ),
            ));
        }
    }
    Ok(())
}

/// The llama settings of `entry`, each checked, the unset ones defaulted
/// (threads: the entry, else `LLMLAB_THREADS` from `env`, else the machine's).
fn llama_settings(
    entry: &ModelEntry,
    file: &Path,
    models_dir: &Path,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<LlamaSettings, Fault> {
    let context_size = entry.context_size.unwrap_or(config::DEFAULT_CONTEXT_SIZE);
    if context_size < config::MIN_CONTEXT_SIZE {
        return Err(fault(
            "context_size",
            format!("must be at least {}, got {context_size}", config::MIN_CONTEXT_SIZE),
        ));
    }
    let global_threads = env(config::ENV_THREADS)
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|n| *n > 0);
    let threads = entry.threads.or(global_threads).unwrap_or_else(config::default_threads);
    if threads == 0 {
        return Err(fault("threads", "must be at least 1"));
    }
    let batch_size = entry.batch_size.unwrap_or(config::DEFAULT_BATCH_SIZE);
    if batch_size == 0 {
        return Err(fault("batch_size", "must be at least 1"));
    }
    let parallel = entry.parallel.unwrap_or(config::DEFAULT_PARALLEL);
    if !(1..=config::MAX_PARALLEL).contains(&parallel) {
        return Err(fault(
            "parallel",
            format!("must be between 1 and {}, got {parallel}", config::MAX_PARALLEL),
        ));
    }
    if batch_size < parallel {
        return Err(fault(
            "batch_size",
            format!("must hold one token of each of the {parallel} parallel sequences, got {batch_size}"),
        ));
    }
    Ok(LlamaSettings {
        context_size,
        threads,
        batch_size,
        parallel,
        gpu_layers: entry.gpu_layers,
        main_gpu: entry.main_gpu,
        chat_template: chat_template(entry, file)?,
        reasoning_format: entry.reasoning_format,
        tool_call_format: entry.tool_call_format,
        batch_invariant: entry.batch_invariant.unwrap_or(false),
        mmproj: entry
            .mmproj
            .as_deref()
            .map(|p| in_models_dir(models_dir, p).map_err(|(_, message)| fault("mmproj", message)))
            .transpose()?,
        image_max_tokens: match entry.image_max_tokens {
            Some(0) => return Err(fault("image_max_tokens", "must be at least 1")),
            other => other,
        },
    })
}

/// A model file's path: as written when absolute, else inside the models
/// folder. The error names `path`; callers with another field rename it.
fn in_models_dir(models_dir: &Path, written: &str) -> Result<PathBuf, Fault> {
    if written.trim().is_empty() {
        return Err(fault("path", "must not be empty"));
    }
    let path = PathBuf::from(written);
    Ok(if path.is_absolute() {
        path
    } else {
        models_dir.join(path)
    })
}

/// The inline template, or the text of `chat_template_file` (relative to
/// the registry file's folder).
fn chat_template(entry: &ModelEntry, file: &Path) -> Result<Option<String>, Fault> {
    match (&entry.chat_template, &entry.chat_template_file) {
        (Some(_), Some(_)) => Err(fault(
            "chat_template",
            "set chat_template or chat_template_file, not both",
        )),
        (Some(inline), None) => Ok(Some(inline.clone())),
        (None, Some(template_file)) => {
            let template_path = file.parent().unwrap_or(Path::new(".")).join(template_file);
            std::fs::read_to_string(&template_path).map(Some).map_err(|e| {
                fault(
                    "chat_template_file",
                    format!("cannot read {}: {e}", template_path.display()),
                )
            })
        }
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::registry::{BackendKind, Registry, RegistryError};

    fn parse(models: &str) -> Result<Registry, RegistryError> {
        let text = format!("models:\n{models}");
        Registry::parse(&text, Path::new("models.yaml"), Path::new("/models"), |_| None)
    }

    const CANDLE: &str = "  - {id: mini, kind: embedding, backend: candle, path: mini}\n";
    const CHAT: &str = "  - {id: chat, kind: chat, backend: llama, path: c.gguf}\n";

    #[test]
    fn each_backend_gets_its_own_settings() {
        let registry = parse(&format!(
            "{CANDLE}{CHAT}  - {{id: gte, kind: embedding, backend: llama, path: g.gguf, context_size: 512, pooling: cls, matryoshka: true}}\n"
        ))
        .unwrap();
        let mini = registry.get("mini").unwrap();
        assert_eq!(mini.backend.kind(), BackendKind::Candle);
        assert!(mini.backend.llama().is_none() && mini.backend.candle().is_some());
        let gte = registry.get("gte").unwrap();
        assert_eq!(gte.backend.llama().unwrap().context_size, 512);
        assert_eq!(gte.embedding.pooling, Some(crate::embedding::Pooling::Cls));
        assert!(gte.embedding.matryoshka);
        let chat = registry.get("chat").unwrap();
        assert_eq!(chat.backend.llama().unwrap().parallel, crate::config::DEFAULT_PARALLEL);
        assert_eq!(chat.embedding, Default::default());
    }

    #[test]
    fn a_vision_projector_belongs_to_a_chat_model() {
        let registry =
            parse(&CHAT.replace("path: c.gguf}", "path: c.gguf, mmproj: p.gguf, image_max_tokens: 256}")).unwrap();
        let chat = registry.get("chat").unwrap();
        let llama = chat.backend.llama().unwrap();
        assert_eq!(llama.mmproj.as_deref(), Some(Path::new("/models/p.gguf")));
        assert_eq!(llama.image_max_tokens, Some(256));
        assert!(chat.accepts_images());
        assert_eq!(chat.input_modalities(), ["text", "image"]);
        assert_eq!(parse(CHAT).unwrap().get("chat").unwrap().input_modalities(), ["text"]);
        for (entry, field) in [
            (
                CHAT.replace("path: c.gguf}", "path: c.gguf, image_max_tokens: 64}"),
                "image_max_tokens",
            ),
            (CHAT.replace("path: c.gguf}", "path: c.gguf, mmproj: ''}"), "mmproj"),
            (
                "  - {id: e, kind: embedding, backend: llama, path: e.gguf, mmproj: p.gguf}\n".to_owned(),
                "mmproj",
            ),
        ] {
            let err = parse(&entry).unwrap_err();
            assert_eq!(err.field.as_deref(), Some(field), "{err}");
        }
    }

    #[test]
    fn a_llama_setting_on_a_candle_model_is_refused_naming_the_field() {
        for (setting, field) in [
            ("context_size: 512", "context_size"),
            ("threads: 2", "threads"),
            ("batch_size: 64", "batch_size"),
            ("parallel: 2", "parallel"),
            ("gpu_layers: 0", "gpu_layers"),
            ("main_gpu: 1", "main_gpu"),
            ("chat_template: '{{ x }}'", "chat_template"),
            ("chat_template_file: t.jinja", "chat_template_file"),
            ("reasoning_format: think_tags", "reasoning_format"),
            ("tool_call_format: hermes", "tool_call_format"),
            ("batch_invariant: true", "batch_invariant"),
            ("mmproj: p.gguf", "mmproj"),
            ("image_max_tokens: 256", "image_max_tokens"),
        ] {
            let entry = CANDLE.replace("path: mini}", &format!("path: mini, {setting}}}"));
            let err = parse(&entry).unwrap_err();
            assert_eq!(err.model.as_deref(), Some("mini"), "{err}");
            assert_eq!(err.field.as_deref(), Some(field), "{err}");
            assert_eq!(
                err.to_string(),
                format!(
                    "models.yaml: model 'mini': field '{field}': applies to llama models only, \
                     and this model's backend is candle"
                )
            );
        }
    }

    #[test]
    fn an_embedding_setting_on_another_kind_is_refused_naming_the_field() {
        for (setting, field) in [
            ("pooling: mean", "pooling"),
            ("matryoshka: true", "matryoshka"),
            ("matryoshka: false", "matryoshka"),
        ] {
            let entry = CHAT.replace("path: c.gguf}", &format!("path: c.gguf, {setting}}}"));
            let err = parse(&entry).unwrap_err();
            assert_eq!(err.model.as_deref(), Some("chat"), "{err}");
            assert_eq!(err.field.as_deref(), Some(field), "{err}");
            assert!(
                err.to_string()
                    .ends_with("applies to embedding models only, and this model's kind is chat"),
                "{err}"
            );
        }
    }

    #[test]
    fn an_image_model_may_name_its_architecture_and_no_other_kind_may() {
        let image =
            "models:\n  - {id: xl, kind: image, backend: candle, path: xl, architecture: stable-diffusion-xl}\n";
        let registry = Registry::parse(image, Path::new("t.yaml"), Path::new("/m"), |_| None).unwrap();
        let candle = registry.require("xl").unwrap().backend.candle().unwrap().clone();
        assert_eq!(
            candle.architecture,
            Some(crate::registry::ImageArchitecture::StableDiffusionXl)
        );
        let text =
            "models:\n  - {id: mini, kind: embedding, backend: candle, path: mini, architecture: stable-diffusion}\n";
        let err = Registry::parse(text, Path::new("t.yaml"), Path::new("/m"), |_| None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("architecture") && err.contains("image models only"),
            "{err}"
        );
        let flux = image.replace("stable-diffusion-xl", "flux");
        let registry = Registry::parse(&flux, Path::new("t.yaml"), Path::new("/m"), |_| None).unwrap();
        let candle = registry.require("xl").unwrap().backend.candle().unwrap().clone();
        assert_eq!(candle.architecture, Some(crate::registry::ImageArchitecture::Flux));
        let sd3 = image.replace("stable-diffusion-xl", "stable-diffusion-3");
        let registry = Registry::parse(&sd3, Path::new("t.yaml"), Path::new("/m"), |_| None).unwrap();
        let candle = registry.require("xl").unwrap().backend.candle().unwrap().clone();
        assert_eq!(
            candle.architecture,
            Some(crate::registry::ImageArchitecture::StableDiffusion3)
        );
        let unknown = image.replace("stable-diffusion-xl", "kandinsky");
        assert!(Registry::parse(&unknown, Path::new("t.yaml"), Path::new("/m"), |_| None).is_err());
    }
}
