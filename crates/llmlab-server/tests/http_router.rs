//! In-process tests of the HTTP router over scripted fake pipelines: no
//! socket, no model. They pin down status codes, the OpenAI error envelope,
//! SSE framing and headers.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use llmlab_core::service::Service;
use llmlab_core::testing::{fake_registry, FakeFactory, Script};
use llmlab_core::{ChatEvent, Error, ErrorKind, FinishReason, Timings, Usage};
use llmlab_server::http::{router, AppState, HttpConfig, OPENAPI_JSON};

struct Harness {
    factory: Arc<FakeFactory>,
    state: AppState,
}

fn harness(script: Script, api_key: Option<&str>) -> Harness {
    let factory = Arc::new(FakeFactory::new(script));
    let service = Arc::new(Service::new(fake_registry(), Arc::clone(&factory) as _));
    let config = HttpConfig {
        api_key: api_key.map(str::to_owned),
        max_body_bytes: 4096,
        sse_keep_alive: Duration::from_secs(5),
        always_include_usage: false,
    };
    Harness {
        factory,
        state: AppState {
            service,
            config: Arc::new(config),
            shutdown: CancellationToken::new(),
        },
    }
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `data:` payloads of an SSE body.
    fn sse_data(&self) -> Vec<String> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_owned)
            .collect()
    }

    fn assert_error(&self, status: u16, param: Option<&str>) -> Value {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        let error = self.json()["error"].clone();
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{error}");
        assert!(error["type"].is_string() && error.get("code").is_some(), "{error}");
        assert_eq!(error["param"].as_str(), param, "{error}");
        error
    }
}

async fn send(state: &AppState, request: Request<Body>) -> Reply {
    let response = router(state.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body: String::from_utf8(bytes.to_vec()).unwrap(),
    }
}

fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

fn chat_body(extra: Value) -> String {
    let mut body = json!({"model": "fake-a", "messages": [{"role": "user", "content": "hi"}]});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body.to_string()
}

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
        json!({"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9})
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
    *h.factory.fail_loads.lock().unwrap() = Some(Error::unavailable("model file missing"));
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
async fn health_is_503_until_the_default_model_is_loaded() {
    let h = harness(Script::text(&["x"]), None);
    let health = || Request::get("/health").body(Body::empty()).unwrap();
    assert_eq!(send(&h.state, health()).await.status, StatusCode::SERVICE_UNAVAILABLE);
    h.state.service.load("fake-a").await.unwrap();
    assert_eq!(send(&h.state, health()).await.status, StatusCode::OK);
}

#[tokio::test]
async fn models_are_listed_with_their_state() {
    let h = harness(Script::text(&["x"]), None);
    h.state.service.load("fake-b").await.unwrap();
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
        ("/v1/models", "get"),
        ("/v1/models/{id}", "get"),
        ("/health", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing from openapi.json"
        );
    }
}

fn logprob(token: &str, lp: f32) -> llmlab_core::TokenLogprob {
    llmlab_core::TokenLogprob {
        token: token.into(),
        logprob: lp,
        bytes: token.as_bytes().to_vec(),
        top_logprobs: vec![llmlab_core::TopLogprob {
            token: token.into(),
            logprob: lp,
            bytes: token.as_bytes().to_vec(),
        }],
    }
}

fn logprob_script() -> Script {
    Script {
        events: vec![
            ChatEvent::Logprobs(vec![logprob("Hi", -0.5)]),
            ChatEvent::Content("Hi".into()),
            ChatEvent::Logprobs(vec![logprob("!", -1.5)]),
            ChatEvent::Content("!".into()),
            ChatEvent::Usage {
                usage: Usage::new(1, 2),
                timings: Timings::default(),
            },
            ChatEvent::Done {
                finish_reason: FinishReason::Stop,
            },
        ],
        delay: Duration::ZERO,
        reject: None,
    }
}

#[tokio::test]
async fn logprobs_are_returned_in_both_formats() {
    let h = harness(logprob_script(), None);
    let reply = send(
        &h.state,
        post(
            "/v1/chat/completions",
            chat_body(json!({"logprobs": true, "top_logprobs": 1})),
        ),
    )
    .await
    .json();
    let content = &reply["choices"][0]["logprobs"]["content"];
    assert_eq!(content[0]["token"], "Hi");
    assert_eq!(content[1]["logprob"], -1.5);
    assert_eq!(content[1]["top_logprobs"][0]["token"], "!");
    assert_eq!(h.factory.pipeline.chats.lock().unwrap()[0].params.logprobs, Some(1));

    let data = send(
        &h.state,
        post(
            "/v1/chat/completions",
            chat_body(json!({"logprobs": true, "stream": true})),
        ),
    )
    .await
    .sse_data();
    let chunks: Vec<Value> = data.iter().filter_map(|d| serde_json::from_str(d).ok()).collect();
    let streamed: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["content"][0]["token"].as_str())
        .collect();
    assert_eq!(streamed, ["Hi", "!"]);

    let body = json!({"prompt": "x", "logprobs": 1}).to_string();
    let reply = send(&h.state, post("/v1/completions", body)).await.json();
    let lp = &reply["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"], json!(["Hi", "!"]));
    assert_eq!(lp["text_offset"], json!([0, 2]));
    assert_eq!(lp["top_logprobs"][1]["!"], -1.5);

    send(
        &h.state,
        post("/v1/chat/completions", chat_body(json!({"top_logprobs": 2}))),
    )
    .await
    .assert_error(400, Some("top_logprobs"));
    send(
        &h.state,
        post(
            "/v1/chat/completions",
            chat_body(json!({"logprobs": true, "top_logprobs": 50})),
        ),
    )
    .await
    .assert_error(400, Some("top_logprobs"));
}

#[tokio::test]
async fn tool_choice_and_response_format_reach_the_pipeline() {
    let h = harness(Script::text(&["x"]), None);
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let body =
        chat_body(json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}));
    assert_eq!(
        send(&h.state, post("/v1/chat/completions", body)).await.status,
        StatusCode::OK
    );
    let body = chat_body(json!({"response_format": {"type": "json_object"}}));
    assert_eq!(
        send(&h.state, post("/v1/chat/completions", body)).await.status,
        StatusCode::OK
    );
    {
        let chats = h.factory.pipeline.chats.lock().unwrap();
        assert_eq!(
            chats[0].tool_choice,
            llmlab_core::ToolChoice::Function("get_weather".into())
        );
        assert_eq!(chats[1].params.json_schema, Some(json!({"type": "object"})));
    }
    let bad = [
        (chat_body(json!({"tool_choice": "sometimes"})), "tool_choice"),
        (
            chat_body(json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "nope"}}})),
            "tool_choice",
        ),
        (chat_body(json!({"tool_choice": "required"})), "tool_choice"),
        (
            chat_body(json!({"response_format": {"type": "yaml"}})),
            "response_format",
        ),
        (
            chat_body(json!({"tools": tools, "tool_choice": "required", "response_format": {"type": "json_object"}})),
            "response_format",
        ),
    ];
    for (body, param) in bad {
        send(&h.state, post("/v1/chat/completions", body))
            .await
            .assert_error(400, Some(param));
    }
}

/// Value of a sample in Prometheus text, by name and label subset.
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
            prometheus_parse::Value::Histogram(ref buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            _ => 0.0,
        })
        .sum()
}

#[tokio::test]
async fn metrics_count_a_scripted_request() {
    llmlab_server::http::prometheus::recorder();
    // A model only this test uses, so counters of other tests do not mix in.
    let h = harness(Script::text(&["a", "b", "c"]), None);
    let scrape = || async {
        send(&h.state, Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .body
    };
    let before = scrape().await;
    let reply = send(
        &h.state,
        post(
            "/v1/chat/completions",
            chat_body(json!({"model": "fake-b", "stream": true})),
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK);
    send(
        &h.state,
        post("/v1/chat/completions", chat_body(json!({"model": "fake-b", "n": 3}))),
    )
    .await;
    let after = scrape().await;
    let delta = |name: &str, labels: &[(&str, &str)]| sample(&after, name, labels) - sample(&before, name, labels);
    let ok = [
        ("route", "/v1/chat/completions"),
        ("model", "fake-b"),
        ("status", "200"),
    ];
    assert_eq!(delta("llmlab_requests_total", &ok), 1.0, "{after}");
    assert_eq!(
        delta(
            "llmlab_requests_total",
            &[("route", "/v1/chat/completions"), ("status", "400")]
        ),
        1.0
    );
    assert_eq!(delta("llmlab_generated_tokens_total", &[("model", "fake-b")]), 3.0);
    assert_eq!(delta("llmlab_prompt_tokens_total", &[("model", "fake-b")]), 7.0);
    assert_eq!(
        delta("llmlab_time_to_first_token_seconds_count", &[("model", "fake-b")]),
        1.0
    );
    assert_eq!(
        delta("llmlab_inter_token_latency_seconds_count", &[("model", "fake-b")]),
        2.0
    );
    assert!(after.contains("# HELP llmlab_requests_total"));
}

fn tool_call_script() -> Script {
    use llmlab_core::ToolCallDelta;
    let delta = |index, id: Option<&str>, name: Option<&str>, args: &str| {
        ChatEvent::ToolCall(ToolCallDelta {
            index,
            id: id.map(Into::into),
            name: name.map(Into::into),
            arguments: args.into(),
        })
    };
    Script {
        events: vec![
            ChatEvent::Reasoning("need weather".into()),
            delta(0, Some("call_a"), Some("get_weather"), "{\"city\": "),
            delta(0, None, None, "\"Paris\"}"),
            delta(1, Some("call_b"), Some("get_time"), "{}"),
            ChatEvent::Usage {
                usage: Usage::new(3, 9),
                timings: Timings::default(),
            },
            ChatEvent::Done {
                finish_reason: FinishReason::ToolCalls,
            },
        ],
        delay: Duration::ZERO,
        reject: None,
    }
}

#[tokio::test]
async fn tool_calls_and_reasoning_in_both_forms() {
    let h = harness(tool_call_script(), None);
    let reply = send(&h.state, post("/v1/chat/completions", chat_body(json!({}))))
        .await
        .json();
    let message = &reply["choices"][0]["message"];
    assert_eq!(reply["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(message["content"], Value::Null);
    assert_eq!(message["reasoning_content"], "need weather");
    assert_eq!(
        message["tool_calls"][0],
        json!({"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}})
    );
    assert_eq!(message["tool_calls"][1]["function"]["name"], "get_time");

    let data = send(
        &h.state,
        post("/v1/chat/completions", chat_body(json!({"stream": true}))),
    )
    .await
    .sse_data();
    let chunks: Vec<Value> = data.iter().filter_map(|d| serde_json::from_str(d).ok()).collect();
    let deltas: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["delta"]).collect();
    assert_eq!(deltas[1]["reasoning_content"], "need weather");
    assert_eq!(
        deltas[2]["tool_calls"][0],
        json!({"index": 0, "id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": "}})
    );
    assert_eq!(
        deltas[3]["tool_calls"][0],
        json!({"index": 0, "function": {"arguments": "\"Paris\"}"}})
    );
    assert_eq!(deltas[4]["tool_calls"][0]["index"], 1);
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "tool_calls");
}
