//! The BERT pipeline with AMX switched off (`LLMLAB_AMX=0`): candle's
//! matmul must match sentence-transformers' vectors as the tile kernels do.
//! On a machine without AMX both test binaries run this path; on one with
//! it, this binary is what keeps the fallback tested. A binary of its own
//! because the switch is read from the process environment at load.

mod minilm_support;

use llmlab_candle::BertEmbeddingPipeline;
use llmlab_core::config;
use llmlab_core::embedding::{cosine_similarity, l2_normalize, EmbedInput};
use llmlab_core::pipeline::EmbeddingPipeline;
use minilm_support::{fixture, model_present, spec};

#[test]
fn candle_matmul_matches_sentence_transformers() {
    let spec = spec();
    if !model_present(&spec) {
        return;
    }
    // The only test in this binary, so nothing else reads the environment
    // while it is set.
    std::env::set_var(config::ENV_AMX, "0");
    let model = BertEmbeddingPipeline::load(&spec).unwrap();
    assert_eq!(model.matmul_kernel(), "candle-gemm");
    let fixture = fixture();
    let inputs: Vec<EmbedInput> = fixture.sentences.iter().cloned().map(EmbedInput::Text).collect();
    let got = model.embed(&inputs, false).unwrap();
    for ((sentence, reference), raw) in fixture.sentences.iter().zip(&fixture.embeddings).zip(&got) {
        let mut unit = raw.vector.clone();
        l2_normalize(&mut unit);
        let cosine = cosine_similarity(&unit, reference);
        assert!(cosine >= 0.9999, "cosine {cosine} for {sentence:?}");
    }
}
