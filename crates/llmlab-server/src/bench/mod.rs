//! `llmlab bench`: a load generator for any OpenAI-compatible endpoint
//! (llmlab or a peer such as llama-server), sweeping concurrency levels.

mod client;
pub mod stats;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

pub use client::Workload;
use stats::{LevelReport, RequestSample};

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Base URL of the OpenAI-compatible API (ending in /v1).
    #[arg(long, default_value_t = llmlab_core::config::default_api_base())]
    pub url: String,
    /// Model id to request.
    #[arg(long, default_value = "")]
    pub model: String,
    /// Concurrency levels to sweep, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    pub concurrency: Vec<usize>,
    /// Requests per concurrency level.
    #[arg(long, default_value_t = 16)]
    pub requests: usize,
    /// Warm-up requests before the sweep (not measured).
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Approximate prompt length in tokens (a repeated word).
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Output tokens per request (end-of-generation ignored where supported).
    #[arg(long, default_value_t = 128)]
    pub output_tokens: u32,
    /// Give every request a prompt of its own (a number in front), so that
    /// no prompt cache helps: prefill is measured, not prefix reuse.
    #[arg(long)]
    pub distinct_prompts: bool,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

impl BenchArgs {
    pub fn workload(&self) -> Workload {
        Workload {
            base_url: self.url.clone(),
            model: self.model.clone(),
            // One short common word per token for BPE vocabularies.
            prompt: " hello".repeat(self.prompt_tokens.max(1)),
            max_tokens: self.output_tokens,
            distinct_prompts: self.distinct_prompts,
        }
    }
}

/// Run the sweep and return one report per concurrency level.
pub async fn run(args: &BenchArgs) -> anyhow::Result<Vec<LevelReport>> {
    // A fresh connection per request (a loopback connect costs tens of
    // microseconds): llama-server closes idle keep-alive connections at
    // times just as a client reuses one, which failed requests that it
    // never saw and measured that race instead of the server.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.timeout_secs))
        .pool_max_idle_per_host(0)
        .build()?;
    let work = Arc::new(args.workload());
    // Serials count up over the whole run, warm-up included.
    let serials = Arc::new(std::sync::atomic::AtomicU64::new(0));
    for _ in 0..args.warmup {
        client::run_one(&client, &work, serials.fetch_add(1, Ordering::SeqCst)).await?;
    }
    let total = (args.requests * args.concurrency.len()) as u64;
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} requests {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut reports = Vec::new();
    for &concurrency in &args.concurrency {
        bar.set_message(format!("(concurrency {concurrency})"));
        reports.push(run_level(&client, &work, &serials, concurrency.max(1), args.requests, &bar).await);
    }
    bar.finish_and_clear();
    Ok(reports)
}

async fn run_level(
    client: &reqwest::Client,
    work: &Arc<Workload>,
    serials: &Arc<std::sync::atomic::AtomicU64>,
    concurrency: usize,
    requests: usize,
    bar: &ProgressBar,
) -> LevelReport {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let (client, work, next, bar) = (client.clone(), Arc::clone(work), Arc::clone(&next), bar.clone());
        let serials = Arc::clone(serials);
        tokio::spawn(async move {
            let mut samples: Vec<RequestSample> = Vec::new();
            let mut errors = 0;
            while next.fetch_add(1, Ordering::SeqCst) < requests {
                match client::run_one(&client, &work, serials.fetch_add(1, Ordering::SeqCst)).await {
                    Ok(sample) => samples.push(sample),
                    Err(e) => {
                        errors += 1;
                        bar.suspend(|| eprintln!("request failed: {e:#}"));
                    }
                }
                bar.inc(1);
            }
            (samples, errors)
        })
    });
    let mut samples = Vec::new();
    let mut errors = 0;
    for (s, e) in futures::future::join_all(workers).await.into_iter().flatten() {
        samples.extend(s);
        errors += e;
    }
    LevelReport::new(concurrency, &samples, errors, started.elapsed().as_secs_f64())
}
