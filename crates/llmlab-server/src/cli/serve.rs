//! `llmlab serve`: the OpenAI-compatible HTTP server, and beside it, when
//! asked, the gRPC door and a job-queue worker, all on one core service.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use llmlab_core::config;

use super::service::ServiceArgs;
use super::worker::WorkerArgs;
use super::CommonArgs;
use crate::http::{self, AppState, HttpConfig};

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[arg(long, env = "LLMLAB_HOST", default_value = config::DEFAULT_HOST)]
    pub host: IpAddr,
    #[arg(long, env = "LLMLAB_PORT", default_value_t = config::DEFAULT_PORT)]
    pub port: u16,
    /// Require `Authorization: Bearer <key>` on every route but /health,
    /// /openapi.json and /metrics (see --metrics-require-key).
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
    /// Do not load the default model at start-up (it loads on first use).
    #[arg(long, env = "LLMLAB_NO_PRELOAD")]
    pub no_preload: bool,
    /// Also serve gRPC (llmlab.v1.Llmlab, health, reflection) on this port.
    #[arg(long, env = "LLMLAB_GRPC_PORT")]
    pub grpc_port: Option<u16>,
    /// Seconds a client has to send a request's headers; an idle keep-alive
    /// connection is closed after as long.
    #[arg(long, env = "LLMLAB_HEADER_TIMEOUT_SECS", default_value_t = config::DEFAULT_HEADER_TIMEOUT_SECS)]
    pub header_timeout_secs: u64,
    /// Seconds a client has to send a whole request body (408 otherwise).
    #[arg(long, env = "LLMLAB_BODY_TIMEOUT_SECS", default_value_t = config::DEFAULT_BODY_TIMEOUT_SECS)]
    pub body_timeout_secs: u64,
    /// Connections served at once on each port (WebSockets included); more wait to be accepted.
    #[arg(long, env = "LLMLAB_MAX_CONNECTIONS", default_value_t = config::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// With --api-key, /metrics requires the key too.
    #[arg(long, env = "LLMLAB_METRICS_REQUIRE_KEY")]
    pub metrics_require_key: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
    /// With --amqp, also take jobs from RabbitMQ.
    #[command(flatten)]
    pub worker: WorkerArgs,
}

pub fn run(common: &CommonArgs, args: ServeArgs) -> anyhow::Result<()> {
    let registry = common.registry()?;
    // Install the metrics recorder before anything records.
    http::prometheus::recorder();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let grace = Duration::from_secs(args.shutdown_grace_secs);
    // The worker inside the server takes the same body limit as HTTP.
    let worker = args.worker.config(&registry, grace, args.max_body_bytes)?;
    runtime.block_on(async move {
        let service = args.service.build(registry);
        // The default model (unless --no-preload) and models marked
        // `preload` load at start-up and stay loaded; /health is ready once
        // these loads are over.
        let preload: Vec<String> = service
            .registry()
            .models
            .iter()
            .filter(|m| m.preload || (!args.no_preload && m.id == service.default_model()))
            .map(|m| m.id.clone())
            .collect();
        service.preload(preload);
        let stopping = crate::signals::stop_on_signal();
        let state = AppState {
            service: Arc::clone(&service),
            config: Arc::new(HttpConfig {
                api_key: args.api_key.filter(|k| !k.is_empty()),
                max_body_bytes: args.max_body_bytes,
                sse_keep_alive: Duration::from_secs(args.sse_keep_alive_secs.max(1)),
                always_include_usage: args.always_include_usage,
            }),
            shutdown: CancellationToken::new(),
        };
        let options = http::ServerOptions {
            header_timeout: Duration::from_secs(args.header_timeout_secs.max(1)),
            body_timeout: Duration::from_secs(args.body_timeout_secs.max(1)),
            max_connections: args.max_connections.max(1),
            metrics_require_key: args.metrics_require_key,
            ..http::ServerOptions::default()
        };
        let mut doors = tokio::task::JoinSet::new();
        if let Some(port) = args.grpc_port {
            let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.host, port)).await?;
            let config = crate::grpc::GrpcConfig {
                api_key: state.config.api_key.clone(),
                max_message_bytes: Some(state.config.max_body_bytes),
            };
            let limits = crate::grpc::ConnectionLimits {
                max_connections: Some(options.max_connections),
                handshake_timeout: Some(options.header_timeout),
            };
            let (service, stopping, hard_stop) = (Arc::clone(&service), stopping.clone(), state.shutdown.clone());
            doors.spawn(crate::grpc::serve_limited(
                listener, service, config, limits, stopping, hard_stop,
            ));
        }
        if let Some(worker) = worker {
            doors.spawn(crate::amqp::run(worker, Arc::clone(&service), stopping.clone()));
        }
        let addr = SocketAddr::new(args.host, args.port);
        doors.spawn(http::serve(addr, state, options, grace, stopping.clone()));
        // The first door to fail stops the others.
        while let Some(outcome) = doors.join_next().await {
            if let Err(e) = outcome? {
                stopping.cancel();
                return Err(e);
            }
        }
        Ok(())
    })
}
