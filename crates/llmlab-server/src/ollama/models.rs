//! Models as Ollama names and lists them: `/api/tags` (models on disk),
//! `/api/ps` (models loaded), `/api/show` (one model's details).
//!
//! Ollama names models `name:tag`; llmlab's registry ids have no tags. A
//! registry id is listed as `<id>:latest` (an id that already holds a `:`
//! is listed as it is), and a request may name a model either way.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use llmlab_core::keep_alive::KeepAlive;
use llmlab_core::registry::{BackendKind, ModelKind, ModelSource, ModelSpec, Registry};
use llmlab_core::service::{ModelFacts, ModelState, ModelStatus};
use llmlab_core::stream::{detect_formats, ReasoningFormat, ToolCallFormat};
use llmlab_core::Result;

use super::errors::model_not_found;

const LATEST: &str = ":latest";

/// The name Ollama's clients see for a registry id.
pub fn display_name(id: &str) -> String {
    if id.contains(':') {
        id.to_owned()
    } else {
        format!("{id}{LATEST}")
    }
}

/// The registry id a client's model name means: the id itself, or the id
/// with Ollama's default tag. `""` stays `""` (the service's default model).
pub fn resolve_name(registry: &Registry, name: &str) -> Result<String> {
    if name.is_empty() || registry.get(name).is_some() {
        return Ok(name.to_owned());
    }
    match name.strip_suffix(LATEST) {
        Some(id) if registry.get(id).is_some() => Ok(id.to_owned()),
        _ => Err(model_not_found(name)),
    }
}

fn rfc3339(time: SystemTime) -> String {
    DateTime::<Utc>::from(time).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The content digest Ollama lists: the file's sha256 when the registry
/// pins one; for a folder, the sha256 of its files' digests in order (as
/// Ollama's digest is that of a manifest); empty when nothing is pinned.
fn digest(spec: &ModelSpec) -> String {
    match &spec.source {
        Some(ModelSource::Concatenated { sha256, .. }) => sha256.to_ascii_lowercase(),
        Some(ModelSource::Folder { files }) => {
            let mut hasher = Sha256::new();
            for file in files {
                hasher.update(file.sha256.to_ascii_lowercase().as_bytes());
            }
            hex::encode(hasher.finalize())
        }
        None => String::new(),
    }
}

/// Bytes on disk: the file, or every file under the folder.
fn bytes_on_disk(path: &Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|entries| entries.flatten().map(|e| bytes_on_disk(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

fn format_name(spec: &ModelSpec) -> &'static str {
    match spec.backend.kind() {
        BackendKind::Llama => "gguf",
        BackendKind::Candle => "safetensors",
    }
}

/// The facts of each model by registry id (what `Service::describe` read).
pub type Facts = HashMap<String, ModelFacts>;

/// `details`, from the model file's own metadata where it has them (GGUF);
/// empty strings where it does not, as Ollama's clients accept.
fn details(spec: &ModelSpec, facts: Option<&ModelFacts>) -> Value {
    let facts = facts.cloned().unwrap_or_default();
    json!({
        "parent_model": "",
        "format": format_name(spec),
        "family": facts.architecture.clone().unwrap_or_default(),
        "families": facts.architecture.map(|a| vec![a]),
        "parameter_size": facts.parameter_size.unwrap_or_default(),
        "quantization_level": facts.quantization.unwrap_or_default(),
    })
}

fn context_length(spec: &ModelSpec) -> Option<u32> {
    spec.backend.llama().map(|l| l.context_size)
}

/// `/api/tags`: registry models whose files are on disk (what Ollama calls
/// local models); the rest can be fetched with `/api/pull`.
pub fn tags(registry: &Registry, facts: &Facts) -> Value {
    let models: Vec<Value> = registry
        .models
        .iter()
        .filter_map(|spec| {
            let modified = std::fs::metadata(&spec.path).and_then(|m| m.modified()).ok()?;
            let name = display_name(&spec.id);
            Some(json!({
                "name": name,
                "model": name,
                "modified_at": rfc3339(modified),
                "size": bytes_on_disk(&spec.path),
                "digest": digest(spec),
                "details": details(spec, facts.get(&spec.id)),
            }))
        })
        .collect();
    json!({ "models": models })
}

/// When a loaded model will be unloaded. Ollama writes "never" as a date
/// about 292 years ahead (the largest duration it has); so does this.
fn expires_at(status: &ModelStatus, spec: &ModelSpec, now: SystemTime) -> String {
    let forever = Duration::from_secs(292 * 365 * 24 * 3600);
    let left = match (status.expires_in_secs, spec.keep_alive) {
        (Some(secs), _) => Duration::from_secs(secs),
        _ if status.pinned => forever,
        // In use: the countdown starts when its last request ends.
        (None, KeepAlive::For(d)) => d,
        (None, KeepAlive::Forever) => forever,
    };
    rfc3339(now + left)
}

/// `/api/ps`: the models loaded now, with the memory they hold.
pub fn ps(registry: &Registry, statuses: &[ModelStatus], facts: &Facts) -> Value {
    let now = SystemTime::now();
    let models: Vec<Value> = statuses
        .iter()
        .filter(|s| s.state == ModelState::Loaded)
        .filter_map(|status| {
            let spec = registry.get(&status.id)?;
            let name = display_name(&spec.id);
            let vram = status.gpu_memory_bytes.unwrap_or(0);
            Some(json!({
                "name": name,
                "model": name,
                "size": status.memory_bytes.unwrap_or(0) + vram,
                "digest": digest(spec),
                "details": details(spec, facts.get(&spec.id)),
                "expires_at": expires_at(status, spec, now),
                "size_vram": vram,
                "context_length": context_length(spec),
            }))
        })
        .collect();
    json!({ "models": models })
}

/// What the model can do, in Ollama's words. Tool calls and thinking are
/// what the engine will parse: the registry's formats, else those its chat
/// template shows (the detection the engine runs when it loads the model).
fn capabilities(spec: &ModelSpec, facts: &ModelFacts) -> Vec<&'static str> {
    match spec.kind {
        ModelKind::Chat | ModelKind::VisionLanguage => {
            let (reasoning, tools) = facts.chat_template.as_deref().map(detect_formats).unwrap_or_default();
            let llama = spec.backend.llama();
            let reasoning = llama.and_then(|l| l.reasoning_format).unwrap_or(reasoning);
            let tools = llama.and_then(|l| l.tool_call_format).unwrap_or(tools);
            let mut caps = vec!["completion"];
            if tools != ToolCallFormat::None {
                caps.push("tools");
            }
            if spec.accepts_images() {
                caps.push("vision");
            }
            if reasoning != ReasoningFormat::None {
                caps.push("thinking");
            }
            caps
        }
        ModelKind::Embedding => vec!["embedding"],
        // Ollama's name for image generation models.
        ModelKind::Image => vec!["image"],
    }
}

/// `/api/show`. `template` is the chat template (jinja, where Ollama's are
/// Go templates); `parameters` and `modelfile` are Ollama's own files,
/// which llmlab does not have: empty strings, as its clients accept.
/// `model_info` holds Ollama's keys where the file has them, and what the
/// registry says under llmlab's names (`llmlab.context_length` is the
/// context the model runs with).
pub fn show(spec: &ModelSpec, facts: &ModelFacts) -> Value {
    let modified = std::fs::metadata(&spec.path).and_then(|m| m.modified()).ok();
    let mut info = json!({
        "llmlab.kind": spec.kind.as_str(),
        "llmlab.backend": spec.backend.kind().as_str(),
    });
    if let Some(ctx) = context_length(spec) {
        info["llmlab.context_length"] = json!(ctx);
    }
    if let Some(arch) = &facts.architecture {
        info["general.architecture"] = json!(arch);
        if let Some(trained) = facts.trained_context {
            info[format!("{arch}.context_length")] = json!(trained);
        }
    }
    json!({
        "modelfile": "",
        "parameters": "",
        "template": facts.chat_template.clone().unwrap_or_default(),
        "license": "",
        "details": details(spec, Some(facts)),
        "model_info": info,
        "capabilities": capabilities(spec, facts),
        "modified_at": modified.map(rfc3339),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(dir: &Path) -> Registry {
        std::fs::write(dir.join("a.gguf"), b"GGUF").unwrap();
        let text = "default_model: a\nmodels:\n  - id: a\n    kind: chat\n    backend: llama\n    path: a.gguf\n  - id: gone\n    kind: chat\n    backend: llama\n    path: gone.gguf\n";
        Registry::parse(text, &dir.join("models.yaml"), dir, |_| None).unwrap()
    }

    #[test]
    fn names_take_ollamas_latest_tag() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        assert_eq!(display_name("a"), "a:latest");
        assert_eq!(display_name("org:7b"), "org:7b");
        assert_eq!(resolve_name(&r, "a").unwrap(), "a");
        assert_eq!(resolve_name(&r, "a:latest").unwrap(), "a");
        assert_eq!(resolve_name(&r, "").unwrap(), "");
        let err = resolve_name(&r, "b:latest").unwrap_err();
        assert_eq!(err.kind, llmlab_core::ErrorKind::NotFound);
        assert_eq!(err.message, "model \"b:latest\" not found, try pulling it first");
    }

    #[test]
    fn tags_list_models_on_disk_and_show_says_what_is_known() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let tags = tags(&r, &Facts::new());
        let models = tags["models"].as_array().unwrap();
        assert_eq!(models.len(), 1, "{tags}");
        assert_eq!(models[0]["name"], "a:latest");
        assert_eq!(models[0]["size"], 4);
        assert_eq!(models[0]["details"]["format"], "gguf");
        assert!(DateTime::parse_from_rfc3339(models[0]["modified_at"].as_str().unwrap()).is_ok());
        let plain = show(r.get("a").unwrap(), &ModelFacts::default());
        assert_eq!(plain["capabilities"], json!(["completion"]));
        assert_eq!(plain["template"], "");
        assert!(plain["model_info"]["llmlab.context_length"].as_u64().is_some());
        let facts = ModelFacts {
            architecture: Some("qwen2".into()),
            parameter_size: Some("0.5B".into()),
            quantization: Some("Q4_K_M".into()),
            trained_context: Some(32768),
            chat_template: Some("{% if tools %}<tool_call>{% endif %}".into()),
        };
        let shown = show(r.get("a").unwrap(), &facts);
        assert_eq!(shown["capabilities"], json!(["completion", "tools"]));
        assert_eq!(shown["details"]["family"], "qwen2");
        assert_eq!(shown["details"]["quantization_level"], "Q4_K_M");
        assert_eq!(shown["model_info"]["qwen2.context_length"], 32768);
    }

    #[test]
    fn ps_lists_loaded_models_with_their_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let r = registry(dir.path());
        let status = |id: &str, state| ModelStatus {
            id: id.into(),
            kind: ModelKind::Chat,
            input_modalities: &["text"],
            state,
            error: None,
            degraded: None,
            memory_bytes: Some(100),
            gpu_memory_bytes: None,
            active_requests: 0,
            expires_in_secs: Some(60),
            pinned: false,
            circuit: llmlab_core::guards::BreakerState::Closed,
            consecutive_failures: 0,
        };
        let listed = ps(
            &r,
            &[status("a", ModelState::Loaded), status("gone", ModelState::Unloaded)],
            &Facts::new(),
        );
        let models = listed["models"].as_array().unwrap();
        assert_eq!(models.len(), 1);
        assert_eq!(
            (models[0]["size"].clone(), models[0]["size_vram"].clone()),
            (json!(100), json!(0))
        );
        let expires = DateTime::parse_from_rfc3339(models[0]["expires_at"].as_str().unwrap()).unwrap();
        let ahead = expires.with_timezone(&Utc) - Utc::now();
        assert!(ahead.num_seconds() > 50 && ahead.num_seconds() <= 60, "{ahead}");
    }
}
