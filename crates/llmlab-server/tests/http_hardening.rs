//! The HTTP door against hostile and broken clients, over real TCP: slow
//! headers and bodies, idle keep-alive, the connection limit (WebSockets
//! included), and a corpus of malformed requests that must all be answered
//! in the JSON error envelope, leaving the server healthy.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use common::{chat_body, harness, Harness};
use llmlab_core::testing::Script;
use llmlab_server::http::{serve_listener, ServerOptions};

const KEY: &str = "sekret";

fn options() -> ServerOptions {
    ServerOptions {
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        max_connections: 64,
        ..ServerOptions::default()
    }
}

struct Server {
    addr: SocketAddr,
    stopping: CancellationToken,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
    _h: Harness,
}

async fn start(script: Script, key: Option<&str>, options: ServerOptions) -> Server {
    let h = harness(script, key);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stopping = CancellationToken::new();
    let done = tokio::spawn(serve_listener(
        listener,
        h.state.clone(),
        options,
        Duration::from_secs(2),
        stopping.clone(),
    ));
    Server {
        addr,
        stopping,
        done,
        _h: h,
    }
}

#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The envelope, checked: status, JSON type, the four fields, and
    /// nothing that looks like a source path or a panic.
    fn assert_envelope(&self, status: u16, what: &str) -> Value {
        assert_eq!(self.status, status, "{what}: {self:?}");
        assert!(
            self.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{what}: {self:?}"
        );
        let body: Value =
            serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {self:?}"));
        let error = &body["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );
        assert!(error["type"].is_string() && error["code"].is_string(), "{what}: {body}");
        assert!(error.get("param").is_some(), "{what}: {body}");
        for leak in [".rs:", "/src/", "panicked", "/root/", "/work/", "RUST_BACKTRACE"] {
            assert!(!self.body.contains(leak), "{what} leaks {leak:?}: {}", self.body);
        }
        error.clone()
    }
}

/// Read one answer: the head, then `content-length` bytes of body, or up to
/// EOF without one.
async fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut chunk).await.expect("read");
        assert!(
            n > 0,
            "connection closed before an answer: {:?}",
            String::from_utf8_lossy(&bytes)
        );
        bytes.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&bytes[..head_end]).into_owned();
    let status = head[9..12].parse().unwrap();
    let mut answer = Answer {
        status,
        head,
        body: String::new(),
    };
    let mut body = bytes[head_end..].to_vec();
    match answer.header("content-length").map(|v| v.parse::<usize>().unwrap()) {
        Some(len) => {
            while body.len() < len {
                let n = stream.read(&mut chunk).await.expect("read body");
                assert!(n > 0, "body cut short");
                body.extend_from_slice(&chunk[..n]);
            }
        }
        None => {
            let _ = stream.read_to_end(&mut body).await;
        }
    }
    answer.body = String::from_utf8_lossy(&body).into_owned();
    answer
}

async fn exchange(addr: SocketAddr, request: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), read_answer(&mut stream))
        .await
        .expect("an answer within 5 s")
}

/// Waits for the server to close `stream`; returns how long that took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut sink = Vec::new();
    let outcome = tokio::time::timeout(limit, stream.read_to_end(&mut sink)).await;
    assert!(outcome.is_ok(), "still open after {limit:?}");
    started.elapsed()
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: x\r\n{extra}connection: close\r\n\r\n").into_bytes()
}

fn post(path: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn auth() -> String {
    format!("authorization: Bearer {KEY}\r\n")
}

#[tokio::test]
async fn half_sent_headers_are_dropped_after_the_header_timeout() {
    let server = start(Script::text(&["x"]), None, options()).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    let took = closed_within(&mut slow, Duration::from_secs(4)).await;
    assert!(took >= Duration::from_millis(800), "closed too early: {took:?}");
    // A client that connects and sends nothing at all goes the same way.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    closed_within(&mut silent, Duration::from_secs(4)).await;
}

#[tokio::test]
async fn keep_alive_serves_several_requests_then_closes_when_idle() {
    let server = start(Script::text(&["x"]), None, options()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    for _ in 0..3 {
        stream
            .write_all(b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = read_answer(&mut stream).await;
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    // Idle now: the header timeout covers the wait for the next request.
    let took = closed_within(&mut stream, Duration::from_secs(4)).await;
    assert!(took >= Duration::from_millis(800), "closed too early: {took:?}");
}

#[tokio::test]
async fn a_body_that_never_arrives_is_refused_in_time() {
    let server = start(Script::text(&["x"]), None, options()).await;
    // Declared under the body limit, 2 bytes sent: 408 when the body timeout runs out.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"";
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(4), read_answer(&mut stream))
        .await
        .expect("an answer within the body timeout");
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert_eq!(answer.assert_envelope(408, "slow body")["code"], "request_timeout");
    closed_within(&mut stream, Duration::from_secs(2)).await;
    // Declared 50 MB (over the limit): 413 at once, without reading the body.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 50000000\r\n\r\nab";
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_millis(500), read_answer(&mut stream))
        .await
        .expect("413 at once");
    answer.assert_envelope(413, "declared 50 MB");
    closed_within(&mut stream, Duration::from_secs(2)).await;
}

#[tokio::test]
async fn a_refusal_sent_before_the_body_was_read_still_reaches_the_client() {
    // The client sends everything before it reads, as simple clients do;
    // closing on the unread body would reset the connection and destroy
    // the 413 (and the 431) before the client gets to read it.
    let server = start(Script::text(&["x"]), None, options()).await;
    let body = vec![b'x'; 16 * 1024 * 1024];
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let sent = tokio::time::timeout(Duration::from_secs(5), async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await
    })
    .await
    .expect("the server keeps reading while it closes");
    sent.expect("no reset while sending");
    let answer = read_answer(&mut stream).await;
    answer.assert_envelope(413, "body over the limit, sent whole");
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let huge = format!(
        "GET /v1/models HTTP/1.1\r\nhost: x\r\nx-filler: {}\r\n\r\n",
        "y".repeat(2_000_000)
    );
    stream.write_all(huge.as_bytes()).await.expect("no reset while sending");
    read_answer(&mut stream)
        .await
        .assert_envelope(431, "headers over the limit, sent whole");
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let options = ServerOptions {
        header_timeout: Duration::from_secs(10),
        max_connections: 2,
        ..options()
    };
    let server = start(Script::text(&["x"]), None, options).await;
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut holder = TcpStream::connect(server.addr).await.unwrap();
        holder.write_all(b"GET /v1/models HTTP/1.1\r\n").await.unwrap();
        holders.push(holder);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    third.write_all(&get("/v1/models", "")).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(500), read_answer(&mut third)).await;
    assert!(early.is_err(), "served beyond the limit: {early:?}");
    holders.pop();
    let answer = tokio::time::timeout(Duration::from_secs(3), read_answer(&mut third))
        .await
        .expect("served once a slot is free");
    assert_eq!(answer.status, 200, "{answer:?}");
}

#[tokio::test]
async fn an_upgraded_websocket_holds_its_slot() {
    let options = ServerOptions {
        max_connections: 1,
        header_timeout: Duration::from_secs(10),
        ..options()
    };
    let server = start(Script::text(&["x"]), None, options).await;
    let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", server.addr))
        .await
        .expect("the upgrade works through the accept loop");
    let mut other = TcpStream::connect(server.addr).await.unwrap();
    other.write_all(&get("/v1/models", "")).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(500), read_answer(&mut other)).await;
    assert!(early.is_err(), "a WebSocket did not count: {early:?}");
    drop(socket);
    let answer = tokio::time::timeout(Duration::from_secs(3), read_answer(&mut other))
        .await
        .expect("served once the WebSocket closed");
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn malformed_requests_are_answered_in_the_envelope() {
    let server = start(Script::text(&["x"]), Some(KEY), options()).await;
    let good = chat_body(json!({}));
    let big_header = format!("x-big: {}\r\n", "a".repeat(100_000));
    let many_headers: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    let a = auth();
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        (
            "trailing garbage",
            post("/v1/chat/completions", &a, &format!("{good} garbage")),
            400,
            None,
        ),
        ("not JSON", post("/v1/chat/completions", &a, "{\"model\":"), 400, None),
        ("path not UTF-8", get("/v1/models/%ff%fe", &a), 400, None),
        ("huge header", get("/v1/models", &format!("{a}{big_header}")), 431, None),
        (
            "too many headers",
            get("/v1/models", &format!("{a}{many_headers}")),
            431,
            None,
        ),
        ("garbage request line", b"NOT HTTP AT ALL\r\n\r\n".to_vec(), 400, None),
        ("unknown route", get("/v1/nothing", &a), 404, Some("route_not_found")),
        (
            "unknown route, no key",
            get("/v1/nothing", ""),
            401,
            Some("invalid_api_key"),
        ),
        ("unknown top-level route, no key", get("/admin", ""), 401, None),
        (
            "wrong method",
            get("/v1/chat/completions", &a),
            405,
            Some("method_not_allowed"),
        ),
        ("wrong method, no key", get("/v1/chat/completions", ""), 401, None),
        (
            "wrong content type",
            post(
                "/v1/chat/completions",
                &format!("{a}content-type: application/xml\r\n"),
                &good,
            ),
            415,
            Some("unsupported_media_type"),
        ),
        ("missing key", post("/v1/chat/completions", "", &good), 401, None),
        (
            "wrong key",
            post("/v1/chat/completions", "authorization: Bearer nope\r\n", &good),
            401,
            None,
        ),
        ("WebSocket without upgrade", get("/v1/ws", &a), 400, None),
        (
            "unknown model",
            post("/v1/chat/completions", &a, &chat_body(json!({"model": "nope"}))),
            404,
            Some("model_not_found"),
        ),
    ];
    for (what, request, status, code) in cases {
        let answer = exchange(server.addr, &request).await;
        let error = answer.assert_envelope(status, what);
        if let Some(code) = code {
            assert_eq!(error["code"], code, "{what}");
        }
        assert_ne!(error["type"], "server_error", "{what}: a client's mistake");
    }
    // A lowercase scheme is a valid scheme.
    let lower = exchange(
        server.addr,
        &get("/v1/models", &format!("authorization: bearer {KEY}\r\n")),
    )
    .await;
    assert_eq!(lower.status, 200, "{lower:?}");
    // A long model id comes back cut (in the path: the test's body limit is 4 KiB).
    let long = format!("/v1/models/{}", "m".repeat(10_000));
    let answer = exchange(server.addr, &get(&long, &a)).await;
    let message = answer.assert_envelope(404, "long model id")["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.chars().count() <= 1024, "{} chars", message.chars().count());
    // After all that, the server still serves.
    let answer = exchange(server.addr, &post("/v1/chat/completions", &a, &good)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(exchange(server.addr, &get("/openapi.json", "")).await.status, 200);
}

#[tokio::test]
async fn metrics_can_require_the_key() {
    let open = start(Script::text(&["x"]), Some(KEY), options()).await;
    assert_eq!(exchange(open.addr, &get("/metrics", "")).await.status, 200);
    let guarded = start(
        Script::text(&["x"]),
        Some(KEY),
        ServerOptions {
            metrics_require_key: true,
            ..options()
        },
    )
    .await;
    exchange(guarded.addr, &get("/metrics", ""))
        .await
        .assert_envelope(401, "metrics without the key");
    assert_eq!(exchange(guarded.addr, &get("/metrics", &auth())).await.status, 200);
}

#[tokio::test]
async fn shutdown_finishes_in_flight_requests_and_stops_accepting() {
    let script = Script::text(&["a", "b", "c"]).with_delay(Duration::from_millis(200));
    let server = start(script, None, options()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(&post("/v1/chat/completions", "", &chat_body(json!({}))))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.stopping.cancel();
    let answer = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut stream))
        .await
        .expect("the in-flight request finishes");
    assert_eq!(answer.status, 200, "{answer:?}");
    let finished = tokio::time::timeout(Duration::from_secs(5), server.done).await;
    assert!(matches!(finished, Ok(Ok(Ok(())))), "{finished:?}");
    assert!(TcpStream::connect(server.addr).await.is_err(), "still accepting");
}
