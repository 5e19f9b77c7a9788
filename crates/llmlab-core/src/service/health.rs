//! Start-up preloading and the health report built on it.
//!
//! Readiness means "the loads the server started by itself are over": it
//! never waits for a load that only a request would start, so a load
//! balancer that holds traffic until the server is ready is never waiting
//! for traffic. Models loading, loaded and failed are listed beside it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde::Serialize;

use super::{ModelState, Service};
use crate::keep_alive::KeepAlive;

/// What `/health` reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// `ok`: ready, every model that was asked to load is loaded;
    /// `degraded`: ready, but some model's last load failed;
    /// `loading`: start-up preloads are still running (not ready yet).
    pub status: &'static str,
    pub ready: bool,
    pub loading: Vec<String>,
    pub loaded: Vec<String>,
    pub failed: Vec<FailedModel>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailedModel {
    pub id: String,
    pub error: String,
}

impl Service {
    /// Load `models` one after another in the background and keep them
    /// loaded; the server is not ready until these loads are over (whether
    /// they succeed or fail).
    pub fn preload(self: &Arc<Self>, models: Vec<String>) {
        if models.is_empty() {
            return;
        }
        self.preloads_pending.fetch_add(models.len(), Ordering::SeqCst);
        let service = Arc::clone(self);
        tokio::spawn(async move {
            for model in models {
                if let Err(e) = service.load(&model, Some(KeepAlive::Forever)).await {
                    tracing::error!(%model, error = %e, "preloading failed");
                }
                service.preloads_pending.fetch_sub(1, Ordering::SeqCst);
            }
        });
    }

    pub fn health(&self) -> Health {
        let ready = self.preloads_pending.load(Ordering::SeqCst) == 0;
        let (mut loading, mut loaded, mut failed) = (Vec::new(), Vec::new(), Vec::new());
        for model in self.models() {
            match model.state {
                ModelState::Loading => loading.push(model.id),
                ModelState::Loaded => loaded.push(model.id),
                ModelState::Failed => failed.push(FailedModel {
                    id: model.id,
                    error: model.error.unwrap_or_default(),
                }),
                ModelState::Unloaded => {}
            }
        }
        let status = match (ready, failed.is_empty()) {
            (false, _) => "loading",
            (true, true) => "ok",
            (true, false) => "degraded",
        };
        Health {
            status,
            ready,
            loading,
            loaded,
            failed,
        }
    }
}
