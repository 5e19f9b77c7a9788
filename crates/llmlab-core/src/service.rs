//! The facade every transport calls: validate, find the model in the
//! registry, get (or load) its pipeline, run the request.
//!
//! Loading is lazy and single-flight: concurrent first requests for a model
//! wait for one load. A failed load is reported to the requests waiting for
//! it and tried again by the next request. (Eviction, leases and memory
//! budgets belong to the pipeline cache, a later layer behind this facade.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::keep_alive::KeepAlive;
use crate::metrics::{self, GenerationMeter};
use crate::pipeline::ChatPipeline;
use crate::registry::{ModelKind, ModelSpec, Registry};
use crate::{ChatRequest, ChatStream, CompletionRequest, Error, Result};

/// Creates pipelines for model specs; implemented once per binary over the
/// compiled-in backends (and by fakes in tests).
pub trait PipelineFactory: Send + Sync + 'static {
    /// Load a chat model. Blocking: the service calls it on a blocking thread.
    fn load_chat(&self, spec: &ModelSpec) -> Result<Arc<dyn ChatPipeline>>;

    /// Memory the model will hold once loaded, estimated before loading.
    fn estimate_bytes(&self, spec: &ModelSpec) -> Result<u64> {
        Ok(std::fs::metadata(&spec.path).map_or(0, |m| m.len()))
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
    pub state: ModelState,
    /// Why the last load failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Estimated bytes held (loaded or loading models).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Requests using the model now.
    pub active_requests: usize,
    /// When an idle loaded model will be unloaded (`None`: not scheduled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
    pub pinned: bool,
}

/// Loads in progress and the last failure per model (loaded models are
/// known from their slot).
type LoadNotes = Arc<Mutex<HashMap<String, Result<(), String>>>>;

type Slot = Arc<OnceCell<Arc<dyn ChatPipeline>>>;

/// Requests using a model right now, and since when it is idle.
#[derive(Debug)]
struct ModelUse {
    active: usize,
    idle_since: tokio::time::Instant,
    keep_alive: KeepAlive,
}

type Uses = Arc<Mutex<HashMap<String, ModelUse>>>;

/// Held while a request uses a model (it travels with the request's
/// stream). A leased model is never unloaded for idleness; dropping the last
/// lease starts its keep-alive countdown.
#[derive(Debug)]
pub struct ModelLease {
    uses: Uses,
    id: String,
}

impl Drop for ModelLease {
    fn drop(&mut self) {
        if let Some(model) = lock(&self.uses).get_mut(&self.id) {
            model.active = model.active.saturating_sub(1);
            if model.active == 0 {
                model.idle_since = tokio::time::Instant::now();
            }
        }
    }
}

pub struct Service {
    registry: Registry,
    factory: Arc<dyn PipelineFactory>,
    slots: Mutex<HashMap<String, Slot>>,
    /// `Ok(())` while a load runs, `Err(reason)` after one failed.
    notes: LoadNotes,
    uses: Uses,
    /// Bytes loaded models may hold together; `None`: no limit.
    memory_budget: Option<u64>,
    /// Estimated bytes of each model loaded (or loading).
    footprint: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("registry", &self.registry.file)
            .finish_non_exhaustive()
    }
}

/// A poisoned lock only means another thread panicked while holding it;
/// the maps stay consistent, so keep going.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Load one pipeline on a blocking thread, recording metrics and logs.
async fn load_pipeline(
    factory: Arc<dyn PipelineFactory>,
    spec: ModelSpec,
    notes: LoadNotes,
) -> Result<Arc<dyn ChatPipeline>> {
    let id = spec.id.clone();
    lock(&notes).insert(id.clone(), Ok(()));
    tracing::info!(model = %id, "loading model");
    let started = std::time::Instant::now();
    let loaded = tokio::task::spawn_blocking(move || factory.load_chat(&spec))
        .await
        .map_err(|e| Error::internal(format!("loading model '{id}' panicked: {e}")))
        .and_then(|result| result);
    match &loaded {
        Ok(_) => {
            lock(&notes).remove(&id);
            metrics::model_loaded(&id, started.elapsed());
            tracing::info!(model = %id, ms = started.elapsed().as_millis() as u64, "model loaded");
        }
        Err(e) => {
            lock(&notes).insert(id.clone(), Err(e.message.clone()));
            metrics::model_load_failed(&id);
            tracing::error!(model = %id, error = %e, "model failed to load");
        }
    }
    loaded
}

impl Service {
    pub fn new(registry: Registry, factory: Arc<dyn PipelineFactory>) -> Self {
        Self {
            registry,
            factory,
            slots: Mutex::new(HashMap::new()),
            notes: LoadNotes::default(),
            uses: Uses::default(),
            memory_budget: None,
            footprint: Mutex::new(HashMap::new()),
        }
    }

    /// Refuse (503) to load models that would not fit in `bytes`, after
    /// unloading idle models, least recently used first.
    pub fn with_memory_budget(mut self, bytes: u64) -> Self {
        self.memory_budget = Some(bytes);
        self
    }

    /// Make room for `spec` within the memory budget: evict idle models, least
    /// recently used first; refuse with the figures when it cannot fit.
    async fn make_room(&self, spec: &ModelSpec) -> Result<()> {
        let Some(budget) = self.memory_budget else {
            return Ok(());
        };
        let factory = Arc::clone(&self.factory);
        let probe = spec.clone();
        let needed = tokio::task::spawn_blocking(move || factory.estimate_bytes(&probe))
            .await
            .map_err(|e| Error::internal(format!("estimating memory failed: {e}")))??;
        loop {
            let used: u64 = lock(&self.footprint)
                .iter()
                .filter(|(id, _)| *id != &spec.id)
                .map(|(_, b)| b)
                .sum();
            if used + needed <= budget {
                lock(&self.footprint).insert(spec.id.clone(), needed);
                return Ok(());
            }
            let victim = {
                let uses = lock(&self.uses);
                let footprint = lock(&self.footprint);
                footprint
                    .keys()
                    .filter(|id| *id != &spec.id && self.is_loaded(id))
                    .filter(|id| !self.registry.get(id).is_some_and(|m| m.pinned))
                    .filter_map(|id| {
                        uses.get(id)
                            .filter(|u| u.active == 0)
                            .map(|u| (id.clone(), u.idle_since))
                    })
                    .min_by_key(|(_, idle_since)| *idle_since)
                    .map(|(id, _)| id)
            };
            let Some(victim) = victim else {
                let available = budget.saturating_sub(used);
                return Err(Error::unavailable(format!(
                    "model '{}' needs about {needed} bytes but only {available} of the {budget}-byte memory budget are free, and every other loaded model is in use or pinned",
                    spec.id
                ))
                .with_retry_after(5));
            };
            tracing::info!(model = %victim, for_model = %spec.id, "unloading the least recently used idle model to make room");
            self.unload(&victim).await?;
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn default_model(&self) -> &str {
        &self.registry.default_model
    }

    /// Chat with the model the request names (the default one when empty).
    pub async fn chat(&self, mut request: ChatRequest, cancel: CancellationToken) -> Result<ChatStream> {
        request.validate()?;
        let (pipeline, lease) = self.leased_pipeline(&mut request.model, request.keep_alive).await?;
        let meter = GenerationMeter::new(&request.model);
        Ok(pipeline.chat(request, cancel)?.observed(meter).holding(lease))
    }

    /// Plain completion with the model the request names.
    pub async fn complete(&self, mut request: CompletionRequest, cancel: CancellationToken) -> Result<ChatStream> {
        request.validate()?;
        let (pipeline, lease) = self.leased_pipeline(&mut request.model, request.keep_alive).await?;
        let meter = GenerationMeter::new(&request.model);
        Ok(pipeline.complete(request, cancel)?.observed(meter).holding(lease))
    }

    /// Load a model now (start-up preloading, admin endpoints); `keep_alive`
    /// replaces the model's own (preloaded models are kept `Forever`).
    pub async fn load(&self, id: &str, keep_alive: Option<KeepAlive>) -> Result<()> {
        let mut id = id.to_owned();
        self.leased_pipeline(&mut id, keep_alive).await.map(|_| ())
    }

    /// Take a lease on the model (before loading it, so that it cannot be
    /// found idle between load and use), then get or load its pipeline.
    async fn leased_pipeline(
        &self,
        model: &mut String,
        keep_alive: Option<KeepAlive>,
    ) -> Result<(Arc<dyn ChatPipeline>, ModelLease)> {
        if model.is_empty() {
            model.clone_from(&self.registry.default_model);
        }
        let spec = self.registry.require(model)?;
        let lease = {
            let mut uses = lock(&self.uses);
            let usage = uses.entry(spec.id.clone()).or_insert_with(|| ModelUse {
                active: 0,
                idle_since: tokio::time::Instant::now(),
                keep_alive: spec.keep_alive,
            });
            usage.active += 1;
            // Ollama's rule: the latest request's keep-alive applies.
            usage.keep_alive = keep_alive.unwrap_or(spec.keep_alive);
            ModelLease {
                uses: Arc::clone(&self.uses),
                id: spec.id.clone(),
            }
        };
        let pipeline = self.chat_pipeline(model).await?;
        Ok((pipeline, lease))
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

    pub fn is_loaded(&self, id: &str) -> bool {
        self.slot_if_present(id).is_some_and(|slot| slot.initialized())
    }

    pub fn models(&self) -> Vec<ModelStatus> {
        let notes = lock(&self.notes).clone();
        let footprint = lock(&self.footprint).clone();
        let uses = lock(&self.uses);
        let now = tokio::time::Instant::now();
        self.registry
            .models
            .iter()
            .map(|m| {
                let loaded = self.is_loaded(&m.id);
                let (state, error) = match (loaded, notes.get(&m.id)) {
                    (true, _) => (ModelState::Loaded, None),
                    (false, Some(Ok(()))) => (ModelState::Loading, None),
                    (false, Some(Err(reason))) => (ModelState::Failed, Some(reason.clone())),
                    (false, None) => (ModelState::Unloaded, None),
                };
                let usage = uses.get(&m.id);
                let active_requests = usage.map_or(0, |u| u.active);
                let expires_in_secs = match usage {
                    Some(u) if loaded && u.active == 0 && !m.pinned => match u.keep_alive {
                        KeepAlive::For(d) => Some(d.saturating_sub(now.duration_since(u.idle_since)).as_secs()),
                        KeepAlive::Forever => None,
                    },
                    _ => None,
                };
                ModelStatus {
                    id: m.id.clone(),
                    kind: m.kind,
                    state,
                    error,
                    memory_bytes: footprint.get(&m.id).copied(),
                    active_requests,
                    expires_in_secs,
                    pinned: m.pinned,
                }
            })
            .collect()
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

    /// Resolve the model id (filling in the default) and get its pipeline.
    async fn chat_pipeline(&self, model: &mut String) -> Result<Arc<dyn ChatPipeline>> {
        if model.is_empty() {
            model.clone_from(&self.registry.default_model);
        }
        let spec = self.registry.require(model)?.clone();
        if !matches!(spec.kind, ModelKind::Chat | ModelKind::VisionLanguage) {
            return Err(Error::invalid_param(
                "model",
                format!("model '{}' is a {} model and cannot chat", spec.id, spec.kind.as_str()),
            ));
        }
        let slot = self.slot(&spec.id);
        if let Some(pipeline) = slot.get() {
            return Ok(Arc::clone(pipeline));
        }
        self.make_room(&spec).await?;
        // The load runs in its own task: a caller that gives up (a client
        // that disconnects) must not abandon a load others wait for, which
        // would start a second copy of the model. Concurrent callers' tasks
        // meet in the same cell, so there is still exactly one load.
        let factory = Arc::clone(&self.factory);
        let notes = Arc::clone(&self.notes);
        let task_slot = Arc::clone(&slot);
        let id = spec.id.clone();
        let loaded = tokio::spawn(async move {
            task_slot
                .get_or_try_init(|| load_pipeline(factory, spec, notes))
                .await
                .map(Arc::clone)
        })
        .await
        .map_err(|e| Error::internal(format!("model load task failed: {e}")))?;
        if loaded.is_err() && !slot.initialized() {
            // A failed load holds no memory.
            lock(&self.footprint).remove(&id);
        }
        loaded
    }

    fn slot(&self, id: &str) -> Slot {
        let mut slots = lock(&self.slots);
        Arc::clone(slots.entry(id.to_owned()).or_default())
    }

    fn slot_if_present(&self, id: &str) -> Option<Slot> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;
    use crate::testing::{fake_registry, FakeFactory, Script};
    use crate::{ChatMessage, ErrorKind};

    fn chat_request(model: &str) -> ChatRequest {
        ChatRequest {
            model: model.into(),
            messages: vec![ChatMessage::user("hi")],
            ..ChatRequest::default()
        }
    }

    fn service(factory: Arc<FakeFactory>) -> Arc<Service> {
        Arc::new(Service::new(fake_registry(), factory))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_requests_load_once() {
        let mut factory = FakeFactory::new(Script::text(&["ok"]));
        factory.load_delay = Duration::from_millis(100);
        let factory = Arc::new(factory);
        let svc = service(Arc::clone(&factory));
        let requests = (0..5).map(|_| {
            let svc = Arc::clone(&svc);
            tokio::spawn(async move {
                svc.chat(chat_request("fake-a"), CancellationToken::new())
                    .await?
                    .collect_response()
                    .await
            })
        });
        for handle in requests {
            assert_eq!(handle.await.unwrap().unwrap().content, "ok");
        }
        assert_eq!(factory.loads.load(Ordering::SeqCst), 1);
        assert!(svc.is_loaded("fake-a"));
        assert!(!svc.is_loaded("fake-b"));
    }

    #[tokio::test]
    async fn empty_model_means_the_default_one() {
        let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
        let svc = service(Arc::clone(&factory));
        svc.chat(chat_request(""), CancellationToken::new()).await.unwrap();
        assert!(svc.is_loaded("fake-a"));
    }

    #[tokio::test]
    async fn unknown_and_wrong_kind_models_are_rejected() {
        let svc = service(Arc::new(FakeFactory::new(Script::text(&["ok"]))));
        let err = svc
            .chat(chat_request("nope"), CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::NotFound);
        assert!(err.message.contains("fake-a, fake-b"), "{}", err.message);
        let err = svc
            .chat(chat_request("fake-embed"), CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(
            (err.kind, err.param.as_deref()),
            (ErrorKind::InvalidRequest, Some("model"))
        );
    }

    #[tokio::test]
    async fn a_failed_load_is_reported_and_retried_by_the_next_request() {
        let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
        *factory.fail_loads.lock().unwrap() = Some(Error::unavailable("disk on fire"));
        let svc = service(Arc::clone(&factory));
        let err = svc
            .chat(chat_request("fake-a"), CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(
            (err.kind, err.message.as_str()),
            (ErrorKind::Unavailable, "disk on fire")
        );
        *factory.fail_loads.lock().unwrap() = None;
        svc.chat(chat_request("fake-a"), CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(factory.loads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_gives_up_does_not_abandon_the_load() {
        let mut factory = FakeFactory::new(Script::text(&["ok"]));
        factory.load_delay = Duration::from_millis(300);
        let factory = Arc::new(factory);
        let svc = service(Arc::clone(&factory));
        let impatient = tokio::time::timeout(
            Duration::from_millis(50),
            svc.chat(chat_request("fake-a"), CancellationToken::new()),
        );
        assert!(impatient.await.is_err(), "the first caller should time out");
        svc.chat(chat_request("fake-a"), CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(factory.loads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn states_follow_load_failure_and_unload() {
        let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
        *factory.fail_loads.lock().unwrap() = Some(Error::unavailable("bad file"));
        let svc = service(Arc::clone(&factory));
        let state = |svc: &Service| svc.models().into_iter().find(|m| m.id == "fake-a").unwrap();
        assert_eq!(state(&svc).state, ModelState::Unloaded);
        svc.load("fake-a", None).await.unwrap_err();
        assert_eq!(
            (state(&svc).state, state(&svc).error.as_deref()),
            (ModelState::Failed, Some("bad file"))
        );
        *factory.fail_loads.lock().unwrap() = None;
        svc.load("fake-a", None).await.unwrap();
        assert_eq!(state(&svc).state, ModelState::Loaded);
        assert!(svc.unload("fake-a").await.unwrap());
        assert_eq!(state(&svc).state, ModelState::Unloaded);
        assert!(!svc.unload("fake-a").await.unwrap());
        assert_eq!(svc.unload("nope").await.unwrap_err().kind, ErrorKind::NotFound);
        // The next request loads it again.
        svc.chat(chat_request("fake-a"), CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(factory.loads.load(Ordering::SeqCst), 3);
    }

    fn with_keep_alive(model: &str, keep_alive: Option<KeepAlive>) -> ChatRequest {
        ChatRequest {
            keep_alive,
            ..chat_request(model)
        }
    }

    /// Let the keep-alive task and spawned unloads run on virtual time.
    async fn advance(by: Duration) {
        tokio::time::advance(by).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn idle_models_unload_after_their_keep_alive_and_leased_ones_never() {
        let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
        let svc = service(Arc::clone(&factory));
        let _keeper = svc.spawn_keep_alive();
        // Default keep-alive (5 minutes) from the registry.
        svc.chat(chat_request("fake-a"), CancellationToken::new())
            .await
            .unwrap()
            .collect_response()
            .await
            .unwrap();
        advance(Duration::from_secs(4 * 60)).await;
        assert!(svc.is_loaded("fake-a"));
        advance(Duration::from_secs(61 + 2)).await;
        assert!(!svc.is_loaded("fake-a"), "idle past its keep-alive");

        // A stream that is still being read holds a lease.
        let held = svc
            .chat(
                with_keep_alive("fake-a", Some(KeepAlive::For(Duration::ZERO))),
                CancellationToken::new(),
            )
            .await
            .unwrap();
        advance(Duration::from_secs(3600)).await;
        assert!(svc.is_loaded("fake-a"), "a leased model is never unloaded");
        drop(held);
        advance(Duration::from_secs(2)).await;
        assert!(
            !svc.is_loaded("fake-a"),
            "keep_alive 0 unloads once the last request ends"
        );

        // Negative keep-alive: never.
        svc.load("fake-b", Some(KeepAlive::Forever)).await.unwrap();
        advance(Duration::from_secs(24 * 3600)).await;
        assert!(svc.is_loaded("fake-b"));
        assert_eq!(factory.loads.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn the_memory_budget_evicts_idle_models_lru_first_and_refuses_when_all_are_busy() {
        let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
        factory
            .sizes
            .lock()
            .unwrap()
            .extend([("fake-a".to_owned(), 60), ("fake-b".to_owned(), 60)]);
        let svc =
            Service::new(fake_registry(), Arc::clone(&factory) as Arc<dyn PipelineFactory>).with_memory_budget(100);
        svc.load("fake-a", None).await.unwrap();
        // b does not fit next to a; a is idle, so it goes.
        svc.load("fake-b", None).await.unwrap();
        assert!(!svc.is_loaded("fake-a") && svc.is_loaded("fake-b"));
        // While b streams, a cannot evict it: 503 with the figures.
        let busy = svc
            .chat(chat_request("fake-b"), CancellationToken::new())
            .await
            .unwrap();
        let err = svc
            .chat(chat_request("fake-a"), CancellationToken::new())
            .await
            .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Unavailable);
        assert!(
            err.message.contains("needs about 60 bytes but only 40 of the 100-byte"),
            "{}",
            err.message
        );
        assert!(err.retry_after_secs.is_some());
        drop(busy);
        svc.chat(chat_request("fake-a"), CancellationToken::new())
            .await
            .unwrap();
        assert!(svc.is_loaded("fake-a") && !svc.is_loaded("fake-b"));
        // A load that fails leaves no phantom usage behind.
        *factory.fail_loads.lock().unwrap() = Some(Error::unavailable("broken"));
        svc.load("fake-b", None).await.unwrap_err();
        *factory.fail_loads.lock().unwrap() = None;
        svc.unload("fake-a").await.unwrap();
        factory.sizes.lock().unwrap().insert("fake-b".to_owned(), 100);
        svc.load("fake-b", None).await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn pinned_models_are_neither_expired_nor_evicted() {
        let text = "models:\n  - {id: pinned, kind: chat, backend: llama, path: p.gguf, pinned: true, keep_alive: '0'}\n  - {id: other, kind: chat, backend: llama, path: o.gguf}\n";
        let registry = Registry::parse(text, std::path::Path::new("r.yaml"), std::path::Path::new("/m"), |_| {
            None
        })
        .unwrap();
        let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
        factory
            .sizes
            .lock()
            .unwrap()
            .extend([("pinned".to_owned(), 60), ("other".to_owned(), 60)]);
        let svc =
            Arc::new(Service::new(registry, Arc::clone(&factory) as Arc<dyn PipelineFactory>).with_memory_budget(100));
        let _keeper = svc.spawn_keep_alive();
        svc.chat(chat_request("pinned"), CancellationToken::new())
            .await
            .unwrap()
            .collect_response()
            .await
            .unwrap();
        advance(Duration::from_secs(60)).await;
        assert!(svc.is_loaded("pinned"), "keep_alive 0 does not unload a pinned model");
        let err = svc.load("other", None).await.unwrap_err();
        assert!(err.message.contains("in use or pinned"), "{}", err.message);
        assert!(svc
            .models()
            .iter()
            .any(|m| m.id == "pinned" && m.pinned && m.expires_in_secs.is_none()));
    }

    #[tokio::test]
    async fn invalid_requests_never_load_a_model() {
        let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
        let svc = service(Arc::clone(&factory));
        let err = svc
            .chat(
                ChatRequest {
                    model: "fake-a".into(),
                    ..ChatRequest::default()
                },
                CancellationToken::new(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages"));
        assert_eq!(factory.loads.load(Ordering::SeqCst), 0);
    }
}
