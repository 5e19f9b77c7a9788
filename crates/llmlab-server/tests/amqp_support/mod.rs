//! Harness of the job-queue tests: `llmlab worker` processes on real models
//! against the real RabbitMQ at 127.0.0.1:5672, a client on lapin, and a TCP
//! proxy whose connections a test can cut.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Tests of this binary run one at a time: each starts worker processes
/// that load real models, and two sets decoding at once on a small machine
/// would only slow each other into timeouts.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub fn registry_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/models.yaml")
}

/// A loopback port free right now, for a server a test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A queue prefix no other test run uses.
pub fn unique_prefix(test: &str) -> String {
    format!("llmlab-test-{test}-{}", uuid::Uuid::new_v4().simple())
}

/// A running `llmlab worker`, killed when dropped.
pub struct Worker {
    pub child: Child,
    pub id: String,
}

impl Worker {
    pub fn start(url: &str, prefix: &str, id: &str, extra: &[&str]) -> Self {
        Self::start_with_registry(url, prefix, id, &registry_path(), extra)
    }

    pub fn start_with_registry(url: &str, prefix: &str, id: &str, registry: &std::path::Path, extra: &[&str]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_llmlab"))
            .arg("--registry")
            .arg(registry)
            .args(["worker", "--amqp", url, "--queue-prefix", prefix, "--worker-id", id])
            .args(extra)
            .env("RUST_LOG", "warn,llmlab_server=info")
            .stdout(Stdio::null())
            .spawn()
            .expect("llmlab starts");
        Self {
            child,
            id: id.to_owned(),
        }
    }

    /// SIGTERM: the graceful stop.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Wait for the process to exit on its own.
    pub async fn exit_status(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "worker {} still running",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client: publishes jobs, reads replies from its own exclusive queue.
pub struct Client {
    pub connection: Connection,
    pub channel: Channel,
    pub reply_queue: String,
    replies: Consumer,
    prefix: String,
}

/// One reply message.
#[derive(Debug, Clone)]
pub struct Reply {
    pub correlation_id: String,
    pub worker: String,
    pub body: Value,
}

impl Reply {
    pub fn kind(&self) -> &str {
        self.body["type"].as_str().unwrap_or_default()
    }
}

/// A message taken from the dead-letter queue.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub body: Vec<u8>,
    pub reason: String,
    pub correlation_id: String,
    pub headers: FieldTable,
}

impl DeadLetter {
    /// An integer header, whatever integer type it was written as.
    pub fn count(&self, name: &str) -> Option<i64> {
        match self.headers.inner().get(name)? {
            AMQPValue::LongInt(n) => Some((*n).into()),
            AMQPValue::LongLongInt(n) => Some(*n),
            AMQPValue::LongUInt(n) => Some((*n).into()),
            AMQPValue::ShortInt(n) => Some((*n).into()),
            _ => None,
        }
    }
}

fn header_text(properties: &BasicProperties, name: &str) -> String {
    match properties.headers().as_ref().and_then(|h| h.inner().get(name).cloned()) {
        Some(AMQPValue::LongString(text)) => text.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

impl Client {
    pub async fn connect(prefix: &str) -> Self {
        let connection = Connection::connect(BROKER, ConnectionProperties::default())
            .await
            .expect("RabbitMQ at 127.0.0.1:5672 (guest/guest); .ci/run starts it");
        let channel = connection.create_channel().await.unwrap();
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        };
        let queue = channel
            .queue_declare("".into(), options, FieldTable::default())
            .await
            .unwrap();
        let reply_queue = queue.name().as_str().to_owned();
        let replies = channel
            .basic_consume(
                reply_queue.as_str().into(),
                "replies".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            connection,
            channel,
            reply_queue,
            replies,
            prefix: prefix.to_owned(),
        }
    }

    pub fn model_queue(&self, model: &str) -> String {
        format!("{}.jobs.{model}", self.prefix)
    }

    pub fn shared_queue(&self) -> String {
        format!("{}.jobs", self.prefix)
    }

    pub fn dead_letter_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    /// A job's properties: this client's reply queue, persistent.
    pub fn job_properties(&self, correlation_id: &str) -> BasicProperties {
        BasicProperties::default()
            .with_correlation_id(correlation_id.into())
            .with_reply_to(self.reply_queue.as_str().into())
            .with_delivery_mode(2)
    }

    /// Publish raw bytes as a job with this client's reply queue.
    pub async fn publish_raw(&self, queue: &str, body: &[u8], correlation_id: &str) {
        self.publish_with(queue, body, self.job_properties(correlation_id))
            .await;
    }

    /// Publish with the given properties, waiting for the broker's confirm.
    pub async fn publish_with(&self, queue: &str, body: &[u8], properties: BasicProperties) {
        self.channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Publish a job whose headers carry `name: value`.
    pub async fn publish_with_header(
        &self,
        queue: &str,
        job: &Value,
        correlation_id: &str,
        name: &str,
        value: AMQPValue,
    ) {
        let mut headers = FieldTable::default();
        headers.insert(name.into(), value);
        let properties = self.job_properties(correlation_id).with_headers(headers);
        self.publish_with(queue, job.to_string().as_bytes(), properties).await;
    }

    /// Declare a job queue as the workers do (for a test that fills it
    /// before any worker runs).
    pub async fn declare_job_queue(&self, queue: &str) {
        let mut arguments = FieldTable::default();
        arguments.insert("x-max-priority".into(), AMQPValue::LongInt(10));
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        self.channel
            .queue_declare(queue.into(), options, arguments)
            .await
            .unwrap();
    }

    /// Take `count` messages from `queue` without acknowledging them, then
    /// hand them back: the broker marks them redelivered, as it does when
    /// a worker dies holding them.
    pub async fn take_and_requeue(&self, queue: &str, count: usize) {
        let mut taken = Vec::new();
        while taken.len() < count {
            let message = self
                .channel
                .basic_get(queue.into(), BasicGetOptions::default())
                .await
                .unwrap()
                .expect("a message to take");
            taken.push(message);
        }
        for message in taken {
            let options = BasicNackOptions {
                requeue: true,
                ..Default::default()
            };
            message.delivery.nack(options).await.unwrap();
        }
    }

    pub async fn publish(&self, queue: &str, job: &Value, correlation_id: &str) {
        self.publish_raw(queue, job.to_string().as_bytes(), correlation_id)
            .await;
    }

    pub async fn next_reply(&mut self, within: Duration) -> Reply {
        let delivery = tokio::time::timeout(within, self.replies.next())
            .await
            .expect("a reply in time")
            .expect("reply consumer open")
            .unwrap();
        let properties = &delivery.properties;
        Reply {
            correlation_id: properties
                .correlation_id()
                .as_ref()
                .map(|c| c.as_str().to_owned())
                .unwrap_or_default(),
            worker: header_text(properties, "x-llmlab-worker"),
            body: serde_json::from_slice(&delivery.data).expect("replies are JSON"),
        }
    }

    /// The first reply of each of `count` jobs, by correlation id.
    pub async fn first_replies(&mut self, count: usize, within: Duration) -> HashMap<String, Reply> {
        let mut answers = HashMap::new();
        while answers.len() < count {
            let reply = self.next_reply(within).await;
            answers.entry(reply.correlation_id.clone()).or_insert(reply);
        }
        answers
    }

    /// The next reply published by `worker` (of type `kind`, if given),
    /// passing over the others.
    pub async fn reply_from(&mut self, worker: &str, kind: Option<&str>, within: Duration) -> Reply {
        loop {
            let reply = self.next_reply(within).await;
            if reply.worker == worker && kind.is_none_or(|k| reply.kind() == k) {
                return reply;
            }
        }
    }

    /// A queue of this name and a consumer on it (on a channel of its own):
    /// a reply queue the test may delete.
    pub async fn named_queue(&self, name: &str) -> (Channel, Consumer) {
        let channel = self.connection.create_channel().await.unwrap();
        channel
            .queue_declare(name.into(), QueueDeclareOptions::default(), FieldTable::default())
            .await
            .unwrap();
        let options = BasicConsumeOptions {
            no_ack: true,
            ..Default::default()
        };
        let consumer = channel
            .basic_consume(name.into(), "named".into(), options, FieldTable::default())
            .await
            .unwrap();
        (channel, consumer)
    }

    /// Replies until one of the given type arrives for `correlation_id`.
    pub async fn replies_until(&mut self, correlation_id: &str, kind: &str, within: Duration) -> Vec<Reply> {
        let mut seen = Vec::new();
        loop {
            let reply = self.next_reply(within).await;
            let end = reply.correlation_id == correlation_id && (reply.kind() == kind || reply.kind() == "error");
            seen.push(reply);
            if end {
                return seen;
            }
        }
    }

    /// Wait until `queue` has at least `count` consumers.
    pub async fn wait_for_consumers(&self, queue: &str, count: u32, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let options = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            // A passive declaration of a missing queue closes the channel:
            // use a fresh one each time.
            let channel = self.connection.create_channel().await.unwrap();
            if let Ok(q) = channel
                .queue_declare(queue.into(), options, FieldTable::default())
                .await
            {
                if q.consumer_count() >= count {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{queue} did not reach {count} consumers"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The next dead-lettered message: its body and reason header.
    pub async fn dead_letter(&self, within: Duration) -> (Vec<u8>, String) {
        let dead = self.dead_letter_message(within).await;
        (dead.body, dead.reason)
    }

    /// The next dead-lettered message, headers and all.
    pub async fn dead_letter_message(&self, within: Duration) -> DeadLetter {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let got = self
                .channel
                .basic_get(self.dead_letter_queue().as_str().into(), BasicGetOptions::default())
                .await
                .unwrap();
            if let Some(message) = got {
                message.delivery.ack(BasicAckOptions::default()).await.unwrap();
                let properties = &message.delivery.properties;
                return DeadLetter {
                    body: message.delivery.data.clone(),
                    reason: header_text(properties, "x-llmlab-reason"),
                    correlation_id: properties
                        .correlation_id()
                        .as_ref()
                        .map(|c| c.as_str().to_owned())
                        .unwrap_or_default(),
                    headers: properties.headers().clone().unwrap_or_default(),
                };
            }
            assert!(tokio::time::Instant::now() < deadline, "nothing was dead-lettered");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Messages now in the dead-letter queue.
    pub async fn dead_letter_count(&self) -> u32 {
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let channel = self.connection.create_channel().await.unwrap();
        let queue = channel
            .queue_declare(self.dead_letter_queue().as_str().into(), options, FieldTable::default())
            .await
            .unwrap();
        queue.message_count()
    }

    /// The next `count` dead-lettered messages, by correlation id.
    pub async fn dead_letters(&self, count: usize, within: Duration) -> HashMap<String, DeadLetter> {
        let mut found = HashMap::new();
        while found.len() < count {
            let dead = self.dead_letter_message(within).await;
            found.insert(dead.correlation_id.clone(), dead);
        }
        found
    }

    /// Delete every queue this test's prefix made.
    pub async fn delete_queues(&self, models: &[&str]) {
        let queues = models
            .iter()
            .map(|m| self.model_queue(m))
            .chain([self.shared_queue(), self.dead_letter_queue()]);
        for queue in queues {
            let _ = self
                .channel
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
}

/// A TCP proxy to the broker whose open connections a test can cut.
pub struct CuttableProxy {
    pub url: String,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl CuttableProxy {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accepted = Arc::clone(&links);
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let link = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect("127.0.0.1:5672").await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                accepted.lock().unwrap().push(link);
            }
        });
        Self {
            url: format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
            links,
            accept,
        }
    }

    /// Drop every open connection (both directions), as a network failure would.
    pub fn cut(&self) -> usize {
        let links: Vec<_> = self.links.lock().unwrap().drain(..).collect();
        for link in &links {
            link.abort();
        }
        links.len()
    }
}

impl Drop for CuttableProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
