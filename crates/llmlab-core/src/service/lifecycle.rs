//! What keeps a model in memory and what lets it go: explicit unloads,
//! keep-alive expiry, and the memory budget with LRU eviction. Leases
//! (requests in flight) are respected by all three.

use std::sync::Arc;

use super::{lock, KeepAlive, Service, Slot};
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
            let shortfall = {
                let mut footprint = lock(&self.footprint);
                let others = footprint.iter().filter(|(id, _)| *id != &spec.id).map(|(_, e)| *e);
                match self.budget.shortfall(others, needed) {
                    None => {
                        footprint.insert(spec.id.clone(), needed);
                        return Ok(());
                    }
                    Some(shortfall) => shortfall,
                }
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
        let uses = lock(&self.uses);
        let footprint = lock(&self.footprint);
        footprint
            .keys()
            .filter(|id| *id != except && self.is_loaded(id))
            .filter(|id| !self.registry.get(id).is_some_and(|m| m.pinned))
            .filter_map(|id| {
                uses.get(id)
                    .filter(|u| u.active == 0)
                    .map(|u| (id.clone(), u.idle_since))
            })
            .min_by_key(|(_, idle_since)| *idle_since)
            .map(|(id, _)| id)
    }

    /// Unload a model now. Its running request finishes; requests queued
    /// behind it are answered with an error. Returns whether it was loaded.
    pub async fn unload(&self, id: &str) -> Result<bool> {
        self.registry.require(id)?;
        let old = lock(&self.slots).remove(id);
        let pipeline = old.and_then(|slot| slot.get().cloned());
        let was_loaded = pipeline.is_some();
        if let Some(pipeline) = pipeline {
            // Dropping a pipeline joins its engine thread: not on a runtime worker.
            tokio::task::spawn_blocking(move || drop(pipeline))
                .await
                .map_err(|e| Error::internal(format!("unloading '{id}' failed: {e}")))?;
            metrics::model_evicted(id);
            tracing::info!(model = %id, "model unloaded");
        }
        lock(&self.notes).remove(id);
        lock(&self.footprint).remove(id);
        Ok(was_loaded)
    }

    /// Unload every idle model whose keep-alive ran out.
    pub async fn unload_expired(&self) {
        let now = tokio::time::Instant::now();
        let expired: Vec<(String, Slot)> = {
            let uses = lock(&self.uses);
            let mut slots = lock(&self.slots);
            let ids: Vec<String> = uses
                .iter()
                .filter(|(id, u)| {
                    !self.registry.get(id).is_some_and(|m| m.pinned)
                        && u.active == 0
                        && slots.get(*id).is_some_and(|slot| slot.initialized())
                        && matches!(u.keep_alive, KeepAlive::For(d) if now.duration_since(u.idle_since) >= d)
                })
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| slots.remove(&id).map(|slot| (id, slot)))
                .collect()
        };
        for (id, slot) in expired {
            if let Some(pipeline) = slot.get().cloned() {
                let _ = tokio::task::spawn_blocking(move || drop(pipeline)).await;
                metrics::model_evicted(&id);
                lock(&self.footprint).remove(&id);
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
