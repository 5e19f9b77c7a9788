//! The WebSocket door over real TCP with a real client (tokio-tungstenite),
//! on scripted fake pipelines: several requests on one socket, cancel,
//! errors that name the field, and a closed socket cancelling its requests.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use common::harness;
use llmlab_core::testing::Script;
use llmlab_server::http::router;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(script: Script) -> (Socket, common::Harness) {
    let h = harness(script, None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(h.state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (socket, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
        .await
        .unwrap();
    (socket, h)
}

async fn send(socket: &mut Socket, frame: Value) {
    socket.send(Message::text(frame.to_string())).await.unwrap();
}

/// The next JSON frame (server pings are skipped).
async fn next(socket: &mut Socket) -> Value {
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

fn chat(id: &str, content: &str) -> Value {
    json!({"type": "chat.completions", "id": id, "body": {"model": "fake-a", "messages": [{"role": "user", "content": content}]}})
}

#[tokio::test]
async fn concurrent_requests_on_one_socket_stream_tagged_by_id() {
    let (mut socket, _h) = connect(Script::text(&["Hel", "lo"]).with_delay(Duration::from_millis(20))).await;
    send(&mut socket, chat("a", "one")).await;
    send(&mut socket, chat("b", "two")).await;
    send(
        &mut socket,
        json!({"type": "completions", "id": "c", "body": {"model": "fake-a", "prompt": "x"}}),
    )
    .await;
    let mut text: HashMap<String, String> = HashMap::new();
    let mut done = 0;
    while done < 3 {
        let frame = next(&mut socket).await;
        let id = frame["id"].as_str().unwrap().to_owned();
        match frame["type"].as_str().unwrap() {
            "chunk" => {
                let data = &frame["data"];
                let piece = data["choices"][0]["delta"]["content"]
                    .as_str()
                    .or(data["choices"][0]["text"].as_str())
                    .unwrap_or_default();
                text.entry(id).or_default().push_str(piece);
            }
            "done" => done += 1,
            other => panic!("unexpected frame {other}: {frame}"),
        }
    }
    for id in ["a", "b", "c"] {
        assert_eq!(text[id], "Hello", "request {id}");
    }
}

#[tokio::test]
async fn cancel_stops_one_request_and_leaves_the_other() {
    let script = Script::text(&["tick"; 50]).with_delay(Duration::from_millis(20));
    let (mut socket, h) = connect(script).await;
    send(&mut socket, chat("slow", "one")).await;
    send(&mut socket, chat("other", "two")).await;
    // Wait until both stream, then cancel one.
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 2 {
        seen.insert(next(&mut socket).await["id"].as_str().unwrap().to_owned());
    }
    send(&mut socket, json!({"type": "cancel", "id": "slow"})).await;
    let mut other_done = false;
    let mut slow_endings = Vec::new();
    while !other_done || slow_endings.is_empty() {
        let frame = next(&mut socket).await;
        match (frame["id"].as_str().unwrap(), frame["type"].as_str().unwrap()) {
            ("other", "done") => other_done = true,
            ("slow", "chunk") => {}
            ("slow", ending) => slow_endings.push(ending.to_owned()),
            _ => {}
        }
    }
    assert_eq!(slow_endings, ["cancelled"]);
    assert_eq!(h.factory.pipeline.cancelled.load(Ordering::SeqCst), 1);
}

/// Frames of request `id` up to and including its terminal frame.
async fn until_terminal(socket: &mut Socket, id: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = next(socket).await;
        if frame["id"] != id {
            continue;
        }
        let terminal = frame["type"] != "chunk";
        frames.push(frame);
        if terminal {
            return frames;
        }
    }
}

#[tokio::test]
async fn an_id_is_free_again_once_its_request_ended_and_cancels_its_new_request() {
    let script = Script::text(&["tick"; 200]).with_delay(Duration::from_millis(20));
    let (mut socket, h) = connect(script).await;
    for round in 1..=2 {
        send(&mut socket, chat("a", "one")).await;
        assert_eq!(next(&mut socket).await["type"], "chunk");
        send(&mut socket, json!({"type": "cancel", "id": "a"})).await;
        let frames = until_terminal(&mut socket, "a").await;
        assert_eq!(frames.last().unwrap()["type"], "cancelled", "round {round}: {frames:?}");
        assert_eq!(h.factory.pipeline.cancelled.load(Ordering::SeqCst), round);
    }
    // Nothing else arrives for the cancelled requests: one terminal each.
    send(&mut socket, chat("b", "two")).await;
    let first = next(&mut socket).await;
    assert_eq!(
        (first["id"].as_str(), first["type"].as_str()),
        (Some("b"), Some("chunk"))
    );
}

#[tokio::test]
async fn a_request_refused_before_it_starts_gets_one_error_frame_only() {
    let script = Script {
        events: vec![llmlab_core::ChatEvent::Error(llmlab_core::Error::invalid_param(
            "messages",
            "the prompt is 9000 tokens but the model's context holds 4096",
        ))],
        delay: Duration::ZERO,
        reject: None,
    };
    let (mut socket, _h) = connect(script).await;
    send(&mut socket, chat("long", "words")).await;
    let frames = until_terminal(&mut socket, "long").await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(
        (frames[0]["type"].as_str(), frames[0]["status"].as_u64()),
        (Some("error"), Some(400))
    );
    // The socket serves on, and no stray `done` for "long" came first.
    send(&mut socket, chat("next", "hi")).await;
    let frame = next(&mut socket).await;
    assert_eq!(frame["id"], "next");
}

#[tokio::test]
async fn bad_frames_get_errors_naming_the_field_and_the_socket_stays_open() {
    let (mut socket, _h) = connect(Script::text(&["ok"])).await;
    socket.send(Message::text("not json")).await.unwrap();
    let frame = next(&mut socket).await;
    assert_eq!(
        (frame["type"].as_str(), frame["status"].as_u64()),
        (Some("error"), Some(400))
    );

    send(&mut socket, json!({"type": "chat.completions", "body": {}})).await;
    assert_eq!(next(&mut socket).await["error"]["param"], "id");

    send(
        &mut socket,
        json!({"type": "chat.completions", "id": "x", "body": {"model": "fake-a"}}),
    )
    .await;
    let frame = next(&mut socket).await;
    assert_eq!(
        (frame["id"].as_str(), frame["error"]["param"].as_str()),
        (Some("x"), Some("messages"))
    );

    send(&mut socket, json!({"type": "chat.completions", "id": "y", "body": {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}})).await;
    let frame = next(&mut socket).await;
    assert_eq!((frame["id"].as_str(), frame["status"].as_u64()), (Some("y"), Some(404)));

    send(&mut socket, json!({"type": "dance", "id": "z"})).await;
    assert_eq!(next(&mut socket).await["error"]["param"], "type");

    // Still serving.
    send(&mut socket, chat("fine", "hi")).await;
    let frame = next(&mut socket).await;
    assert_eq!(
        (frame["id"].as_str(), frame["type"].as_str()),
        (Some("fine"), Some("chunk"))
    );
}

#[tokio::test]
async fn closing_the_socket_cancels_its_requests() {
    let script = Script::text(&["tick"; 200]).with_delay(Duration::from_millis(20));
    let (mut socket, h) = connect(script).await;
    send(&mut socket, chat("a", "one")).await;
    send(&mut socket, chat("b", "two")).await;
    next(&mut socket).await;
    socket.close(None).await.unwrap();
    drop(socket);
    let cancelled = &h.factory.pipeline.cancelled;
    for _ in 0..100 {
        if cancelled.load(Ordering::SeqCst) == 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{} of 2 requests cancelled", cancelled.load(Ordering::SeqCst));
}

#[tokio::test]
async fn a_frame_larger_than_the_body_limit_closes_the_socket_with_1009() {
    let (mut socket, _h) = connect(Script::text(&["ok"])).await;
    // The harness limits bodies (and so frames) to 4096 bytes.
    let huge = chat("big", &"x".repeat(10_000));
    socket.send(Message::text(huge.to_string())).await.unwrap();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an answer within 10 s");
        match message {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 1009, "{frame:?}");
                return;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a 1009 close, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_server_deadline_ends_the_request_with_its_error_not_cancelled() {
    let script = Script::text(&["late"]).with_delay(Duration::from_secs(5));
    let (mut socket, _h) = connect(script).await;
    let frame = json!({"type": "chat.completions", "id": "d", "body": {
        "model": "fake-a",
        "messages": [{"role": "user", "content": "hi"}],
        "guards": {"deadlines": {"first_token_secs": 0.2}}
    }});
    send(&mut socket, frame).await;
    let frames = until_terminal(&mut socket, "d").await;
    let last = frames.last().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["status"].as_u64()),
        (Some("error"), Some(504)),
        "{frames:?}"
    );
}
