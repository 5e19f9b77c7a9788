//! What the MiniLM test binaries share: the model's registry entry and the
//! reference vectors sentence-transformers made from the same files
//! (`scripts/make-embedding-fixture.py`). Each test binary uses part of it.

#![allow(dead_code)]

use std::path::Path;

use llmlab_core::config;
use llmlab_core::registry::{ModelSpec, Registry};
use serde::Deserialize;

pub const MODEL_ID: &str = "all-minilm-l6-v2";

#[derive(Deserialize)]
pub struct Fixture {
    pub model: String,
    pub sentences: Vec<String>,
    /// Unit-length vectors, one per sentence.
    pub embeddings: Vec<Vec<f32>>,
}

pub fn fixture() -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("fixture present")).expect("fixture parses")
}

pub fn spec() -> ModelSpec {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/models.yaml");
    let registry = Registry::load(&file, &config::models_dir()).expect("registry loads");
    registry.require(MODEL_ID).expect("model in registry").clone()
}

/// Whether the model folder has been pulled; says how to pull it if not.
pub fn model_present(spec: &ModelSpec) -> bool {
    let present = spec.path.join("model.safetensors").is_file();
    if !present {
        config::skip_test(&format!(
            "model folder {} is missing: run `cargo run -p llmlab-server -- pull {MODEL_ID}` \
             (scripts/test.sh does)",
            spec.path.display()
        ));
    }
    present
}
