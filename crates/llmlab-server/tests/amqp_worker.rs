//! The job-queue door against the real RabbitMQ, with `llmlab worker`
//! processes on real models: chat, streamed completion and embedding jobs
//! round-trip; poison and failing jobs reach the dead-letter queue with
//! their reason; two workers share a queue and a job of a worker killed
//! with SIGKILL is completed by the other; a cut connection is re-made;
//! SIGTERM finishes the running job before exiting.

mod amqp_support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde_json::json;

use amqp_support::{unique_prefix, Client, CuttableProxy, Worker, BROKER, SERIAL};

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

    server.terminate();
    assert!(server.exit_status(Duration::from_secs(30)).await.success());
    client.delete_queues(&[TEXT_MODEL]).await;
}
