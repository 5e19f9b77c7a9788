//! Requests waiting for and running on one engine: gauges, the queue bound
//! and admission by expected wait, shared by the engine handle (which
//! enqueues) and the batcher (which starts and finishes requests).

use std::sync::atomic::{AtomicUsize, Ordering};

use llmlab_core::guards::QueueWaitEstimator;
use llmlab_core::{metrics, Error, ErrorKind, Result};

/// Requests waiting for and running on the engine, exported as gauges and
/// bounded so that a burst is refused (429) instead of queued forever.
#[derive(Debug)]
pub(crate) struct EngineLoad {
    model: String,
    queued: AtomicUsize,
    active: AtomicUsize,
    max_queue: usize,
    /// Refuses requests that could not start before their first-token
    /// deadline.
    wait: QueueWaitEstimator,
}

impl EngineLoad {
    pub fn new(model: &str, max_queue: usize, slots: usize) -> Self {
        Self {
            model: model.to_owned(),
            queued: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            max_queue,
            wait: QueueWaitEstimator::new(slots),
        }
    }

    /// Admit a request to the queue, or refuse it (429) when the queue is
    /// full or the request could not start before its first-token deadline.
    pub fn enqueue(&self, first_token: Option<std::time::Duration>) -> Result<()> {
        let waiting = self.queued.load(Ordering::SeqCst);
        self.wait
            .admit(&self.model, waiting, self.active.load(Ordering::SeqCst), first_token)?;
        let depth = self.queued.fetch_add(1, Ordering::SeqCst) + 1;
        if depth > self.max_queue {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::new(
                ErrorKind::Overloaded,
                format!(
                    "model '{}' already has {} requests waiting; retry later",
                    self.model,
                    depth - 1
                ),
            )
            .with_retry_after(1));
        }
        metrics::queue_depth(&self.model, depth);
        Ok(())
    }

    /// An enqueued request never reached the engine (it had stopped).
    pub fn never_sent(&self) {
        self.queued.fetch_sub(1, Ordering::SeqCst);
    }

    pub fn started(&self) {
        let depth = self.queued.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
        metrics::queue_depth(&self.model, depth);
        let active = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        metrics::active_sequences(&self.model, active);
    }

    /// A request finished after holding its slot for `held`.
    pub fn finished_after(&self, held: std::time::Duration) {
        self.wait.record_hold(held);
        self.finished();
    }

    pub fn finished(&self) {
        let active = self.active.fetch_sub(1, Ordering::SeqCst).saturating_sub(1);
        metrics::active_sequences(&self.model, active);
    }
}
