//! `llmlab worker`: take jobs from RabbitMQ (also `llmlab serve --amqp`).

use std::time::Duration;

use anyhow::Context;
use clap::Args;

use llmlab_core::config;
use llmlab_core::registry::Registry;

use super::service::ServiceArgs;
use super::CommonArgs;
use crate::amqp::{Topology, WorkerConfig, DEFAULT_MAX_REDELIVERIES};

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// RabbitMQ to take jobs from, e.g. amqp://guest:guest@127.0.0.1:5672/%2f
    #[arg(long, env = "LLMLAB_AMQP_URL", hide_env_values = true)]
    pub amqp: Option<String>,
    /// Prefix of every queue name.
    #[arg(long, env = "LLMLAB_AMQP_PREFIX", default_value = config::DEFAULT_AMQP_PREFIX)]
    pub queue_prefix: String,
    /// Models whose queues this worker consumes, comma-separated [default:
    /// every model of the registry]
    #[arg(long, env = "LLMLAB_WORKER_MODELS", value_delimiter = ',')]
    pub worker_models: Vec<String>,
    /// Jobs run at once [default: the largest `parallel` of those models]
    #[arg(long, env = "LLMLAB_WORKER_SLOTS")]
    pub slots: Option<u16>,
    /// Tries of a job that fails for the server's reasons before it is
    /// dead-lettered.
    #[arg(long, env = "LLMLAB_JOB_ATTEMPTS", default_value_t = config::DEFAULT_JOB_ATTEMPTS)]
    pub job_attempts: u32,
    /// Seconds before a failed job goes back on its queue.
    #[arg(long, env = "LLMLAB_JOB_RETRY_DELAY_SECS", default_value_t = config::DEFAULT_JOB_RETRY_DELAY_SECS)]
    pub job_retry_delay_secs: f64,
    /// Times a job may come back from workers that went away without
    /// answering (crashed, killed, disconnected) and still run again; one
    /// more and it is dead-lettered.
    #[arg(long, env = "LLMLAB_JOB_MAX_REDELIVERIES", default_value_t = DEFAULT_MAX_REDELIVERIES)]
    pub job_max_redeliveries: u32,
    /// Names this worker in replies and in the broker [default: host-pid]
    #[arg(long, env = "LLMLAB_WORKER_ID")]
    pub worker_id: Option<String>,
}

impl WorkerArgs {
    /// The worker's settings, or `None` when no broker is named. Job
    /// bodies are limited to `max_body_bytes` (the command's
    /// `--max-body-bytes`).
    pub fn config(
        &self,
        registry: &Registry,
        grace: Duration,
        max_body_bytes: usize,
    ) -> anyhow::Result<Option<WorkerConfig>> {
        let Some(url) = self.amqp.clone().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let models: Vec<String> = if self.worker_models.is_empty() {
            registry.models.iter().map(|m| m.id.clone()).collect()
        } else {
            for id in &self.worker_models {
                registry.require(id).context("--worker-models")?;
            }
            self.worker_models.clone()
        };
        let largest_parallel = models
            .iter()
            .filter_map(|id| registry.get(id))
            // A model without sequence slots of its own (candle) counts as
            // the default.
            .map(|m| {
                m.backend
                    .llama()
                    .map_or(config::DEFAULT_PARALLEL, |llama| llama.parallel)
            })
            .max()
            .unwrap_or(config::DEFAULT_PARALLEL);
        let slots = match self.slots {
            Some(0) => anyhow::bail!("--slots must be at least 1"),
            Some(slots) => slots,
            None => u16::try_from(largest_parallel).unwrap_or(u16::MAX),
        };
        anyhow::ensure!(self.job_attempts >= 1, "--job-attempts must be at least 1");
        anyhow::ensure!(
            self.job_retry_delay_secs.is_finite() && self.job_retry_delay_secs >= 0.0,
            "--job-retry-delay-secs must be 0 or more"
        );
        let worker_id = self.worker_id.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
        Ok(Some(WorkerConfig {
            url,
            topology: Topology {
                prefix: self.queue_prefix.clone(),
            },
            models,
            slots,
            max_attempts: self.job_attempts,
            retry_delay: Duration::from_secs_f64(self.job_retry_delay_secs),
            max_redeliveries: self.job_max_redeliveries,
            max_body_bytes,
            worker_id,
            grace,
        }))
    }
}

#[derive(Debug, Args)]
pub struct WorkerCommandArgs {
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Seconds in-flight jobs get to finish on shutdown before they are
    /// cancelled and go back on their queues.
    #[arg(long, env = "LLMLAB_SHUTDOWN_GRACE_SECS", default_value_t = config::DEFAULT_SHUTDOWN_GRACE_SECS)]
    pub shutdown_grace_secs: u64,
    /// Largest accepted job body, in bytes (the same flag, and limit, as
    /// `serve`'s request bodies); a larger job gets a 413 and is
    /// dead-lettered unread.
    #[arg(long, env = "LLMLAB_MAX_BODY_BYTES", default_value_t = config::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Serve the worker's Prometheus metrics (jobs by queue and outcome,
    /// requests, generations) at `http://<host>:<port>/metrics`.
    #[arg(long, env = "LLMLAB_METRICS_PORT")]
    pub metrics_port: Option<u16>,
    /// Address the metrics port listens on.
    #[arg(long, env = "LLMLAB_HOST", default_value = config::DEFAULT_HOST)]
    pub host: std::net::IpAddr,
}

pub fn run(common: &CommonArgs, args: WorkerCommandArgs) -> anyhow::Result<()> {
    let registry = common.registry()?;
    let grace = Duration::from_secs(args.shutdown_grace_secs);
    let config = args
        .worker
        .config(&registry, grace, args.max_body_bytes)?
        .context("the worker needs a broker: pass --amqp URL or set LLMLAB_AMQP_URL")?;
    // Install the metrics recorder before anything records.
    crate::http::prometheus::recorder();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let service = args.service.build(registry);
        let stopping = crate::signals::stop_on_signal();
        if let Some(port) = args.metrics_port {
            let listener = tokio::net::TcpListener::bind(std::net::SocketAddr::new(args.host, port)).await?;
            tracing::info!(port, "serving worker metrics at /metrics");
            let app = axum::Router::new().route("/metrics", axum::routing::get(crate::http::metrics));
            let until = stopping.clone();
            tokio::spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { until.cancelled().await })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "the metrics listener failed");
                }
            });
        }
        crate::amqp::run(config, service, stopping).await
    })
}
