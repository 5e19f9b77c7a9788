//! One delivery, from its arrival to its settlement: replies published and
//! confirmed, then the delivery acknowledged, retried, or dead-lettered.
//!
//! Before a job runs, the worker checks, in this order and without
//! parsing the body first: its size (`--max-body-bytes`, 413), its counter
//! headers (integers, 400), whether the broker handed it back after a
//! worker went away (counted and bounded, see [`Handling::count_redelivery`]),
//! its tries so far (`--job-attempts`), its `reply_to`, its body, and
//! whether the reply queue exists (so that no model runs for nobody).
//! Every refusal answers the requester when it can and dead-letters the job
//! with the reason. A job whose handling panics is answered with a 500 and
//! dead-lettered instead of taking a prefetch slot forever.
//!
//! Each delivery is observed like a request at any other door (see
//! `crate::observe`): a span with its request id (the correlation id, else
//! the message id, else a new one), one count by job type, model and the
//! status its requester gets or would get, and the job counter by queue:
//! `received` once, then exactly one of `succeeded`, `requeued` (tried
//! again, counted back after a worker went away, or handed back at
//! shutdown or on a broker error) and `dead_lettered`.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Connection};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use llmlab_core::metrics::{job_event, CLIENT_CLOSED};
use llmlab_core::service::Service;
use llmlab_core::Error;

use crate::observe::{self, JobEvent, Observed, Transport};

use super::headers::{count_value, Counts};
use super::job::{self, Job, JobError, Step};
use super::publish::{settled, Delivered, JobChannel, KnownQueues, Replies};
use super::topology::{ATTEMPTS_HEADER, QUEUE_HEADER, REASON_HEADER, REDELIVERIES_HEADER};
use super::WorkerConfig;

/// What every job of one broker connection shares.
pub struct Context {
    pub config: Arc<WorkerConfig>,
    pub service: Arc<Service>,
    /// Each job opens its own publishing channel here.
    pub connection: Arc<Connection>,
    pub reply_queues: KnownQueues,
}

/// A delivery and the queue its consumer reads (the routing key need not
/// name it).
pub struct Incoming {
    pub delivery: Delivery,
    pub queue: String,
}

/// Settle one delivery. A broker error on the way puts it back on its
/// queue (it then comes back redelivered, and counted).
pub async fn handle(context: Arc<Context>, incoming: Incoming, cancel: CancellationToken) {
    let properties = &incoming.delivery.properties;
    let offered = properties
        .correlation_id()
        .as_ref()
        .or(properties.message_id().as_ref())
        .map(|id| id.as_str());
    // The route is the job's type, known once the body is read.
    let observed = Observed::start(Transport::Amqp, "unknown", offered);
    job_event(&incoming.queue, JobEvent::Received);
    let span = observed.span().clone();
    settle_observed(&context, &incoming, &cancel, &observed)
        .instrument(span)
        .await;
    // Every path sets a status; a broker failure before any verdict is 500.
    observed.finish_as_set(500);
}

async fn settle_observed(context: &Context, incoming: &Incoming, cancel: &CancellationToken, observed: &Observed) {
    let error = match guarded(try_handle(context, incoming, cancel, observed)).await {
        Ok(Ok(())) => return,
        Ok(Err(error)) => error,
        Err(panic) => match guarded(settle_panic(context, incoming, &panic, observed)).await {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error,
            Err(again) => anyhow::anyhow!("dead-lettering a job that panicked panicked too: {again}"),
        },
    };
    tracing::warn!(error = %error, "job not settled; it goes back on its queue");
    // On a live channel the job would otherwise hold its slot until the
    // connection closes; on a dead one the broker requeues it anyway.
    let _ = requeue(&incoming.delivery).await;
    observed.finish(503);
    job_event(&incoming.queue, JobEvent::Requeued);
}

/// Run a future, turning a panic inside it into its message.
///
/// `AssertUnwindSafe` is sound here: what a job's future owns (its parsed
/// body, its streams, its channel) is dropped while unwinding and never
/// looked at again; what it shares (the service, the connection) sits
/// behind `Arc`s whose own locking guards their state.
pub async fn guarded<F: Future>(future: F) -> Result<F::Output, String> {
    AssertUnwindSafe(future)
        .catch_unwind()
        .await
        .map_err(|payload| panic_message(payload.as_ref()))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    llmlab_core::text::panic_text(payload, 300)
}

async fn try_handle(
    context: &Context,
    incoming: &Incoming,
    cancel: &CancellationToken,
    observed: &Observed,
) -> anyhow::Result<()> {
    let channel = JobChannel::open(&context.connection).await?;
    let outcome = Handling::new(context, incoming, &channel, observed)
        .settle(cancel)
        .await;
    channel.close().await;
    outcome
}

/// After a panic: a 500 to the requester and the job to the dead-letter
/// queue, on a fresh channel (the job's own may be mid-publish).
async fn settle_panic(context: &Context, incoming: &Incoming, panic: &str, observed: &Observed) -> anyhow::Result<()> {
    tracing::error!(panic, queue = %incoming.queue, "a job panicked the worker; it is dead-lettered");
    let channel = JobChannel::open(&context.connection).await?;
    // The requester learns that it failed; what the panic said goes to the
    // log and the dead-letter reason, for operators.
    let error = JobError::from_core(&Error::internal("the worker failed while running the job"));
    let outcome = Handling::new(context, incoming, &channel, observed)
        .refuse(&error, format!("the job panicked the worker: {panic}"))
        .await;
    channel.close().await;
    outcome
}

/// One delivery being settled, with the channel its job publishes on.
struct Handling<'a> {
    context: &'a Context,
    config: &'a WorkerConfig,
    delivery: &'a Delivery,
    queue: &'a str,
    channel: &'a JobChannel,
    replies: Replies<'a>,
    observed: &'a Observed,
}

impl<'a> Handling<'a> {
    fn new(context: &'a Context, incoming: &'a Incoming, channel: &'a JobChannel, observed: &'a Observed) -> Self {
        let properties = &incoming.delivery.properties;
        let replies = Replies::new(
            channel,
            &context.config.worker_id,
            properties.reply_to().as_ref().map(|q| q.as_str().to_owned()),
            properties.correlation_id().clone(),
        );
        Self {
            context,
            config: &context.config,
            delivery: &incoming.delivery,
            queue: &incoming.queue,
            channel,
            replies,
            observed,
        }
    }

    async fn settle(&self, cancel: &CancellationToken) -> anyhow::Result<()> {
        let size = self.delivery.data.len();
        let limit = self.config.max_body_bytes;
        if size > limit {
            let reason = format!("job body is {size} bytes, larger than the limit of {limit} bytes");
            return self.refuse(&JobError::too_large(limit), reason).await;
        }
        let counts = match Counts::read(&self.delivery.properties) {
            Ok(counts) => counts,
            Err(bad) => {
                let error = JobError::from_core(&Error::invalid_param(bad.header, &bad.message));
                return self.refuse(&error, format!("invalid job: {}", bad.message)).await;
            }
        };
        if self.delivery.redelivered {
            return self.count_redelivery(counts).await;
        }
        if counts.attempts >= self.config.max_attempts {
            let message = format!(
                "header {ATTEMPTS_HEADER} says the job was tried {} times already; this worker tries a job at most {} times",
                counts.attempts, self.config.max_attempts
            );
            let error = JobError::from_core(&Error::invalid_param(ATTEMPTS_HEADER, &message));
            return self.refuse(&error, format!("invalid job: {message}")).await;
        }
        let Some(reply_to) = self.replies.reply_to() else {
            self.observed.set_status(400);
            return self.dead_letter("the message has no reply_to property").await;
        };
        let job = match Job::parse(&self.delivery.data) {
            Ok(job) => {
                self.observed.set_route(job.kind.as_str());
                job
            }
            Err(error) => {
                let error = JobError::from_core(&error);
                return self.refuse(&error, format!("invalid job: {}", error.message())).await;
            }
        };
        // Checked before the run so that no model works for a requester who
        // is gone; the mandatory flag on the replies covers a queue deleted
        // while the job runs.
        if !self
            .context
            .reply_queues
            .exists(&self.context.connection, reply_to)
            .await?
        {
            // Nobody is there to answer: like a client that went away.
            self.observed.set_status(CLIENT_CLOSED);
            return self
                .dead_letter(&format!("reply queue '{reply_to}' does not exist"))
                .await;
        }
        self.run(job, counts.attempts.saturating_add(1), cancel).await
    }

    /// A job the broker handed back: the worker that held it went away
    /// without settling it (crashed, was killed, lost its connection, or
    /// shut down past its grace period).
    ///
    /// The broker marks such a delivery `redelivered` but, for classic
    /// queues, keeps no count and leaves the headers as they were, so a job
    /// that kills every worker running it would come back forever. The
    /// worker counts instead: it publishes a copy with
    /// `x-llmlab-redeliveries` raised by one to the back of the same queue,
    /// waits for the broker's confirm, and only then acknowledges the
    /// original; the copy runs when it comes round, like a new job. If a
    /// worker dies running the copy, the broker hands the copy back
    /// redelivered and the count rises again; past `--job-max-redeliveries`
    /// the job is answered with a 500 and dead-lettered. A crash between the
    /// confirm and the ack leaves two copies, each still counted: delivery
    /// stays at least once, and bounded.
    async fn count_redelivery(&self, counts: Counts) -> anyhow::Result<()> {
        let redeliveries = counts.redeliveries.saturating_add(1);
        if redeliveries > self.config.max_redeliveries {
            let message = format!(
                "the job was handed back {redeliveries} times by workers that stopped without answering \
                 (crashed, killed, disconnected or shut down); it is not run again"
            );
            let error = JobError::from_core(&Error::internal(message.clone()));
            return self.refuse(&error, message).await;
        }
        let properties = self.with_headers(&[(REDELIVERIES_HEADER, count_value(redeliveries))]);
        // Not run here: it will run again, as after a 503.
        self.observed.set_status(503);
        match self.republish(properties).await? {
            Delivered::Taken => {
                tracing::info!(
                    queue = self.queue,
                    redeliveries,
                    "a redelivered job goes to the back of its queue, counted"
                );
                self.ack_as(JobEvent::Requeued).await
            }
            Delivered::Returned(why) => {
                self.observed.set_status(500);
                self.dead_letter(&format!("cannot put the job back: {why}")).await
            }
        }
    }

    async fn run(&self, job: Job, attempt: u32, cancel: &CancellationToken) -> anyhow::Result<()> {
        tracing::debug!(queue = self.queue, attempt, "job started");
        let mut steps = Box::pin(job::run(job, Arc::clone(&self.context.service), cancel.clone()));
        let mut confirms = FuturesUnordered::new();
        let mut delivered = Delivered::Taken;
        let mut failure = None;
        while let Some(step) = steps.next().await {
            match step {
                Step::Model(model) => self
                    .observed
                    .set_model(&observe::model_label(&self.context.service, &model)),
                Step::Reply(reply) => confirms.extend(self.replies.send(&reply).await?.map(settled)),
                Step::Failed(error) => failure = Some(error),
            }
            // Look at the confirms already in without waiting: a returned
            // reply means the requester's queue is gone, and the job stops
            // (dropping its stream cancels the generation) rather than
            // compute for nobody.
            while let Some(result) = confirms.next().now_or_never().flatten() {
                delivered = delivered.or(result?);
            }
            if matches!(delivered, Delivered::Returned(_)) {
                break;
            }
        }
        drop(steps);
        // Acknowledge only what the broker has taken.
        if delivered == Delivered::Taken {
            while let Some(result) = confirms.next().await {
                delivered = delivered.or(result?);
            }
        }
        if let Delivered::Returned(why) = delivered {
            // The requester's queue went away while the job ran.
            self.forget_reply_queue();
            self.observed.set_status(CLIENT_CLOSED);
            return self.dead_letter(&format!("reply {why}")).await;
        }
        let Some(error) = failure else {
            self.observed.set_status(200);
            return self.ack_as(JobEvent::Succeeded).await;
        };
        if cancel.is_cancelled() {
            // Shutdown or a lost connection stopped the job: it runs again
            // from the start (and comes back counted as redelivered).
            self.observed.set_status(503);
            return self.requeue_counted().await;
        }
        self.observed.set_status(error.status);
        if error.is_retryable() && attempt < self.config.max_attempts {
            tracing::warn!(
                attempt,
                error = error.message(),
                "job failed; it goes back on its queue"
            );
            tokio::select! {
                () = cancel.cancelled() => return self.requeue_counted().await,
                () = tokio::time::sleep(self.config.retry_delay) => {}
            }
            let properties = self.with_headers(&[(ATTEMPTS_HEADER, count_value(attempt))]);
            return match self.republish(properties).await? {
                Delivered::Taken => self.ack_as(JobEvent::Requeued).await,
                Delivered::Returned(why) => {
                    let reason = format!("cannot put the job back ({why}); last error: {}", error.message());
                    self.refuse(&error, reason).await
                }
            };
        }
        // Invalid requests (400, 404, …) land here on their first try.
        let reason = if error.is_retryable() {
            format!("failed {attempt} times; last error: {}", error.message())
        } else {
            format!("invalid request: {}", error.message())
        };
        self.refuse(&error, reason).await
    }

    /// Tell the requester (when there is a reply queue) and dead-letter.
    async fn refuse(&self, error: &JobError, reason: String) -> anyhow::Result<()> {
        self.observed.set_status(error.status);
        let reason = match self.replies.send_confirmed(&error.reply()).await? {
            Delivered::Taken => reason,
            Delivered::Returned(why) => {
                self.forget_reply_queue();
                format!("{reason}; the error reply was lost: reply {why}")
            }
        };
        self.dead_letter(&reason).await
    }

    /// Move the job to the dead-letter queue with the reason, its tries
    /// and its queue in headers, then acknowledge it.
    async fn dead_letter(&self, reason: &str) -> anyhow::Result<()> {
        tracing::warn!(reason, queue = self.queue, "job dead-lettered");
        // Lenient: the headers may be why the job is refused.
        let attempt = Counts::read_lenient(&self.delivery.properties)
            .attempts
            .saturating_add(1);
        let properties = self.with_headers(&[
            (REASON_HEADER, AMQPValue::LongString(reason.into())),
            (ATTEMPTS_HEADER, count_value(attempt)),
            (QUEUE_HEADER, AMQPValue::LongString(self.queue.into())),
        ]);
        let topology = &self.config.topology;
        let queue = topology.dead_letter_queue();
        let data = &self.delivery.data;
        if let Delivered::Returned(why) = self.channel.publish_confirmed(&queue, data, properties.clone()).await? {
            // Someone deleted the dead-letter queue since the session
            // declared it: declare it again rather than lose the job (or
            // requeue it in a loop).
            tracing::warn!(%why, "the dead-letter queue is gone; declaring it again");
            topology.declare_dead_letter_queue(self.channel.channel()).await?;
            if let Delivered::Returned(why) = self.channel.publish_confirmed(&queue, data, properties).await? {
                anyhow::bail!("cannot dead-letter the job: {why}");
            }
        }
        self.ack_as(JobEvent::DeadLettered).await
    }

    /// Acknowledge the delivery and count how it ended; counted only once
    /// the broker took the ack, so a failure is counted as requeued instead.
    async fn ack_as(&self, event: JobEvent) -> anyhow::Result<()> {
        ack(self.delivery).await?;
        self.ended(event);
        Ok(())
    }

    async fn requeue_counted(&self) -> anyhow::Result<()> {
        requeue(self.delivery).await?;
        self.ended(JobEvent::Requeued);
        Ok(())
    }

    /// The request ends with its settlement, not after the channel's
    /// clean-up; it is counted first, so whoever sees the job's outcome in
    /// /metrics sees the request too.
    fn ended(&self, event: JobEvent) {
        self.observed.finish_as_set(500);
        job_event(self.queue, event);
    }

    fn forget_reply_queue(&self) {
        if let Some(queue) = self.replies.reply_to() {
            self.context.reply_queues.forget(queue);
        }
    }

    /// Publish a copy of the job to the back of the queue it came from.
    async fn republish(&self, properties: BasicProperties) -> anyhow::Result<Delivered> {
        self.channel
            .publish_confirmed(self.queue, &self.delivery.data, properties)
            .await
    }

    /// The delivery's properties with some headers set.
    fn with_headers(&self, extra: &[(&str, AMQPValue)]) -> BasicProperties {
        let properties = &self.delivery.properties;
        let mut headers = properties.headers().clone().unwrap_or_default();
        for (name, value) in extra {
            headers.insert((*name).into(), value.clone());
        }
        properties.clone().with_headers(headers)
    }
}

async fn ack(delivery: &Delivery) -> anyhow::Result<()> {
    delivery.ack(BasicAckOptions::default()).await?;
    Ok(())
}

async fn requeue(delivery: &Delivery) -> anyhow::Result<()> {
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    delivery.nack(options).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_its_message() {
        let answer = guarded(async { 42 }).await;
        assert_eq!(answer, Ok(42));
        let text = guarded(async { panic!("attempt to add with overflow") }).await;
        assert_eq!(text, Err("attempt to add with overflow".to_owned()));
        let formatted = guarded(async {
            let n = 7;
            panic!("bad value {n}")
        })
        .await;
        assert_eq!(formatted, Err("bad value 7".to_owned()));
        let odd = guarded(async { std::panic::panic_any(3_u8) }).await;
        assert_eq!(odd, Err("a panic without a message".to_owned()));
    }

    #[tokio::test]
    async fn long_panic_messages_are_cut() {
        let text = guarded(async { panic!("{}", "x".repeat(10_000)) }).await.unwrap_err();
        assert_eq!(text.chars().count(), 300);
    }
}
