//! Models found by looking in the models folder: every `.gguf` file that no
//! registry entry points at becomes a chat model with default settings, so a
//! file dropped into the folder is servable without editing the registry.

use std::path::Path;

use super::backend_settings::{BackendSettings, LlamaSettings};
use super::spec::{ModelKind, ModelSpec};
use crate::config;

/// GGUF files in `models_dir` not already in `known`. The id is the file
/// stem in lower case; vision projectors (`mmproj`) are skipped, and so is a
/// file whose id is already taken.
pub fn discover_gguf_models(models_dir: &Path, known: &[ModelSpec]) -> Vec<ModelSpec> {
    let Ok(entries) = std::fs::read_dir(models_dir) else {
        return Vec::new();
    };
    let mut found: Vec<ModelSpec> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")))
        .filter(|path| !known.iter().any(|m| &m.path == path))
        .filter_map(|path| {
            let id = path.file_stem()?.to_str()?.to_lowercase();
            (!id.contains("mmproj")).then(|| spec_for(id, &path))
        })
        .filter(|spec| !known.iter().any(|m| m.id == spec.id))
        .collect();
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found
}

fn spec_for(id: String, path: &Path) -> ModelSpec {
    ModelSpec {
        id,
        kind: ModelKind::Chat,
        backend: BackendSettings::Llama(LlamaSettings::default()),
        path: path.to_path_buf(),
        keep_alive: crate::keep_alive::KeepAlive::For(config::DEFAULT_KEEP_ALIVE),
        pinned: false,
        preload: false,
        max_queue: config::DEFAULT_MAX_QUEUE,
        sampling: crate::SamplingParams::default(),
        guards: Default::default(),
        breaker: Default::default(),
        embedding: Default::default(),
        load_retry: Default::default(),
        source: None,
        description: Some("found in the models folder".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_unlisted_gguf_files_only() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "Listed.gguf",
            "New-Model.Q4.gguf",
            "mmproj-vision.gguf",
            "notes.txt",
            "half.partial",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        let mut listed = spec_for("listed".into(), &dir.path().join("Listed.gguf"));
        listed.id = "my-listed".into();
        let found = discover_gguf_models(dir.path(), &[listed]);
        let ids: Vec<&str> = found.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["new-model.q4"]);
        assert_eq!(found[0].kind, ModelKind::Chat);
        let settings = found[0].backend.llama().expect("a llama model");
        assert_eq!(settings.context_size, config::DEFAULT_CONTEXT_SIZE);
        assert!(discover_gguf_models(&dir.path().join("missing"), &[]).is_empty());
    }
}
