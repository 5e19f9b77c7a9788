//! `llmlab serve`: the OpenAI-compatible HTTP server.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use llmlab_core::config;
use llmlab_core::keep_alive::KeepAlive;
use llmlab_core::service::Service;

use super::CommonArgs;
use crate::factory::BackendFactory;
use crate::http::{self, AppState, HttpConfig};

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[arg(long, env = "LLMLAB_HOST", default_value = config::DEFAULT_HOST)]
    pub host: IpAddr,
    #[arg(long, env = "LLMLAB_PORT", default_value_t = config::DEFAULT_PORT)]
    pub port: u16,
    /// Require `Authorization: Bearer <key>` on /v1 routes.
    #[arg(long, env = "LLMLAB_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Largest accepted request body, in bytes.
    #[arg(long, env = "LLMLAB_MAX_BODY_BYTES", default_value_t = config::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Seconds between SSE keep-alive comments.
    #[arg(long, env = "LLMLAB_SSE_KEEP_ALIVE_SECS", default_value_t = config::DEFAULT_SSE_KEEP_ALIVE_SECS)]
    pub sse_keep_alive_secs: u64,
    /// Send the usage chunk on every stream, even without stream_options.include_usage.
    #[arg(long, env = "LLMLAB_ALWAYS_INCLUDE_USAGE")]
    pub always_include_usage: bool,
    /// Seconds in-flight requests get to finish on shutdown before they are cancelled.
    #[arg(long, env = "LLMLAB_SHUTDOWN_GRACE_SECS", default_value_t = config::DEFAULT_SHUTDOWN_GRACE_SECS)]
    pub shutdown_grace_secs: u64,
    /// Memory all loaded models may hold together (e.g. 12G); idle models are
    /// unloaded, least recently used first, to make room [default: 90% of RAM]
    #[arg(long, env = "LLMLAB_MEMORY_BUDGET", value_parser = config::parse_bytes)]
    pub memory_budget: Option<u64>,
    /// GPU memory the offloaded layers of all loaded models may hold
    /// together [default: 90% of the GPUs' memory; none without a GPU]
    #[arg(long, env = "LLMLAB_GPU_MEMORY_BUDGET", value_parser = config::parse_bytes)]
    pub gpu_memory_budget: Option<u64>,
    /// Do not load the default model at start-up (it loads on first use).
    #[arg(long, env = "LLMLAB_NO_PRELOAD")]
    pub no_preload: bool,
}

pub fn run(common: &CommonArgs, args: ServeArgs) -> anyhow::Result<()> {
    let registry = common.registry()?;
    // Install the metrics recorder before anything records.
    http::prometheus::recorder();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let mut service = Service::new(registry, Arc::new(BackendFactory));
        if let Some(budget) = args.memory_budget.or_else(config::default_memory_budget) {
            service = service.with_memory_budget(budget);
        }
        let gpu_default = || llmlab_llama::gpu_memory_total().map(config::budget_share);
        if let Some(budget) = args.gpu_memory_budget.or_else(gpu_default) {
            service = service.with_gpu_memory_budget(budget);
        }
        let service = Arc::new(service);
        service.spawn_keep_alive();
        // The default model (unless --no-preload) and models marked
        // `preload` load at start-up and stay loaded: /health reports the
        // default one.
        let preload: Vec<String> = service
            .registry()
            .models
            .iter()
            .filter(|m| m.preload || (!args.no_preload && m.id == service.default_model()))
            .map(|m| m.id.clone())
            .collect();
        let loader = Arc::clone(&service);
        tokio::spawn(async move {
            for model in preload {
                if let Err(e) = loader.load(&model, Some(KeepAlive::Forever)).await {
                    tracing::error!(%model, error = %e, "preloading failed");
                }
            }
        });
        let state = AppState {
            service,
            config: Arc::new(HttpConfig {
                api_key: args.api_key.filter(|k| !k.is_empty()),
                max_body_bytes: args.max_body_bytes,
                sse_keep_alive: Duration::from_secs(args.sse_keep_alive_secs.max(1)),
                always_include_usage: args.always_include_usage,
            }),
            shutdown: CancellationToken::new(),
        };
        http::serve(
            SocketAddr::new(args.host, args.port),
            state,
            Duration::from_secs(args.shutdown_grace_secs),
        )
        .await
    })
}
