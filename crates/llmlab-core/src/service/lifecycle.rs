//! What keeps a model in memory and what lets it go: explicit unloads,
//! keep-alive expiry, and the memory budget with LRU eviction. Leases
//! (requests in flight) are respected by all three.

use std::sync::Arc;

use super::records::Slot;
use super::{KeepAlive, Service};
use crate::metrics;
use crate::registry::ModelSpec;
use crate::{Error, Result};

impl Service {
    /// Refuse (503) to load models that would not fit in `bytes` of RAM,
    /// after unloading idle models, least recently used first.
    pub fn with_memory_budget(mut self, bytes: u64) -> Self {
        self.budget.ram = Some(bytes);
        self
    }

    /// The same for GPU memory held by offloaded layers.
    pub fn with_gpu_memory_budget(mut self, bytes: u64) -> Self {
        self.budget.vram = Some(bytes);
        self
    }

    /// Make room for `spec` within the memory budgets and reserve its share:
    /// evict idle models, least recently used first; refuse with the figures
    /// when it cannot fit. The check and the reservation are one step, so
    /// two models loading at the same moment cannot both take the last room.
    pub(super) async fn make_room(&self, spec: &ModelSpec) -> Result<()> {
        if self.budget.is_unlimited() {
            return Ok(());
        }
        let factory = Arc::clone(&self.factory);
        let probe = spec.clone();
        let needed = tokio::task::spawn_blocking(move || factory.estimate_memory(&probe))
            .await
            .map_err(|e| Error::internal(format!("estimating memory failed: {e}")))??;
        loop {
            let shortfall = self.models.all(|records| {
                let others = records
                    .iter()
                    .filter(|(id, _)| *id != &spec.id)
                    .filter_map(|(_, model)| model.footprint);
                let shortfall = self.budget.shortfall(others, needed);
                if shortfall.is_none() {
                    // Reserved under the same lock as the check.
                    let model = records
                        .entry(spec.id.clone())
                        .or_insert_with(super::records::ModelRecord::new);
                    model.set_footprint(&spec.id, Some(needed));
                }
                shortfall
            });
            let Some(shortfall) = shortfall else {
                return Ok(());
            };
            let Some(victim) = self.eviction_candidate(&spec.id) else {
                return Err(Error::unavailable(format!(
                    "{}, and every other loaded model is in use or pinned",
                    shortfall.describe(&spec.id)
                ))
                .with_retry_after(5));
            };
            tracing::info!(model = %victim, for_model = %spec.id, "unloading the least recently used idle model to make room");
            self.unload(&victim).await?;
        }
    }

    /// The loaded, idle, unpinned model (other than `except`) idle longest.
    fn eviction_candidate(&self, except: &str) -> Option<String> {
        self.models.all(|records| {
            records
                .iter()
                .filter(|(id, model)| *id != except && model.footprint.is_some() && model.is_loaded())
                .filter(|(id, model)| model.active == 0 && !self.registry.get(id).is_some_and(|m| m.pinned))
                .min_by_key(|(_, model)| model.idle_since)
                .map(|(id, _)| id.clone())
        })
    }

    /// Unload a model now. Its running request finishes; requests queued
    /// behind it are answered with an error. Returns whether it was loaded.
    pub async fn unload(&self, id: &str) -> Result<bool> {
        self.registry.require(id)?;
        // A fresh slot for the next load; leases and breaker stay.
        let old = self.models.with(id, |model| std::mem::take(&mut model.slot));
        let pipeline = old.get().cloned();
        let was_loaded = pipeline.is_some();
        if let Some(pipeline) = pipeline {
            // Dropping a pipeline joins its engine thread: not on a runtime worker.
            tokio::task::spawn_blocking(move || drop(pipeline))
                .await
                .map_err(|e| Error::internal(format!("unloading '{id}' failed: {e}")))?;
            metrics::model_evicted(id);
            tracing::info!(model = %id, "model unloaded");
        }
        // Its memory counts as free only once the engine has let go of it.
        self.models.with(id, |model| {
            model.note = None;
            model.set_footprint(id, None);
        });
        Ok(was_loaded)
    }

    /// Unload every idle model whose keep-alive ran out.
    pub async fn unload_expired(&self) {
        let now = tokio::time::Instant::now();
        // Slots are taken out under the lock; their pipelines are dropped
        // after it (dropping joins an engine thread).
        let expired: Vec<(String, Slot)> = self.models.all(|records| {
            records
                .iter_mut()
                .filter(|(id, model)| {
                    let spec = self.registry.get(id);
                    let keep_alive = model.keep_alive.or(spec.map(|m| m.keep_alive));
                    !spec.is_some_and(|m| m.pinned)
                        && model.active == 0
                        && model.is_loaded()
                        && matches!(keep_alive, Some(KeepAlive::For(d)) if now.duration_since(model.idle_since) >= d)
                })
                .map(|(id, model)| (id.clone(), std::mem::take(&mut model.slot)))
                .collect()
        });
        for (id, slot) in expired {
            if let Some(pipeline) = slot.get().cloned() {
                let _ = tokio::task::spawn_blocking(move || drop(pipeline)).await;
                metrics::model_evicted(&id);
                self.models.with(&id, |model| model.set_footprint(&id, None));
                tracing::info!(model = %id, "model unloaded after its keep-alive");
            }
        }
    }

    /// Check keep-alives every [`config::KEEP_ALIVE_CHECK_INTERVAL`] until
    /// the service is dropped.
    pub fn spawn_keep_alive(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let service = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(crate::config::KEEP_ALIVE_CHECK_INTERVAL);
            loop {
                tick.tick().await;
                let Some(service) = service.upgrade() else { return };
                service.unload_expired().await;
            }
        })
    }
}
