//! Every door is measured and logged the same way: a gRPC call, a
//! WebSocket request (over real sockets) and jobs of an in-process worker
//! (against the real RabbitMQ) on the fake pipelines, then `/metrics`'
//! recorder shows each under its `transport`, with bounded route and model
//! labels, and the log lines of each request carry its request id.

mod amqp_support;
mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use llmlab_core::service::Service;
use llmlab_core::testing::{fake_registry, FakeFactory, Script};
use llmlab_core::Error;
use llmlab_server::amqp::{Topology, WorkerConfig};
use llmlab_server::grpc::proto::llmlab_client::LlmlabClient;
use llmlab_server::grpc::proto::{self as pb, chat_event::Event};

const REQUESTS: &str = "llmlab_requests_total";
const DURATIONS: &str = "llmlab_request_duration_seconds_count";
const JOBS: &str = "llmlab_jobs_total";

/// Log lines of this test binary, captured (the subscriber is global).
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        LOGS.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The metrics recorder and the log capture, once per binary.
fn observe() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        llmlab_server::http::prometheus::recorder();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn,llmlab_server=info"))
            .with_ansi(false)
            .with_writer(|| Capture)
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("no other subscriber in this binary");
    });
}

fn logs() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap()).into_owned()
}

/// The "request done" line of the request with this id, if logged yet.
fn done_line(request_id: &str) -> Option<String> {
    let id = format!("request_id={request_id} ");
    logs()
        .lines()
        .find(|l| l.contains(&id) && l.contains("request done"))
        .map(str::to_owned)
}

fn scrape() -> String {
    llmlab_server::http::prometheus::recorder().render()
}

/// Value of a sample in Prometheus text, by name and label subset (summed
/// over the series that match).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics parse as Prometheus text");
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// A metric, its labels and how much it should have moved.
type Expected<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

/// Counters move a moment after the client sees the answer (an ack, a
/// writer task): wait until `expected` holds, comparing with `before`.
async fn expect_deltas(before: &str, expected: &[Expected<'_>]) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let after = scrape();
        let wrong: Vec<String> = expected
            .iter()
            .filter_map(|(name, labels, want)| {
                let got = sample(&after, name, labels) - sample(before, name, labels);
                (got != *want).then(|| format!("{name} {labels:?}: {got}, expected {want}"))
            })
            .collect();
        if wrong.is_empty() {
            return after;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{wrong:#?}\n{}",
            after
                .lines()
                .filter(|l| l.starts_with(REQUESTS) || l.starts_with(JOBS))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn chat(model: &str) -> pb::ChatRequest {
    pb::ChatRequest {
        model: model.into(),
        messages: vec![pb::Message {
            role: "user".into(),
            content: "hi".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next JSON frame (pings skipped).
async fn next_frame(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame within 10 s")
            .expect("socket open")
            .unwrap();
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

#[tokio::test]
async fn grpc_calls_and_websocket_requests_are_counted_and_logged_by_transport() {
    observe();
    let h = common::harness(Script::text(&["a", "b"]), None);
    // One service behind both doors.
    let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc_addr = grpc_listener.local_addr().unwrap();
    tokio::spawn(llmlab_server::grpc::serve(
        grpc_listener,
        Arc::clone(&h.state.service),
        llmlab_server::grpc::GrpcConfig::default(),
        CancellationToken::new(),
        CancellationToken::new(),
    ));
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = http_listener.local_addr().unwrap();
    let app = llmlab_server::http::router(h.state.clone());
    tokio::spawn(async move { axum::serve(http_listener, app).await.unwrap() });
    let before = scrape();

    // gRPC: a streamed chat carrying the client's request id, a chat for a
    // model nobody registered, and a unary call.
    let mut client = LlmlabClient::connect(format!("http://{grpc_addr}")).await.unwrap();
    let mut request = tonic::Request::new(chat("fake-b"));
    request
        .metadata_mut()
        .insert("x-request-id", "dm-grpc-chat".parse().unwrap());
    let response = client.chat(request).await.unwrap();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "dm-grpc-chat");
    let mut stream = response.into_inner();
    let mut last = None;
    while let Some(event) = stream.message().await.unwrap() {
        last = event.event;
    }
    assert!(matches!(last, Some(Event::Finished(_))), "{last:?}");
    let refused = client.chat(chat("no-such-model-from-a-client")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound);
    client.list_models(pb::ListModelsRequest {}).await.unwrap();

    // WebSocket: one request on a socket whose upgrade carries an id, and
    // one frame that is no request at all.
    let mut upgrade = format!("ws://{http_addr}/v1/ws").into_client_request().unwrap();
    upgrade
        .headers_mut()
        .insert("x-request-id", "dm-ws-socket".parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(upgrade).await.unwrap();
    let frame = json!({"type": "chat.completions", "id": "w1",
        "body": {"model": "fake-b", "messages": [{"role": "user", "content": "hi"}]}});
    socket.send(Message::text(frame.to_string())).await.unwrap();
    while next_frame(&mut socket).await["type"] == "chunk" {}
    socket.send(Message::text("not json")).await.unwrap();
    assert_eq!(next_frame(&mut socket).await["type"], "error");

    let grpc = ("transport", "grpc");
    let ws = ("transport", "websocket");
    let ok = ("status", "200");
    expect_deltas(
        &before,
        &[
            (
                REQUESTS,
                &[grpc, ("route", "Chat"), ("model", "fake-b"), ok, ("outcome", "ok")],
                1.0,
            ),
            (
                DURATIONS,
                &[grpc, ("route", "Chat"), ("model", "fake-b"), ("outcome", "ok")],
                1.0,
            ),
            // A client's invented model name is no label of its own.
            (
                REQUESTS,
                &[
                    grpc,
                    ("route", "Chat"),
                    ("model", "unknown"),
                    ("status", "404"),
                    ("outcome", "client_error"),
                ],
                1.0,
            ),
            (REQUESTS, &[grpc, ("route", "ListModels"), ok], 1.0),
            (
                REQUESTS,
                &[ws, ("route", "chat.completions"), ("model", "fake-b"), ok],
                1.0,
            ),
            (
                DURATIONS,
                &[
                    ws,
                    ("route", "chat.completions"),
                    ("model", "fake-b"),
                    ("outcome", "ok"),
                ],
                1.0,
            ),
            (REQUESTS, &[ws, ("route", "unknown"), ("status", "400")], 1.0),
            // The upgrade itself is an HTTP request.
            (
                REQUESTS,
                &[("transport", "http"), ("route", "/v1/ws"), ("status", "101")],
                1.0,
            ),
        ],
    )
    .await;

    let line = done_line("dm-grpc-chat").expect("the gRPC call's own line");
    assert!(line.contains("transport=grpc") && line.contains("route=Chat"), "{line}");
    // A request on a socket has its own id, inside the upgrade's span.
    let ws_line = logs()
        .lines()
        .find(|l| l.contains("transport=websocket route=chat.completions") && l.contains("request done"))
        .map(str::to_owned)
        .expect("the WebSocket request's line");
    assert!(ws_line.contains("request_id=dm-ws-socket "), "{ws_line}");
}

#[tokio::test]
async fn jobs_are_counted_by_queue_and_outcome_and_as_amqp_requests() {
    use amqp_support::{unique_prefix, Client, BROKER};

    if tokio::net::TcpStream::connect("127.0.0.1:5672").await.is_err() {
        llmlab_core::config::skip_test("no RabbitMQ at 127.0.0.1:5672");
        return;
    }
    observe();
    let factory = Arc::new(FakeFactory::new(Script::text(&["x", "y"])));
    // Every embedding fails as a busy server's would: tried, then dead.
    *factory.embedder.fail.lock().unwrap() = Some(Error::unavailable("the fake embedder is busy"));
    let service = Arc::new(Service::new(fake_registry(), Arc::clone(&factory) as _));
    let prefix = unique_prefix("door-metrics");
    let config = WorkerConfig {
        url: BROKER.to_owned(),
        topology: Topology { prefix: prefix.clone() },
        models: vec!["fake-a".into(), "fake-embed".into()],
        slots: 2,
        max_attempts: 2,
        retry_delay: Duration::from_millis(50),
        max_redeliveries: 5,
        max_body_bytes: 1 << 20,
        worker_id: "door-metrics".into(),
        grace: Duration::from_secs(5),
    };
    let stopping = CancellationToken::new();
    let worker = tokio::spawn(llmlab_server::amqp::run(config, service, stopping.clone()));
    let mut client = Client::connect(&prefix).await;
    let (chat_queue, embed_queue) = (client.model_queue("fake-a"), client.model_queue("fake-embed"));
    client.wait_for_consumers(&chat_queue, 1, Duration::from_secs(30)).await;
    let before = scrape();

    let job = json!({"type": "chat.completions", "body": {"model": "fake-a", "messages": [{"role": "user", "content": "hi"}]}});
    client.publish(&chat_queue, &job, "dm-job-ok").await;
    let reply = client
        .replies_until("dm-job-ok", "result", Duration::from_secs(30))
        .await;
    assert_eq!(reply.last().unwrap().kind(), "result");
    client.publish_raw(&chat_queue, b"not json", "dm-job-poison").await;
    client
        .replies_until("dm-job-poison", "error", Duration::from_secs(30))
        .await;
    let embed = json!({"type": "embeddings", "body": {"model": "fake-embed", "input": "hi"}});
    client.publish(&embed_queue, &embed, "dm-job-busy").await;
    let failed = client
        .replies_until("dm-job-busy", "error", Duration::from_secs(30))
        .await;
    assert_eq!(failed.last().unwrap().body["status"], 503);

    let amqp = ("transport", "amqp");
    let chat_q = ("queue", chat_queue.as_str());
    let embed_q = ("queue", embed_queue.as_str());
    expect_deltas(
        &before,
        &[
            (JOBS, &[chat_q, ("outcome", "received")], 2.0),
            (JOBS, &[chat_q, ("outcome", "succeeded")], 1.0),
            (JOBS, &[chat_q, ("outcome", "dead_lettered")], 1.0),
            (JOBS, &[chat_q, ("outcome", "requeued")], 0.0),
            (JOBS, &[embed_q, ("outcome", "received")], 2.0),
            (JOBS, &[embed_q, ("outcome", "requeued")], 1.0),
            (JOBS, &[embed_q, ("outcome", "dead_lettered")], 1.0),
            (
                REQUESTS,
                &[
                    amqp,
                    ("route", "chat.completions"),
                    ("model", "fake-a"),
                    ("status", "200"),
                ],
                1.0,
            ),
            (
                DURATIONS,
                &[
                    amqp,
                    ("route", "chat.completions"),
                    ("model", "fake-a"),
                    ("outcome", "ok"),
                ],
                1.0,
            ),
            (
                REQUESTS,
                &[
                    amqp,
                    ("route", "unknown"),
                    ("status", "400"),
                    ("outcome", "client_error"),
                ],
                1.0,
            ),
            // Each try is a request; both failed as the requester reads it.
            (
                REQUESTS,
                &[
                    amqp,
                    ("route", "embeddings"),
                    ("model", "fake-embed"),
                    ("status", "503"),
                ],
                2.0,
            ),
        ],
    )
    .await;
    // The job's correlation id is its request id in the log.
    let line = done_line("dm-job-ok").expect("the job's own line");
    assert!(
        line.contains("transport=amqp") && line.contains("route=chat.completions"),
        "{line}"
    );

    stopping.cancel();
    tokio::time::timeout(Duration::from_secs(30), worker)
        .await
        .expect("the worker stops")
        .unwrap()
        .unwrap();
    client.delete_queues(&["fake-a", "fake-embed"]).await;
}
