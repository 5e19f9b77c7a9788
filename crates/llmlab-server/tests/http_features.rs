//! In-process HTTP tests of the richer answer features over scripted fake
//! pipelines: log-probabilities, tool calls and reasoning, tool_choice and
//! response_format, and the metrics they leave behind.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};

use common::{chat_body, harness, post, send};
use llmlab_core::testing::Script;
use llmlab_core::{ChatEvent, FinishReason, Timings, Usage};

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
        // The forced call reaches the pipeline as the schema of a call of
        // that tool (resolved by the service, not by the pipeline).
        let forced = chats[0].params.json_schema.as_ref().expect("a forced call is a schema");
        assert_eq!(forced["properties"]["name"]["const"], json!("get_weather"), "{forced}");
        assert_eq!(chats[0].tools[0].function.name, "get_weather");
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
        post(
            "/v1/chat/completions",
            chat_body(json!({"model": "metrics-only-model"})),
        ),
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
    let unknown = [
        ("route", "/v1/chat/completions"),
        ("model", "unknown"),
        ("status", "404"),
    ];
    assert_eq!(delta("llmlab_requests_total", &unknown), 1.0);
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

/// A generation a guard stopped: `finish_reason` stays `stop`, and the
/// `stop_reason` / `guard` extension fields say why, streamed or not.
#[tokio::test]
async fn a_guard_stop_is_reported_in_both_response_shapes() {
    use llmlab_core::guards::{GuardKind, GuardTrip};
    use llmlab_core::{ChatEvent, FinishReason, Timings, Usage};
    let trip = GuardTrip {
        kind: GuardKind::Repetition,
        figure: 6.0,
        detail: "the last 48 tokens repeat a 8-token sequence 6 times".into(),
    };
    let script = Script {
        events: vec![
            ChatEvent::Content("loop loop".into()),
            ChatEvent::Stopped(trip),
            ChatEvent::Usage {
                usage: Usage::new(3, 48),
                timings: Timings::default(),
            },
            ChatEvent::Done {
                finish_reason: FinishReason::Stop,
            },
        ],
        ..Script::text(&[])
    };
    let h = harness(script, None);
    let whole = send(&h.state, post("/v1/chat/completions", chat_body(json!({}))))
        .await
        .json();
    let choice = &whole["choices"][0];
    assert_eq!(choice["finish_reason"], "stop");
    assert_eq!(choice["stop_reason"], "repetition_guard");
    assert_eq!(choice["guard"]["kind"], "repetition");
    assert_eq!(choice["guard"]["figure"], 6.0);

    let streamed = send(
        &h.state,
        post("/v1/chat/completions", chat_body(json!({"stream": true}))),
    )
    .await;
    let last = streamed
        .sse_data()
        .into_iter()
        .filter(|d| d != "[DONE]")
        .map(|d| serde_json::from_str::<serde_json::Value>(&d).unwrap())
        .rfind(|c| c["choices"][0]["finish_reason"].is_string())
        .expect("a finishing chunk");
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["choices"][0]["stop_reason"], "repetition_guard");
}

#[tokio::test]
async fn guard_settings_are_validated_and_reach_the_pipeline() {
    let h = harness(Script::text(&["x"]), None);
    let body = chat_body(json!({"guards": {"repetition": {"enabled": false}, "perplexity": {"max_mean_nll": 4.5}}}));
    assert_eq!(
        send(&h.state, post("/v1/chat/completions", body)).await.status,
        StatusCode::OK
    );
    {
        let chats = h.factory.pipeline.chats.lock().unwrap();
        let guards = chats[0].params.guards;
        assert!(!guards.repetition.enabled);
        assert_eq!(guards.perplexity.max_mean_nll, 4.5);
        assert!(guards.perplexity.enabled, "unnamed settings keep their defaults");
    }
    let bad = chat_body(json!({"guards": {"repetition": {"max_periodd": 3}}}));
    send(&h.state, post("/v1/chat/completions", bad))
        .await
        .assert_error(400, Some("guards.repetition.max_periodd"));
}

#[tokio::test]
async fn impossible_guard_settings_are_rejected_with_the_field_named() {
    let h = harness(Script::text(&["x"]), None);
    let bad = chat_body(json!({"guards": {"repetition": {"min_repeats": 1}}}));
    send(&h.state, post("/v1/chat/completions", bad))
        .await
        .assert_error(400, Some("guards.repetition.min_repeats"));
}
