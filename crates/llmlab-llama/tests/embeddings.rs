//! GGUF embeddings on a real model (Gemma 3 270M read as an embedding
//! model): many sequences in one decode with mean pooling (the case where
//! llama.cpp's own pooling aborts), chunking and truncation of long inputs,
//! token-array inputs, pooling choices and vocabulary checks.

mod common;

use std::sync::OnceLock;

use llmlab_core::embedding::{cosine_similarity, EmbedInput, Pooling};
use llmlab_core::pipeline::EmbeddingPipeline;
use llmlab_core::registry::ModelKind;
use llmlab_core::ErrorKind;
use llmlab_llama::LlamaEmbeddingPipeline;

/// Tokens one window holds in these tests, small so that chunking is cheap
/// to reach.
const WINDOW: u32 = 64;

fn embedder(pooling: Pooling) -> &'static LlamaEmbeddingPipeline {
    static MEAN: OnceLock<LlamaEmbeddingPipeline> = OnceLock::new();
    static LAST: OnceLock<LlamaEmbeddingPipeline> = OnceLock::new();
    let cell = match pooling {
        Pooling::Mean => &MEAN,
        _ => &LAST,
    };
    cell.get_or_init(|| {
        let mut spec = common::spec("gemma-3-270m");
        spec.kind = ModelKind::Embedding;
        let llama = spec.backend.llama_mut().expect("a llama model");
        llama.context_size = WINDOW;
        llama.batch_size = 512;
        spec.embedding.pooling = Some(pooling);
        LlamaEmbeddingPipeline::load(&spec).expect("model loads")
    })
}

fn text(s: &str) -> EmbedInput {
    EmbedInput::Text(s.to_owned())
}

const SENTENCES: [&str; 6] = [
    "The cat sat on the mat.",
    "A cat was sitting on a rug.",
    "Quarterly revenue grew by five percent.",
    "fn main() { println!(\"hello\"); }",
    "Überraschung! 日本語のテキストです。",
    "Hi",
];

#[test]
fn many_sequences_in_one_decode_match_each_alone() {
    let _serial = common::serial();
    let model = embedder(Pooling::Mean);
    let inputs: Vec<EmbedInput> = SENTENCES.iter().map(|s| text(s)).collect();
    let together = model.embed(&inputs, false).unwrap();
    assert_eq!(together.len(), SENTENCES.len());
    for (input, batched) in inputs.iter().zip(&together) {
        let alone = &model.embed(std::slice::from_ref(input), false).unwrap()[0];
        assert_eq!(alone.tokens, batched.tokens);
        assert_eq!(batched.vector.len(), model.dimensions());
        assert!(batched.vector.iter().all(|x| x.is_finite()));
        let cosine = cosine_similarity(&alone.vector, &batched.vector);
        assert!(cosine > 0.9999, "{input:?}: cosine {cosine}");
    }
    // The same text twice in one call gives the same vector.
    let twice = model.embed(&[text("same"), text("same")], false).unwrap();
    assert!(cosine_similarity(&twice[0].vector, &twice[1].vector) > 0.99999);
}

#[test]
fn long_inputs_are_chunked_or_truncated_on_request_never_silently() {
    let _serial = common::serial();
    let model = embedder(Pooling::Mean);
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(30);
    let chunked = &model.embed(&[text(&long)], false).unwrap()[0];
    assert!(chunked.tokens > 3 * WINDOW as usize, "{} tokens", chunked.tokens);
    let truncated = &model.embed(&[text(&long)], true).unwrap()[0];
    assert_eq!(truncated.tokens, WINDOW as usize);
    // Both describe the same repetitive text.
    assert!(cosine_similarity(&chunked.vector, &truncated.vector) > 0.9);
}

#[test]
fn token_ids_read_like_the_text_they_spell() {
    let _serial = common::serial();
    let model = embedder(Pooling::Mean);
    let from_text = &model.embed(&[text("hello world")], false).unwrap()[0];
    // Gemma's ids of "hello world" without the BOS its tokenizer adds.
    let ids = model.tokenize("hello world").unwrap();
    let from_ids = &model.embed(&[EmbedInput::Tokens(ids)], false).unwrap()[0];
    assert_eq!(from_text.tokens, from_ids.tokens);
    assert!(cosine_similarity(&from_text.vector, &from_ids.vector) > 0.99999);
    let err = model
        .embed(&[EmbedInput::Tokens(vec![u32::MAX - 1])], false)
        .unwrap_err();
    assert_eq!(
        (err.kind, err.param.as_deref()),
        (ErrorKind::InvalidRequest, Some("input[0]"))
    );
}

#[test]
fn last_token_pooling_differs_from_mean() {
    let _serial = common::serial();
    let mean = &embedder(Pooling::Mean).embed(&[text(SENTENCES[0])], false).unwrap()[0];
    let last = &embedder(Pooling::Last).embed(&[text(SENTENCES[0])], false).unwrap()[0];
    assert_eq!(mean.tokens, last.tokens);
    assert!(cosine_similarity(&mean.vector, &last.vector) < 0.999);
}
