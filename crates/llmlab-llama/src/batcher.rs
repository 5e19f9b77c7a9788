//! Continuous batching on the engine thread: one llama.cpp context with
//! `parallel` sequence slots, each with its own KV stream. Between decode
//! steps new requests take free slots; every step decodes one token of each
//! generating sequence plus as much waiting prompt as the batch holds, in a
//! single `llama_decode`, and each batch-invariant sequence in a call of its
//! own (the policy is in `schedule.rs`). A slot keeps its tokens' KV cache
//! after its request ends, for the next request that starts the same way.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;

use llmlab_core::{Error, FinishReason};

use crate::cells::{common_prefix, Cell};
use crate::control_text::ControlTexts;
use crate::engine_load::EngineLoad;
use crate::job::Job;
use crate::policy::TokenPolicy;
use crate::schedule::{self, Grant};
use crate::sequence::{Sequence, Step};
use crate::vision::Vision;

/// Cached prompt tokens that justify taking a slot out of order.
const PREFIX_WORTH_A_GAP: usize = 64;

/// Prompt tokens another slot must hold beyond the chosen slot's own before
/// its KV cache is copied over: llama.cpp copies a slot's whole KV stream
/// (`context_size` cells, every layer), at memory speed, and saves
/// recomputing the shared prefix (a common system prompt) at prefill speed.
/// Larger contexts make the copy dearer, so the bar rises with them.
fn prefix_worth_a_copy(context_size: usize) -> usize {
    PREFIX_WORTH_A_GAP.max(context_size / 64)
}

/// What a slot's KV cache holds while no request uses it.
#[derive(Debug, Default)]
struct SlotCache {
    tokens: Vec<Cell>,
    busy: bool,
}

pub(crate) struct Batcher<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    batch_capacity: usize,
    policy: TokenPolicy,
    control_texts: Arc<ControlTexts>,
    /// The projector of a vision model (dropped with the batcher, before
    /// the model).
    vision: Option<Vision>,
    /// Tokens one sequence may hold (prompt plus output).
    context_size: usize,
    slots: Vec<SlotCache>,
    /// Running sequences in slot order, each with its admission number
    /// (prompt chunks go to the oldest first).
    active: Vec<Sequence>,
    arrivals: Vec<u64>,
    admitted: u64,
}

impl<'m> Batcher<'m> {
    pub fn new(
        model: &'m LlamaModel,
        ctx: LlamaContext<'m>,
        policy: TokenPolicy,
        control_texts: Arc<ControlTexts>,
        vision: Option<Vision>,
        parallel: usize,
        context_size: usize,
    ) -> Self {
        let batch_capacity = ctx.n_batch().max(1) as usize;
        Self {
            model,
            ctx,
            batch: LlamaBatch::new(batch_capacity, 1),
            batch_capacity,
            policy,
            control_texts,
            vision,
            context_size,
            slots: (0..parallel.max(1)).map(|_| SlotCache::default()).collect(),
            active: Vec::new(),
            arrivals: Vec::new(),
            admitted: 0,
        }
    }

    /// The token ids `prompt` becomes, -1 for each cell of an image.
    pub fn tokenize(&self, prompt: &crate::job::Prompt) -> llmlab_core::Result<Vec<i32>> {
        let cells = crate::sequence::tokenize_prompt(self.model, &self.control_texts, self.vision.as_ref(), prompt)?;
        Ok(cells
            .cells
            .iter()
            .map(|cell| match cell {
                Cell::Token(token) => token.0,
                Cell::Media { .. } => -1,
            })
            .collect())
    }

    pub fn is_idle(&self) -> bool {
        self.active.is_empty()
    }

    pub fn has_free_slot(&self) -> bool {
        self.active.len() < self.slots.len()
    }

    /// Start a job in the free slot whose cache shares the longest prefix
    /// with its prompt (least recently used among equals). A job that cannot
    /// run is answered at once.
    pub fn admit(&mut self, job: Job, load: &EngineLoad) {
        load.started();
        let span = job.span.clone();
        let _entered = span.enter();
        let prepared = Sequence::prepare(
            self.model,
            &self.control_texts,
            self.vision.as_ref(),
            job,
            self.context_size,
        );
        let Some(mut sequence) = prepared else {
            load.finished();
            return;
        };
        // An invariant request starts from an empty slot, as on an idle
        // server: a reused prefix would change how its prompt is cut.
        let reusable: &[_] = if sequence.is_batch_invariant() {
            &[]
        } else {
            sequence.prompt()
        };
        let Some(slot) = self.pick_slot(reusable) else {
            // Callers check `has_free_slot`; never reached.
            sequence.fail(Error::internal("no free sequence slot"));
            load.finished();
            return;
        };
        let mut cached = std::mem::take(&mut self.slots[slot].tokens);
        if sequence.is_batch_invariant() {
            cached.clear();
        } else if let Some(donor) = self.prefix_donor(reusable, common_prefix(&cached, reusable)) {
            cached = self.copy_slot(donor, slot);
        }
        self.slots[slot].busy = true;
        sequence.attach(&mut self.ctx, slot, cached);
        // Kept in slot order: see `decode_and_sample`.
        let at = self.active.partition_point(|running| running.slot() < slot);
        self.active.insert(at, sequence);
        self.arrivals.insert(at, self.admitted);
        self.admitted += 1;
    }

    /// The lowest free slot, unless another free slot's cache saves at least
    /// [`PREFIX_WORTH_A_GAP`] more prompt tokens. Busy slots then stay
    /// contiguous, which llama.cpp needs to decode them in one micro-batch
    /// (with one KV stream per slot it only groups consecutive slot ids).
    fn pick_slot(&self, prompt: &[Cell]) -> Option<usize> {
        let mut free = self.slots.iter().enumerate().filter(|(_, slot)| !slot.busy);
        let (lowest, lowest_slot) = free.next()?;
        let lowest_prefix = common_prefix(&lowest_slot.tokens, prompt);
        let best = free
            .map(|(index, slot)| (common_prefix(&slot.tokens, prompt), index))
            .max_by_key(|(prefix, index)| (*prefix, std::cmp::Reverse(*index)));
        Some(match best {
            Some((prefix, index)) if prefix >= lowest_prefix + PREFIX_WORTH_A_GAP => index,
            _ => lowest,
        })
    }

    /// A running sequence whose slot holds more of `prompt` than `own`
    /// tokens by enough to be worth a copy (see [`prefix_worth_a_copy`]);
    /// the one with the longest shared prefix.
    fn prefix_donor(&self, prompt: &[Cell], own: usize) -> Option<usize> {
        let bar = own + prefix_worth_a_copy(self.context_size);
        self.active
            .iter()
            .map(|running| (common_prefix(running.in_cache(), prompt), running.slot()))
            .filter(|(shared, _)| *shared >= bar)
            .max_by_key(|(shared, slot)| (*shared, std::cmp::Reverse(*slot)))
            .map(|(_, slot)| slot)
    }

    /// Copy slot `from`'s KV cache into slot `to` (llama.cpp does it before
    /// the next decode) and answer the tokens it then holds.
    fn copy_slot(&mut self, from: usize, to: usize) -> Vec<Cell> {
        let tokens = self
            .active
            .iter()
            .find(|running| running.slot() == from)
            .map(|running| running.in_cache().to_vec())
            .unwrap_or_default();
        let _ = self.ctx.clear_kv_cache_seq(Some(to as u32), None, None);
        match self.ctx.copy_kv_cache_seq(from as i32, to as i32, None, None) {
            Ok(()) => {
                tracing::debug!(from, to, tokens = tokens.len(), "KV cache copied between slots");
                tokens
            }
            Err(e) => {
                tracing::warn!(error = %e, "KV cache copy refused; the prompt is processed in full");
                Vec::new()
            }
        }
    }

    /// One decode step over every active sequence. A panic in our code
    /// fails the sequences in flight, never the engine.
    pub fn step(&mut self, load: &EngineLoad) {
        if std::panic::catch_unwind(AssertUnwindSafe(|| self.decode_and_sample(load))).is_err() {
            tracing::error!("a decode step panicked; its requests fail and the engine continues");
            self.fail_all(load, || Error::internal("generation failed unexpectedly"));
        }
    }

    fn decode_and_sample(&mut self, load: &EngineLoad) {
        self.evaluate_one_image(load);
        let demands: Vec<_> = self.active.iter().map(Sequence::demand).collect();
        let plan = schedule::plan_step(&demands, &self.arrivals, self.batch_capacity);
        let calls = std::iter::once(plan.shared).chain(plan.alone.into_iter().map(|grant| vec![grant]));
        let mut sampled = vec![false; self.active.len()];
        let mut finished = Vec::new();
        for call in calls.filter(|call| !call.is_empty()) {
            if !self.decode_call(&call, &mut finished, load) {
                return;
            }
            for grant in &call {
                sampled[grant.sequence] = true;
            }
        }
        // Sequences left out of this step still notice a cancellation.
        for (index, sequence) in self.active.iter_mut().enumerate() {
            if !sampled[index] {
                if let Step::Finished(reason) = sequence.after_decode(self.model, &self.ctx, &self.policy) {
                    finished.push((index, reason));
                }
            }
        }
        // Highest index first, so the indices still to remove stay valid.
        finished.sort_by_key(|(index, _)| std::cmp::Reverse(*index));
        for (index, reason) in finished {
            let sequence = self.active.remove(index);
            self.arrivals.remove(index);
            let (slot, held) = (sequence.slot(), sequence.held());
            self.release(slot, sequence.finish(reason));
            load.finished_after(held);
        }
    }

    /// Decode one call's tokens and sample for the sequences in it. Tokens
    /// go in in slot order: llama.cpp groups consecutive slot ids into one
    /// micro-batch. On failure every sequence fails and `false` comes back.
    fn decode_call(&mut self, call: &[Grant], finished: &mut Vec<(usize, FinishReason)>, load: &EngineLoad) -> bool {
        self.batch.clear();
        for grant in call {
            if self.active[grant.sequence].feed(&mut self.batch, grant.tokens).is_err() {
                // Only a bug overfills the batch: fail everyone rather than
                // decode a batch some sequence believes it is not in.
                self.fail_all(load, || Error::internal("the decode batch overflowed"));
                return false;
            }
        }
        if let Err(e) = self.ctx.decode(&mut self.batch) {
            tracing::error!(error = %e, "llama_decode failed");
            self.fail_all(load, || Error::internal(format!("decode failed: {e}")));
            return false;
        }
        for grant in call {
            let sequence = &mut self.active[grant.sequence];
            let span = sequence.span().clone();
            let _entered = span.enter();
            if let Step::Finished(reason) = sequence.after_decode(self.model, &self.ctx, &self.policy) {
                finished.push((grant.sequence, reason));
            }
        }
        true
    }

    /// Evaluate the image of the oldest sequence whose prompt has reached
    /// one: at most one image per step, so the other sequences' tokens keep
    /// coming while a prompt with many images is read. A failure fails that
    /// sequence alone; its slot's cache is dropped.
    fn evaluate_one_image(&mut self, load: &EngineLoad) {
        let Some(vision) = self.vision.as_mut() else {
            return;
        };
        let due = (0..self.active.len())
            .filter(|&i| self.active[i].image_due().is_some() && !self.active[i].is_cancelled())
            .min_by_key(|&i| self.arrivals[i]);
        let Some(index) = due else {
            return;
        };
        let sequence = &mut self.active[index];
        let span = sequence.span().clone();
        let _entered = span.enter();
        let started = std::time::Instant::now();
        match sequence.evaluate_image(vision, &mut self.ctx, self.batch_capacity) {
            Ok(()) => tracing::debug!(ms = started.elapsed().as_millis() as u64, "image evaluated"),
            Err(error) => {
                tracing::error!(error = %error.message, "image evaluation failed");
                let sequence = self.active.remove(index);
                self.arrivals.remove(index);
                let slot = sequence.slot();
                sequence.fail(error);
                let _ = self.ctx.clear_kv_cache_seq(Some(slot as u32), None, None);
                self.release(slot, Vec::new());
                load.finished();
            }
        }
    }

    fn release(&mut self, slot: usize, tokens: Vec<Cell>) {
        self.slots[slot] = SlotCache { tokens, busy: false };
    }

    /// Fail every running sequence and forget what their slots hold.
    pub fn fail_all(&mut self, load: &EngineLoad, error: impl Fn() -> Error) {
        self.arrivals.clear();
        for sequence in std::mem::take(&mut self.active) {
            let slot = sequence.slot();
            sequence.fail(error());
            let _ = self.ctx.clear_kv_cache_seq(Some(slot as u32), None, None);
            self.release(slot, Vec::new());
            load.finished();
        }
    }
}
