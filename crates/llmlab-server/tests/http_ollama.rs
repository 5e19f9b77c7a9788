//! Ollama's routes (`/api/*`) through the whole router, on fake pipelines:
//! what reaches the pipeline, the NDJSON lines, and errors that keep
//! Ollama's shape even when the shared layers answer them.

mod common;

use axum::body::Body;
use axum::http::Request;
use serde_json::{json, Value};

use common::{harness, post, send};
use llmlab_core::testing::Script;

fn lines(body: &str) -> Vec<Value> {
    body.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn ollama_error(reply: &common::Reply, status: u16) -> String {
    assert_eq!(reply.status.as_u16(), status, "{}", reply.body);
    reply.json()["error"]
        .as_str()
        .unwrap_or_else(|| panic!("not Ollama's error shape: {}", reply.body))
        .to_owned()
}

#[tokio::test]
async fn chat_streams_ndjson_by_default_and_options_reach_the_pipeline() {
    let h = harness(Script::text(&["Hel", "lo"]), None);
    let body = json!({
        "model": "fake-a:latest",
        "messages": [{"role": "user", "content": "hi"}],
        "options": {"temperature": 0.5, "num_predict": 9, "num_ctx": 999999, "mirostat": 1},
    });
    let reply = send(&h.state, post("/api/chat", body.to_string())).await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
    assert_eq!(reply.headers["content-type"], "application/x-ndjson");
    let lines = lines(&reply.body);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["message"]["content"], "Hel");
    assert_eq!(lines[0]["model"], "fake-a:latest");
    let last = &lines[2];
    assert_eq!(
        (last["done"].clone(), last["done_reason"].clone()),
        (json!(true), json!("stop"))
    );
    assert_eq!(
        (last["prompt_eval_count"].clone(), last["eval_count"].clone()),
        (json!(7), json!(2))
    );
    let chats = h.factory.pipeline.chats.lock().unwrap();
    assert_eq!(chats[0].params.sampling.temperature, Some(0.5));
    assert_eq!(chats[0].params.max_tokens, Some(9));
}

#[tokio::test]
async fn a_whole_answer_and_generate() {
    let h = harness(Script::text(&["4"]), None);
    let body = json!({"model": "fake-a", "prompt": "2+2?", "stream": false});
    let reply = send(&h.state, post("/api/generate", body.to_string())).await;
    assert_eq!(reply.status.as_u16(), 200, "{}", reply.body);
    let answer = reply.json();
    assert_eq!(
        (answer["response"].clone(), answer["done"].clone()),
        (json!("4"), json!(true))
    );
    assert!(answer["total_duration"].as_u64().is_some());
    let raw = json!({"model": "fake-a", "prompt": "Once", "raw": true, "stream": false});
    let reply = send(&h.state, post("/api/generate", raw.to_string())).await;
    assert_eq!(reply.json()["response"], "4");
    assert_eq!(h.factory.pipeline.completions.lock().unwrap()[0].prompt, "Once");
}

#[tokio::test]
async fn errors_are_ollamas_whoever_answers_them() {
    let h = harness(Script::text(&["x"]), None);
    let unknown = json!({"model": "nope", "messages": [{"role": "user", "content": "hi"}]});
    let reply = send(&h.state, post("/api/chat", unknown.to_string())).await;
    assert_eq!(
        ollama_error(&reply, 404),
        "model \"nope\" not found, try pulling it first"
    );
    let reply = send(&h.state, post("/api/chat", "{\"model\": ")).await;
    ollama_error(&reply, 400);
    let bad = json!({"model": "fake-a", "messages": [{"role": "user", "content": "hi"}], "options": {"top_p": 7}});
    assert!(ollama_error(&send(&h.state, post("/api/chat", bad.to_string())).await, 400).contains("top_p"));
    // The shared layers: an unknown route, a wrong method, a body too large.
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    ollama_error(&send(&h.state, get("/api/nope")).await, 404);
    ollama_error(&send(&h.state, get("/api/chat")).await, 405);
    ollama_error(&send(&h.state, post("/api/chat", "x".repeat(10_000))).await, 413);
    // OpenAI's routes keep OpenAI's envelope.
    let reply = send(&h.state, get("/v1/nope")).await;
    assert!(reply.json()["error"]["message"].is_string(), "{}", reply.body);
    // Deleting is refused; the API key guards /api/* as it guards /v1/*.
    let delete = Request::delete("/api/delete")
        .body(Body::from(r#"{"model":"fake-a"}"#))
        .unwrap();
    ollama_error(&send(&h.state, delete).await, 403);
    let keyed = harness(Script::text(&["x"]), Some("sk-test"));
    ollama_error(&send(&keyed.state, get("/api/tags")).await, 401);
}

#[tokio::test]
async fn version_and_ps() {
    let h = harness(Script::text(&["x"]), None);
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    assert!(send(&h.state, get("/api/version")).await.json()["version"].is_string());
    assert_eq!(send(&h.state, get("/api/ps")).await.json(), json!({"models": []}));
    let load = json!({"model": "fake-a", "stream": false});
    let reply = send(&h.state, post("/api/generate", load.to_string())).await;
    assert_eq!(reply.json()["done_reason"], "load", "{}", reply.body);
    let ps = send(&h.state, get("/api/ps")).await.json();
    assert_eq!(ps["models"][0]["name"], "fake-a:latest", "{ps}");
    let unload = json!({"model": "fake-a", "keep_alive": 0, "stream": false});
    let reply = send(&h.state, post("/api/generate", unload.to_string())).await;
    assert_eq!(reply.json()["done_reason"], "unload");
    assert_eq!(send(&h.state, get("/api/ps")).await.json(), json!({"models": []}));
}
