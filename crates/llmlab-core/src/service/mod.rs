//! The facade every transport calls: validate, find the model in the
//! registry, get (or load) its pipeline, run the request.
//!
//! Loading is lazy and single-flight: concurrent first requests for a model
//! wait for one load. A failed load is reported to the requests waiting for
//! it and tried again by the next request. Leases, keep-alive and memory
//! budgets live in `lifecycle.rs`.

use std::sync::Arc;

use serde::Serialize;
use tokio_util::sync::CancellationToken;

mod budget;
mod circuit;
mod embeddings;
mod facts;
mod health;
mod images;
mod lifecycle;
mod loading;
mod purpose;
mod records;

use budget::MemoryBudget;
pub use budget::MemoryEstimate;
pub use facts::ModelFacts;
pub use health::{FailedModel, Health};
use loading::{load_pipeline, LoadNote};
use purpose::Purpose;
use records::Models;

use crate::guards::{with_deadlines, DeadlineSettings};
use crate::keep_alive::KeepAlive;
use crate::media::{ImageFetcher, RemoteImages};
use crate::metrics::GenerationMeter;
use crate::pipeline::{ChatPipeline, LoadedPipeline};
use crate::registry::{ModelKind, ModelSpec, Registry};
use crate::{ChatRequest, ChatStream, CompletionRequest, Error, ResolvedChat, Result};

/// Creates pipelines for model specs; implemented once per binary over the
/// compiled-in backends (and by fakes in tests).
pub trait PipelineFactory: Send + Sync + 'static {
    /// Load a model of the spec's kind. Blocking: the service calls it on a
    /// blocking thread.
    fn load(&self, spec: &ModelSpec) -> Result<LoadedPipeline>;

    /// Check, cheaply and before any load, that the model's file can be
    /// loaded at all (it exists and reads as a model). Its failure is final:
    /// the degradation ladder only helps models that fail for want of memory.
    /// Blocking, like `load`.
    fn preflight(&self, spec: &ModelSpec) -> Result<()> {
        let _ = spec;
        Ok(())
    }

    /// Memory the model will hold once loaded, estimated before loading.
    fn estimate_memory(&self, spec: &ModelSpec) -> Result<MemoryEstimate> {
        Ok(MemoryEstimate::ram(
            std::fs::metadata(&spec.path).map_or(0, |m| m.len()),
        ))
    }

    /// What retry `step` (1 for the first) of a failed load tries: the
    /// configuration `step` rungs down the backend's degradation ladder (less
    /// context, fewer GPU layers, ...), or `None` once the ladder has nothing
    /// left to give up, which ends the retries. The default has no ladder:
    /// every retry is the configuration again, after the back-off.
    fn degrade(&self, configured: &ModelSpec, step: usize) -> Option<crate::guards::LoadAttempt> {
        let _ = step;
        Some(crate::guards::LoadAttempt::as_configured(configured))
    }

    /// What the model's files say of themselves (architecture, size,
    /// quantization, chat template), read cheaply and without loading it.
    /// Blocking, like `load`. The default knows nothing.
    fn describe(&self, spec: &ModelSpec) -> ModelFacts {
        let _ = spec;
        ModelFacts::default()
    }
}

/// Where a model is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelState {
    Unloaded,
    Loading,
    Loaded,
    /// The last load failed; the next request tries again.
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelStatus {
    pub id: String,
    pub kind: ModelKind,
    /// What the model reads: `["text"]`, or `["text", "image"]` for a
    /// vision model.
    pub input_modalities: &'static [&'static str],
    pub state: ModelState,
    /// Why the last load failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the model gave up to load, when it loaded only down the
    /// degradation ladder ("context 2048, batch 256").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degraded: Option<String>,
    /// Estimated bytes of RAM held (loaded or loading models).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Estimated bytes of GPU memory held, when layers are offloaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_memory_bytes: Option<u64>,
    /// Requests using the model now.
    pub active_requests: usize,
    /// When an idle loaded model will be unloaded (`None`: not scheduled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
    pub pinned: bool,
    /// The model's circuit breaker and the failures in a row behind it.
    pub circuit: crate::guards::BreakerState,
    pub consecutive_failures: u32,
}

/// Held while a request uses a model (it travels with the request's
/// stream). A leased model is never unloaded for idleness; dropping the last
/// lease starts its keep-alive countdown.
#[derive(Debug)]
pub struct ModelLease {
    models: Models,
    id: String,
}

impl Drop for ModelLease {
    fn drop(&mut self) {
        self.models.with(&self.id, |model| {
            model.active = model.active.saturating_sub(1);
            if model.active == 0 {
                model.idle_since = tokio::time::Instant::now();
            }
        });
    }
}

pub struct Service {
    registry: Registry,
    factory: Arc<dyn PipelineFactory>,
    /// One record per model: slot, load note, leases, breaker, memory
    /// held. The lock discipline is in `records.rs`.
    models: Models,
    /// What loaded models may hold together.
    budget: MemoryBudget,
    /// Start-up preloads not finished yet (see `health.rs`).
    preloads_pending: std::sync::atomic::AtomicUsize,
    /// Fetches `http(s)` image URLs; `None` (the default) refuses them.
    image_fetcher: Option<Arc<dyn ImageFetcher>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("registry", &self.registry.file)
            .finish_non_exhaustive()
    }
}

/// What a running request carries besides its stream: the model lease,
/// the breaker's watch, the metrics meter and its deadlines.
struct RequestRun {
    pipeline: Arc<dyn ChatPipeline>,
    lease: ModelLease,
    watch: circuit::BreakerWatch,
    meter: GenerationMeter,
    /// The registry id the stream is named with.
    model: String,
    deadlines: DeadlineSettings,
    /// The deadlines are the model's own: one that runs out through the
    /// model's fault counts against its breaker. A client that sets its own
    /// (tighter) deadlines learns of them alone.
    deadlines_blame_model: bool,
}

impl RequestRun {
    /// Enforce the deadlines and observe the stream until its end.
    fn supervise(self, stream: ChatStream, cancel: CancellationToken) -> ChatStream {
        let on_model_fault = self.deadlines_blame_model.then(|| self.watch.model_fault());
        with_deadlines(stream, self.deadlines, cancel, on_model_fault)
            .observed(self.meter)
            .observed(self.watch)
            .holding(self.lease)
            .for_model(&self.model)
    }
}

impl Service {
    pub fn new(registry: Registry, factory: Arc<dyn PipelineFactory>) -> Self {
        Self {
            registry,
            factory,
            models: Models::default(),
            budget: MemoryBudget::default(),
            preloads_pending: std::sync::atomic::AtomicUsize::new(0),
            image_fetcher: None,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The model a request names, or the default model when it names none.
    pub fn model_id<'a>(&'a self, requested: &'a str) -> &'a str {
        if requested.is_empty() {
            &self.registry.default_model
        } else {
            requested
        }
    }

    pub fn default_model(&self) -> &str {
        &self.registry.default_model
    }

    /// Chat with the model the request names (the default one when empty).
    /// The request is validated and resolved here, once; the pipeline gets
    /// only the resolved form. The stream names the model it runs on.
    pub async fn chat(&self, request: ChatRequest, cancel: CancellationToken) -> Result<ChatStream> {
        let spec = self.spec_for(&request.model, Purpose::Chat)?;
        let request = self.resolve_chat(request, spec).await?;
        let run = self.start_request(spec, request.keep_alive, &request.params).await?;
        let stream = run.pipeline.chat(request, cancel.clone())?;
        Ok(run.supervise(stream, cancel))
    }

    /// Plain completion with the model the request names.
    pub async fn complete(&self, request: CompletionRequest, cancel: CancellationToken) -> Result<ChatStream> {
        let spec = self.spec_for(&request.model, Purpose::Chat)?;
        let request = request.resolve(spec)?;
        let run = self.start_request(spec, request.keep_alive, &request.params).await?;
        let stream = run.pipeline.complete(request, cancel.clone())?;
        Ok(run.supervise(stream, cancel))
    }

    /// Fetch image URLs when the operator allows it, and resolve: with
    /// images, on a blocking thread (decoding a photo takes a while).
    async fn resolve_chat(&self, request: ChatRequest, spec: &ModelSpec) -> Result<ResolvedChat> {
        if !request.has_images() {
            return request.resolve(spec);
        }
        let mut fetched = RemoteImages::default();
        if let Some(fetcher) = &self.image_fetcher {
            let max_bytes = crate::config::image_limits().max_bytes;
            for part in request.image_urls_to_fetch(spec)? {
                let bytes = fetcher
                    .fetch(part.url, max_bytes)
                    .await
                    .map_err(|message| Error::invalid_param(part.param.clone(), message))?;
                fetched.insert(part.url.to_owned(), bytes);
            }
        }
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || request.resolve_with_images(&spec, &fetched))
            .await
            .map_err(|e| Error::internal(format!("decoding the request's images failed: {e}")))?
    }

    /// Fetch `http(s)` image URLs with `fetcher` (the operator allowed it);
    /// without one they are refused.
    pub fn with_image_fetcher(mut self, fetcher: Arc<dyn ImageFetcher>) -> Self {
        self.image_fetcher = Some(fetcher);
        self
    }

    /// The registry entry a request runs on: the one it names, else the
    /// default for its purpose; refused when of the wrong kind.
    fn spec_for(&self, requested: &str, purpose: Purpose) -> Result<&ModelSpec> {
        let spec = if requested.is_empty() {
            self.registry.require(&purpose.default_model(&self.registry)?)?
        } else {
            self.registry.require(requested)?
        };
        purpose.check(spec)?;
        Ok(spec)
    }

    /// Lease (and load) the model of a resolved request.
    async fn start_request(
        &self,
        spec: &ModelSpec,
        keep_alive: KeepAlive,
        params: &crate::ResolvedParams,
    ) -> Result<RequestRun> {
        let (pipeline, lease, watch) = self.leased_pipeline(spec, keep_alive).await?;
        let LoadedPipeline::Chat(pipeline) = pipeline else {
            return Err(Error::internal(format!(
                "model '{}' did not load as a chat model",
                spec.id
            )));
        };
        Ok(RequestRun {
            pipeline,
            lease,
            watch,
            meter: GenerationMeter::new(&spec.id),
            model: spec.id.clone(),
            deadlines: params.guards.deadlines,
            deadlines_blame_model: !params.deadlines_from_client,
        })
    }

    /// Load a model now (start-up preloading, admin endpoints); `keep_alive`
    /// replaces the model's own (preloaded models are kept `Forever`).
    /// Answers the registry id loaded (the default model's for "").
    pub async fn load(&self, id: &str, keep_alive: Option<KeepAlive>) -> Result<String> {
        let spec = self.spec_for(id, Purpose::Any)?;
        self.leased_pipeline(spec, keep_alive.unwrap_or(spec.keep_alive))
            .await?;
        self.breaker_success(spec);
        Ok(spec.id.clone())
    }

    /// Take a lease on the model (before loading it, so that it cannot be
    /// found idle between load and use), then get or load its pipeline.
    async fn leased_pipeline(
        &self,
        spec: &ModelSpec,
        keep_alive: KeepAlive,
    ) -> Result<(LoadedPipeline, ModelLease, circuit::BreakerWatch)> {
        self.models.with(&spec.id, |model| {
            model.active += 1;
            // Ollama's rule: the latest request's keep-alive applies.
            model.keep_alive = Some(keep_alive);
        });
        let lease = ModelLease {
            models: self.models.clone(),
            id: spec.id.clone(),
        };
        let probe = self.pass_breaker(spec)?;
        // Dropped without a verdict (validation failed, client left), the
        // watch gives a half-open breaker's probe back.
        let watch = self.breaker_watch(spec, probe);
        let pipeline = self
            .pipeline(spec)
            .await
            .inspect_err(|e| self.breaker_failure(spec, e))?;
        Ok((pipeline, lease, watch))
    }

    pub fn is_loaded(&self, id: &str) -> bool {
        self.models.read(id, records::ModelRecord::is_loaded).unwrap_or(false)
    }

    pub fn models(&self) -> Vec<ModelStatus> {
        let now = tokio::time::Instant::now();
        self.models.all(|records| {
            self.registry
                .models
                .iter()
                .map(|m| Self::status(m, records.get(&m.id), now))
                .collect()
        })
    }

    /// What `/v1/models` says of one model (`None`: never used).
    fn status(m: &ModelSpec, record: Option<&records::ModelRecord>, now: tokio::time::Instant) -> ModelStatus {
        let loaded = record.is_some_and(records::ModelRecord::is_loaded);
        let note = record.and_then(|r| r.note.as_ref());
        let (state, error) = match (loaded, note) {
            (true, _) => (ModelState::Loaded, None),
            (false, Some(LoadNote::Loading)) => (ModelState::Loading, None),
            (false, Some(LoadNote::Failed(reason))) => (ModelState::Failed, Some(reason.clone())),
            (false, Some(LoadNote::Loaded { .. }) | None) => (ModelState::Unloaded, None),
        };
        let degraded = match note {
            Some(LoadNote::Loaded { degraded }) if loaded => degraded.clone(),
            _ => None,
        };
        let active_requests = record.map_or(0, |r| r.active);
        let expires_in_secs = match record {
            Some(r) if loaded && r.active == 0 && !m.pinned => match r.keep_alive.unwrap_or(m.keep_alive) {
                KeepAlive::For(d) => Some(d.saturating_sub(now.duration_since(r.idle_since)).as_secs()),
                KeepAlive::Forever => None,
            },
            _ => None,
        };
        let (circuit, consecutive_failures) = record
            .and_then(|r| r.breaker.as_ref())
            .map_or((crate::guards::BreakerState::Closed, 0), |b| {
                (b.state(), b.consecutive_failures())
            });
        let footprint = record.and_then(|r| r.footprint);
        ModelStatus {
            circuit,
            consecutive_failures,
            id: m.id.clone(),
            kind: m.kind,
            input_modalities: m.input_modalities(),
            state,
            error,
            degraded,
            memory_bytes: footprint.map(|e| e.ram),
            gpu_memory_bytes: footprint.map(|e| e.vram).filter(|b| *b > 0),
            active_requests,
            expires_in_secs,
            pinned: m.pinned,
        }
    }

    /// Get the pipeline of a model, loading it if needed.
    async fn pipeline(&self, spec: &ModelSpec) -> Result<LoadedPipeline> {
        let spec = spec.clone();
        let slot = self.models.with(&spec.id, |model| Arc::clone(&model.slot));
        if let Some(pipeline) = slot.get() {
            return Ok(pipeline.clone());
        }
        self.make_room(&spec).await?;
        // The load runs in its own task: a caller that gives up (a client
        // that disconnects) must not abandon a load others wait for, which
        // would start a second copy of the model. Concurrent callers' tasks
        // meet in the same cell, so there is still exactly one load.
        let factory = Arc::clone(&self.factory);
        let models = self.models.clone();
        let task_slot = Arc::clone(&slot);
        let id = spec.id.clone();
        let loaded = tokio::spawn(async move {
            task_slot
                .get_or_try_init(|| load_pipeline(factory, spec, models))
                .await
                .cloned()
        })
        .await
        .map_err(|e| Error::internal(format!("model load task failed: {e}")))?;
        if loaded.is_err() && !slot.initialized() {
            // A failed load holds no memory.
            self.models.with(&id, |model| model.set_footprint(&id, None));
        }
        loaded
    }
}

#[cfg(test)]
mod embedding_tests;
#[cfg(test)]
mod loading_tests;
#[cfg(test)]
mod tests;
