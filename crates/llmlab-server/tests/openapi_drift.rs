//! The OpenAPI document served at `/openapi.json` (src/http/openapi.json) is
//! written by hand; this test is what keeps it true, in both directions, on
//! fake pipelines: what it promises (routes, request fields, statuses,
//! answer fields) must exist in the code, and what the code serves, reads
//! and answers must be in it. The checker knows only the schema subset used.

mod common;
mod openapi_support;

use std::collections::BTreeSet;
use std::sync::{atomic::Ordering, Arc};
use std::time::Duration;

use axum::{body::Body, body::Bytes, http::Request, Router};
use futures::{SinkExt, StreamExt};
use http_body_util::BodyExt;
use serde::de::{value::Error as DeError, Error as _, Visitor};
use serde_json::{from_value as from, json, Value};
use tokio_tungstenite::tungstenite::Message;
use tower::ServiceExt;

use common::Reply;
use openapi_support::{
    alternatives, assert_agree, check, check_code, check_reply, example, operations, resolve, METHODS,
};
use llmlab_core::guards::{DeadlineSettings, GuardSettings, PerplexitySettings, RepetitionSettings};
use llmlab_core::service::Service;
use llmlab_core::testing::{FakeFactory, Script};
use llmlab_core::{ChatMessage, Error, FunctionCall, FunctionDefinition, ImageUrl, ToolCall, ToolDefinition};
use llmlab_server::http::{router, router_with, AppState, ServerOptions, OPENAPI_JSON};
use llmlab_server::openai::embeddings::{EmbeddingsBody, SimilarityBody};
use llmlab_server::openai::images::ImagesBody;
use llmlab_server::openai::{request::StreamOptions, OpenAiRequest};

/// Every route `router_with` in crates/llmlab-server/src/http/mod.rs serves.
/// UPDATE THIS LIST WHENEVER YOU CHANGE THE ROUTER. An axum router cannot
/// list its routes, so this is what the document's paths are compared with.
/// Ollama's routes (`/api/*`, http/ollama.rs) are not here: the document
/// describes the OpenAI-compatible API, and those follow Ollama's own.
const SERVED: &[(&str, &str)] = &[
    ("GET", "/"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("POST", "/v1/similarity"),
    ("POST", "/v1/images/generations"),
    ("POST", "/v1/images/edits"),
    ("GET", "/v1/ws"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{id}"),
    ("POST", "/v1/models/{id}/load"),
    ("POST", "/v1/models/{id}/unload"),
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
];

/// An 8x8 RGB PNG, base64: a picture the image routes can edit.
const PNG_8X8_BASE64: &str =
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAEUlEQVR4nGPgEpHDihiGlgQA2BMPAcCS07QAAAAASUVORK5CYII=";


/// The fake registry, with a Matryoshka embedding model so that every
/// documented embeddings field (`dimensions` too) can be sent.
const REGISTRY: &str = "default_model: fake-a\nmodels:\n  - {id: fake-a, kind: chat, backend: llama, path: a.gguf}\n  - {id: fake-embed, kind: embedding, backend: candle, path: e, matryoshka: true}\n  - {id: fake-image, kind: image, backend: candle, path: i}\n";

/// The shared harness's router state, on the registry above.
fn setup(script: Script, api_key: Option<&str>) -> (Arc<FakeFactory>, AppState) {
    let common::Harness { factory, mut state } = common::harness(script, api_key);
    let registry = llmlab_core::registry::Registry::parse(REGISTRY, "t.yaml".as_ref(), "/".as_ref(), |_| None);
    state.service = Arc::new(Service::new(registry.unwrap(), Arc::clone(&factory) as _));
    (factory, state)
}

async fn send_to(app: Router, request: Request<Body>) -> Reply {
    let response = app.oneshot(request).await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8(bytes.to_vec()).unwrap();
    Reply { status, headers, body }
}

/// Sends a JSON `body` to `path`, a documented path whose `{id}` becomes
/// the fake chat model.
async fn send(state: &AppState, method: &str, path: &str, body: &str) -> Reply {
    let request = Request::builder().method(method).uri(path.replace("{id}", "fake-a"));
    let request = request
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()));
    send_to(router(state.clone()), request.unwrap()).await
}


#[tokio::test]
async fn documented_routes_are_the_served_routes() {
    let doc: Value = serde_json::from_str(OPENAPI_JSON).unwrap();
    let documented: BTreeSet<_> = operations(&doc).into_iter().map(|(m, p, _)| (m, p)).collect();
    let served: BTreeSet<_> = SERVED.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(undocumented.is_empty(), "served but not documented: {undocumented:?}");
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(unserved.is_empty(), "documented but not in SERVED: {unserved:?}");

    // Each documented route answers as a route (neither route_not_found nor
    // 405), every other method on its path answers 405, the API key is asked
    // exactly where the document's `security` says, and each answer's status
    // and body are documented.
    let (_, open) = setup(Script::text(&["hi"]), None);
    let (_, keyed) = setup(Script::text(&["hi"]), Some("sk-test"));
    let mut errors = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            let reply = send(&open, method, path, "").await;
            errors.extend(check_reply(&doc, method, path, &reply));
            let Some(op) = ops.get(method.to_lowercase()) else {
                if reply.status != 405 {
                    errors.push(format!("{method} {path} is undocumented but answers {}", reply.status));
                }
                continue;
            };
            if reply.status == 405 || reply.body.contains(r#""code":"route_not_found""#) {
                errors.push(format!("{method} {path} is documented but answers {}", reply.body));
            }
            let security = op.get("security").unwrap_or(&doc["security"]).as_array().unwrap();
            let keyless = security.is_empty() || security.contains(&json!({}));
            let reply = send(&keyed, method, path, "").await;
            if keyless == (reply.status == 401) {
                errors.push(format!("{method} {path}: keyless={keyless}, answers {}", reply.status));
            }
            errors.extend(check_reply(&doc, method, path, &reply));
            // Statuses no request here can produce (431 comes from the accept
            // loop) must at least be documented wherever they can happen.
            let (mut expected, body) = (vec!["405", "431"], op.get("requestBody").is_some());
            expected.extend(["401"].iter().filter(|_| !keyless));
            expected.extend(["400", "404", "408", "413", "415", "503"].iter().filter(|_| body));
            expected.extend(["429", "504"].iter().filter(|_| path.ends_with("completions")));
            expected.extend(["404"].iter().filter(|_| path.contains("{id}")));
            for status in expected.into_iter().filter(|s| op["responses"].get(s).is_none()) {
                errors.push(format!("{method} {path} does not document {status}"));
            }
        }
    }
    let reply = send(&open, "GET", "/v1/nope", "").await;
    assert!(reply.body.contains(r#""code":"route_not_found""#), "{}", reply.body);
    check_code(&doc, &reply.json(), "/v1/nope", &mut errors);
    assert_agree(errors);
}

#[tokio::test]
async fn every_documented_request_field_is_accepted() {
    let doc: Value = serde_json::from_str(OPENAPI_JSON).unwrap();
    let (_, state) = setup(Script::text(&["hi"]), None);
    let mut errors = Vec::new();
    for (method, path, op) in operations(&doc) {
        let schema = op.pointer("/requestBody/content/application~1json/schema");
        let Some(schema) = schema else { continue };
        // One body with every documented field, then one per other shape a
        // field may take. The model is the test registry's, which the
        // document cannot know.
        let mut base = example(&doc, schema);
        base["model"] = json!(if path.starts_with("/v1/images") {
            "fake-image"
        } else if path.ends_with("completions") {
            "fake-a"
        } else {
            "fake-embed"
        });
        if path.starts_with("/v1/images") {
            // Documented values that only make sense together: a picture
            // to edit, a size that fits it, and a small fake run.
            base["image"] = json!(PNG_8X8_BASE64);
            base["mask"] = json!(PNG_8X8_BASE64);
            base["size"] = json!("8x8");
            base["steps"] = json!(2);
            base["n"] = json!(1);
            base["stream"] = json!(false);
        }
        let mut bodies = vec![base.clone()];
        for (name, field) in resolve(&doc, schema)["properties"].as_object().unwrap() {
            let shapes = alternatives(&doc, field).into_iter().skip(1);
            for value in shapes.filter(|_| name != "model") {
                let mut body = base.clone();
                body[name] = value;
                bodies.push(body);
            }
        }
        for body in bodies {
            let reply = send(&state, &method, &path, &body.to_string()).await;
            if !reply.status.is_success() {
                errors.push(format!("{method} {path} refuses {body}: {}", reply.body));
            }
            errors.extend(check_reply(&doc, &method, &path, &reply));
        }
    }
    assert_agree(errors);
}

/// Serde's derive hands a struct's field names (after renames) to
/// `deserialize_struct`; this deserializer keeps them and stops. So the
/// decoders' own field lists are compared with the document, whatever
/// their attributes, without parsing source.
struct FieldNames<'a>(&'a mut Vec<&'static str>);
type Names = &'static [&'static str];

impl<'de> serde::Deserializer<'de> for FieldNames<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, DeError> {
        Err(DeError::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(self, _: &str, names: Names, _: V) -> Result<V::Value, DeError> {
        self.0.extend_from_slice(names);
        Err(DeError::custom("names read"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

fn fields_of<T: serde::de::DeserializeOwned>() -> BTreeSet<String> {
    let mut names = Vec::new();
    let _ = T::deserialize(FieldNames(&mut names));
    assert!(!names.is_empty(), "{} is not a struct", std::any::type_name::<T>());
    names.into_iter().map(str::to_owned).collect()
}

#[tokio::test]
async fn decoders_read_exactly_the_documented_fields() {
    // The decoders ignore unknown fields (clients send many), so a field the
    // code reads but the document lacks never shows up as a 400: their field
    // lists must equal the documented properties.
    let (_, state) = setup(Script::text(&["hi"]), None);
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "not_a_field": 1}).to_string();
    let reply = send(&state, "POST", "/v1/chat/completions", &body).await;
    assert_eq!(reply.status, 200, "unknown fields refused: {}", reply.body);

    // One decoder serves both generation endpoints; each endpoint ignores
    // the other's input field, and completions ignore tools.
    let chat_only: &[&str] = &["messages", "tools", "tool_choice"];
    let cases: Vec<(&str, BTreeSet<String>, &[&str])> = vec![
        ("ChatCompletionRequest", fields_of::<OpenAiRequest>(), &["prompt"]),
        ("CompletionRequest", fields_of::<OpenAiRequest>(), chat_only),
        ("StreamOptions", fields_of::<StreamOptions>(), &[]),
        ("ChatMessage", fields_of::<ChatMessage>(), &[]),
        ("ImageUrl", fields_of::<ImageUrl>(), &[]),
        ("ToolCall", fields_of::<ToolCall>(), &[]),
        ("FunctionCall", fields_of::<FunctionCall>(), &[]),
        ("ToolDefinition", fields_of::<ToolDefinition>(), &[]),
        ("FunctionDefinition", fields_of::<FunctionDefinition>(), &[]),
        ("GuardSettings", fields_of::<GuardSettings>(), &[]),
        ("RepetitionSettings", fields_of::<RepetitionSettings>(), &[]),
        ("PerplexitySettings", fields_of::<PerplexitySettings>(), &[]),
        ("DeadlineSettings", fields_of::<DeadlineSettings>(), &[]),
        ("EmbeddingRequest", fields_of::<EmbeddingsBody>(), &[]),
        ("SimilarityRequest", fields_of::<SimilarityBody>(), &[]),
        ("ImageGenerationRequest", fields_of::<ImagesBody>(), &[]),
        ("ImageEditRequest", fields_of::<ImagesBody>(), &[]),
    ];
    let doc: Value = serde_json::from_str(OPENAPI_JSON).unwrap();
    let mut errors = Vec::new();
    for (name, mut read, ignored) in cases {
        read.retain(|f| !ignored.contains(&f.as_str()));
        let props = doc["components"]["schemas"][name]["properties"].as_object();
        let documented: BTreeSet<String> = props.expect(name).keys().cloned().collect();
        let undocumented: Vec<_> = read.difference(&documented).collect();
        let unread: Vec<_> = documented.difference(&read).collect();
        if !undocumented.is_empty() || !unread.is_empty() {
            errors.push(format!("{name}: undocumented {undocumented:?}, unread {unread:?}"));
        }
    }
    assert_agree(errors);
}

/// A generation with every part an answer can have: reasoning,
/// log-probabilities, text, a tool call, a guard stop, then usage and done.
fn rich_script() -> Script {
    use llmlab_core::ChatEvent::*;
    let top = json!({"token": "Hi", "logprob": -0.5, "bytes": [72, 105]});
    let logprob = json!({"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": [top]});
    let call = json!({"index": 0, "id": "call_1", "name": "f", "arguments": "{}"});
    let trip = json!({"kind": "repetition", "figure": 4.0, "detail": "a loop"});
    let (logprob, call, trip) = (from(logprob).unwrap(), from(call).unwrap(), from(trip).unwrap());
    let mut events = vec![Reasoning("hmm".into()), Logprobs(vec![logprob]), Content("Hi".into())];
    events.extend([ToolCall(call), Stopped(trip)]);
    let mut script = Script::text(&[]);
    events.append(&mut script.events);
    script.events = events;
    script
}

fn with(base: &str, extra: Value) -> String {
    let mut body: Value = serde_json::from_str(base).unwrap();
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body.to_string()
}

/// Sends one request, expects `status`, and checks the answer.
async fn answer(doc: &Value, state: &AppState, call: (&str, &str, &str, u16)) -> Vec<String> {
    let (method, path, body, status) = call;
    let reply = send(state, method, path, body).await;
    assert_eq!(reply.status, status, "{method} {path}: {}", reply.body);
    check_reply(doc, method, path, &reply)
}

#[tokio::test]
async fn answers_match_the_documented_schemas() {
    let doc: Value = serde_json::from_str(OPENAPI_JSON).unwrap();
    let (factory, state) = setup(rich_script(), None);
    let chat = json!({"messages": [{"role": "user", "content": "hi"}], "logprobs": true, "top_logprobs": 1});
    let chat = &chat.to_string();
    let prompt = &json!({"prompt": "hi", "logprobs": 1}).to_string();
    let stream = json!({"stream": true, "stream_options": {"include_usage": true}});
    let (chat_stream, prompt_stream) = (&with(chat, stream.clone()), &with(prompt, stream));
    let embed = &json!({"model": "fake-embed", "input": ["a", "b"]}).to_string();
    let base64 = &with(embed, json!({"encoding_format": "base64", "dimensions": 4}));
    let similar = &json!({"model": "fake-embed", "query": "a", "documents": ["a", "b"]}).to_string();
    let hot = &with(chat, json!({"temperature": "hot"}));
    let unknown = &with(chat, json!({"model": "no"}));
    let (no_docs, too_big) = (&with(similar, json!({"documents": []})), &"x".repeat(9000));
    let mut errors = Vec::new();
    let calls: &[(&str, &str, &str, u16)] = &[
        ("POST", "/v1/chat/completions", chat, 200),
        ("POST", "/v1/chat/completions", chat_stream, 200),
        ("POST", "/v1/completions", prompt, 200),
        ("POST", "/v1/completions", prompt_stream, 200),
        ("POST", "/v1/embeddings", embed, 200),
        ("POST", "/v1/embeddings", base64, 200),
        ("POST", "/v1/similarity", similar, 200),
        ("POST", "/v1/models/{id}/load", "", 200),
        ("GET", "/v1/models", "", 200),
        ("GET", "/v1/models/{id}", "", 200),
        ("POST", "/v1/models/{id}/unload", "", 200),
        ("GET", "/health", "", 200),
        ("GET", "/openapi.json", "", 200),
        ("POST", "/v1/chat/completions", hot, 400),
        ("POST", "/v1/chat/completions", unknown, 404),
        ("POST", "/v1/similarity", no_docs, 400),
        ("POST", "/v1/completions", too_big, 413),
    ];
    for &call in calls {
        errors.extend(answer(&doc, &state, call).await);
    }

    // 415: a body that is plainly not JSON; 408: one that never finishes.
    let options = ServerOptions {
        body_timeout: Duration::from_millis(100),
        ..ServerOptions::default()
    };
    let stalled = Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
    let html = ("/v1/embeddings", "text/html", Body::from("<p>"), 415);
    for (path, kind, body, status) in [html, ("/v1/chat/completions", "application/json", stalled, 408)] {
        let request = Request::post(path).header("content-type", kind).body(body).unwrap();
        let reply = send_to(router_with(state.clone(), &options), request).await;
        assert_eq!(reply.status, status, "{}", reply.body);
        errors.extend(check_reply(&doc, "POST", path, &reply));
    }

    // 504: no output before the first-token deadline; 429: the same
    // deadline running out while the request still waits in the queue.
    let late = Script::text(&["late"]).with_delay(Duration::from_millis(400));
    factory.pipeline.set_script(late);
    let deadline = &with(chat, json!({"guards": {"deadlines": {"first_token_secs": 0.05}}}));
    for (held, status) in [(false, 504), (true, 429)] {
        factory.pipeline.held_in_queue.store(held, Ordering::SeqCst);
        let call = ("POST", "/v1/chat/completions", deadline.as_str(), status);
        errors.extend(answer(&doc, &state, call).await);
    }

    // 503: a model that cannot load; then the model and health reporting it.
    *factory.reject_files.lock().unwrap() = Some(Error::unavailable("fake: unreadable file"));
    for call in [
        ("POST", "/v1/models/{id}/unload", "", 200),
        ("POST", "/v1/completions", prompt, 503),
        ("POST", "/v1/models/{id}/load", "", 503),
        ("GET", "/v1/models/{id}", "", 200),
        ("GET", "/health", "", 200),
    ] {
        errors.extend(answer(&doc, &state, call).await);
    }
    let health = send(&state, "GET", "/health", "").await.json();
    assert_eq!(health["status"], "degraded", "{health}");

    // Health while start-up preloads still run: 503 with the same body.
    let mut slow = FakeFactory::new(Script::text(&[]));
    slow.load_delay = Duration::from_millis(500);
    let mut loading = state.clone();
    loading.service = Arc::new(Service::new(state.service.registry().clone(), Arc::new(slow)));
    loading.service.preload(vec!["fake-a".into()]);
    errors.extend(answer(&doc, &loading, ("GET", "/health", "", 503)).await);
    assert_agree(errors);
}

/// The WebSocket door's frames against the document's `x-websocket`
/// schemas, over a real socket, producing every terminal frame type.
#[tokio::test]
async fn websocket_frames_match_the_documented_frames() {
    let doc: Value = serde_json::from_str(OPENAPI_JSON).unwrap();
    let frames = &doc["paths"]["/v1/ws"]["get"]["x-websocket"];
    let (_, state) = setup(Script::text(&["tick"; 40]).with_delay(Duration::from_millis(20)), None);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/ws", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();

    let mut errors = Vec::new();
    for frame in [
        json!({"type": "chat.completions", "id": "slow", "body": {"messages": [{"role": "user", "content": "hi"}]}}),
        json!({"type": "completions", "id": "fast", "body": {"prompt": "x", "max_tokens": 2}}),
        json!({"type": "images.generations", "id": "img", "body": {"model": "fake-image", "prompt": "x", "size": "8x8", "steps": 2, "partial_images": 1}}),
        json!({"type": "cancel", "id": "slow"}),
    ] {
        check(&doc, &frames["client"], &frame, "client frame", &mut errors);
        socket.send(Message::text(frame.to_string())).await.unwrap();
    }
    // Frames the server refuses: an unknown type, and one without an id.
    for refused in [r#"{"type": "nope", "id": "bad"}"#, "{}"] {
        socket.send(Message::text(refused)).await.unwrap();
    }
    let (mut endings, mut seen) = (BTreeSet::new(), BTreeSet::new());
    while endings.len() < 5 {
        let next = tokio::time::timeout(Duration::from_secs(10), socket.next()).await;
        let Message::Text(text) = next.expect("a frame within 10 s").unwrap().unwrap() else {
            continue;
        };
        let frame: Value = serde_json::from_str(&text).unwrap();
        check(&doc, &frames["server"], &frame, "server frame", &mut errors);
        let kind = frame["type"].as_str().unwrap().to_owned();
        // Terminal frames only: chunks, and an image's progress and result, come before one.
        if !["chunk", "progress", "partial", "result"].contains(&kind.as_str()) {
            endings.insert(format!("{}:{kind}", frame["id"].as_str().unwrap_or("")));
        }
        seen.insert(kind);
    }
    let expected = [":error", "bad:error", "fast:done", "img:done", "slow:cancelled"];
    assert_eq!(endings, expected.map(String::from).into());
    // Every documented server frame type was seen, and no other.
    for variant in resolve(&doc, &frames["server"])["oneOf"].as_array().unwrap() {
        let kind = variant["properties"]["type"]["const"].as_str().unwrap();
        assert!(seen.remove(kind), "documented frame type {kind} never sent");
    }
    assert!(seen.is_empty(), "undocumented frame types: {seen:?}");
    assert_agree(errors);
}
