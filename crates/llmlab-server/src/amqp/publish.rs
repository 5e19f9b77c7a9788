//! Publishing for one job: its replies, its retry, its dead letter.
//!
//! Every job publishes on a channel of its own, with publisher confirms and
//! the `mandatory` flag. A mandatory message the broker cannot route (its
//! queue does not exist) comes back as `basic.return` before the confirm,
//! and lapin hands it over inside `Confirmation::Ack(Some(returned))`. But
//! lapin pairs returns with confirms in arrival order, and the broker may
//! confirm several messages at once (`multiple`), so on a channel shared by
//! many jobs one job's return can surface in another job's confirmation. A
//! channel per job makes the pairing exact: whatever comes back on it is
//! this job's. The price is a channel open and close per job, a few
//! round trips on the broker's local connection next to a model run.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, PublisherConfirm};
use serde_json::Value;

use super::topology::WORKER_HEADER;

/// The prefix of the pseudo-queues of RabbitMQ's direct reply-to.
const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// What became of a confirmed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    /// A queue has it.
    Taken,
    /// The broker could not route it: why, naming the queue.
    Returned(String),
}

impl Delivered {
    /// The first return of several, if any.
    pub fn or(self, other: Self) -> Self {
        match self {
            Self::Taken => other,
            returned @ Self::Returned(_) => returned,
        }
    }
}

/// The channel one job publishes on.
pub struct JobChannel {
    channel: Channel,
}

impl JobChannel {
    pub async fn open(connection: &Connection) -> lapin::Result<Self> {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Self { channel })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publish to a queue through the default exchange, mandatory: the
    /// confirmation says whether a queue took it (see [`settled`]).
    ///
    /// Except to a direct reply-to name: RabbitMQ 3.x returns a mandatory
    /// message published there even when it delivers it (seen with 3.10),
    /// so a return would be a false alarm. For those the passive declare
    /// before the run, which the broker answers by whether the requester's
    /// consumer is alive, is the check.
    pub async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> lapin::Result<PublisherConfirm> {
        let options = BasicPublishOptions {
            mandatory: !queue.starts_with(DIRECT_REPLY_TO),
            ..BasicPublishOptions::default()
        };
        self.channel
            .basic_publish("".into(), queue.into(), options, body, properties)
            .await
    }

    /// Publish and wait for the broker's answer.
    pub async fn publish_confirmed(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> anyhow::Result<Delivered> {
        settled(self.publish(queue, body, properties).await?).await
    }

    pub async fn close(self) {
        let _ = self.channel.close(200, "job settled".into()).await;
    }
}

/// Wait for the broker's confirmation: taken, or returned unroutable. A
/// refusal (nack: the broker could not store it) is an error.
pub async fn settled(confirm: PublisherConfirm) -> anyhow::Result<Delivered> {
    match confirm.await? {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(Delivered::Taken),
        Confirmation::Ack(Some(returned)) => Ok(Delivered::Returned(format!(
            "queue '{}' does not exist (the broker returned the message: {} {})",
            returned.delivery.routing_key, returned.reply_code, returned.reply_text
        ))),
        Confirmation::Nack(_) => anyhow::bail!("the broker refused a published message"),
    }
}

/// Whether a queue exists, asked with a passive declare. A failed declare
/// closes the channel it ran on, so it runs on a short-lived channel of its
/// own. Only NOT_FOUND means "missing": an exclusive queue of another
/// connection (the usual RPC reply queue) answers RESOURCE_LOCKED, and a
/// user without rights on the queue ACCESS_REFUSED; in those cases the
/// mandatory flag on the replies still catches a queue that is gone.
/// Direct reply-to names (`amq.rabbitmq.reply-to.…`) are answered by the
/// broker as existing while their requester's consumer is alive.
pub async fn queue_exists(connection: &Connection, queue: &str) -> lapin::Result<bool> {
    let probe = connection.create_channel().await?;
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match probe.queue_declare(queue.into(), options, FieldTable::default()).await {
        Ok(_) => {
            let _ = probe.close(200, "probe done".into()).await;
            Ok(true)
        }
        Err(error) => match error.kind() {
            lapin::ErrorKind::ProtocolError(amqp) => {
                Ok(!matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
            }
            _ => Err(error),
        },
    }
}

/// Reply queues lately found to exist. A requester usually sends many jobs
/// to one reply queue, and probing it for each would cost three round trips
/// and, for the usual exclusive reply queue, a channel error that lapin logs
/// at ERROR level every time. A queue found missing is never remembered,
/// and one whose reply came back is forgotten at once; the mandatory flag
/// covers a queue that vanishes while remembered.
pub struct KnownQueues {
    seen: Mutex<HashMap<String, Instant>>,
}

impl KnownQueues {
    /// How long a queue found to exist is taken to exist.
    const TTL: Duration = Duration::from_secs(30);
    /// Past this many entries the stale ones are dropped (and, if all are
    /// fresh, all of them): requesters with one queue per call must not
    /// grow the map without end.
    const MAX_ENTRIES: usize = 4096;

    pub fn new() -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `queue` exists: remembered, or asked (see [`queue_exists`]).
    pub async fn exists(&self, connection: &Connection, queue: &str) -> lapin::Result<bool> {
        if self.lock().get(queue).is_some_and(|at| at.elapsed() < Self::TTL) {
            return Ok(true);
        }
        let exists = queue_exists(connection, queue).await?;
        let mut seen = self.lock();
        if exists {
            if seen.len() >= Self::MAX_ENTRIES {
                seen.retain(|_, at| at.elapsed() < Self::TTL);
                if seen.len() >= Self::MAX_ENTRIES {
                    seen.clear();
                }
            }
            seen.insert(queue.to_owned(), Instant::now());
        } else {
            seen.remove(queue);
        }
        Ok(exists)
    }

    /// The broker returned a reply to `queue`: ask again next time.
    pub fn forget(&self, queue: &str) {
        self.lock().remove(queue);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // The map holds no invariant a panic could break half-way.
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Publishes a job's replies to its `reply_to` queue.
pub struct Replies<'a> {
    channel: &'a JobChannel,
    reply_to: Option<String>,
    /// The same for every reply of the job (a streamed job sends one per
    /// token), so built once.
    properties: BasicProperties,
}

impl<'a> Replies<'a> {
    pub fn new(
        channel: &'a JobChannel,
        worker_id: &str,
        reply_to: Option<String>,
        correlation_id: Option<ShortString>,
    ) -> Self {
        let mut headers = FieldTable::default();
        headers.insert(WORKER_HEADER.into(), AMQPValue::LongString(LongString::from(worker_id)));
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_headers(headers);
        if let Some(id) = correlation_id {
            properties = properties.with_correlation_id(id);
        }
        Self {
            channel,
            reply_to,
            properties,
        }
    }

    pub fn reply_to(&self) -> Option<&str> {
        self.reply_to.as_deref()
    }

    /// Publish one reply; the confirmation resolves once the broker has it
    /// or has returned it (none when there is nobody to tell).
    pub async fn send(&self, reply: &Value) -> lapin::Result<Option<PublisherConfirm>> {
        let Some(queue) = &self.reply_to else {
            return Ok(None);
        };
        let body = reply.to_string();
        let confirm = self
            .channel
            .publish(queue, body.as_bytes(), self.properties.clone())
            .await?;
        Ok(Some(confirm))
    }

    /// Publish one reply and wait for the broker's answer.
    pub async fn send_confirmed(&self, reply: &Value) -> anyhow::Result<Delivered> {
        match self.send(reply).await? {
            Some(confirm) => settled(confirm).await,
            None => Ok(Delivered::Taken),
        }
    }
}
