//! The engine thread: owns a llama.cpp model and context and runs generation
//! jobs that arrive over a channel. Nothing else touches the FFI objects.

use std::num::NonZeroU32;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use llmlab_core::metrics;
use llmlab_core::registry::{LlamaSettings, ModelSpec};
use llmlab_core::stream::detect_formats;
use llmlab_core::{ChatEvent, Error, Result};

use crate::backend::backend;
use crate::batcher::Batcher;
use crate::control_text::ControlTexts;
use crate::engine_load::EngineLoad;
use crate::job::{Job, ModelInfo, Prompt};
use crate::policy::TokenPolicy;
use crate::settings::llama_settings;
use crate::vision::Vision;

enum Command {
    Generate(Box<Job>),
    Tokenize(Prompt, mpsc::SyncSender<Result<Vec<i32>>>),
    Shutdown,
}

/// Handle to a running engine thread. Dropping it stops the thread once the
/// sequences already running finish; requests still waiting get an error.
pub(crate) struct Engine {
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
    load: Arc<EngineLoad>,
}

impl Engine {
    /// Load the model on a new thread and wait until it is ready.
    pub fn start(spec: &ModelSpec) -> Result<(Self, ModelInfo)> {
        crate::check_model_file(spec)?;
        let settings = llama_settings(spec)?.clone();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let (commands, command_rx) = mpsc::channel();
        let load = Arc::new(EngineLoad::new(
            &spec.id,
            spec.max_queue as usize,
            settings.parallel.max(1) as usize,
        ));
        let spec = spec.clone();
        let thread = std::thread::Builder::new()
            .name(format!("engine-{}", spec.id))
            .spawn({
                let load = Arc::clone(&load);
                move || engine_main(&spec, &settings, &load, &command_rx, &ready_tx)
            })
            .map_err(|e| Error::internal(format!("cannot start engine thread: {e}")))?;
        let info = ready_rx
            .recv()
            .map_err(|_| Error::internal("engine thread died while loading the model"))??;
        Ok((
            Self {
                commands,
                thread: Some(thread),
                load,
            },
            info,
        ))
    }

    /// The tokens a prompt becomes, -1 for each cell an image takes
    /// (waits while every slot is busy).
    pub fn tokenize(&self, prompt: Prompt) -> Result<Vec<i32>> {
        let stopped = || Error::unavailable("the model's engine has stopped");
        let (reply, answer) = mpsc::sync_channel(1);
        self.commands
            .send(Command::Tokenize(prompt, reply))
            .map_err(|_| stopped())?;
        answer.recv().map_err(|_| stopped())?
    }

    pub fn submit(&self, job: Job) -> Result<()> {
        let first_token = job.params.guards.deadlines.first_token();
        self.load.enqueue(first_token)?;
        self.commands.send(Command::Generate(Box::new(job))).map_err(|_| {
            self.load.never_sent();
            Error::unavailable("the model's engine has stopped")
        })
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let _ = self.commands.send(Command::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn engine_main(
    spec: &ModelSpec,
    settings: &LlamaSettings,
    load: &EngineLoad,
    commands: &Receiver<Command>,
    ready: &mpsc::SyncSender<Result<ModelInfo>>,
) {
    let settings = &match crate::memory::with_gpu_plan(spec, settings) {
        Ok(planned) => planned,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    // The context borrows the model; both are locals of this thread, so the
    // context is dropped first and neither ever leaves the thread.
    let model = match load_model(spec, settings) {
        Ok(model) => model,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let ctx = match new_context(&model, spec, settings) {
        Ok(ctx) => ctx,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let vision = match Vision::load(&model, spec, settings) {
        Ok(vision) => vision,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let info = match model_info(&model, spec, settings, vision.is_some()) {
        Ok(info) => info,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let policy = TokenPolicy::new(&model, info.reasoning_format, info.tool_call_format);
    let control_texts = Arc::clone(&info.control_texts);
    if ready.send(Ok(info)).is_err() {
        return;
    }
    metrics::model_memory(&spec.id, model.size());
    let mut batcher = Batcher::new(
        &model,
        ctx,
        policy,
        control_texts,
        vision,
        settings.parallel as usize,
        settings.context_size as usize,
    );
    let mut stopping = false;
    while !(stopping && batcher.is_idle()) {
        // New requests join between decode steps while slots are free; with
        // nothing running, wait for one.
        while !stopping && batcher.has_free_slot() {
            let command = if batcher.is_idle() {
                commands.recv().map_err(|_| TryRecvError::Disconnected)
            } else {
                commands.try_recv()
            };
            match command {
                Ok(Command::Generate(job)) => batcher.admit(*job, load),
                Ok(Command::Tokenize(prompt, reply)) => {
                    let _ = reply.send(batcher.tokenize(&prompt));
                }
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => stopping = true,
                Err(TryRecvError::Empty) => break,
            }
        }
        if !batcher.is_idle() {
            batcher.step(load);
        }
    }
    // Shutting down: requests still queued get a clear answer instead of a
    // stream that just ends.
    while let Ok(command) = commands.try_recv() {
        if let Command::Generate(job) = command {
            load.started();
            let _ = job.events.send(ChatEvent::Error(Error::unavailable(format!(
                "model '{}' was unloaded",
                spec.id
            ))));
            load.finished();
        }
    }
}

pub(crate) fn load_model(spec: &ModelSpec, settings: &LlamaSettings) -> Result<LlamaModel> {
    let started = Instant::now();
    // `settings` went through `memory::with_gpu_plan`: the count is decided.
    let mut params = LlamaModelParams::default().with_n_gpu_layers(settings.gpu_layers.unwrap_or(0));
    if let Some(gpu) = settings.main_gpu {
        // One GPU holds it all; otherwise llama.cpp splits the layers over
        // every GPU in proportion to their free memory.
        params = params
            .with_split_mode(llama_cpp_2::model::params::LlamaSplitMode::None)
            .with_main_gpu(i32::try_from(gpu).unwrap_or(i32::MAX));
    }
    let model = LlamaModel::load_from_file(backend()?, &spec.path, &params).map_err(|e| {
        tracing::warn!(model = %spec.id, path = %spec.path.display(), error = %e, "llama.cpp could not load the model");
        Error::unavailable(format!("cannot load model '{}': {e}", spec.id))
    })?;
    tracing::info!(model = %spec.id, load_ms = started.elapsed().as_millis() as u64, "model weights loaded");
    Ok(model)
}

fn new_context<'m>(model: &'m LlamaModel, spec: &ModelSpec, settings: &LlamaSettings) -> Result<LlamaContext<'m>> {
    let threads = i32::try_from(settings.threads).unwrap_or(i32::MAX);
    // Each slot gets its own KV stream of `context_size` cells: a
    // sequence's attention then reads only its own cells (in one shared pool
    // it would read past every other sequence's, masked), and its cells sit
    // at the same indices whatever runs beside it, which batch-invariant
    // requests need (docs/PITFALLS.md).
    let total = settings.context_size.saturating_mul(settings.parallel.max(1));
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(total))
        .with_n_seq_max(settings.parallel.max(1))
        .with_kv_unified(false)
        .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO)
        .with_n_batch(settings.batch_size)
        .with_n_ubatch(settings.batch_size)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let ctx = model
        .new_context(backend()?, params)
        .map_err(|e| Error::unavailable(format!("cannot create a context for '{}': {e}", spec.id)))?;
    tracing::info!(model = %spec.id, threads, context = settings.context_size, parallel = settings.parallel, "context ready");
    Ok(ctx)
}

fn model_info(model: &LlamaModel, spec: &ModelSpec, settings: &LlamaSettings, reads_images: bool) -> Result<ModelInfo> {
    let vocab = model.vocab();
    let special_text = |token: LlamaToken| {
        if token.0 < 0 {
            return String::new();
        }
        String::from_utf8_lossy(&vocab.token_to_piece(token, true, None)).into_owned()
    };
    let chat_template = settings.chat_template.clone().or_else(|| {
        model
            .meta_val_str("tokenizer.chat_template")
            .ok()
            .filter(|t| !t.trim().is_empty())
    });
    let (reasoning, tools) = chat_template.as_deref().map(detect_formats).unwrap_or_default();
    let control_texts = control_texts(model).map_err(|e| Error::unavailable(format!("model '{}': {e}", spec.id)))?;
    Ok(ModelInfo {
        reasoning_format: settings.reasoning_format.unwrap_or(reasoning),
        tool_call_format: settings.tool_call_format.unwrap_or(tools),
        chat_template,
        bos_token: special_text(vocab.bos()),
        eos_token: special_text(vocab.eos()),
        context_size: settings.context_size,
        control_texts: Arc::new(control_texts),
        reads_images,
    })
}

/// The texts of the tokens llama.cpp reads out of a prompt only when special
/// parsing is on (control and unknown tokens).
fn control_texts(model: &LlamaModel) -> std::result::Result<ControlTexts, String> {
    use llama_cpp_2::token_type::LlamaTokenAttr;
    let vocab = model.vocab();
    let texts = vocab.tokens().filter_map(|token| {
        let attr = vocab.attr(token);
        if !(attr.contains(LlamaTokenAttr::Control) || attr.contains(LlamaTokenAttr::Unknown)) {
            return None;
        }
        vocab.text(token).and_then(|t| t.to_str().ok()).map(str::to_owned)
    });
    ControlTexts::new(texts)
}
