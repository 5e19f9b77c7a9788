//! The Prometheus recorder behind `GET /metrics`. Metric names, help texts
//! and buckets come from `llmlab_core::metrics`; this file only installs the
//! exporter (once per process) and renders it.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use llmlab_core::metrics;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the process-wide recorder (first call) and return its handle.
pub fn recorder() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let mut builder = PrometheusBuilder::new();
            for name in metrics::HISTOGRAMS {
                if let Some(buckets) = metrics::buckets_for(name) {
                    builder = builder
                        .set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets)
                        .unwrap_or_else(|_| PrometheusBuilder::new());
                }
            }
            let handle = match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed (embedding program): keep
                // an unregistered one so /metrics still answers.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            };
            metrics::describe();
            handle
        })
        .clone()
}
