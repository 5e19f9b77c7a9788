//! One generation job on the engine thread: prompt processing, the decode
//! loop, detokenization, stop strings, log-probabilities and timings.

use std::time::Instant;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use llmlab_core::stream::{ProcessorChain, ReasoningFormat, StreamProcessor, ToolCallFormat};
use llmlab_core::text::{StopScan, TokenTextAssembler};
use llmlab_core::{ChatEvent, ChatEventSender, Error, FinishReason, Result, Timings, TokenLogprob, TopLogprob, Usage};

use crate::engine::Job;
use crate::logprobs::logprobs;
use crate::sampler::build_request_sampler;

/// Special-token handling resolved to token ids once per model.
#[derive(Debug, Default)]
pub(crate) struct TokenPolicy {
    render_special: bool,
    continue_after: Vec<LlamaToken>,
}

/// Harmony's `<|end|>` closes one message (the analysis), not the reply.
const HARMONY_MESSAGE_END: &str = "<|end|>";

impl TokenPolicy {
    /// Harmony, Mistral (`[TOOL_CALLS]`, `[ARGS]`) and Llama 3
    /// (`<|python_tag|>`) write their markers as control tokens, which
    /// llama.cpp renders as nothing unless asked: the stream processor must
    /// see them. Harmony's `<|end|>` must also not stop generation before
    /// the final channel.
    pub fn new(model: &LlamaModel, reasoning: ReasoningFormat, tools: ToolCallFormat) -> Self {
        let harmony = reasoning == ReasoningFormat::Harmony || tools == ToolCallFormat::Harmony;
        let render_special = harmony || matches!(tools, ToolCallFormat::Mistral | ToolCallFormat::Llama3);
        let continue_after = if harmony {
            match model
                .vocab()
                .tokenize(HARMONY_MESSAGE_END.as_bytes(), false, true)
                .as_slice()
            {
                [single] => vec![*single],
                _ => Vec::new(),
            }
        } else {
            Vec::new()
        };
        Self {
            render_special,
            continue_after,
        }
    }

    fn ends_generation(&self, model: &LlamaModel, token: LlamaToken) -> bool {
        model.vocab().is_eog(token) && !self.continue_after.contains(&token)
    }
}

/// Runs one job to its end and sends its terminal event.
pub(crate) fn run_job(
    model: &LlamaModel,
    ctx: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch<'_>,
    policy: &TokenPolicy,
    kv: &mut KvCache,
    mut job: Job,
) {
    let events = job.events.clone();
    let terminal = match generate(model, ctx, batch, policy, kv, &mut job) {
        Ok(finish_reason) => ChatEvent::Done { finish_reason },
        Err(error) => ChatEvent::Error(error),
    };
    let _ = events.send(terminal);
}

fn is_cancelled(job: &Job) -> bool {
    job.cancel.is_cancelled() || job.events.is_closed()
}

fn generate(
    model: &LlamaModel,
    ctx: &mut LlamaContext<'_>,
    batch: &mut LlamaBatch<'_>,
    policy: &TokenPolicy,
    kv: &mut KvCache,
    job: &mut Job,
) -> Result<FinishReason> {
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
            format!(
                "the prompt is {} tokens but the model's context holds {context_size}",
                prompt.len()
            ),
        ));
    }

    // Built before the prompt is processed: a schema that cannot become a
    // grammar fails the request without wasting the prompt's compute.
    let mut sampler = build_request_sampler(model, &job.params)?;

    // Reuse the part of the KV cache that matches this prompt's start. The
    // cache's token list is taken out while we work: if anything fails
    // half-way it stays empty and the next job starts from a clean cache.
    let mut in_cache = std::mem::take(&mut kv.tokens);
    let mut reused = common_prefix(&in_cache, &prompt).min(prompt.len() - 1);
    if reused == 0
        || !ctx
            .clear_kv_cache_seq(Some(0), Some(reused as u32), None)
            .unwrap_or(false)
    {
        ctx.clear_kv_cache();
        reused = 0;
    }
    tracing::debug!(reused, "prompt tokens reused from the KV cache");
    in_cache.truncate(reused);
    let reproducible = job.params.sampling.temperature.is_some_and(|t| t <= 0.0) || job.params.sampling.seed.is_some();
    for range in prompt_chunks(reused, prompt.len(), batch_capacity(ctx), reproducible) {
        if is_cancelled(job) {
            kv.tokens = in_cache;
            return Ok(FinishReason::Cancelled);
        }
        batch.clear();
        let chunk = &prompt[range.clone()];
        for (i, token) in chunk.iter().enumerate() {
            let pos = range.start + i;
            let wants_logits = pos + 1 == prompt.len();
            batch.add(*token, pos as i32, &[0], wants_logits).map_err(internal)?;
        }
        ctx.decode(batch)
            .map_err(|e| Error::internal(format!("prompt decode failed: {e}")))?;
        in_cache.extend_from_slice(chunk);
    }

    let mut text = TokenTextAssembler::new(&job.params.stop);
    let mut output = Output {
        events: &job.events,
        processor: job.processor.take(),
    };
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
        if !job.params.ignore_eos && policy.ends_generation(model, token) {
            break output.finish(Some(&mut text), FinishReason::Stop);
        }
        generated += 1;
        piece.clear();
        vocab.token_to_piece_into(token, &mut piece, policy.render_special, None);
        if let Some(top_n) = job.params.logprobs {
            let item = token_logprob(model, ctx, logits_index, token, &piece, top_n as usize);
            if !output.event(ChatEvent::Logprobs(vec![item])) {
                break FinishReason::Cancelled;
            }
        }
        match text.push(&piece) {
            StopScan::Continue(chunk) => {
                if !output.text(&chunk) {
                    break FinishReason::Cancelled;
                }
            }
            StopScan::Stopped(chunk) => {
                output.text(&chunk);
                // What the assembler still holds comes after the stop string.
                break output.finish(None, FinishReason::Stop);
            }
        }
        if generated >= max_new {
            break output.finish(Some(&mut text), FinishReason::Length);
        }
        if is_cancelled(job) {
            break FinishReason::Cancelled;
        }
        batch.clear();
        batch.add(token, position, &[0], true).map_err(internal)?;
        position += 1;
        ctx.decode(batch)
            .map_err(|e| Error::internal(format!("decode failed: {e}")))?;
        in_cache.push(token);
        logits_index = 0;
    };
    kv.tokens = in_cache;

    if finish_reason != FinishReason::Cancelled {
        let first = first_token_at.unwrap_or_else(Instant::now);
        let prompt_ms = ms(first.duration_since(started));
        let generation_ms = ms(first.elapsed());
        let decoded_after_first = generated.saturating_sub(1);
        let timings = Timings {
            queue_ms,
            prompt_ms,
            generation_ms,
            prompt_tokens_per_second: per_second((prompt.len() - reused) as u32, prompt_ms),
            generation_tokens_per_second: per_second(decoded_after_first, generation_ms),
        };
        let usage = Usage::new(prompt.len() as u32, generated).with_cached(reused as u32);
        tracing::debug!(?usage, ?timings, "generation finished");
        let _ = job.events.send(ChatEvent::Usage { usage, timings });
    }
    Ok(finish_reason)
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

/// Tokens whose keys and values sit in sequence 0 of the context, in order,
/// so that a prompt starting the same way (a continued conversation, a
/// repeated system prompt) only processes what is new.
#[derive(Debug, Default)]
pub(crate) struct KvCache {
    tokens: Vec<LlamaToken>,
}

/// Ranges of prompt positions to decode, `n_batch` at a time, after the
/// `reused` ones. When the request must be reproducible (greedy or seeded),
/// the last prompt token is decoded on its own: its logits then come from
/// the same single-token kernels whether or not the rest of the prompt was
/// cached, so a cache hit cannot change the answer.
fn prompt_chunks(reused: usize, len: usize, n_batch: usize, reproducible: bool) -> Vec<std::ops::Range<usize>> {
    let split_at = if reproducible { len - 1 } else { len };
    let mut ranges: Vec<_> = (reused..split_at)
        .step_by(n_batch.max(1))
        .map(|s| s..(s + n_batch).min(split_at))
        .collect();
    if split_at < len && reused < len {
        ranges.push(split_at.max(reused)..len);
    }
    ranges
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Where generated text goes: through the request's stream processors
/// (reasoning router, tool-call parser), when it has them, to the client.
struct Output<'a> {
    events: &'a ChatEventSender,
    processor: Option<ProcessorChain>,
}

impl Output<'_> {
    /// Route a piece of text; false when the client is gone.
    fn text(&mut self, text: &str) -> bool {
        if text.is_empty() {
            return !self.events.is_closed();
        }
        match self.processor.as_mut() {
            None => self.event(ChatEvent::Content(text.to_owned())),
            Some(processor) => processor
                .push(text)
                .into_iter()
                .all(|event| self.events.send(event).is_ok()),
        }
    }

    fn event(&self, event: ChatEvent) -> bool {
        self.events.send(event).is_ok()
    }

    /// Generation ended for `reason`: release text held back by `text` (when
    /// it was not cut by a stop string), flush the processors, and report
    /// `tool_calls` when the reply was a call.
    fn finish(&mut self, text: Option<&mut TokenTextAssembler>, reason: FinishReason) -> FinishReason {
        if let Some(text) = text {
            let rest = text.finish();
            self.text(&rest);
        }
        let Some(processor) = self.processor.as_mut() else {
            return reason;
        };
        for event in processor.finish() {
            let _ = self.events.send(event);
        }
        if reason == FinishReason::Stop && processor.saw_tool_call() {
            FinishReason::ToolCalls
        } else {
            reason
        }
    }
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
    if millis > 0.0 {
        f64::from(tokens) * 1000.0 / millis
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::prompt_chunks;

    #[test]
    fn prompt_chunks_cover_the_prompt_once() {
        assert_eq!(prompt_chunks(0, 5, 2, false), [0..2, 2..4, 4..5]);
        assert_eq!(prompt_chunks(0, 5, 8, true), [0..4, 4..5]);
        assert_eq!(prompt_chunks(3, 5, 8, true), [3..4, 4..5]);
        assert_eq!(prompt_chunks(4, 5, 8, true), vec![4..5]);
        assert_eq!(prompt_chunks(4, 5, 8, false), vec![4..5]);
        assert_eq!(prompt_chunks(0, 1, 8, true), vec![0..1]);
    }
}
