//! The worker: connect, declare, consume, hand each delivery to
//! [`handle`](super::handle), reconnect when the broker goes away.
//!
//! Delivery is at least once: a job is acknowledged only after its replies
//! are confirmed by the broker, so a worker that dies mid-job (or loses its
//! connection) leaves the job to be redelivered to another; the handler
//! counts such redeliveries and bounds them. The broker's prefetch is the
//! worker's sequence slots, shared by all its consumers, so a busy worker
//! holds no jobs an idle one could run.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use llmlab_core::service::Service;

use super::handle::{handle, Context, Incoming};
use super::publish::KnownQueues;
use super::topology::Topology;

/// Default of `--job-max-redeliveries`.
pub const DEFAULT_MAX_REDELIVERIES: u32 = 5;

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
    /// Times a job may come back from a worker that went away without
    /// answering (crash, kill, lost connection) and still be run again.
    pub max_redeliveries: u32,
    /// Largest job body accepted (the HTTP door's `--max-body-bytes`).
    pub max_body_bytes: usize,
    /// Names the worker in replies and in the broker's connection list.
    pub worker_id: String,
    /// In-flight jobs get this long to finish on shutdown.
    pub grace: Duration,
}

/// How long a failed session waits for its jobs to stop, and for its
/// connection to close, before it starts over regardless.
const SESSION_END_WAIT: Duration = Duration::from_secs(5);

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
    let connection = Arc::new(
        Connection::connect(&config.url, properties)
            .await
            .map_err(lost(false))?,
    );
    // This channel only consumes and acknowledges: each job publishes on a
    // channel of its own (see `publish`).
    let channel = connection.create_channel().await.map_err(lost(false))?;
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
    let mut tags = Vec::new();
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
        tags.push(consumer.tag());
        // Each delivery keeps the name of the queue it came from: retries
        // and counted redeliveries go back there, whatever its routing key.
        let queue = queue.clone();
        consumers.push(consumer.map(move |delivery| {
            delivery.map(|delivery| Incoming {
                delivery,
                queue: queue.clone(),
            })
        }));
    }
    tracing::info!(worker = %config.worker_id, ?queues, slots = config.slots, "consuming jobs");

    let context = Arc::new(Context {
        config: Arc::clone(config),
        service: Arc::clone(service),
        connection: Arc::clone(&connection),
        reply_queues: KnownQueues::new(),
    });
    let session_over = hard_stop.child_token();
    let mut deliveries = futures::stream::select_all(consumers);
    let mut jobs = JoinSet::new();
    let failure = loop {
        tokio::select! {
            () = stopping.cancelled() => break None,
            next = deliveries.next() => match next {
                Some(Ok(incoming)) => {
                    jobs.spawn(handle(Arc::clone(&context), incoming, session_over.child_token()));
                }
                Some(Err(error)) => break Some(anyhow::Error::from(error)),
                // The broker cancels consumers of a queue that is deleted.
                None => break Some(anyhow::anyhow!("the broker cancelled the consumers")),
            },
            Some(joined) = jobs.join_next(), if !jobs.is_empty() => {
                // `handle` catches panics in a job; one that escapes (a panic
                // while dead-lettering a panicking job) has left its delivery
                // unsettled, holding a prefetch slot. Starting the session
                // over makes the broker hand it back, counted as redelivered.
                if let Err(error) = joined {
                    break Some(anyhow::anyhow!("a job task failed: {error}"));
                }
            }
        }
    };
    if let Some(error) = failure {
        session_over.cancel();
        // A job awaiting the broker on a dead connection may never hear
        // back; the session must start over anyway. Its delivery is
        // unsettled, so the broker hands it back.
        let drained = tokio::time::timeout(SESSION_END_WAIT, async { while jobs.join_next().await.is_some() {} });
        if drained.await.is_err() {
            tracing::warn!(
                left = jobs.len(),
                "jobs did not stop after the connection failed; abandoning them"
            );
            jobs.abort_all();
        }
        // On a connection that still stands (a job task failed), closing it
        // is what hands the unsettled deliveries back to the broker.
        let closing = connection.close(200, "worker session restarting".into());
        let _ = tokio::time::timeout(SESSION_END_WAIT, closing).await;
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
