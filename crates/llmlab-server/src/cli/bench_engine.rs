//! `llmlab bench-engine`: decode speed of the engine itself, measured the
//! way llama-bench's `tg` test does (a fixed number of generated tokens,
//! end-of-generation ignored, prompt time excluded), so the two numbers can
//! be compared directly. See bench/RESULTS.md.

use clap::Args;
use tokio_util::sync::CancellationToken;

use llmlab_core::{CompletionRequest, GenerationParams, SamplingParams};

use super::service::ServiceArgs;
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
    #[command(flatten)]
    pub service: ServiceArgs,
}

pub fn run(common: &CommonArgs, args: BenchEngineArgs) -> anyhow::Result<()> {
    let registry = common.registry()?;
    let id = args.model.clone().unwrap_or_else(|| registry.default_model.clone());
    let threads = registry
        .require(&id)?
        .backend
        .llama()
        .map(|llama| llama.threads)
        .ok_or_else(|| anyhow::anyhow!("bench-engine measures llama models; '{id}' is not one"))?;
    // Through the core service like every caller; ignore_eos requests run
    // without guards, so the engine's speed is what is measured.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let service = runtime.block_on(async { args.service.build(registry) });
    runtime.block_on(service.load(&id, None))?;
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
                batch_invariant: None,
            },
        };
        let response = runtime.block_on(async {
            service
                .complete(request, CancellationToken::new())
                .await?
                .collect_response()
                .await
        })?;
        if rep > 0 {
            speeds.push(response.timings.generation_tokens_per_second);
        }
    }
    let mean = speeds.iter().sum::<f64>() / speeds.len() as f64;
    let sd =
        (speeds.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / speeds.len().max(2).saturating_sub(1) as f64).sqrt();
    println!(
        "model={id} threads={threads} tg{}: {mean:.2} ± {sd:.2} t/s",
        args.tokens
    );
    Ok(())
}
