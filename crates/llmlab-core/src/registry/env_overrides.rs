//! Per-model environment overrides: `LLMLAB_MODEL__<ID>__<FIELD>=value`,
//! where `<ID>` is the model id upper-cased with every character other than a
//! letter or digit replaced by `_` (`qwen2.5-coder` -> `QWEN2_5_CODER`).

use super::entry::ModelEntry;
use super::backend_settings::ImageArchitecture;
use super::spec::BackendKind;
use crate::config::ENV_MODEL_PREFIX;

/// The environment key for `field` of model `id`.
pub fn override_key(id: &str, field: &str) -> String {
    let id: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{ENV_MODEL_PREFIX}{id}__{}", field.to_ascii_uppercase())
}

/// Apply every override present. On a bad value, or a llama setting for a
/// model of another backend, returns (env key, message).
pub(super) fn apply_env_overrides(
    mut entry: ModelEntry,
    env: &impl Fn(&str) -> Option<String>,
) -> Result<ModelEntry, (String, String)> {
    let id = entry.id.clone();
    let backend = entry.backend;
    let get = |field: &str| {
        let key = override_key(&id, field);
        env(&key).map(|value| (key, value))
    };
    // Refused here rather than by the registry's check, so that the error
    // names the variable that set it.
    let llama_only = |field: &str| -> Result<Option<(String, String)>, (String, String)> {
        match get(field) {
            Some((key, _)) if backend != BackendKind::Llama => Err((key, super::build::llama_only_message(backend))),
            found => Ok(found),
        }
    };
    let llama_number = |field: &str| -> Result<Option<u32>, (String, String)> {
        match llama_only(field)? {
            None => Ok(None),
            Some((key, value)) => value
                .trim()
                .parse::<u32>()
                .map(Some)
                .map_err(|_| (key, format!("expected a non-negative integer, got '{value}'"))),
        }
    };
    if let Some((_, path)) = get("path") {
        entry.path = path;
    }
    if let Some(n) = llama_number("context_size")? {
        entry.context_size = Some(n);
    }
    if let Some(n) = llama_number("threads")? {
        entry.threads = Some(n);
    }
    if let Some(n) = llama_number("batch_size")? {
        entry.batch_size = Some(n);
    }
    if let Some(n) = llama_number("parallel")? {
        entry.parallel = Some(n);
    }
    if let Some(n) = llama_number("gpu_layers")? {
        entry.gpu_layers = Some(n);
    }
    if let Some(n) = llama_number("main_gpu")? {
        entry.main_gpu = Some(n);
    }
    if let Some((key, value)) = llama_only("batch_invariant")? {
        entry.batch_invariant = Some(match value.trim() {
            "1" | "true" | "on" | "yes" => true,
            "0" | "false" | "off" | "no" => false,
            _ => return Err((key, format!("expected true or false, got '{value}'"))),
        });
    }
    if let Some((_, file)) = llama_only("mmproj")? {
        entry.mmproj = Some(file);
    }
    if let Some(n) = llama_number("image_max_tokens")? {
        entry.image_max_tokens = Some(n);
    }
    if let Some((key, value)) = get("architecture") {
        // Whether the model is an image model is the registry check's to say.
        entry.architecture = Some(
            serde_yaml::from_str(value.trim())
                .map_err(|_| (key, format!("expected {}, got '{value}'", ImageArchitecture::NAMES)))?,
        );
    }
    if let Some((_, file)) = llama_only("chat_template_file")? {
        entry.chat_template_file = Some(file);
        entry.chat_template = None;
    }
    Ok(entry)
}
