//! A standalone `llmlab worker` serves its own Prometheus metrics with
//! `--metrics-port`: after one job, the job's outcome and its request show
//! there, labelled by queue and by transport.

mod amqp_support;

use std::time::Duration;

use serde_json::json;

use amqp_support::{free_port, unique_prefix, Client, Worker, BROKER, SERIAL};

const TEXT_MODEL: &str = "gemma-3-270m";
const SLOW: Duration = Duration::from_secs(120);

async fn metrics(port: u16) -> Option<String> {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.ok()?;
    response.text().await.ok()
}

#[tokio::test]
async fn a_standalone_worker_shows_its_jobs_on_its_metrics_port() {
    let _serial = SERIAL.lock().await;
    let prefix = unique_prefix("metrics");
    let port = free_port();
    let port_arg = port.to_string();
    let worker = Worker::start(
        BROKER,
        &prefix,
        "w1",
        &["--worker-models", TEXT_MODEL, "--metrics-port", &port_arg],
    );
    let mut client = Client::connect(&prefix).await;
    let queue = client.model_queue(TEXT_MODEL);
    client.wait_for_consumers(&queue, 1, SLOW).await;

    let job = json!({"type": "completions", "body": {
        "model": TEXT_MODEL, "prompt": "The sky is", "max_tokens": 2, "temperature": 0,
    }});
    client.publish(&queue, &job, "one").await;
    let reply = client.replies_until("one", "result", SLOW).await.pop().unwrap();
    assert_eq!(reply.kind(), "result", "{:?}", reply.body);

    // The counters move when the job settles, just after its reply.
    let mut text = String::new();
    for _ in 0..50 {
        text = metrics(port).await.unwrap_or_default();
        if text.contains("outcome=\"succeeded\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let jobs = text
        .lines()
        .find(|l| l.starts_with("llmlab_jobs_total") && l.contains("outcome=\"succeeded\"") && l.contains(&queue));
    assert!(
        jobs.is_some_and(|l| l.ends_with(" 1")),
        "no succeeded job for {queue} in:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("llmlab_requests_total") && l.contains("transport=\"amqp\"")),
        "no amqp request in:\n{text}"
    );
    drop(worker);
    client.delete_queues(&[TEXT_MODEL]).await;
}
