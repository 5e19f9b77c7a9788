//! One request in one sequence slot of the context: its prompt, sampler,
//! text routing and accounting. The batcher advances every active sequence
//! by one decode step at a time: `feed` puts the sequence's next tokens into
//! the shared batch, `after_decode` samples from its logits.

use std::ops::Range;
use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use llmlab_core::guards::{GuardSet, GuardSettings};
use llmlab_core::text::{StopScan, TokenTextAssembler};
use llmlab_core::{ChatEvent, Error, FinishReason, ResolvedParams, Result, Timings, TokenLogprob, TopLogprob, Usage};

use crate::cells::{common_prefix, media_key, Cell, MediaUnit, PromptCells};
use crate::control_text::{ControlTexts, PromptPiece};
use crate::job::{Job, Prompt};
use crate::logprobs::logprobs;
use crate::output::Output;
use crate::policy::TokenPolicy;
use crate::sampler::build_request_sampler;
use crate::schedule::Demand;
use crate::vision::Vision;

/// What a sequence does after a decode step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    Continue,
    Finished(FinishReason),
}

pub(crate) struct Sequence {
    job: Job,
    /// Context sequence id (slot index) it runs in; set by `attach`.
    slot: usize,
    sampler: LlamaSampler,
    prompt: PromptCells,
    /// Prompt cells found in the slot's KV cache when it was attached.
    reused: usize,
    /// What the slot's KV cache holds, in order: the prompt so far, then
    /// every generated token decoded.
    in_cache: Vec<Cell>,
    /// Sampled and streamed, waiting to be decoded.
    next: Option<LlamaToken>,
    /// Tokens this sequence put into the batch being decoded.
    in_batch: Range<usize>,
    /// Where its logits sit in that batch, when it asked for them.
    logits_index: Option<i32>,
    text: TokenTextAssembler,
    output: Output,
    /// Repetition and perplexity guards over the sampled tokens.
    guards: GuardSet,
    generated: u32,
    max_new: u32,
    enqueued_at: Instant,
    started: Instant,
    first_token_at: Option<Instant>,
    piece: Vec<u8>,
}

impl Sequence {
    /// Validate and tokenize a job. A job that cannot run is answered here
    /// (its terminal event sent) and `None` returned.
    pub fn prepare(
        model: &LlamaModel,
        control_texts: &ControlTexts,
        vision: Option<&Vision>,
        mut job: Job,
        context_size: usize,
    ) -> Option<Self> {
        if is_cancelled(&job) {
            let _ = job.events.send(ChatEvent::Done {
                finish_reason: FinishReason::Cancelled,
            });
            return None;
        }
        let checked = tokenize_prompt(model, control_texts, vision, &job.prompt).and_then(|prompt| {
            check_prompt(&prompt, context_size, job.prompt.request_field())?;
            // Built before the prompt is processed: a schema that cannot
            // become a grammar fails the request without wasting compute.
            Ok((prompt, build_request_sampler(model, &job.params)?))
        });
        let (prompt, sampler) = match checked {
            Ok(ready) => ready,
            Err(error) => {
                let _ = job.events.send(ChatEvent::Error(error));
                return None;
            }
        };
        // Out of the queue: deadlines and the breaker now hold the model
        // responsible for how this request goes.
        let _ = job.events.send(ChatEvent::Started);
        let room = (context_size - prompt.len()) as u32;
        let max_new = job.params.max_tokens.map_or(room, |m| m.min(room));
        let output = Output {
            events: job.events.clone(),
            processor: job.processor.take(),
        };
        Some(Self {
            text: TokenTextAssembler::new(&job.params.stop),
            guards: GuardSet::new(&guard_settings(&job.params)),
            enqueued_at: job.enqueued_at,
            job,
            slot: 0,
            sampler,
            prompt,
            reused: 0,
            in_cache: Vec::new(),
            next: None,
            in_batch: 0..0,
            logits_index: None,
            output,
            generated: 0,
            max_new,
            started: Instant::now(),
            first_token_at: None,
            piece: Vec::with_capacity(32),
        })
    }

    pub fn prompt(&self) -> &[Cell] {
        &self.prompt.cells
    }

    /// Its client went away or cancelled.
    pub fn is_cancelled(&self) -> bool {
        is_cancelled(&self.job)
    }

    /// Past its prompt: it has a sampled token to decode.
    pub fn is_generating(&self) -> bool {
        self.next.is_some()
    }

    /// What it asks of the next step (see `schedule`): the prompt's tokens
    /// up to its next image, which is evaluated apart
    /// ([`Self::evaluate_image`]).
    pub fn demand(&self) -> Demand {
        Demand {
            prompt_left: if self.is_generating() {
                0
            } else {
                self.prompt.text_run_from(self.in_cache.len())
            },
            invariant: self.is_batch_invariant(),
            at_image: self.image_due().is_some(),
        }
    }

    /// The image its prompt reaches next, when every cell before it is in
    /// the KV cache.
    pub fn image_due(&self) -> Option<&MediaUnit> {
        if self.is_generating() {
            return None;
        }
        self.prompt.media_at(self.in_cache.len())
    }

    /// Evaluate the image due into the slot (llama.cpp calls of its own,
    /// `n_batch` embeddings at a time).
    pub fn evaluate_image(&mut self, vision: &mut Vision, ctx: &mut LlamaContext<'_>, n_batch: usize) -> Result<()> {
        let at = self.in_cache.len();
        let unit = self
            .prompt
            .media_at(at)
            .ok_or_else(|| Error::internal("no image is due"))?;
        let position = self.prompt.position_of(at);
        vision.evaluate(unit, ctx, position, self.slot as i32, n_batch as i32)?;
        let cells = unit.cells;
        self.in_cache.extend_from_slice(&self.prompt.cells[at..at + cells]);
        Ok(())
    }

    /// Its answer must not depend on what else runs: it is decoded in calls
    /// of its own and never starts from another request's cache.
    pub fn is_batch_invariant(&self) -> bool {
        self.job.params.batch_invariant
    }

    /// What its slot's KV cache holds now.
    pub fn in_cache(&self) -> &[Cell] {
        &self.in_cache
    }

    /// How long it has held its slot.
    pub fn held(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    pub fn slot(&self) -> usize {
        self.slot
    }

    pub fn span(&self) -> &tracing::Span {
        &self.job.span
    }

    /// Take slot `slot`, whose KV cache holds `cached`: keep the part that
    /// matches this prompt's start and drop the rest, so a continued
    /// conversation or a repeated system prompt only processes what is new.
    /// An image is kept whole or not at all.
    pub fn attach(&mut self, ctx: &mut LlamaContext<'_>, slot: usize, mut cached: Vec<Cell>) {
        self.slot = slot;
        self.started = Instant::now();
        let seq = slot as u32;
        let shared = common_prefix(&cached, &self.prompt.cells).min(self.prompt.len() - 1);
        let mut reused = self.prompt.boundary_at_or_before(shared);
        let from_position = self.prompt.position_of(reused) as u32;
        if reused == 0
            || !ctx
                .clear_kv_cache_seq(Some(seq), Some(from_position), None)
                .unwrap_or(false)
        {
            let _ = ctx.clear_kv_cache_seq(Some(seq), None, None);
            reused = 0;
        }
        tracing::debug!(parent: &self.job.span, slot, reused, "prompt tokens reused from the KV cache");
        cached.truncate(reused);
        self.in_cache = cached;
        self.reused = reused;
    }

    /// Put this step's tokens into `batch`, at most `budget` of them: the
    /// token sampled last, or the next chunk of the prompt. Returns how many.
    pub fn feed(&mut self, batch: &mut LlamaBatch<'_>, budget: usize) -> Result<usize> {
        self.in_batch = 0..0;
        self.logits_index = None;
        let seq = [self.slot as i32];
        let at = self.in_cache.len();
        if let Some(token) = self.next {
            if budget == 0 {
                return Ok(0);
            }
            self.logits_index = Some(batch.n_tokens());
            batch
                .add(token, self.prompt.position_of(at), &seq, true)
                .map_err(internal)?;
            self.in_batch = at..at + 1;
            return Ok(1);
        }
        // Tokens only: an image is evaluated apart, when it is due.
        let range = at..at + self.prompt.text_run_from(at).min(budget);
        for cell in range.clone() {
            let last = cell + 1 == self.prompt.len();
            if last {
                self.logits_index = Some(batch.n_tokens());
            }
            let token = self
                .prompt
                .token_at(cell)
                .ok_or_else(|| Error::internal("an image cell reached the token batch"))?;
            batch
                .add(token, self.prompt.position_of(cell), &seq, last)
                .map_err(internal)?;
        }
        self.in_batch = range.clone();
        Ok(range.len())
    }

    /// The batch was decoded: record what entered the KV cache and, when this
    /// sequence's logits are ready, sample, stream and check for the end.
    pub fn after_decode(&mut self, model: &LlamaModel, ctx: &LlamaContext<'_>, policy: &TokenPolicy) -> Step {
        match self.next.take() {
            Some(token) if !self.in_batch.is_empty() => self.in_cache.push(Cell::Token(token)),
            Some(token) => self.next = Some(token),
            None => self
                .in_cache
                .extend_from_slice(&self.prompt.cells[self.in_batch.clone()]),
        }
        self.in_batch = 0..0;
        if is_cancelled(&self.job) {
            return Step::Finished(FinishReason::Cancelled);
        }
        let Some(index) = self.logits_index.take() else {
            return Step::Continue;
        };
        let token = self.sampler.sample(ctx, index);
        self.first_token_at.get_or_insert_with(Instant::now);
        if !self.job.params.ignore_eos && policy.ends_generation(model, token) {
            return Step::Finished(self.output.finish(Some(&mut self.text), FinishReason::Stop));
        }
        self.generated += 1;
        self.piece.clear();
        model
            .vocab()
            .token_to_piece_into(token, &mut self.piece, policy.render_special, None);
        // One log-softmax over the vocabulary serves both the client's
        // log-probabilities and the perplexity guard; neither asked, none.
        let logprob = match self.job.params.logprobs {
            Some(top_n) => {
                let item = token_logprob(model, ctx, index, token, &self.piece, top_n as usize);
                let logprob = item.logprob;
                if !self.output.event(ChatEvent::Logprobs(vec![item])) {
                    return Step::Finished(FinishReason::Cancelled);
                }
                Some(logprob)
            }
            None if self.guards.needs_logprobs() => Some(logprobs(ctx.get_logits_ith(index), token.0 as usize, 0).0),
            None => None,
        };
        match self.text.push(&self.piece) {
            StopScan::Continue(chunk) => {
                if !self.output.text(&chunk) {
                    return Step::Finished(FinishReason::Cancelled);
                }
            }
            StopScan::Stopped(chunk) => {
                self.output.text(&chunk);
                // What the assembler still holds comes after the stop string.
                return Step::Finished(self.output.finish(None, FinishReason::Stop));
            }
        }
        if let Some(trip) = self.guards.observe(token.0 as u32, logprob) {
            tracing::info!(parent: &self.job.span, guard = ?trip.kind, figure = trip.figure, detail = %trip.detail, "a guard stopped the generation");
            let reason = self.output.finish(Some(&mut self.text), FinishReason::Stop);
            self.output.event(ChatEvent::Stopped(trip));
            return Step::Finished(reason);
        }
        if self.generated >= self.max_new {
            return Step::Finished(self.output.finish(Some(&mut self.text), FinishReason::Length));
        }
        self.next = Some(token);
        Step::Continue
    }

    /// Send the usage and terminal events; returns what the slot's KV
    /// cache holds, for the next request to reuse.
    pub fn finish(self, finish_reason: FinishReason) -> Vec<Cell> {
        if finish_reason != FinishReason::Cancelled {
            let first = self.first_token_at.unwrap_or_else(Instant::now);
            let prompt_ms = ms(first.duration_since(self.started));
            let generation_ms = ms(first.elapsed());
            let decoded_after_first = self.generated.saturating_sub(1);
            let timings = Timings {
                queue_ms: ms(self.started.duration_since(self.enqueued_at)),
                prompt_ms,
                generation_ms,
                prompt_tokens_per_second: per_second((self.prompt.len() - self.reused) as u32, prompt_ms),
                generation_tokens_per_second: per_second(decoded_after_first, generation_ms),
            };
            let usage = Usage::new(self.prompt.len() as u32, self.generated).with_cached(self.reused as u32);
            tracing::debug!(parent: &self.job.span, ?usage, ?timings, "generation finished");
            let _ = self.job.events.send(ChatEvent::Usage { usage, timings });
        }
        let _ = self.job.events.send(ChatEvent::Done { finish_reason });
        self.in_cache
    }

    /// End with an error; whatever the slot's KV cache holds is suspect.
    pub fn fail(self, error: Error) {
        let _ = self.job.events.send(ChatEvent::Error(error));
    }
}

/// The request's guards, less those that would misjudge it: a benchmark's
/// `ignore_eos` run asks for a fixed length whatever the text, and a grammar
/// forces tokens the model itself finds improbable.
fn guard_settings(params: &ResolvedParams) -> GuardSettings {
    let mut settings = params.guards;
    if params.ignore_eos {
        settings.repetition.enabled = false;
        settings.perplexity.enabled = false;
    }
    if params.json_schema.is_some() {
        settings.perplexity.enabled = false;
    }
    settings
}

fn is_cancelled(job: &Job) -> bool {
    job.cancel.is_cancelled() || job.events.is_closed()
}

/// `param` names the request field the prompt came from. Images count
/// with the cells they take.
fn check_prompt(prompt: &PromptCells, context_size: usize, param: &str) -> Result<()> {
    if prompt.len() == 0 {
        return Err(Error::invalid_param(param, "the prompt is empty"));
    }
    if prompt.token_at(prompt.len() - 1).is_none() {
        // Generation samples from the last cell's logits, and an image's
        // are never computed; chat templates always end with text.
        return Err(Error::invalid_param(param, "the prompt must not end with an image"));
    }
    if prompt.len() >= context_size {
        return Err(Error::invalid_param(
            param,
            format!(
                "the prompt is {} tokens but the model's context holds {context_size}",
                prompt.len()
            ),
        ));
    }
    Ok(())
}

fn token_logprob(
    model: &LlamaModel,
    ctx: &LlamaContext<'_>,
    index: i32,
    token: LlamaToken,
    piece: &[u8],
    top_n: usize,
) -> TokenLogprob {
    let vocab = model.vocab();
    let (logprob, top) = logprobs(ctx.get_logits_ith(index), token.0 as usize, top_n);
    let top_logprobs = top
        .into_iter()
        .map(|(id, logprob)| {
            let bytes = vocab.token_to_piece(LlamaToken(id as i32), false, None);
            TopLogprob {
                token: String::from_utf8_lossy(&bytes).into_owned(),
                logprob,
                bytes,
            }
        })
        .collect();
    TokenLogprob {
        token: String::from_utf8_lossy(piece).into_owned(),
        logprob,
        bytes: piece.to_vec(),
        top_logprobs,
    }
}

/// Tokenize with special tokens parsed (templates write them as text) and
/// BOS added when the model wants one, without doubling a BOS the template
/// already wrote. Each image is tokenized by the projector, alone.
pub(crate) fn tokenize_prompt(
    model: &LlamaModel,
    control_texts: &ControlTexts,
    vision: Option<&Vision>,
    prompt: &Prompt,
) -> Result<PromptCells> {
    let vocab = model.vocab();
    let (text, images) = match prompt {
        Prompt::Raw(text) => {
            return Ok(PromptCells::from_tokens(without_double_bos(
                model,
                vocab.tokenize(text.as_bytes(), true, true),
            )))
        }
        Prompt::Rendered { text, images } => (text, images),
    };
    let mut cells = PromptCells::default();
    let mut placed = vec![false; images.len()];
    for (i, piece) in control_texts.pieces(text).into_iter().enumerate() {
        // The model's own start tokens (BOS) go before the first piece.
        let add_special = i == 0;
        let tokens = match piece {
            PromptPiece::Template(text) => vocab.tokenize(text.as_bytes(), add_special, true),
            PromptPiece::Literal(text) => vocab.tokenize(text.as_bytes(), add_special, false),
            PromptPiece::Media(index) => {
                let Some(image) = images.get(index).filter(|_| !placed[index]) else {
                    return Err(Error::internal("the chat template placed an image twice"));
                };
                placed[index] = true;
                let vision =
                    vision.ok_or_else(|| Error::invalid_param("messages", "this model does not read images"))?;
                if add_special {
                    cells
                        .cells
                        .extend(vocab.tokenize(b"", true, false).into_iter().map(Cell::Token));
                }
                cells.push_media(vision.tokenize(image)?, media_key(&image.id));
                continue;
            }
        };
        let tokens = if add_special {
            without_double_bos(model, tokens)
        } else {
            tokens
        };
        cells.cells.extend(tokens.into_iter().map(Cell::Token));
    }
    if placed.contains(&false) {
        return Err(Error::invalid_param(
            "messages",
            "the model's chat template left out a message that holds an image",
        ));
    }
    Ok(cells)
}

/// Templates that write BOS themselves would get a second one.
fn without_double_bos(model: &LlamaModel, mut tokens: Vec<LlamaToken>) -> Vec<LlamaToken> {
    let bos = model.vocab().bos();
    if tokens.len() >= 2 && tokens[0] == bos && tokens[1] == bos {
        tokens.remove(0);
    }
    tokens
}

fn internal(e: impl std::fmt::Display) -> Error {
    Error::internal(e.to_string())
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn per_second(tokens: u32, millis: f64) -> f64 {
    if millis > 0.0 {
        f64::from(tokens) * 1000.0 / millis
    } else {
        0.0
    }
}
