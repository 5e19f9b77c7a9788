//! The BERT pipeline on the real all-MiniLM-L6-v2 against vectors that
//! sentence-transformers (PyTorch) made from the same files
//! (`scripts/make-embedding-fixture.py`, see `minilm_support`).
//! scripts/test.sh pulls the model first; without it these tests say so
//! and pass.

mod minilm_support;

use std::sync::OnceLock;

use llmlab_candle::BertEmbeddingPipeline;
use llmlab_core::embedding::{cosine_similarity, l2_normalize, EmbedInput, RawEmbedding};
use llmlab_core::pipeline::EmbeddingPipeline;
use llmlab_core::ErrorKind;
use minilm_support::{fixture, model_present, spec};

/// The one loaded model of this test binary, or `None` (with a message)
/// when its folder has not been pulled.
fn pipeline() -> Option<&'static BertEmbeddingPipeline> {
    static CELL: OnceLock<Option<BertEmbeddingPipeline>> = OnceLock::new();
    CELL.get_or_init(|| {
        let spec = spec();
        model_present(&spec).then(|| BertEmbeddingPipeline::load(&spec).expect("model loads"))
    })
    .as_ref()
}

fn unit(raw: &RawEmbedding) -> Vec<f32> {
    let mut v = raw.vector.clone();
    l2_normalize(&mut v);
    v
}

fn texts(sentences: &[&str]) -> Vec<EmbedInput> {
    sentences.iter().map(|s| EmbedInput::Text((*s).to_owned())).collect()
}

/// About 1,000 tokens of varied text: two windows of 512.
fn long_text() -> String {
    (0..120)
        .map(|i| format!("Paragraph {i} talks about rivers, mountains and the weather in spring."))
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn matches_sentence_transformers() {
    let Some(model) = pipeline() else { return };
    let fixture = fixture();
    assert!(fixture.model.contains("all-MiniLM-L6-v2"), "{}", fixture.model);
    assert_eq!(model.dimensions(), 384);
    let inputs: Vec<EmbedInput> = fixture.sentences.iter().cloned().map(EmbedInput::Text).collect();
    let got = model.embed(&inputs, false).unwrap();
    assert_eq!(got.len(), fixture.sentences.len());
    let (mut worst, mut largest_gap) = (f32::INFINITY, 0f32);
    for ((sentence, reference), raw) in fixture.sentences.iter().zip(&fixture.embeddings).zip(&got) {
        assert_eq!(raw.vector.len(), reference.len());
        let unit = unit(raw);
        let cosine = cosine_similarity(&unit, reference);
        assert!(cosine >= 0.9999, "cosine {cosine} for {sentence:?}");
        let gap = unit
            .iter()
            .zip(reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        largest_gap = largest_gap.max(gap);
        assert!(raw.tokens >= 3, "{sentence:?} read {} tokens", raw.tokens);
        worst = worst.min(cosine);
    }
    eprintln!(
        "vs sentence-transformers ({}): lowest cosine {worst}, largest component gap {largest_gap:e}",
        model.matmul_kernel()
    );
}

#[test]
fn long_inputs_are_chunked_or_truncated_never_cut_silently() {
    let Some(model) = pipeline() else { return };
    let text = long_text();
    let chunked = model.embed(&texts(&[&text]), false).unwrap().remove(0);
    assert!(chunked.tokens > 512, "chunked input read {} tokens", chunked.tokens);
    assert!(chunked.vector.iter().all(|x| x.is_finite()));
    let truncated = model.embed(&texts(&[&text]), true).unwrap().remove(0);
    assert_eq!(truncated.tokens, 512);
    // The first window is the truncated input; the whole is its mean with
    // a window about the same topic, so the directions stay close.
    let cosine = cosine_similarity(&chunked.vector, &truncated.vector);
    assert!(cosine > 0.9, "chunked vs first window: cosine {cosine}");
}

#[test]
fn token_arrays_embed_like_their_text() {
    let Some(model) = pipeline() else { return };
    let text = "Token arrays are raw vocabulary ids without the special tokens.";
    // The ids of the text without [CLS]/[SEP], as the tokenizer gives them
    // once the file's padding to 128 is off.
    let mut tokenizer = tokenizers::Tokenizer::from_file(spec().path.join("tokenizer.json")).unwrap();
    tokenizer.with_padding(None);
    let ids = tokenizer.encode(text, false).unwrap().get_ids().to_vec();
    assert!(!ids.is_empty() && ids.len() < 100);
    let got = model
        .embed(&[EmbedInput::Text(text.into()), EmbedInput::Tokens(ids.clone())], false)
        .unwrap();
    assert_eq!(got[0].tokens, ids.len() + 2);
    assert_eq!(got[1].tokens, got[0].tokens);
    let cosine = cosine_similarity(&got[0].vector, &got[1].vector);
    assert!(cosine >= 0.99999, "cosine {cosine}");
}

#[test]
fn out_of_vocabulary_ids_are_invalid_requests() {
    let Some(model) = pipeline() else { return };
    let err = model
        .embed(&[EmbedInput::Tokens(vec![2023, 30522])], false)
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
    assert_eq!(err.param.as_deref(), Some("input[0]"));
    assert!(err.message.contains("30522"), "{}", err.message);
}

#[test]
fn batches_equal_one_at_a_time() {
    let Some(model) = pipeline() else { return };
    let long = long_text();
    // Lengths differ widely, so the batch pads most members.
    let sentences = [
        "Hi",
        "The quick brown fox jumps over the lazy dog.",
        long.as_str(),
        "Embeddings map text to vectors; similar meanings land close together.",
        "fn main() { println!(\"hello\"); }",
    ];
    let together = model.embed(&texts(&sentences), false).unwrap();
    for (sentence, batched) in sentences.iter().zip(&together) {
        let alone = model.embed(&texts(&[sentence]), false).unwrap().remove(0);
        assert_eq!(alone.tokens, batched.tokens);
        let cosine = cosine_similarity(&alone.vector, &batched.vector);
        assert!(cosine >= 0.99999, "cosine {cosine} for {sentence:.40}");
    }
}
