//! The worker: consume jobs, run them, publish replies, acknowledge.
//!
//! Delivery is at least once: a job is acknowledged only after its replies
//! are confirmed by the broker, so a worker that dies mid-job (or loses its
//! connection) leaves the job to be redelivered to another. The broker's
//! prefetch is the worker's sequence slots, shared by all its consumers, so
//! a busy worker holds no jobs an idle one could run.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, PublisherConfirm};
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use llmlab_core::service::Service;

use super::job::{self, Job, JobError, Step};
use super::topology::{Topology, ATTEMPTS_HEADER, QUEUE_HEADER, REASON_HEADER, WORKER_HEADER};

/// How a worker connects and what it takes.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `amqp://user:password@host:port/vhost`.
    pub url: String,
    pub topology: Topology,
    /// Models whose own queues this worker consumes.
    pub models: Vec<String>,
    /// Jobs run at once (and the broker's prefetch).
    pub slots: u16,
    /// Tries of a job whose failure is the server's (overload, a model that
    /// cannot load) before it is dead-lettered.
    pub max_attempts: u32,
    /// Pause before a failed job goes back on its queue.
    pub retry_delay: Duration,
    /// Names the worker in replies and in the broker's connection list.
    pub worker_id: String,
    /// In-flight jobs get this long to finish on shutdown.
    pub grace: Duration,
}

/// Reconnect back-off: doubles from the first delay up to the last.
const RECONNECT_FIRST: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Work until `stopping` is cancelled, reconnecting whenever the broker
/// connection drops; then stop consuming, finish in-flight jobs, and close.
pub async fn run(config: WorkerConfig, service: Arc<Service>, stopping: CancellationToken) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let hard_stop = CancellationToken::new();
    let mut delay = RECONNECT_FIRST;
    loop {
        match session(&config, &service, &stopping, &hard_stop).await {
            Ok(()) => return Ok(()),
            Err(SessionEnd { connected, error }) => {
                if connected {
                    delay = RECONNECT_FIRST;
                }
                tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "lost the broker connection or its consumers; reconnecting");
            }
        }
        tokio::select! {
            () = stopping.cancelled() => return Ok(()),
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(RECONNECT_MAX);
    }
}

struct SessionEnd {
    /// The session got as far as consuming (so back-off starts over).
    connected: bool,
    error: anyhow::Error,
}

fn lost(connected: bool) -> impl FnOnce(lapin::Error) -> SessionEnd {
    move |error| SessionEnd {
        connected,
        error: error.into(),
    }
}

/// Everything a job needs to answer and acknowledge.
struct Context {
    config: Arc<WorkerConfig>,
    service: Arc<Service>,
    channel: Channel,
}

/// One connection's life: declare, consume, run jobs. `Ok` after a graceful
/// stop; `Err` when the connection failed (its running jobs are cancelled:
/// their deliveries can no longer be acknowledged, so the broker requeues
/// them).
async fn session(
    config: &Arc<WorkerConfig>,
    service: &Arc<Service>,
    stopping: &CancellationToken,
    hard_stop: &CancellationToken,
) -> Result<(), SessionEnd> {
    let properties = ConnectionProperties::default().with_connection_name(config.worker_id.clone().into());
    let connection = Connection::connect(&config.url, properties)
        .await
        .map_err(lost(false))?;
    let channel = connection.create_channel().await.map_err(lost(false))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(lost(false))?;
    // Global: one budget for every consumer of this channel.
    channel
        .basic_qos(config.slots, BasicQosOptions { global: true })
        .await
        .map_err(lost(false))?;
    config
        .topology
        .declare(&channel, &config.models)
        .await
        .map_err(lost(false))?;
    let queues: Vec<String> = config
        .models
        .iter()
        .map(|m| config.topology.model_queue(m))
        .chain(std::iter::once(config.topology.shared_queue()))
        .collect();
    let mut consumers = Vec::new();
    for queue in &queues {
        let tag = format!("{}/{queue}", config.worker_id);
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(lost(false))?;
        consumers.push(consumer);
    }
    let tags: Vec<_> = consumers.iter().map(lapin::Consumer::tag).collect();
    tracing::info!(worker = %config.worker_id, ?queues, slots = config.slots, "consuming jobs");

    let context = Arc::new(Context {
        config: Arc::clone(config),
        service: Arc::clone(service),
        channel: channel.clone(),
    });
    let session_over = hard_stop.child_token();
    let mut deliveries = futures::stream::select_all(consumers);
    let mut jobs = JoinSet::new();
    let failure = loop {
        tokio::select! {
            () = stopping.cancelled() => break None,
            next = deliveries.next() => match next {
                Some(Ok(delivery)) => {
                    jobs.spawn(handle(Arc::clone(&context), delivery, session_over.child_token()));
                }
                Some(Err(error)) => break Some(anyhow::Error::from(error)),
                // The broker cancels consumers of a queue that is deleted.
                None => break Some(anyhow::anyhow!("the broker cancelled the consumers")),
            },
            Some(_) = jobs.join_next(), if !jobs.is_empty() => {}
        }
    };
    if let Some(error) = failure {
        session_over.cancel();
        while jobs.join_next().await.is_some() {}
        return Err(SessionEnd { connected: true, error });
    }

    tracing::info!(
        in_flight = jobs.len(),
        "stopping: no new jobs; finishing in-flight ones"
    );
    for tag in tags {
        let _ = channel.basic_cancel(tag, BasicCancelOptions::default()).await;
    }
    let finished = tokio::time::timeout(config.grace, async { while jobs.join_next().await.is_some() {} }).await;
    if finished.is_err() {
        tracing::warn!(
            left = jobs.len(),
            "grace period over; cancelling the remaining jobs (they go back on their queues)"
        );
        hard_stop.cancel();
        while jobs.join_next().await.is_some() {}
    }
    let _ = channel.close(200, "worker stopping".into()).await;
    let _ = connection.close(200, "worker stopping".into()).await;
    Ok(())
}

fn header_u32(properties: &BasicProperties, name: &str) -> u32 {
    let Some(headers) = properties.headers() else { return 0 };
    match headers.inner().get(name) {
        Some(AMQPValue::LongInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::LongUInt(n)) => *n,
        Some(AMQPValue::ShortInt(n)) => u32::try_from(*n).unwrap_or(0),
        Some(AMQPValue::ShortShortUInt(n)) => u32::from(*n),
        _ => 0,
    }
}

/// Run one delivery to its end: replies published and confirmed, then the
/// delivery acknowledged (or requeued, retried, dead-lettered). A broker
/// error on the way leaves the delivery unacknowledged for redelivery.
async fn handle(context: Arc<Context>, delivery: lapin::message::Delivery, cancel: CancellationToken) {
    if let Err(error) = try_handle(&context, &delivery, &cancel).await {
        tracing::warn!(error = %error, "job not finished; it goes back on its queue");
        // On a live channel the job would otherwise hold its slot until the
        // connection closes; on a dead one the broker requeues it anyway.
        let _ = requeue(&delivery).await;
    }
}

async fn try_handle(
    context: &Context,
    delivery: &lapin::message::Delivery,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let properties = &delivery.properties;
    let correlation_id = properties.correlation_id().clone();
    let reply_to = properties.reply_to().clone();
    let attempt = header_u32(properties, ATTEMPTS_HEADER) + 1;
    let replies = Replies::new(
        context,
        reply_to.as_ref().map(|q| q.as_str().to_owned()),
        correlation_id,
    );
    let job = match (Job::parse(&delivery.data), &reply_to) {
        (Err(error), _) => {
            let error = JobError::from_core(&error);
            replies.send_confirmed(&error.reply()).await?;
            dead_letter(context, delivery, &format!("invalid job: {}", error.message()), attempt).await?;
            return ack(delivery).await;
        }
        (Ok(_), None) => {
            dead_letter(context, delivery, "the message has no reply_to property", attempt).await?;
            return ack(delivery).await;
        }
        (Ok(job), Some(_)) => job,
    };
    tracing::debug!(queue = %delivery.routing_key, attempt, redelivered = delivery.redelivered, "job started");
    let mut steps = Box::pin(job::run(job, Arc::clone(&context.service), cancel.clone()));
    let mut confirms = Vec::new();
    let mut failure = None;
    while let Some(step) = steps.next().await {
        match step {
            Step::Reply(reply) => confirms.push(replies.send(&reply).await?),
            Step::Failed(error) => failure = Some(error),
        }
    }
    // Acknowledge only what the broker has taken.
    for confirm in confirms {
        confirmed(confirm).await?;
    }
    let Some(error) = failure else {
        return ack(delivery).await;
    };
    if cancel.is_cancelled() {
        // Shutdown or a lost connection stopped the job: another worker
        // runs it from the start.
        return requeue(delivery).await;
    }
    if error.is_retryable() && attempt < context.config.max_attempts {
        tracing::warn!(
            attempt,
            error = error.message(),
            "job failed; it goes back on its queue"
        );
        tokio::select! {
            () = cancel.cancelled() => return requeue(delivery).await,
            () = tokio::time::sleep(context.config.retry_delay) => {}
        }
        retry(context, delivery, attempt).await?;
        return ack(delivery).await;
    }
    let reason = if error.is_retryable() {
        format!("failed {attempt} times; last error: {}", error.message())
    } else {
        format!("invalid request: {}", error.message())
    };
    replies.send_confirmed(&error.reply()).await?;
    dead_letter(context, delivery, &reason, attempt).await?;
    ack(delivery).await
}

async fn ack(delivery: &lapin::message::Delivery) -> anyhow::Result<()> {
    delivery.ack(BasicAckOptions::default()).await?;
    Ok(())
}

async fn requeue(delivery: &lapin::message::Delivery) -> anyhow::Result<()> {
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    delivery.nack(options).await?;
    Ok(())
}

/// Publishes a job's replies to its `reply_to` queue.
struct Replies<'a> {
    context: &'a Context,
    reply_to: Option<String>,
    /// The same for every reply of the job (a streamed job sends one per
    /// token), so built once.
    properties: BasicProperties,
}

impl<'a> Replies<'a> {
    fn new(context: &'a Context, reply_to: Option<String>, correlation_id: Option<ShortString>) -> Self {
        let mut headers = FieldTable::default();
        headers.insert(
            WORKER_HEADER.into(),
            AMQPValue::LongString(LongString::from(context.config.worker_id.as_str())),
        );
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(headers);
        if let Some(id) = correlation_id {
            properties = properties.with_correlation_id(id);
        }
        Self {
            context,
            reply_to,
            properties,
        }
    }

    /// Publish one reply; the returned confirmation resolves once the
    /// broker has it (none when there is nobody to tell).
    async fn send(&self, reply: &Value) -> lapin::Result<Option<PublisherConfirm>> {
        let Some(queue) = &self.reply_to else {
            return Ok(None);
        };
        let confirm = self
            .context
            .channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                reply.to_string().as_bytes(),
                self.properties.clone(),
            )
            .await?;
        Ok(Some(confirm))
    }

    /// Publish one reply and wait for the broker to take it.
    async fn send_confirmed(&self, reply: &Value) -> anyhow::Result<()> {
        confirmed(self.send(reply).await?).await
    }
}

/// Wait for the broker's confirmation; a refusal (nack) is an error.
async fn confirmed(confirm: Option<PublisherConfirm>) -> anyhow::Result<()> {
    if let Some(confirm) = confirm {
        anyhow::ensure!(!confirm.await?.is_nack(), "the broker refused a published message");
    }
    Ok(())
}

/// The delivery's properties with one more header set.
fn with_headers(delivery: &lapin::message::Delivery, extra: &[(&str, AMQPValue)]) -> BasicProperties {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    for (name, value) in extra {
        headers.insert((*name).into(), value.clone());
    }
    delivery.properties.clone().with_headers(headers)
}

async fn publish_confirmed(
    context: &Context,
    queue: &str,
    body: &[u8],
    properties: BasicProperties,
) -> anyhow::Result<()> {
    let confirm = context
        .channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await?;
    confirmed(Some(confirm)).await
}

/// Put the job back on the queue it came from, its attempts counted.
async fn retry(context: &Context, delivery: &lapin::message::Delivery, attempt: u32) -> anyhow::Result<()> {
    let properties = with_headers(delivery, &[(ATTEMPTS_HEADER, AMQPValue::LongInt(attempt as i32))]);
    publish_confirmed(context, delivery.routing_key.as_str(), &delivery.data, properties).await
}

/// Move the job to the dead-letter queue with the reason in its headers.
async fn dead_letter(
    context: &Context,
    delivery: &lapin::message::Delivery,
    reason: &str,
    attempt: u32,
) -> anyhow::Result<()> {
    tracing::warn!(reason, queue = %delivery.routing_key, "job dead-lettered");
    let properties = with_headers(
        delivery,
        &[
            (REASON_HEADER, AMQPValue::LongString(reason.into())),
            (ATTEMPTS_HEADER, AMQPValue::LongInt(attempt as i32)),
            (
                QUEUE_HEADER,
                AMQPValue::LongString(delivery.routing_key.as_str().into()),
            ),
        ],
    );
    let queue = context.config.topology.dead_letter_queue();
    publish_confirmed(context, &queue, &delivery.data, properties).await
}
