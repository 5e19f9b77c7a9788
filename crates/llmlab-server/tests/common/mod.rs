//! Shared harness of the in-process HTTP tests: a router over scripted fake
//! pipelines, requests sent with `tower::ServiceExt::oneshot` (no socket).

#![allow(dead_code)]

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
use llmlab_server::http::{router, AppState, HttpConfig};

pub struct Harness {
    pub factory: Arc<FakeFactory>,
    pub state: AppState,
}

pub fn harness(script: Script, api_key: Option<&str>) -> Harness {
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

pub struct Reply {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The `data:` payloads of an SSE body.
    pub fn sse_data(&self) -> Vec<String> {
        self.body
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(str::to_owned)
            .collect()
    }

    pub fn assert_error(&self, status: u16, param: Option<&str>) -> Value {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        let error = self.json()["error"].clone();
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{error}");
        assert!(error["type"].is_string() && error.get("code").is_some(), "{error}");
        assert_eq!(error["param"].as_str(), param, "{error}");
        error
    }
}

pub async fn send(state: &AppState, request: Request<Body>) -> Reply {
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

pub fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

pub fn chat_body(extra: Value) -> String {
    let mut body = json!({"model": "fake-a", "messages": [{"role": "user", "content": "hi"}]});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    body.to_string()
}
