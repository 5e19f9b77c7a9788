//! Scripted fake pipelines for tests of core logic and transports (feature
//! `testing`). They never touch a real model and are named as fakes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::embedding::{EmbedInput, RawEmbedding};
use crate::pipeline::{ChatPipeline, EmbeddingPipeline, LoadedPipeline};
use crate::registry::ModelSpec;
use crate::service::{MemoryEstimate, PipelineFactory};
use crate::{ChatEvent, ChatStream, Error, FinishReason, ResolvedChat, ResolvedCompletion, Result, Timings, Usage};

/// What a fake pipeline answers to every request.
#[derive(Debug, Clone)]
pub struct Script {
    /// Events sent in order (a terminal event ends the script early).
    pub events: Vec<ChatEvent>,
    /// Pause before each event, to exercise keep-alives and cancellation.
    pub delay: Duration,
    /// Error returned before the stream starts (validation-time failure).
    pub reject: Option<Error>,
}

impl Script {
    /// Content pieces followed by usage and `Done{stop}`.
    pub fn text(pieces: &[&str]) -> Self {
        let mut events: Vec<ChatEvent> = pieces.iter().map(|p| ChatEvent::Content((*p).to_owned())).collect();
        events.push(ChatEvent::Usage {
            usage: Usage::new(7, pieces.len() as u32),
            timings: Timings::default(),
        });
        events.push(ChatEvent::Done {
            finish_reason: FinishReason::Stop,
        });
        Self {
            events,
            delay: Duration::ZERO,
            reject: None,
        }
    }

    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A fake chat pipeline that plays a [`Script`] and records its requests.
#[derive(Debug)]
pub struct FakeChatPipeline {
    script: Mutex<Script>,
    /// Every request as the pipeline received it: resolved by the service.
    pub chats: Mutex<Vec<ResolvedChat>>,
    pub completions: Mutex<Vec<ResolvedCompletion>>,
    /// Requests whose stream ended by cancellation or a dropped receiver.
    pub cancelled: Arc<AtomicUsize>,
    /// Play scripts as if every request waited in a full engine's queue:
    /// no `Started` event before the script's events.
    pub held_in_queue: std::sync::atomic::AtomicBool,
}

impl FakeChatPipeline {
    pub fn new(script: Script) -> Self {
        Self {
            script: Mutex::new(script),
            chats: Mutex::new(Vec::new()),
            completions: Mutex::new(Vec::new()),
            cancelled: Arc::new(AtomicUsize::new(0)),
            held_in_queue: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn set_script(&self, script: Script) {
        *self.script.lock().unwrap() = script;
    }

    fn play(&self, cancel: CancellationToken) -> Result<ChatStream> {
        let script = self.script.lock().unwrap().clone();
        if let Some(error) = script.reject {
            return Err(error);
        }
        let (tx, stream) = ChatStream::channel();
        // Like an engine with a free slot, the fake starts at once, unless
        // the script fails before starting (a prompt too long) or the test
        // holds it in the queue.
        let fails_at_once = matches!(script.events.first(), Some(ChatEvent::Error(_)));
        if !fails_at_once && !self.held_in_queue.load(Ordering::SeqCst) {
            let _ = tx.send(ChatEvent::Started);
        }
        let cancelled = Arc::clone(&self.cancelled);
        tokio::spawn(async move {
            for event in script.events {
                if !script.delay.is_zero() {
                    tokio::select! {
                        () = tokio::time::sleep(script.delay) => {}
                        () = cancel.cancelled() => {}
                    }
                }
                if cancel.is_cancelled() || tx.is_closed() {
                    cancelled.fetch_add(1, Ordering::SeqCst);
                    let _ = tx.send(ChatEvent::Done {
                        finish_reason: FinishReason::Cancelled,
                    });
                    return;
                }
                let terminal = event.is_terminal();
                let _ = tx.send(event);
                if terminal {
                    return;
                }
            }
        });
        Ok(stream)
    }
}

impl ChatPipeline for FakeChatPipeline {
    fn chat(&self, request: ResolvedChat, cancel: CancellationToken) -> Result<ChatStream> {
        self.chats.lock().unwrap().push(request);
        self.play(cancel)
    }

    fn complete(&self, request: ResolvedCompletion, cancel: CancellationToken) -> Result<ChatStream> {
        self.completions.lock().unwrap().push(request);
        self.play(cancel)
    }

    fn render_prompt(&self, request: &ResolvedChat) -> Result<String> {
        Ok(request
            .messages
            .iter()
            .map(|m| m.content.joined_text())
            .collect::<Vec<_>>()
            .join("\n"))
    }
}

/// A fake embedding model: a text's vector counts its bytes into 8 buckets
/// (so texts sharing letters point the same way), a token input's counts
/// its ids; "tokens" are bytes. It never touches a real model.
#[derive(Debug, Default)]
pub struct FakeEmbeddingPipeline {
    /// Inputs of every call, in order.
    pub calls: Mutex<Vec<Vec<EmbedInput>>>,
    /// Error every call returns.
    pub fail: Mutex<Option<Error>>,
}

/// Width of [`FakeEmbeddingPipeline`]'s vectors.
pub const FAKE_EMBEDDING_DIMENSIONS: usize = 8;

impl EmbeddingPipeline for FakeEmbeddingPipeline {
    fn dimensions(&self) -> usize {
        FAKE_EMBEDDING_DIMENSIONS
    }

    fn embed(&self, inputs: &[EmbedInput], _truncate: bool) -> Result<Vec<RawEmbedding>> {
        self.calls.lock().unwrap().push(inputs.to_vec());
        if let Some(error) = self.fail.lock().unwrap().clone() {
            return Err(error);
        }
        Ok(inputs
            .iter()
            .map(|input| {
                let ids: Vec<u32> = match input {
                    EmbedInput::Text(text) => text.bytes().map(u32::from).collect(),
                    EmbedInput::Tokens(tokens) => tokens.clone(),
                };
                let mut vector = vec![0f32; FAKE_EMBEDDING_DIMENSIONS];
                for id in &ids {
                    vector[*id as usize % FAKE_EMBEDDING_DIMENSIONS] += 1.0;
                }
                RawEmbedding {
                    vector,
                    tokens: ids.len(),
                }
            })
            .collect())
    }
}

/// A fake diffusion model: grey pictures of the requested size whose
/// shade is the seed's low byte, one progress call per step, a cancel
/// honoured between steps.
#[derive(Debug, Default)]
pub struct FakeImagePipeline;

/// `request.n` flat pictures of one shade.
fn paint(request: &crate::ResolvedImageRequest, shade: u8) -> Vec<crate::media::RgbImage> {
    let pixels = (request.width * request.height * 3) as usize;
    (0..request.n)
        .map(|_| crate::media::RgbImage {
            width: request.width,
            height: request.height,
            rgb: vec![shade; pixels],
        })
        .collect()
}

impl crate::pipeline::ImagePipeline for FakeImagePipeline {
    fn generate(
        &self,
        request: &crate::ResolvedImageRequest,
        cancel: &CancellationToken,
        progress: &mut dyn FnMut(crate::ImageProgress),
    ) -> Result<Vec<crate::media::RgbImage>> {
        for step in 1..=request.steps {
            if cancel.is_cancelled() {
                return Err(Error::cancelled());
            }
            progress(crate::ImageProgress::Step {
                step,
                steps: request.steps,
            });
            if step <= request.partial_images {
                progress(crate::ImageProgress::Preview {
                    index: step - 1,
                    images: paint(request, step as u8),
                });
            }
        }
        Ok(paint(request, request.seed as u8))
    }
}

/// A factory handing out one shared [`FakeChatPipeline`] for every model,
/// counting loads. `reject_files` fails the preflight check (a bad file),
/// `fail_loads` fails every load attempt, `max_context` fails attempts whose
/// context is larger (as if the KV cache did not fit). Retries of llama
/// models go down [`fake_ladder`].
#[derive(Debug)]
pub struct FakeFactory {
    pub pipeline: Arc<FakeChatPipeline>,
    pub embedder: Arc<FakeEmbeddingPipeline>,
    pub loads: AtomicUsize,
    pub load_delay: Duration,
    pub reject_files: Mutex<Option<Error>>,
    pub fail_loads: Mutex<Option<Error>>,
    pub max_context: Mutex<Option<u32>>,
    /// The spec of every load attempt, in order.
    pub attempts: Mutex<Vec<ModelSpec>>,
    /// Estimated RAM bytes per model id (0 when absent).
    pub sizes: Mutex<std::collections::HashMap<String, u64>>,
    /// Estimated GPU bytes per model id (0 when absent).
    pub gpu_sizes: Mutex<std::collections::HashMap<String, u64>>,
}

impl FakeFactory {
    pub fn new(script: Script) -> Self {
        Self {
            pipeline: Arc::new(FakeChatPipeline::new(script)),
            embedder: Arc::new(FakeEmbeddingPipeline::default()),
            loads: AtomicUsize::new(0),
            load_delay: Duration::ZERO,
            reject_files: Mutex::new(None),
            fail_loads: Mutex::new(None),
            max_context: Mutex::new(None),
            attempts: Mutex::new(Vec::new()),
            sizes: Mutex::new(std::collections::HashMap::new()),
            gpu_sizes: Mutex::new(std::collections::HashMap::new()),
        }
    }
}

impl PipelineFactory for FakeFactory {
    fn load(&self, spec: &ModelSpec) -> Result<LoadedPipeline> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        self.attempts.lock().unwrap().push(spec.clone());
        if !self.load_delay.is_zero() {
            std::thread::sleep(self.load_delay);
        }
        if let Some(error) = self.fail_loads.lock().unwrap().clone() {
            return Err(error);
        }
        if let (Some(max), Some(llama)) = (*self.max_context.lock().unwrap(), spec.backend.llama()) {
            if llama.context_size > max {
                return Err(Error::unavailable(format!(
                    "fake: a context of {} does not fit",
                    llama.context_size
                )));
            }
        }
        Ok(match spec.kind {
            crate::registry::ModelKind::Embedding => LoadedPipeline::Embedding(Arc::clone(&self.embedder) as _),
            crate::registry::ModelKind::Image => LoadedPipeline::Image(Arc::new(FakeImagePipeline)),
            _ => LoadedPipeline::Chat(Arc::clone(&self.pipeline) as _),
        })
    }

    fn preflight(&self, _spec: &ModelSpec) -> Result<()> {
        self.reject_files.lock().unwrap().clone().map_or(Ok(()), Err)
    }

    /// Llama models retry down [`fake_ladder`]; the others as configured.
    fn degrade(&self, configured: &ModelSpec, step: usize) -> Option<crate::guards::LoadAttempt> {
        match configured.backend.kind() {
            crate::registry::BackendKind::Llama => fake_ladder(configured, step),
            crate::registry::BackendKind::Candle => Some(crate::guards::LoadAttempt::as_configured(configured)),
        }
    }

    fn estimate_memory(&self, spec: &ModelSpec) -> Result<MemoryEstimate> {
        let size = |map: &Mutex<std::collections::HashMap<String, u64>>| {
            map.lock().unwrap().get(&spec.id).copied().unwrap_or(0)
        };
        Ok(MemoryEstimate {
            ram: size(&self.sizes),
            vram: size(&self.gpu_sizes),
        })
    }
}

/// A fake degradation ladder for tests of the retry loop (the real one is
/// the llama backend's): step `n` halves a llama model's context `n` times,
/// never below `load_retry.min_context_size`, and says "fake: context N".
/// `None` once the context is at that floor, or for other backends.
pub fn fake_ladder(configured: &ModelSpec, step: usize) -> Option<crate::guards::LoadAttempt> {
    let mut spec = configured.clone();
    let floor = configured.load_retry.min_context_size;
    let llama = spec.backend.llama_mut()?;
    for _ in 0..step {
        let halved = (llama.context_size / 2).max(floor);
        if halved >= llama.context_size {
            return None;
        }
        llama.context_size = halved;
    }
    let degraded = Some(format!("fake: context {}", llama.context_size));
    Some(crate::guards::LoadAttempt { spec, degraded })
}

/// A small registry with two chat models (`fake-a`, the default, and
/// `fake-b`) and an embedding model (`fake-embed`), files not required.
pub fn fake_registry() -> crate::registry::Registry {
    let text = "default_model: fake-a\nmodels:\n  - {id: fake-a, kind: chat, backend: llama, path: a.gguf}\n  - {id: fake-b, kind: chat, backend: llama, path: b.gguf}\n  - {id: fake-embed, kind: embedding, backend: candle, path: e}\n";
    crate::registry::Registry::parse(
        text,
        std::path::Path::new("fake.yaml"),
        std::path::Path::new("/fake"),
        |_| None,
    )
    .expect("fake registry is valid")
}

/// A one-message chat request resolved against `fake-a` of
/// [`fake_registry`], for tests that call a pipeline directly.
pub fn fake_resolved_chat(text: &str) -> ResolvedChat {
    let registry = fake_registry();
    crate::ChatRequest {
        messages: vec![crate::ChatMessage::user(text)],
        ..Default::default()
    }
    .resolve(registry.require("fake-a").expect("fake-a is registered"))
    .expect("a one-message request is valid")
}
