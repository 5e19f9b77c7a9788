//! The job-queue door against the real RabbitMQ, with `llmlab worker`
//! processes on real models: chat, streamed completion and embedding jobs
//! round-trip; poison and failing jobs reach the dead-letter queue with
//! their reason; two workers share a queue and a job of a worker killed
//! with SIGKILL is completed by the other; a cut connection is re-made;
//! SIGTERM finishes the running job before exiting. Hostile jobs: counter
//! headers out of range, a reply queue that is missing (or deleted mid-job),
//! a body over the limit, an invalid request, and a job whose workers keep
//! dying are all answered and dead-lettered, never wedging the worker.

mod amqp_support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::json;

use amqp_support::{free_port, unique_prefix, Client, CuttableProxy, Worker, BROKER, SERIAL};

const CHAT_MODEL: &str = "qwen2.5-coder-0.5b";
const TEXT_MODEL: &str = "gemma-3-270m";
const EMBEDDING_MODEL: &str = "all-minilm-l6-v2";
/// Room for a model load on a busy two-core machine.
const SLOW: Duration = Duration::from_secs(120);

fn completion(max_tokens: u32, stream: bool) -> serde_json::Value {
    json!({"type": "completions", "body": {
        "model": TEXT_MODEL, "prompt": "The history of the city begins", "max_tokens": max_tokens,
        "temperature": 0, "ignore_eos": true, "stream": stream,
    }})
}

#[tokio::test]
async fn chat_completion_and_embedding_jobs_round_trip() {
    let _serial = SERIAL.lock().await;
    let prefix = unique_prefix("roundtrip");
    let models = format!("{CHAT_MODEL},{TEXT_MODEL},{EMBEDDING_MODEL}");
    let worker = Worker::start(BROKER, &prefix, "w1", &["--worker-models", &models, "--slots", "2"]);
    let mut client = Client::connect(&prefix).await;
    client.wait_for_consumers(&client.shared_queue(), 1, SLOW).await;

    let chat = json!({"type": "chat.completions", "body": {
        "model": CHAT_MODEL, "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 8, "temperature": 0,
    }});
    client.publish(&client.model_queue(CHAT_MODEL), &chat, "chat-1").await;
    let reply = client.replies_until("chat-1", "result", SLOW).await.pop().unwrap();
    assert_eq!(reply.kind(), "result", "{:?}", reply.body);
    assert_eq!(reply.worker, "w1");
    let answer = &reply.body["data"];
    assert_eq!(answer["object"], "chat.completion");
    assert!(!answer["choices"][0]["message"]["content"].as_str().unwrap().is_empty());
    assert!(answer["usage"]["completion_tokens"].as_u64().unwrap() >= 1);

    // Streamed, through the shared queue (the body names the model).
    client
        .publish(&client.shared_queue(), &completion(6, true), "stream-1")
        .await;
    let replies = client.replies_until("stream-1", "done", SLOW).await;
    assert_eq!(replies.last().unwrap().kind(), "done");
    let chunks: Vec<_> = replies.iter().filter(|r| r.kind() == "chunk").collect();
    let text: String = chunks
        .iter()
        .filter_map(|r| r.body["data"]["choices"][0]["text"].as_str())
        .collect();
    assert!(chunks.len() >= 6 && !text.is_empty(), "{replies:?}");

    let embed = json!({"type": "embeddings", "body": {
        "model": EMBEDDING_MODEL, "input": ["a cat", "a dog"], "encoding_format": "float",
    }});
    client
        .publish(&client.model_queue(EMBEDDING_MODEL), &embed, "embed-1")
        .await;
    let reply = client.replies_until("embed-1", "result", SLOW).await.pop().unwrap();
    let data = reply.body["data"]["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[0]["embedding"].as_array().unwrap().len(), 384);

    drop(worker);
    client.delete_queues(&[CHAT_MODEL, TEXT_MODEL, EMBEDDING_MODEL]).await;
}

#[tokio::test]
async fn poison_and_failing_jobs_reach_the_dead_letter_queue_with_their_reason() {
    let _serial = SERIAL.lock().await;
    let prefix = unique_prefix("poison");
    // A registry with one model whose file is garbage: every load fails.
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("broken.gguf");
    std::fs::write(&garbage, b"this is not a GGUF file").unwrap();
    let registry = dir.path().join("models.yaml");
    std::fs::write(
        &registry,
        format!(
            "default_model: broken\nmodels:\n  - {{id: broken, kind: chat, backend: llama, path: {}}}\n",
            garbage.display()
        ),
    )
    .unwrap();
    let worker = Worker::start_with_registry(
        BROKER,
        &prefix,
        "w1",
        &registry,
        &["--job-attempts", "2", "--job-retry-delay-secs", "0.1"],
    );
    let mut client = Client::connect(&prefix).await;
    client.wait_for_consumers(&client.shared_queue(), 1, SLOW).await;

    client
        .publish_raw(&client.shared_queue(), b"{not json", "poison-1")
        .await;
    let reply = client.next_reply(SLOW).await;
    assert_eq!((reply.correlation_id.as_str(), reply.kind()), ("poison-1", "error"));
    assert_eq!(reply.body["status"], 400);
    let (body, reason) = client.dead_letter(SLOW).await;
    assert_eq!(body, b"{not json");
    assert!(reason.starts_with("invalid job: invalid JSON body"), "{reason}");

    let no_messages = json!({"type": "chat.completions", "body": {"model": "broken"}});
    client.publish(&client.shared_queue(), &no_messages, "invalid-1").await;
    let reply = client.next_reply(SLOW).await;
    assert_eq!(reply.body["error"]["param"], "messages", "{:?}", reply.body);
    let (_, reason) = client.dead_letter(SLOW).await;
    assert!(reason.starts_with("invalid request: "), "{reason}");

    // A server-side failure is tried --job-attempts times, then dead-lettered.
    let chat = json!({"type": "chat.completions", "body": {"messages": [{"role": "user", "content": "hi"}]}});
    client.publish(&client.model_queue("broken"), &chat, "failing-1").await;
    let reply = client.next_reply(SLOW).await;
    assert_eq!((reply.correlation_id.as_str(), reply.kind()), ("failing-1", "error"));
    assert_eq!(reply.body["status"], 503, "{:?}", reply.body);
    let (_, reason) = client.dead_letter(SLOW).await;
    assert!(reason.starts_with("failed 2 times; last error: "), "{reason}");

    drop(worker);
    client.delete_queues(&["broken"]).await;
}

#[tokio::test]
async fn two_workers_share_a_queue_and_a_killed_workers_job_is_finished_by_the_other() {
    let _serial = SERIAL.lock().await;
    let prefix = unique_prefix("share");
    let args = ["--worker-models", TEXT_MODEL, "--slots", "1"];
    let mut a = Worker::start(BROKER, &prefix, "a", &args);
    let b = Worker::start(BROKER, &prefix, "b", &args);
    let mut client = Client::connect(&prefix).await;
    let queue = client.model_queue(TEXT_MODEL);
    client.wait_for_consumers(&queue, 2, SLOW).await;

    let jobs: Vec<String> = (0..4).map(|i| format!("job-{i}")).collect();
    for id in &jobs {
        client.publish(&queue, &completion(48, true), id).await;
    }
    // Each worker holds one job (prefetch = its one slot): wait until both
    // stream, then kill `a` in the middle of its job.
    let mut running: HashMap<String, String> = HashMap::new();
    let mut replies = Vec::new();
    while running.values().collect::<HashSet<_>>().len() < 2 {
        let reply = client.next_reply(SLOW).await;
        running.insert(reply.correlation_id.clone(), reply.worker.clone());
        replies.push(reply);
    }
    let killed_job = running
        .iter()
        .find(|(_, w)| *w == "a")
        .map(|(job, _)| job.clone())
        .unwrap();
    a.child.kill().unwrap();
    a.child.wait().unwrap();

    let mut done: HashMap<String, String> = HashMap::new();
    while done.len() < jobs.len() {
        let reply = client.next_reply(SLOW).await;
        assert_ne!(reply.kind(), "error", "{:?}", reply.body);
        if reply.kind() == "done" {
            done.insert(reply.correlation_id.clone(), reply.worker.clone());
        }
        replies.push(reply);
    }
    for id in &jobs {
        assert!(done.contains_key(id), "{id} lost");
    }
    assert_eq!(
        done[&killed_job], "b",
        "the killed worker's job is finished by the other"
    );
    drop(b);
    client.delete_queues(&[TEXT_MODEL]).await;
}

#[tokio::test]
async fn the_worker_reconnects_when_its_broker_connection_is_cut() {
    let _serial = SERIAL.lock().await;
    let prefix = unique_prefix("reconnect");
    let proxy = CuttableProxy::start().await;
    let worker = Worker::start(&proxy.url, &prefix, "w1", &["--worker-models", TEXT_MODEL]);
    let mut client = Client::connect(&prefix).await;
    let queue = client.model_queue(TEXT_MODEL);
    client.wait_for_consumers(&queue, 1, SLOW).await;

    client.publish(&queue, &completion(4, false), "before").await;
    assert_eq!(
        client
            .replies_until("before", "result", SLOW)
            .await
            .pop()
            .unwrap()
            .kind(),
        "result"
    );

    assert!(proxy.cut() >= 1, "the worker's connection went through the proxy");
    client.publish(&queue, &completion(4, false), "after").await;
    let reply = client.replies_until("after", "result", SLOW).await.pop().unwrap();
    assert_eq!(reply.kind(), "result", "{:?}", reply.body);
    drop(worker);
    client.delete_queues(&[TEXT_MODEL]).await;
}

#[tokio::test]
async fn sigterm_finishes_the_running_job_then_exits() {
    let _serial = SERIAL.lock().await;
    let prefix = unique_prefix("sigterm");
    let mut worker = Worker::start(BROKER, &prefix, "w1", &["--worker-models", TEXT_MODEL]);
    let mut client = Client::connect(&prefix).await;
    let queue = client.model_queue(TEXT_MODEL);
    client.wait_for_consumers(&queue, 1, SLOW).await;

    client.publish(&queue, &completion(32, true), "long").await;
    let first = client.next_reply(SLOW).await;
    assert_eq!(first.kind(), "chunk");
    worker.terminate();
    let rest = client.replies_until("long", "done", SLOW).await;
    assert_eq!(rest.last().unwrap().kind(), "done", "{rest:?}");
    assert!(worker.exit_status(Duration::from_secs(30)).await.success());
    client.delete_queues(&[TEXT_MODEL]).await;
}

#[tokio::test]
async fn serve_runs_http_grpc_and_a_worker_on_one_service() {
    use llmlab_server::grpc::proto::{llmlab_client::LlmlabClient, ListModelsRequest};

    let _serial = SERIAL.lock().await;
    let prefix = unique_prefix("serve");
    let (http_port, grpc_port) = (free_port(), free_port());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_llmlab"))
        .arg("--registry")
        .arg(amqp_support::registry_path())
        .args(["serve", "--no-preload", "--port", &http_port.to_string()])
        .args(["--grpc-port", &grpc_port.to_string()])
        .args(["--amqp", BROKER, "--queue-prefix", &prefix, "--worker-id", "s1"])
        .args(["--worker-models", TEXT_MODEL])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Worker { child, id: "s1".into() };
    let mut client = Client::connect(&prefix).await;
    let queue = client.model_queue(TEXT_MODEL);
    client.wait_for_consumers(&queue, 1, SLOW).await;

    let health = reqwest::get(format!("http://127.0.0.1:{http_port}/health"))
        .await
        .unwrap();
    assert!(health.status().is_success() || health.status().as_u16() == 503);
    let mut grpc = LlmlabClient::connect(format!("http://127.0.0.1:{grpc_port}"))
        .await
        .unwrap();
    let models = grpc
        .list_models(ListModelsRequest {})
        .await
        .unwrap()
        .into_inner()
        .models;
    assert!(models.iter().any(|m| m.id == TEXT_MODEL));

    client.publish(&queue, &completion(4, false), "via-serve").await;
    let reply = client.replies_until("via-serve", "result", SLOW).await.pop().unwrap();
    assert_eq!(
        (reply.kind(), reply.worker.as_str()),
        ("result", "s1"),
        "{:?}",
        reply.body
    );
    // The worker inside `serve` reports to the server's /metrics (the ack,
    // and so the count, comes a moment after the reply).
    let finished = |metrics: &str, name: &str, parts: &[&str]| {
        metrics
            .lines()
            .any(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
    };
    let queue_label = format!("queue=\"{queue}\"");
    let succeeded = [queue_label.as_str(), "outcome=\"succeeded\""];
    let mut metrics = String::new();
    for _ in 0..100 {
        let url = format!("http://127.0.0.1:{http_port}/metrics");
        metrics = reqwest::get(url).await.unwrap().text().await.unwrap();
        if finished(&metrics, "llmlab_jobs_total{", &succeeded) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(finished(&metrics, "llmlab_jobs_total{", &succeeded), "{metrics}");
    let amqp_request = ["transport=\"amqp\"", "route=\"completions\"", "status=\"200\""];
    assert!(finished(&metrics, "llmlab_requests_total{", &amqp_request), "{metrics}");

    server.terminate();
    assert!(server.exit_status(Duration::from_secs(30)).await.success());
    client.delete_queues(&[TEXT_MODEL]).await;
}

#[tokio::test]
async fn poison_counter_headers_are_refused_and_do_not_wedge_the_worker() {
    let _serial = SERIAL.lock().await;
    let prefix = unique_prefix("headers");
    let worker = Worker::start(BROKER, &prefix, "w1", &["--worker-models", TEXT_MODEL, "--slots", "4"]);
    let mut client = Client::connect(&prefix).await;
    let queue = client.model_queue(TEXT_MODEL);
    client.wait_for_consumers(&queue, 1, SLOW).await;

    // Four: as many as the worker's prefetch, so a worker that left any of
    // them unsettled would never take the good job behind them.
    let poisons = [
        (
            "huge",
            AMQPValue::LongLongInt(4_294_967_295),
            "was tried 4294967295 times already",
        ),
        ("negative", AMQPValue::LongInt(-1), "must be a non-negative integer"),
        (
            "string",
            AMQPValue::LongString("2".into()),
            "must be a non-negative integer",
        ),
        ("fraction", AMQPValue::Double(1.5), "must be a non-negative integer"),
    ];
    for (id, value, _) in &poisons {
        let (job, name) = (completion(2, false), "x-llmlab-attempts");
        client.publish_with_header(&queue, &job, id, name, value.clone()).await;
    }
    client.publish(&queue, &completion(2, false), "good").await;
    let answers = client.first_replies(poisons.len() + 1, SLOW).await;
    assert_eq!(answers["good"].kind(), "result", "{:?}", answers["good"].body);
    let dead = client.dead_letters(poisons.len(), SLOW).await;
    for (id, _, says) in &poisons {
        let reply = &answers[*id].body;
        assert_eq!(
            (reply["type"].as_str(), reply["status"].as_u64()),
            (Some("error"), Some(400)),
            "{id}: {reply}"
        );
        assert_eq!(reply["error"]["param"], "x-llmlab-attempts", "{id}: {reply}");
        let reason = &dead[*id].reason;
        assert!(
            reason.starts_with("invalid job: header x-llmlab-attempts") && reason.contains(says),
            "{id}: {reason}"
        );
    }
    let mut worker = worker;
    assert!(worker.child.try_wait().unwrap().is_none(), "still running");
    drop(worker);
    client.delete_queues(&[TEXT_MODEL]).await;
}

#[tokio::test]
async fn a_job_whose_reply_queue_is_missing_or_goes_away_is_dead_lettered() {
    let _serial = SERIAL.lock().await;
    let prefix = unique_prefix("replyto");
    let worker = Worker::start(BROKER, &prefix, "w1", &["--worker-models", TEXT_MODEL]);
    let client = Client::connect(&prefix).await;
    let queue = client.model_queue(TEXT_MODEL);
    client.wait_for_consumers(&queue, 1, SLOW).await;

    // Missing before the job starts: refused without running.
    let missing = format!("{prefix}.nobody-reads-this");
    let properties = client.job_properties("missing").with_reply_to(missing.as_str().into());
    let body = completion(4, false).to_string();
    client.publish_with(&queue, body.as_bytes(), properties).await;
    let dead = client.dead_letter_message(SLOW).await;
    assert_eq!(dead.reason, format!("reply queue '{missing}' does not exist"));
    assert_eq!(dead.correlation_id, "missing");

    // Deleted while the job streams: the broker returns the replies (they
    // are mandatory) and the job is dead-lettered, not acknowledged as done.
    let vanishing = format!("{prefix}.vanishing");
    let (channel, mut replies) = client.named_queue(&vanishing).await;
    let properties = client
        .job_properties("vanishing")
        .with_reply_to(vanishing.as_str().into());
    let body = completion(200, true).to_string();
    client.publish_with(&queue, body.as_bytes(), properties).await;
    tokio::time::timeout(SLOW, replies.next())
        .await
        .expect("a first chunk")
        .unwrap()
        .unwrap();
    channel
        .queue_delete(vanishing.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let dead = client.dead_letter_message(SLOW).await;
    let expected = format!("reply queue '{vanishing}' does not exist (the broker returned the message: 312 NO_ROUTE)");
    assert_eq!(
        (dead.correlation_id.as_str(), dead.reason.as_str()),
        ("vanishing", expected.as_str())
    );

    // Direct reply-to: the pseudo-queue passes the check while its
    // requester listens.
    let direct = client.connection.create_channel().await.unwrap();
    let pseudo = "amq.rabbitmq.reply-to";
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut answers = direct
        .basic_consume(pseudo.into(), "d".into(), no_ack, FieldTable::default())
        .await
        .unwrap();
    let properties = client.job_properties("direct").with_reply_to(pseudo.into());
    let body = completion(2, false).to_string();
    let published = direct.basic_publish(
        "".into(),
        queue.as_str().into(),
        BasicPublishOptions::default(),
        body.as_bytes(),
        properties,
    );
    published.await.unwrap().await.unwrap();
    let answer = tokio::time::timeout(SLOW, answers.next())
        .await
        .expect("a direct reply")
        .unwrap()
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(&answer.data).unwrap();
    assert_eq!(answer["type"], "result", "{answer}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(client.dead_letter_count().await, 0, "answered, so not dead-lettered");
    drop(worker);
    client.delete_queues(&[TEXT_MODEL]).await;
}

#[tokio::test]
async fn oversized_and_invalid_jobs_are_answered_and_dead_lettered_at_once() {
    let _serial = SERIAL.lock().await;
    let prefix = unique_prefix("limits");
    let args = [
        "--worker-models",
        TEXT_MODEL,
        "--max-body-bytes",
        "1024",
        "--job-retry-delay-secs",
        "0",
    ];
    let worker = Worker::start(BROKER, &prefix, "w1", &args);
    let mut client = Client::connect(&prefix).await;
    let queue = client.model_queue(TEXT_MODEL);
    client.wait_for_consumers(&queue, 1, SLOW).await;

    let big =
        json!({"type": "completions", "body": {"model": TEXT_MODEL, "prompt": "word ".repeat(1000), "max_tokens": 2}});
    let size = big.to_string().len();
    client.publish(&queue, &big, "big").await;
    let reply = client.next_reply(SLOW).await;
    assert_eq!(
        (reply.correlation_id.as_str(), reply.body["status"].as_u64()),
        ("big", Some(413)),
        "{:?}",
        reply.body
    );
    assert_eq!(reply.body["error"]["code"], "request_too_large");
    assert_eq!(reply.body["error"]["type"], "invalid_request_error");
    let dead = client.dead_letter_message(SLOW).await;
    assert_eq!(
        dead.reason,
        format!("job body is {size} bytes, larger than the limit of 1024 bytes")
    );
    assert_eq!(dead.body.len(), size);

    // A client error is never retried: dead-lettered on its first try.
    let hot = json!({"type": "completions", "body": {"model": TEXT_MODEL, "prompt": "x", "temperature": 500}});
    client.publish(&queue, &hot, "hot").await;
    let reply = client.next_reply(SLOW).await;
    assert_eq!(
        (reply.correlation_id.as_str(), reply.body["status"].as_u64()),
        ("hot", Some(400)),
        "{:?}",
        reply.body
    );
    assert_eq!(reply.body["error"]["param"], "temperature");
    let dead = client.dead_letter_message(SLOW).await;
    assert!(
        dead.reason.starts_with("invalid request: 'temperature' must be"),
        "{}",
        dead.reason
    );
    assert_eq!(dead.count("x-llmlab-attempts"), Some(1));
    drop(worker);
    client.delete_queues(&[TEXT_MODEL]).await;
}

#[tokio::test]
async fn redelivered_jobs_are_counted_and_dead_lettered_past_the_bound() {
    let _serial = SERIAL.lock().await;
    let prefix = unique_prefix("redeliver");
    let mut client = Client::connect(&prefix).await;
    let queue = client.model_queue(TEXT_MODEL);
    // Before any worker: two jobs the broker then marks redelivered, one
    // already handed back twice.
    client.declare_job_queue(&queue).await;
    let job = completion(2, false);
    client
        .publish_with_header(&queue, &job, "worn", "x-llmlab-redeliveries", AMQPValue::LongInt(2))
        .await;
    client.publish(&queue, &job, "fresh").await;
    client.take_and_requeue(&queue, 2).await;

    let args = ["--worker-models", TEXT_MODEL, "--job-max-redeliveries", "2"];
    let worker = Worker::start(BROKER, &prefix, "w1", &args);
    let answers = client.first_replies(2, SLOW).await;
    assert_eq!(
        answers["fresh"].kind(),
        "result",
        "counted once, then run: {:?}",
        answers["fresh"].body
    );
    assert_eq!(answers["worn"].body["status"], 500, "{:?}", answers["worn"].body);
    let dead = client.dead_letter_message(SLOW).await;
    assert_eq!(dead.correlation_id, "worn");
    assert!(
        dead.reason.starts_with("the job was handed back 3 times"),
        "{}",
        dead.reason
    );
    drop(worker);
    client.delete_queues(&[TEXT_MODEL]).await;
}

#[tokio::test]
async fn a_job_whose_workers_are_killed_each_time_ends_in_the_dead_letter_queue() {
    let _serial = SERIAL.lock().await;
    let prefix = unique_prefix("sigkill");
    let args = [
        "--worker-models",
        TEXT_MODEL,
        "--slots",
        "1",
        "--job-max-redeliveries",
        "1",
    ];
    let mut client = Client::connect(&prefix).await;
    let queue = client.model_queue(TEXT_MODEL);
    client.declare_job_queue(&queue).await;
    client.publish(&queue, &completion(1000, true), "poison").await;
    // Two runs, each killed mid-stream (as a job that crashes its worker
    // would), then a third worker refuses it.
    for round in ["w1", "w2"] {
        let mut worker = Worker::start(BROKER, &prefix, round, &args);
        client.reply_from(round, Some("chunk"), SLOW).await;
        worker.child.kill().unwrap();
        worker.child.wait().unwrap();
    }
    let worker = Worker::start(BROKER, &prefix, "w3", &args);
    let last = client.reply_from("w3", None, SLOW).await;
    assert_eq!(
        (last.kind(), last.body["status"].as_u64()),
        ("error", Some(500)),
        "{:?}",
        last.body
    );
    let dead = client.dead_letter_message(SLOW).await;
    assert!(
        dead.reason.starts_with("the job was handed back 2 times"),
        "{}",
        dead.reason
    );
    assert_eq!(dead.count("x-llmlab-redeliveries"), Some(1));
    drop(worker);
    client.delete_queues(&[TEXT_MODEL]).await;
}
