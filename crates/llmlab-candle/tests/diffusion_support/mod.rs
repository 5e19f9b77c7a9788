//! What the diffusion test binaries (`diffusion.rs`, `diffusion_xl.rs`)
//! share: a registry spec for a diffusers folder, the fixture folder in the
//! models folder, and copying a folder to alter it.

use std::path::{Path, PathBuf};

use llmlab_core::config;
use llmlab_core::registry::{ModelSpec, Registry};

/// An image model `id` read from `path`.
pub fn spec_at(id: &str, path: &Path) -> ModelSpec {
    let text = format!(
        "models:\n  - {{id: {id}, kind: image, backend: candle, path: '{}'}}\n",
        path.display()
    );
    let registry = Registry::parse(&text, Path::new("t.yaml"), Path::new("/"), |_| None).unwrap();
    registry.require(id).unwrap().clone()
}

/// The fixture `name` in the models folder; `None` (and a skip, which
/// fails under LLMLAB_REQUIRE_ALL) when `script` has not written it.
pub fn fixture(name: &str, script: &str) -> Option<PathBuf> {
    let path = config::models_dir().join(name);
    if path.join("model_index.json").is_file() {
        return Some(path);
    }
    config::skip_test(&format!("{name} missing: run {script} (scripts/test.sh does)"));
    None
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
