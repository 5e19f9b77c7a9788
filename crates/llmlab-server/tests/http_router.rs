//! In-process tests of the HTTP router over scripted fake pipelines: no
//! socket, no model. They pin down status codes, the OpenAI error envelope,
//! SSE framing and headers.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use common::{chat_body, harness, post, send};
use llmlab_core::testing::Script;
use llmlab_core::{ChatEvent, Error, ErrorKind, FinishReason, Timings, Usage};
use llmlab_server::http::{router, OPENAPI_JSON};

#[tokio::test]
async fn chat_non_stream_has_openai_shape_and_headers() {
    let h = harness(Script::text(&["Hello", " world"]), None);
    let request = Request::post("/v1/chat/completions")
        .header("x-request-id", "req-42")
        .body(Body::from(chat_body(json!({"unknown_field": 1}))))
        .unwrap();
    let reply = send(&h.state, request).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let body = reply.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "fake-a");
    assert_eq!(
        body["choices"][0]["message"],
        json!({"role": "assistant", "content": "Hello world"})
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9, "prompt_tokens_details": {"cached_tokens": 0}})
    );
    assert_eq!(reply.headers["x-request-id"], "req-42");
    for header in [
        "x-llmlab-queue-ms",
        "x-llmlab-prompt-ms",
        "x-llmlab-generation-ms",
        "x-llmlab-total-ms",
        "server-timing",
    ] {
        assert!(reply.headers.contains_key(header), "missing {header}");
    }
    // The request reached the pipeline with its settings.
    assert_eq!(
        h.factory.pipeline.chats.lock().unwrap()[0].messages[0]
            .content
            .joined_text(),
        "hi"
    );
}

#[tokio::test]
async fn chat_stream_is_framed_like_openai() {
    let h = harness(Script::text(&["Hel", "lo"]), None);
    let reply = send(
        &h.state,
        post(
            "/v1/chat/completions",
            chat_body(json!({"stream": true, "stream_options": {"include_usage": true}})),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert!(reply.headers.contains_key("x-request-id"));
    let data = reply.sse_data();
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello");
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], 9);
}

#[tokio::test]
async fn stream_without_include_usage_has_no_usage_chunk() {
    let h = harness(Script::text(&["a"]), None);
    let reply = send(
        &h.state,
        post("/v1/chat/completions", chat_body(json!({"stream": true}))),
    )
    .await;
    assert!(
        reply.sse_data().iter().all(|d| !d.contains("\"usage\"")),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn error_after_streaming_began_is_an_sse_error_then_done() {
    let script = Script {
        events: vec![
            ChatEvent::Content("partial".into()),
            ChatEvent::Error(Error::internal("engine crashed")),
        ],
        delay: Duration::ZERO,
        reject: None,
    };
    let h = harness(script, None);
    let reply = send(
        &h.state,
        post("/v1/chat/completions", chat_body(json!({"stream": true}))),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    let data = reply.sse_data();
    let n = data.len();
    assert_eq!(data[n - 1], "[DONE]");
    let error: Value = serde_json::from_str(&data[n - 2]).unwrap();
    assert_eq!(error["error"]["message"], "engine crashed");
    assert_eq!(error["error"]["type"], "server_error");
}

#[tokio::test]
async fn bad_requests_get_400_naming_the_field() {
    let h = harness(Script::text(&["x"]), None);
    let cases = [
        (chat_body(json!({"temperature": "hot"})), Some("temperature")),
        (chat_body(json!({"n": 2})), Some("n")),
        (chat_body(json!({"top_p": 3.0})), Some("top_p")),
        (chat_body(json!({"max_tokens": 0})), Some("max_tokens")),
        (chat_body(json!({"stop": 5})), Some("stop")),
        (
            chat_body(json!({"stream_options": {"include_usage": true}})),
            Some("stream_options"),
        ),
        (
            json!({"model": "fake-a", "messages": [{"role": "robot", "content": "x"}]}).to_string(),
            Some("messages[0].role"),
        ),
        (json!({"model": "fake-a"}).to_string(), Some("messages")),
        (json!({"model": "fake-a", "messages": []}).to_string(), Some("messages")),
        ("{not json".to_owned(), None),
    ];
    for (body, param) in cases {
        send(&h.state, post("/v1/chat/completions", body.clone()))
            .await
            .assert_error(400, param);
    }
}

#[tokio::test]
async fn unknown_model_and_route_are_404() {
    let h = harness(Script::text(&["x"]), None);
    let err = send(
        &h.state,
        post("/v1/chat/completions", chat_body(json!({"model": "nope"}))),
    )
    .await
    .assert_error(404, None);
    assert_eq!(err["code"], "model_not_found");
    send(&h.state, Request::get("/v1/models/nope").body(Body::empty()).unwrap())
        .await
        .assert_error(404, None);
    let err = send(&h.state, Request::get("/v1/nothing").body(Body::empty()).unwrap())
        .await
        .assert_error(404, None);
    assert!(err["message"].as_str().unwrap().contains("/v1/nothing"));
    send(
        &h.state,
        Request::get("/v1/chat/completions").body(Body::empty()).unwrap(),
    )
    .await
    .assert_error(405, None);
}

#[tokio::test]
async fn oversized_body_is_413() {
    let h = harness(Script::text(&["x"]), None);
    let big = chat_body(json!({"padding": "x".repeat(10_000)}));
    send(&h.state, post("/v1/chat/completions", big))
        .await
        .assert_error(413, None);
}

#[tokio::test]
async fn overloaded_is_429_with_retry_after() {
    let mut script = Script::text(&["x"]);
    script.reject = Some(Error::new(ErrorKind::Overloaded, "queue full").with_retry_after(3));
    let h = harness(script, None);
    let reply = send(&h.state, post("/v1/chat/completions", chat_body(json!({})))).await;
    reply.assert_error(429, None);
    assert_eq!(reply.headers["retry-after"], "3");
}

#[tokio::test]
async fn failed_model_load_is_503() {
    let h = harness(Script::text(&["x"]), None);
    *h.factory.reject_files.lock().unwrap() = Some(Error::unavailable("model file missing"));
    let reply = send(&h.state, post("/v1/chat/completions", chat_body(json!({})))).await;
    assert_eq!(reply.assert_error(503, None)["message"], "model file missing");
    assert!(reply.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn api_key_guards_v1_routes_only() {
    let h = harness(Script::text(&["x"]), Some("sekret"));
    send(&h.state, post("/v1/chat/completions", chat_body(json!({}))))
        .await
        .assert_error(401, None);
    let wrong = Request::post("/v1/chat/completions")
        .header("authorization", "Bearer nope")
        .body(Body::from(chat_body(json!({}))))
        .unwrap();
    send(&h.state, wrong).await.assert_error(401, None);
    let right = Request::post("/v1/chat/completions")
        .header("authorization", "Bearer sekret")
        .body(Body::from(chat_body(json!({}))))
        .unwrap();
    assert_eq!(send(&h.state, right).await.status, StatusCode::OK);
    let health = send(&h.state, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_ne!(health.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn health_waits_for_start_up_preloads_only() {
    let h = harness(Script::text(&["x"]), None);
    let health = || Request::get("/health").body(Body::empty()).unwrap();
    // Nothing preloads: ready at once, nothing loaded (a balancer waiting
    // for 200 must not wait for traffic it holds back).
    let idle = send(&h.state, health()).await;
    assert_eq!(idle.status, StatusCode::OK);
    assert_eq!(idle.json()["status"], "ok");
    assert_eq!(idle.json()["loaded"], json!([]));
    // A preload makes it 503 until the load is over, then lists the model.
    h.state.service.preload(vec!["fake-a".into()]);
    let loading = send(&h.state, health()).await;
    assert_eq!(loading.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(loading.json()["status"], "loading");
    for _ in 0..100 {
        if send(&h.state, health()).await.status == StatusCode::OK {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let ready = send(&h.state, health()).await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["loaded"], json!(["fake-a"]));
}

#[tokio::test]
async fn models_are_listed_with_their_state() {
    let h = harness(Script::text(&["x"]), None);
    h.state.service.load("fake-b", None).await.unwrap();
    let list = send(&h.state, Request::get("/v1/models").body(Body::empty()).unwrap())
        .await
        .json();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["fake-a", "fake-b", "fake-embed"]);
    let one = send(&h.state, Request::get("/v1/models/fake-b").body(Body::empty()).unwrap())
        .await
        .json();
    assert_eq!(
        (one["object"].as_str(), one["state"].as_str()),
        (Some("model"), Some("loaded"))
    );
}

#[tokio::test]
async fn text_completions_stream_and_non_stream() {
    let h = harness(Script::text(&["Paris", "."]), None);
    let body = json!({"model": "fake-a", "prompt": "The capital of France is", "max_tokens": 4}).to_string();
    let reply = send(&h.state, post("/v1/completions", body)).await.json();
    assert_eq!(reply["object"], "text_completion");
    assert_eq!(reply["choices"][0]["text"], "Paris.");
    assert_eq!(
        h.factory.pipeline.completions.lock().unwrap()[0].params.max_tokens,
        Some(4)
    );

    let body = json!({"prompt": ["x"], "stream": true}).to_string();
    let data = send(&h.state, post("/v1/completions", body)).await.sse_data();
    let text: String = data
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "Paris.");
    send(
        &h.state,
        post("/v1/completions", json!({"prompt": ["a", "b"]}).to_string()),
    )
    .await
    .assert_error(400, Some("prompt"));
}

#[tokio::test]
async fn max_completion_tokens_and_stop_reach_the_pipeline() {
    let h = harness(Script::text(&["x"]), None);
    send(
        &h.state,
        post(
            "/v1/chat/completions",
            chat_body(json!({"max_tokens": 9, "max_completion_tokens": 5, "stop": "END", "seed": 3})),
        ),
    )
    .await;
    let chats = h.factory.pipeline.chats.lock().unwrap();
    let params = &chats[0].params;
    assert_eq!(
        (params.max_tokens, params.stop.clone(), params.sampling.seed),
        (Some(5), vec!["END".to_owned()], Some(3))
    );
}

#[tokio::test]
async fn length_finish_reason_is_passed_through() {
    let script = Script {
        events: vec![
            ChatEvent::Content("abc".into()),
            ChatEvent::Usage {
                usage: Usage::new(1, 1),
                timings: Timings::default(),
            },
            ChatEvent::Done {
                finish_reason: FinishReason::Length,
            },
        ],
        delay: Duration::ZERO,
        reject: None,
    };
    let h = harness(script, None);
    let reply = send(&h.state, post("/v1/chat/completions", chat_body(json!({}))))
        .await
        .json();
    assert_eq!(reply["choices"][0]["finish_reason"], "length");
}

#[tokio::test]
async fn client_disconnect_cancels_generation() {
    let h = harness(
        Script::text(&["a", "b", "c", "d", "e", "f"]).with_delay(Duration::from_millis(50)),
        None,
    );
    let response = router(h.state.clone())
        .oneshot(post("/v1/chat/completions", chat_body(json!({"stream": true}))))
        .await
        .unwrap();
    let mut body = response.into_body();
    // Read the role chunk, then hang up.
    let _ = body.frame().await;
    drop(body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h.factory.pipeline.cancelled.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

#[tokio::test]
async fn shutdown_deadline_ends_streams_with_an_error() {
    let h = harness(
        Script::text(&["a", "b", "c"]).with_delay(Duration::from_millis(200)),
        None,
    );
    let shutdown = h.state.shutdown.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        shutdown.cancel();
    });
    let data = send(
        &h.state,
        post("/v1/chat/completions", chat_body(json!({"stream": true}))),
    )
    .await
    .sse_data();
    assert_eq!(data.last().unwrap(), "[DONE]");
    assert!(data[data.len() - 2].contains("shutting down"), "{data:?}");
}

#[test]
fn openapi_document_lists_every_route() {
    let doc: Value = serde_json::from_str(OPENAPI_JSON).unwrap();
    for (path, method) in [
        ("/v1/chat/completions", "post"),
        ("/v1/completions", "post"),
        ("/v1/embeddings", "post"),
        ("/v1/similarity", "post"),
        ("/v1/ws", "get"),
        ("/v1/models", "get"),
        ("/v1/models/{id}", "get"),
        ("/v1/models/{id}/load", "post"),
        ("/v1/models/{id}/unload", "post"),
        ("/health", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing from openapi.json"
        );
    }
}

#[tokio::test]
async fn an_error_before_the_first_token_of_a_stream_gets_a_status() {
    let script = Script {
        events: vec![ChatEvent::Error(Error::invalid_param(
            "messages",
            "the prompt is 9000 tokens but the model's context holds 4096",
        ))],
        delay: Duration::ZERO,
        reject: None,
    };
    let h = harness(script, None);
    let reply = send(
        &h.state,
        post("/v1/chat/completions", chat_body(json!({"stream": true}))),
    )
    .await;
    reply.assert_error(400, Some("messages"));
}

#[tokio::test]
async fn assistant_turns_with_null_content_are_accepted() {
    let h = harness(Script::text(&["ok"]), None);
    let body = json!({"messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    ]});
    assert_eq!(
        send(&h.state, post("/v1/chat/completions", body.to_string()))
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn models_can_be_loaded_and_unloaded_by_request() {
    let h = harness(Script::text(&["x"]), None);
    let load = send(&h.state, post("/v1/models/fake-b/load", "")).await;
    assert_eq!(load.status, StatusCode::OK, "{}", load.body);
    assert_eq!(load.json()["state"], "loaded");
    let unload = send(&h.state, post("/v1/models/fake-b/unload", "")).await.json();
    assert_eq!(unload["state"], "unloaded");
    send(&h.state, post("/v1/models/nope/load", ""))
        .await
        .assert_error(404, None);
    *h.factory.reject_files.lock().unwrap() = Some(Error::unavailable("corrupt file"));
    send(&h.state, post("/v1/models/fake-a/load", ""))
        .await
        .assert_error(503, None);
    let failed = send(&h.state, Request::get("/v1/models/fake-a").body(Body::empty()).unwrap())
        .await
        .json();
    assert_eq!(
        (failed["state"].as_str(), failed["error"].as_str()),
        (Some("failed"), Some("corrupt file"))
    );
}

#[tokio::test]
async fn keep_alive_is_validated() {
    let h = harness(Script::text(&["x"]), None);
    assert_eq!(
        send(
            &h.state,
            post("/v1/chat/completions", chat_body(json!({"keep_alive": "10m"})))
        )
        .await
        .status,
        StatusCode::OK
    );
    assert_eq!(
        send(
            &h.state,
            post("/v1/chat/completions", chat_body(json!({"keep_alive": -1})))
        )
        .await
        .status,
        StatusCode::OK
    );
    send(
        &h.state,
        post("/v1/chat/completions", chat_body(json!({"keep_alive": "soon"}))),
    )
    .await
    .assert_error(400, Some("keep_alive"));
}
