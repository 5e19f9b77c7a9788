//! Queue names, the headers llmlab reads and writes, and the declaration of
//! every queue. Every worker declares the same queues with the same
//! arguments, so workers (and clients) may start in any order.

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;

/// Highest priority a job may carry (`x-max-priority` of every job queue).
pub const MAX_PRIORITY: u8 = 10;

/// Why a message was dead-lettered (on messages in the dead-letter queue).
pub const REASON_HEADER: &str = "x-llmlab-reason";
/// How many times the job has been tried; the worker counts failures here
/// when it puts a job back on its queue.
pub const ATTEMPTS_HEADER: &str = "x-llmlab-attempts";
/// How many times the broker handed the job back because the worker that
/// held it went away without an answer (crash, kill, lost connection,
/// shutdown). The broker does not count this for classic queues, so the
/// worker does: see `Handling::count_redelivery` in `handle.rs`.
pub const REDELIVERIES_HEADER: &str = "x-llmlab-redeliveries";
/// The queue a dead-lettered job came from.
pub const QUEUE_HEADER: &str = "x-llmlab-queue";
/// The worker that published a reply.
pub const WORKER_HEADER: &str = "x-llmlab-worker";

/// The queue names under one prefix (`llmlab` by default).
#[derive(Debug, Clone)]
pub struct Topology {
    pub prefix: String,
}

impl Topology {
    /// Jobs any worker may take; the body names the model (or the default).
    pub fn shared_queue(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    /// Jobs for one model, taken only by workers that serve it.
    pub fn model_queue(&self, model: &str) -> String {
        format!("{}.jobs.{model}", self.prefix)
    }

    /// Jobs that were invalid or failed too often, with the reason.
    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// Declare the shared queue, one queue per model and the dead-letter
    /// queue: durable, so that jobs outlive a broker restart.
    ///
    /// The job queues stay classic priority queues. Quorum queues would
    /// count redeliveries themselves (`x-delivery-limit`), but they offer
    /// no 0-10 priorities, and redeclaring an existing classic queue with
    /// `x-queue-type: quorum` fails with PRECONDITION_FAILED, so every
    /// upgrade would need its queues drained and deleted by hand. The
    /// worker bounds redeliveries with its own header instead.
    pub async fn declare(&self, channel: &Channel, models: &[String]) -> lapin::Result<()> {
        // A 32-bit integer, as most clients (pika, amqplib) send it: RabbitMQ
        // refuses a redeclaration whose argument differs in type.
        let mut job_arguments = FieldTable::default();
        job_arguments.insert("x-max-priority".into(), AMQPValue::LongInt(i32::from(MAX_PRIORITY)));
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let job_queues = std::iter::once(self.shared_queue()).chain(models.iter().map(|m| self.model_queue(m)));
        for queue in job_queues {
            channel
                .queue_declare(queue.into(), durable, job_arguments.clone())
                .await?;
        }
        self.declare_dead_letter_queue(channel).await
    }

    /// Declare the dead-letter queue alone: also done again when a
    /// dead-lettered job comes back unroutable because someone deleted it.
    pub async fn declare_dead_letter_queue(&self, channel: &Channel) -> lapin::Result<()> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(self.dead_letter_queue().into(), durable, FieldTable::default())
            .await?;
        Ok(())
    }
}
