//! `llmlab bench-engine`: decode speed of the engine itself, measured the
//! way llama-bench's `tg` test does (a fixed number of generated tokens,
//! end-of-generation ignored, prompt time excluded), so the two numbers can
//! be compared directly. See bench/RESULTS.md.

use clap::Args;
use tokio_util::sync::CancellationToken;

use llmlab_core::pipeline::ChatPipeline;
use llmlab_core::{CompletionRequest, GenerationParams, SamplingParams};
use llmlab_llama::LlamaChatPipeline;

use super::CommonArgs;

#[derive(Debug, Args)]
pub struct BenchEngineArgs {
    #[arg(short, long)]
    pub model: Option<String>,
    /// Tokens to generate per repetition.
    #[arg(long, default_value_t = 128)]
    pub tokens: u32,
    #[arg(long, default_value_t = 3)]
    pub reps: u32,
}

pub fn run(common: &CommonArgs, args: BenchEngineArgs) -> anyhow::Result<()> {
    let registry = common.registry()?;
    let id = args.model.clone().unwrap_or_else(|| registry.default_model.clone());
    let spec = registry.require(&id)?;
    let pipeline = LlamaChatPipeline::load(spec)?;
    let mut speeds = Vec::new();
    // One warm-up run, like llama-bench.
    for rep in 0..=args.reps {
        let request = CompletionRequest {
            model: id.clone(),
            prompt: "Once".into(),
            keep_alive: None,
            params: GenerationParams {
                sampling: SamplingParams {
                    temperature: Some(0.0),
                    ..SamplingParams::default()
                },
                max_tokens: Some(args.tokens),
                stop: Vec::new(),
                ignore_eos: true,
                logprobs: None,
                json_schema: None,
                guards: None,
            },
        };
        let response = pipeline
            .complete(request, CancellationToken::new())?
            .collect_blocking()?;
        if rep > 0 {
            speeds.push(response.timings.generation_tokens_per_second);
        }
    }
    let mean = speeds.iter().sum::<f64>() / speeds.len() as f64;
    let sd =
        (speeds.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / speeds.len().max(2).saturating_sub(1) as f64).sqrt();
    println!(
        "model={id} threads={} tg{}: {mean:.2} ± {sd:.2} t/s",
        spec.threads, args.tokens
    );
    Ok(())
}
