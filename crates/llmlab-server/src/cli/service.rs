//! Building the core service from the command line (shared by `serve` and
//! `worker`).

use std::sync::Arc;

use clap::Args;

use llmlab_core::config;
use llmlab_core::registry::Registry;
use llmlab_core::service::Service;

use crate::factory::BackendFactory;
use crate::image_fetch::HttpImageFetcher;

#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// Memory all loaded models may hold together (e.g. 12G); idle models are
    /// unloaded, least recently used first, to make room [default: 90% of RAM]
    #[arg(long, env = "LLMLAB_MEMORY_BUDGET", value_parser = config::parse_bytes)]
    pub memory_budget: Option<u64>,
    /// GPU memory the offloaded layers of all loaded models may hold
    /// together [default: 90% of the GPUs' memory free at start; none
    /// without a GPU]
    #[arg(long, env = "LLMLAB_GPU_MEMORY_BUDGET", value_parser = config::parse_bytes)]
    pub gpu_memory_budget: Option<u64>,
    /// Fetch http(s) image URLs in chat messages (public addresses only,
    /// 10 s, within the image size limit); without it only data: URLs are
    /// read
    #[arg(long, env = "LLMLAB_ALLOW_IMAGE_URLS")]
    pub allow_image_urls: bool,
}

impl ServiceArgs {
    /// The service over the real backends, its keep-alive sweeper running
    /// (call inside a tokio runtime).
    pub fn build(&self, registry: Registry) -> Arc<Service> {
        let mut service = Service::new(registry, Arc::new(BackendFactory));
        if let Some(budget) = self.memory_budget.or_else(config::default_memory_budget) {
            service = service.with_memory_budget(budget);
        }
        let gpu_default = || BackendFactory::gpu_memory_free().map(config::budget_share);
        if let Some(budget) = self.gpu_memory_budget.or_else(gpu_default) {
            tracing::info!(gpu_memory_budget_mib = budget >> 20, "GPU memory budget");
            service = service.with_gpu_memory_budget(budget);
        }
        if self.allow_image_urls {
            service = service.with_image_fetcher(Arc::new(HttpImageFetcher::default()));
        }
        let service = Arc::new(service);
        service.spawn_keep_alive();
        service
    }
}
