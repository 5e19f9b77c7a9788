//! One record per model id: everything the service knows about a model
//! (its pipeline slot, how its last load went, who uses it, its breaker,
//! the memory it holds) behind one lock.
//!
//! Lock discipline, for every caller:
//! - the lock is held only inside the closures given to [`Models::with`],
//!   [`Models::read`] and [`Models::all`], which run to completion without
//!   awaiting;
//! - inside them, never load a model, call the factory or drop a pipeline
//!   (dropping one joins its engine thread): take what must be dropped out
//!   of the record and drop it after the closure returns;
//! - no other lock is taken inside them (logging and metrics are fine).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OnceCell;

use super::budget::MemoryEstimate;
use super::loading::LoadNote;
use crate::guards::CircuitBreaker;
use crate::keep_alive::KeepAlive;
use crate::pipeline::LoadedPipeline;

/// Where a model's pipeline is (or will be) once loaded; loads of one
/// model meet in the same cell, so there is one load however many wait.
pub(super) type Slot = Arc<OnceCell<LoadedPipeline>>;

#[derive(Debug)]
pub(super) struct ModelRecord {
    pub slot: Slot,
    /// How the last load went (`None`: never tried since the last unload).
    pub note: Option<LoadNote>,
    /// Requests using the model right now (leases).
    pub active: usize,
    /// Since when no request uses it.
    pub idle_since: tokio::time::Instant,
    /// The latest request's keep-alive (`None`: the registry's).
    pub keep_alive: Option<KeepAlive>,
    /// Created on first use with the model's settings.
    pub breaker: Option<CircuitBreaker>,
    /// Memory reserved for it while loading or loaded.
    pub footprint: Option<MemoryEstimate>,
}

impl ModelRecord {
    pub fn new() -> Self {
        Self {
            slot: Slot::default(),
            note: None,
            active: 0,
            idle_since: tokio::time::Instant::now(),
            keep_alive: None,
            breaker: None,
            footprint: None,
        }
    }

    /// Reserve (or, with `None`, release) the model's memory; the GPU
    /// share is published as a gauge, since only the estimate knows it.
    pub fn set_footprint(&mut self, id: &str, footprint: Option<MemoryEstimate>) {
        let gpu = footprint.map_or(0, |f| f.vram);
        if gpu > 0 || self.footprint.is_some_and(|f| f.vram > 0) {
            crate::metrics::model_gpu_memory(id, gpu);
        }
        self.footprint = footprint;
    }

    pub fn is_loaded(&self) -> bool {
        self.slot.initialized()
    }
}

/// The records of every model the service has seen, shared with leases,
/// breaker watches and load tasks.
#[derive(Debug, Clone, Default)]
pub(super) struct Models(Arc<Mutex<HashMap<String, ModelRecord>>>);

impl Models {
    /// A poisoned lock only means another thread panicked while holding
    /// it; every closure leaves the records consistent, so keep going.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, ModelRecord>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Work on the record of `id`, creating it if needed.
    pub fn with<T>(&self, id: &str, f: impl FnOnce(&mut ModelRecord) -> T) -> T {
        let mut records = self.lock();
        let record = records.entry(id.to_owned()).or_insert_with(ModelRecord::new);
        f(record)
    }

    /// Read the record of `id`, if the service has seen the model.
    pub fn read<T>(&self, id: &str, f: impl FnOnce(&ModelRecord) -> T) -> Option<T> {
        self.lock().get(id).map(f)
    }

    /// Work on every record at once (decisions that compare models).
    pub fn all<T>(&self, f: impl FnOnce(&mut HashMap<String, ModelRecord>) -> T) -> T {
        f(&mut self.lock())
    }
}
