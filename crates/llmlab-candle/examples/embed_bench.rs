//! In-process embedding throughput: batches of short sentences through
//! `BertEmbeddingPipeline::embed`, the call the service makes, timed
//! without any transport. Prints one JSON line.
//!
//! Usage: cargo run -p llmlab-candle --example embed_bench -- [MODEL_ID] [BATCH] [ROUNDS]
//! (defaults: all-minilm-l6-v2, 64, 10). `bench/embeddings-inprocess` runs it
//! next to sentence-transformers on the same sentences.

use std::path::Path;
use std::time::Instant;

use llmlab_candle::BertEmbeddingPipeline;
use llmlab_core::embedding::EmbedInput;
use llmlab_core::pipeline::EmbeddingPipeline;
use llmlab_core::registry::Registry;

/// The sentences of one batch: varied short sentences, the same list the
/// Python side of the benchmark builds.
fn sentences(batch: usize) -> Vec<String> {
    const SUBJECTS: [&str; 8] = [
        "The cat",
        "A developer",
        "My neighbour",
        "The old train",
        "This library",
        "A small bird",
        "The committee",
        "Our server",
    ];
    const ACTIONS: [&str; 8] = [
        "sleeps on the warm windowsill",
        "fixes a bug before lunch",
        "plants tomatoes in the garden",
        "arrives late at the station",
        "parses JSON faster than expected",
        "sings at dawn near the river",
        "approves the new budget",
        "answers thousands of requests",
    ];
    (0..batch)
        .map(|i| format!("{} {} (sentence {i}).", SUBJECTS[i % 8], ACTIONS[(i / 8) % 8]))
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let id = args.first().map_or("all-minilm-l6-v2", String::as_str);
    let batch: usize = args.get(1).map_or(Ok(64), |s| s.parse())?;
    let rounds: usize = args.get(2).map_or(Ok(10), |s| s.parse())?;

    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/models.yaml");
    let registry = Registry::load(&file, &llmlab_core::config::models_dir())?;
    let spec = registry.require(id)?;
    let started = Instant::now();
    let model = BertEmbeddingPipeline::load(spec)?;
    let load_s = started.elapsed().as_secs_f64();

    let inputs: Vec<EmbedInput> = sentences(batch).into_iter().map(EmbedInput::Text).collect();
    // Warm-up: first-touch page faults and thread-pool start are not throughput.
    let tokens: usize = model.embed(&inputs, false)?.iter().map(|e| e.tokens).sum();
    let mut rates = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let start = Instant::now();
        model.embed(&inputs, false)?;
        rates.push(batch as f64 / start.elapsed().as_secs_f64());
    }
    let mean = rates.iter().sum::<f64>() / rates.len().max(1) as f64;
    let sd = (rates.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / rates.len().max(1) as f64).sqrt();
    let threads = rayon::current_num_threads();
    println!(
        "{{\"impl\":\"llmlab-candle\",\"matmul\":\"{}\",\"model\":\"{id}\",\"batch\":{batch},\"rounds\":{rounds},\"threads\":{threads},\
         \"tokens_per_batch\":{tokens},\"load_s\":{load_s:.2},\"sentences_per_s\":{mean:.1},\"sd\":{sd:.1}}}",
        model.matmul_kernel()
    );
    Ok(())
}
