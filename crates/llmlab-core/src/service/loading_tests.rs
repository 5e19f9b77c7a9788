//! Load retry with back-off down a degradation ladder, on fakes and virtual
//! time. The ladder is the fake factory's ([`crate::testing::fake_ladder`]);
//! the llama backend's real one is tested beside it, in llmlab-llama.
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::testing::{fake_registry, FakeFactory, Script};
use crate::ChatMessage;

fn chat_request(model: &str) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![ChatMessage::user("hi")],
        ..ChatRequest::default()
    }
}

fn registry(text: &str) -> std::result::Result<crate::registry::Registry, crate::registry::RegistryError> {
    crate::registry::Registry::parse(
        text,
        std::path::Path::new("fake.yaml"),
        std::path::Path::new("/fake"),
        |_| None,
    )
}

fn status(svc: &Service, id: &str) -> ModelStatus {
    svc.models().into_iter().find(|m| m.id == id).unwrap()
}

/// The context of every load attempt so far, in order.
fn contexts_tried(factory: &FakeFactory) -> Vec<u32> {
    let attempts = factory.attempts.lock().unwrap();
    attempts
        .iter()
        .map(|s| s.backend.llama().unwrap().context_size)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_load_that_runs_out_of_memory_succeeds_further_down_the_ladder() {
    let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
    *factory.max_context.lock().unwrap() = Some(1024);
    let svc = Service::new(fake_registry(), Arc::clone(&factory) as Arc<dyn PipelineFactory>);
    let started = tokio::time::Instant::now();
    let answer = svc
        .chat(chat_request("fake-a"), CancellationToken::new())
        .await
        .unwrap()
        .collect_response()
        .await
        .unwrap();
    assert_eq!(answer.content, "ok");
    // Each retry is the factory's next rung down from the configuration.
    assert_eq!(contexts_tried(&factory), [4096, 2048, 1024]);
    // Back-off 0.5 s, then 1 s, between the attempts.
    assert_eq!(started.elapsed(), Duration::from_millis(1500));
    let model = status(&svc, "fake-a");
    assert_eq!(model.state, ModelState::Loaded);
    // What the ladder said it gave up is what `/v1/models` reports.
    assert_eq!(model.degraded.as_deref(), Some("fake: context 1024"));
    assert_eq!(model.consecutive_failures, 0);
    // Unloaded and loaded again, it starts from the configuration again.
    svc.unload("fake-a").await.unwrap();
    assert_eq!(status(&svc, "fake-a").degraded, None);
    *factory.max_context.lock().unwrap() = None;
    svc.load("fake-a", None).await.unwrap();
    assert_eq!(contexts_tried(&factory)[3..], [4096]);
    assert_eq!(status(&svc, "fake-a").degraded, None);
}

#[tokio::test(start_paused = true)]
async fn giving_up_lists_every_attempt_and_counts_one_failure() {
    let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
    *factory.fail_loads.lock().unwrap() = Some(Error::unavailable("out of memory"));
    let svc = Service::new(fake_registry(), Arc::clone(&factory) as Arc<dyn PipelineFactory>);
    let err = svc.load("fake-a", None).await.unwrap_err();
    assert_eq!(err.kind, crate::ErrorKind::Unavailable);
    assert_eq!(
        err.message,
        "model 'fake-a' failed to load after 4 attempts: as configured: out of memory; \
         fake: context 2048: out of memory; fake: context 1024: out of memory; \
         fake: context 512: out of memory"
    );
    let model = status(&svc, "fake-a");
    assert_eq!(model.state, ModelState::Failed);
    assert_eq!(model.error.as_deref(), Some(err.message.as_str()));
    assert_eq!(model.consecutive_failures, 1);
}

#[tokio::test(start_paused = true)]
async fn the_registry_sets_the_attempts_and_the_back_off() {
    let text = "default_model: big\nmodels:\n  - id: big\n    kind: chat\n    backend: llama\n    path: big.gguf\n    \
                context_size: 8192\n    load_retry: {attempts: 3, backoff_secs: 1}\n";
    let registry = registry(text).unwrap();
    let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
    *factory.fail_loads.lock().unwrap() = Some(Error::unavailable("cudaMalloc failed"));
    let svc = Service::new(registry, Arc::clone(&factory) as Arc<dyn PipelineFactory>);
    let started = tokio::time::Instant::now();
    let err = svc.load("big", None).await.unwrap_err();
    assert!(
        err.message.contains("after 3 attempts") && err.message.ends_with("fake: context 2048: cudaMalloc failed"),
        "{}",
        err.message
    );
    assert_eq!(contexts_tried(&factory), [8192, 4096, 2048]);
    // Waits of 1 s, then 2 s.
    assert_eq!(started.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn retries_stop_when_the_ladder_has_nothing_left_to_give_up() {
    let text = "default_model: small\nmodels:\n  - {id: small, kind: chat, backend: llama, path: s.gguf, \
                context_size: 1024, load_retry: {min_context_size: 512}}\n";
    let registry = registry(text).unwrap();
    let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
    *factory.fail_loads.lock().unwrap() = Some(Error::unavailable("out of memory"));
    let svc = Service::new(registry, Arc::clone(&factory) as Arc<dyn PipelineFactory>);
    let err = svc.load("small", None).await.unwrap_err();
    // Two of the four attempts allowed: the ladder's one rung was the last.
    assert_eq!(contexts_tried(&factory), [1024, 512]);
    assert_eq!(
        err.message,
        "model 'small' failed to load after 2 attempts: as configured: out of memory; \
         fake: context 512: out of memory"
    );
}

#[tokio::test(start_paused = true)]
async fn a_backend_without_a_ladder_retries_the_configuration_after_the_back_off() {
    let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
    *factory.fail_loads.lock().unwrap() = Some(Error::unavailable("busy"));
    let svc = Service::new(fake_registry(), Arc::clone(&factory) as Arc<dyn PipelineFactory>);
    let started = tokio::time::Instant::now();
    let err = svc.load("fake-embed", None).await.unwrap_err();
    assert_eq!(
        err.message,
        "model 'fake-embed' failed to load after 4 attempts: as configured: busy; as configured: busy; \
         as configured: busy; as configured: busy"
    );
    let configured = svc.registry().require("fake-embed").unwrap().clone();
    assert!(factory.attempts.lock().unwrap().iter().all(|spec| *spec == configured));
    assert_eq!(started.elapsed(), Duration::from_millis(3500));
}

#[tokio::test(start_paused = true)]
async fn a_single_attempt_keeps_the_backend_error_as_it_is() {
    let text = "default_model: one\nmodels:\n  - {id: one, kind: chat, backend: llama, path: a.gguf, load_retry: {attempts: 1}}\n";
    let registry = registry(text).unwrap();
    let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
    *factory.fail_loads.lock().unwrap() = Some(Error::unavailable("no"));
    let svc = Service::new(registry, Arc::clone(&factory) as Arc<dyn PipelineFactory>);
    assert_eq!(svc.load("one", None).await.unwrap_err().message, "no");
    assert_eq!(factory.loads.load(Ordering::SeqCst), 1);
}

#[test]
fn bad_retry_settings_are_refused_with_the_field_named() {
    let text = "default_model: one\nmodels:\n  - {id: one, kind: chat, backend: llama, path: a.gguf, load_retry: {attempts: 0}}\n";
    let err = registry(text).unwrap_err();
    assert!(err.to_string().contains("load_retry.attempts"), "{err}");
}
