//! The engine thread: owns a llama.cpp model and context and runs generation
//! jobs that arrive over a channel. Nothing else touches the FFI objects.

use std::num::NonZeroU32;
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{self, Receiver, Sender};
use std::thread::JoinHandle;
use std::time::Instant;

use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use tokio_util::sync::CancellationToken;

use llmlab_core::registry::ModelSpec;
use llmlab_core::text::{StopScan, TokenTextAssembler};
use llmlab_core::{
    ChatEvent, ChatEventSender, Error, FinishReason, GenerationParams, Result, Timings, TokenLogprob, TopLogprob, Usage,
};

use crate::backend::backend;
use crate::logprobs::logprobs;
use crate::sampler::build_request_sampler;

/// What the rest of the crate learns about a model once it is loaded.
#[derive(Debug, Clone)]
pub(crate) struct ModelInfo {
    pub chat_template: Option<String>,
    pub bos_token: String,
    pub eos_token: String,
    pub context_size: u32,
}

/// One generation request, as the engine thread sees it.
pub(crate) struct Job {
    pub prompt: String,
    /// Sampling already resolved against model and global defaults.
    pub params: GenerationParams,
    pub cancel: CancellationToken,
    pub events: ChatEventSender,
    pub span: tracing::Span,
    pub enqueued_at: Instant,
}

enum Command {
    Generate(Job),
    Shutdown,
}

/// Handle to a running engine thread. Dropping it stops the thread after the
/// job in progress.
pub(crate) struct Engine {
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// Load the model on a new thread and wait until it is ready.
    pub fn start(spec: &ModelSpec) -> Result<(Self, ModelInfo)> {
        if !spec.path.is_file() {
            return Err(Error::unavailable(format!(
                "model file for '{}' not found at {} (run `llmlab pull {}`)",
                spec.id,
                spec.path.display(),
                spec.id
            )));
        }
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let (commands, command_rx) = mpsc::channel();
        let spec = spec.clone();
        let thread = std::thread::Builder::new()
            .name(format!("engine-{}", spec.id))
            .spawn(move || engine_main(&spec, &command_rx, &ready_tx))
            .map_err(|e| Error::internal(format!("cannot start engine thread: {e}")))?;
        let info = ready_rx
            .recv()
            .map_err(|_| Error::internal("engine thread died while loading the model"))??;
        Ok((Self { commands, thread: Some(thread) }, info))
    }

    pub fn submit(&self, job: Job) -> Result<()> {
        self.commands
            .send(Command::Generate(job))
            .map_err(|_| Error::unavailable("the model's engine has stopped"))
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

fn engine_main(spec: &ModelSpec, commands: &Receiver<Command>, ready: &mpsc::SyncSender<Result<ModelInfo>>) {
    // The context borrows the model; both are locals of this thread, so the
    // context is dropped first and neither ever leaves the thread.
    let model = match load_model(spec) {
        Ok(model) => model,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut ctx = match new_context(&model, spec) {
        Ok(ctx) => ctx,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    if ready.send(Ok(model_info(&model, ctx.n_ctx()))).is_err() {
        return;
    }
    let mut batch = LlamaBatch::new(spec.batch_size as usize, 1);
    while let Ok(Command::Generate(job)) = commands.recv() {
        let span = job.span.clone();
        let _entered = span.enter();
        let events = job.events.clone();
        // A bug in our per-job code must not take the engine (and every
        // later request) down with it.
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run_job(&model, &mut ctx, &mut batch, job)));
        if outcome.is_err() {
            tracing::error!("generation panicked; the engine continues with the next request");
            let _ = events.send(ChatEvent::Error(Error::internal("generation failed unexpectedly")));
        }
    }
}

fn load_model(spec: &ModelSpec) -> Result<LlamaModel> {
    let started = Instant::now();
    let params = LlamaModelParams::default().with_n_gpu_layers(spec.gpu_layers);
    let model = LlamaModel::load_from_file(backend()?, &spec.path, &params)
        .map_err(|e| Error::unavailable(format!("cannot load model '{}' from {}: {e}", spec.id, spec.path.display())))?;
    tracing::info!(model = %spec.id, load_ms = started.elapsed().as_millis() as u64, "model weights loaded");
    Ok(model)
}

fn new_context<'m>(model: &'m LlamaModel, spec: &ModelSpec) -> Result<LlamaContext<'m>> {
    let threads = i32::try_from(spec.threads).unwrap_or(i32::MAX);
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(spec.context_size))
        .with_n_batch(spec.batch_size)
        .with_n_ubatch(spec.batch_size)
        .with_n_threads(threads)
        .with_n_threads_batch(threads);
    let ctx = model
        .new_context(backend()?, params)
        .map_err(|e| Error::unavailable(format!("cannot create a context for '{}': {e}", spec.id)))?;
    tracing::info!(model = %spec.id, threads, context = spec.context_size, "context ready");
    Ok(ctx)
}

fn model_info(model: &LlamaModel, context_size: u32) -> ModelInfo {
    let vocab = model.vocab();
    let special_text = |token: LlamaToken| {
        if token.0 < 0 {
            return String::new();
        }
        String::from_utf8_lossy(&vocab.token_to_piece(token, true, None)).into_owned()
    };
    ModelInfo {
        chat_template: model.meta_val_str("tokenizer.chat_template").ok().filter(|t| !t.trim().is_empty()),
        bos_token: special_text(vocab.bos()),
        eos_token: special_text(vocab.eos()),
        context_size,
    }
}

/// Runs one job to its end and sends its terminal event.
fn run_job(model: &LlamaModel, ctx: &mut LlamaContext<'_>, batch: &mut LlamaBatch<'_>, job: Job) {
    let events = job.events.clone();
    let terminal = match generate(model, ctx, batch, &job) {
        Ok(finish_reason) => ChatEvent::Done { finish_reason },
        Err(error) => ChatEvent::Error(error),
    };
    let _ = events.send(terminal);
}

fn is_cancelled(job: &Job) -> bool {
    job.cancel.is_cancelled() || job.events.is_closed()
}

fn generate(model: &LlamaModel, ctx: &mut LlamaContext<'_>, batch: &mut LlamaBatch<'_>, job: &Job) -> Result<FinishReason> {
    let started = Instant::now();
    let queue_ms = ms(started.duration_since(job.enqueued_at));
    if is_cancelled(job) {
        return Ok(FinishReason::Cancelled);
    }
    let vocab = model.vocab();
    let prompt = tokenize_prompt(model, &job.prompt);
    let context_size = ctx.n_ctx() as usize;
    if prompt.is_empty() {
        return Err(Error::invalid_param("prompt", "the prompt is empty"));
    }
    if prompt.len() >= context_size {
        return Err(Error::invalid_param(
            "messages",
            format!("the prompt is {} tokens but the model's context holds {context_size}", prompt.len()),
        ));
    }

    // Built before the prompt is processed: a schema that cannot become a
    // grammar fails the request without wasting the prompt's compute.
    let mut sampler = build_request_sampler(model, &job.params)?;

    ctx.clear_kv_cache();
    let n_batch = batch_capacity(ctx);
    for (chunk_index, chunk) in prompt.chunks(n_batch).enumerate() {
        if is_cancelled(job) {
            return Ok(FinishReason::Cancelled);
        }
        batch.clear();
        let offset = chunk_index * n_batch;
        for (i, token) in chunk.iter().enumerate() {
            let pos = offset + i;
            let wants_logits = pos + 1 == prompt.len();
            batch.add(*token, pos as i32, &[0], wants_logits).map_err(internal)?;
        }
        ctx.decode(batch).map_err(|e| Error::internal(format!("prompt decode failed: {e}")))?;
    }

    let mut text = TokenTextAssembler::new(&job.params.stop);
    let room = (context_size - prompt.len()) as u32;
    let max_new = job.params.max_tokens.map_or(room, |m| m.min(room));
    let mut logits_index = batch.n_tokens() - 1;
    let mut position = prompt.len() as i32;
    let mut generated: u32 = 0;
    let mut first_token_at = None;
    let mut piece = Vec::with_capacity(32);

    let finish_reason = loop {
        let token = sampler.sample(ctx, logits_index);
        first_token_at.get_or_insert_with(Instant::now);
        if !job.params.ignore_eos && vocab.is_eog(token) {
            break flush(&mut text, job, FinishReason::Stop);
        }
        generated += 1;
        piece.clear();
        vocab.token_to_piece_into(token, &mut piece, false, None);
        if let Some(top_n) = job.params.logprobs {
            let item = token_logprob(model, ctx, logits_index, token, &piece, top_n as usize);
            if job.events.send(ChatEvent::Logprobs(vec![item])).is_err() {
                break FinishReason::Cancelled;
            }
        }
        match text.push(&piece) {
            StopScan::Continue(chunk) => {
                if !chunk.is_empty() && job.events.send(ChatEvent::Content(chunk)).is_err() {
                    break FinishReason::Cancelled;
                }
            }
            StopScan::Stopped(chunk) => {
                if !chunk.is_empty() {
                    let _ = job.events.send(ChatEvent::Content(chunk));
                }
                break FinishReason::Stop;
            }
        }
        if generated >= max_new {
            break flush(&mut text, job, FinishReason::Length);
        }
        if is_cancelled(job) {
            break FinishReason::Cancelled;
        }
        batch.clear();
        batch.add(token, position, &[0], true).map_err(internal)?;
        position += 1;
        ctx.decode(batch).map_err(|e| Error::internal(format!("decode failed: {e}")))?;
        logits_index = 0;
    };

    if finish_reason != FinishReason::Cancelled {
        let first = first_token_at.unwrap_or_else(Instant::now);
        let prompt_ms = ms(first.duration_since(started));
        let generation_ms = ms(first.elapsed());
        let decoded_after_first = generated.saturating_sub(1);
        let timings = Timings {
            queue_ms,
            prompt_ms,
            generation_ms,
            prompt_tokens_per_second: per_second(prompt.len() as u32, prompt_ms),
            generation_tokens_per_second: per_second(decoded_after_first, generation_ms),
        };
        let usage = Usage::new(prompt.len() as u32, generated);
        tracing::debug!(?usage, ?timings, "generation finished");
        let _ = job.events.send(ChatEvent::Usage { usage, timings });
    }
    Ok(finish_reason)
}

fn token_logprob(model: &LlamaModel, ctx: &LlamaContext<'_>, index: i32, token: LlamaToken, piece: &[u8], top_n: usize) -> TokenLogprob {
    let vocab = model.vocab();
    let (logprob, top) = logprobs(ctx.get_logits_ith(index), token.0 as usize, top_n);
    let top_logprobs = top
        .into_iter()
        .map(|(id, logprob)| {
            let bytes = vocab.token_to_piece(LlamaToken(id as i32), false, None);
            TopLogprob { token: String::from_utf8_lossy(&bytes).into_owned(), logprob, bytes }
        })
        .collect();
    TokenLogprob { token: String::from_utf8_lossy(piece).into_owned(), logprob, bytes: piece.to_vec(), top_logprobs }
}

/// Release text held back by the stop matcher and return `reason`.
fn flush(text: &mut TokenTextAssembler, job: &Job, reason: FinishReason) -> FinishReason {
    let rest = text.finish();
    if !rest.is_empty() {
        let _ = job.events.send(ChatEvent::Content(rest));
    }
    reason
}

/// Tokenize with special tokens parsed (templates write them as text) and
/// BOS added when the model wants one, without doubling a BOS the template
/// already wrote.
fn tokenize_prompt(model: &LlamaModel, prompt: &str) -> Vec<LlamaToken> {
    let vocab = model.vocab();
    let mut tokens = vocab.tokenize(prompt.as_bytes(), true, true);
    let bos = vocab.bos();
    if tokens.len() >= 2 && tokens[0] == bos && tokens[1] == bos {
        tokens.remove(0);
    }
    tokens
}

fn batch_capacity(ctx: &LlamaContext<'_>) -> usize {
    ctx.n_batch().max(1) as usize
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::internal(e.to_string())
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn per_second(tokens: u32, millis: f64) -> f64 {
    if millis > 0.0 { f64::from(tokens) * 1000.0 / millis } else { 0.0 }
}
