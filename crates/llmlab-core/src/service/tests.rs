//! Lifecycle tests on fake pipelines; keep-alive ones run on virtual time.
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;
use crate::testing::{fake_registry, FakeFactory, Script};
use crate::{ChatEvent, ChatMessage, ErrorKind};

fn chat_request(model: &str) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![ChatMessage::user("hi")],
        ..ChatRequest::default()
    }
}

fn service(factory: Arc<FakeFactory>) -> Arc<Service> {
    Arc::new(Service::new(fake_registry(), factory))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_load_once() {
    let mut factory = FakeFactory::new(Script::text(&["ok"]));
    factory.load_delay = Duration::from_millis(100);
    let factory = Arc::new(factory);
    let svc = service(Arc::clone(&factory));
    let requests = (0..5).map(|_| {
        let svc = Arc::clone(&svc);
        tokio::spawn(async move {
            svc.chat(chat_request("fake-a"), CancellationToken::new())
                .await?
                .collect_response()
                .await
        })
    });
    for handle in requests {
        assert_eq!(handle.await.unwrap().unwrap().content, "ok");
    }
    assert_eq!(factory.loads.load(Ordering::SeqCst), 1);
    assert!(svc.is_loaded("fake-a"));
    assert!(!svc.is_loaded("fake-b"));
}

#[tokio::test]
async fn empty_model_means_the_default_one() {
    let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
    let svc = service(Arc::clone(&factory));
    svc.chat(chat_request(""), CancellationToken::new()).await.unwrap();
    assert!(svc.is_loaded("fake-a"));
}

#[tokio::test]
async fn the_pipeline_receives_the_request_resolved_and_the_stream_names_the_model() {
    let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
    let svc = service(Arc::clone(&factory));
    let mut request = chat_request("");
    request.params.sampling.temperature = Some(0.1);
    let stream = svc.chat(request, CancellationToken::new()).await.unwrap();
    assert_eq!(stream.model(), "fake-a", "the default model, named for the doors");
    let chats = factory.pipeline.chats.lock().unwrap();
    let seen = &chats[0];
    assert_eq!(seen.model, "fake-a");
    let defaults = crate::config::default_sampling();
    assert_eq!(seen.params.sampling.temperature, Some(0.1));
    assert_eq!(
        seen.params.sampling.top_p, defaults.top_p,
        "defaults filled by the service"
    );
    let spec = svc.registry().require("fake-a").unwrap();
    assert_eq!(seen.params.guards, spec.guards);
    assert_eq!(seen.keep_alive, spec.keep_alive);
}

#[tokio::test]
async fn an_invalid_request_is_refused_before_any_model_is_touched() {
    let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
    let svc = service(Arc::clone(&factory));
    let mut request = chat_request("fake-a");
    request.params.sampling.top_p = Some(7.0);
    let err = svc.chat(request, CancellationToken::new()).await.unwrap_err();
    assert_eq!(err.param.as_deref(), Some("top_p"));
    let mut completion = CompletionRequest {
        model: "fake-a".into(),
        prompt: "x".into(),
        ..Default::default()
    };
    completion.params.stop = vec![String::new()];
    let err = svc.complete(completion, CancellationToken::new()).await.unwrap_err();
    assert_eq!(err.param.as_deref(), Some("stop"));
    assert_eq!(
        factory.loads.load(Ordering::SeqCst),
        0,
        "nothing loaded for a bad request"
    );
    assert!(factory.pipeline.chats.lock().unwrap().is_empty());
    let status = svc.models().into_iter().find(|m| m.id == "fake-a").unwrap();
    assert_eq!((status.consecutive_failures, status.active_requests), (0, 0));
}

#[tokio::test]
async fn unknown_and_wrong_kind_models_are_rejected() {
    let svc = service(Arc::new(FakeFactory::new(Script::text(&["ok"]))));
    let err = svc
        .chat(chat_request("nope"), CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotFound);
    assert!(err.message.contains("fake-a, fake-b"), "{}", err.message);
    let err = svc
        .chat(chat_request("fake-embed"), CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind, err.param.as_deref()),
        (ErrorKind::InvalidRequest, Some("model"))
    );
}

#[tokio::test]
async fn a_failed_load_is_reported_and_retried_by_the_next_request() {
    let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
    *factory.reject_files.lock().unwrap() = Some(Error::unavailable("disk on fire"));
    let svc = service(Arc::clone(&factory));
    let err = svc
        .chat(chat_request("fake-a"), CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(
        (err.kind, err.message.as_str()),
        (ErrorKind::Unavailable, "disk on fire")
    );
    // A file that fails its preflight is never handed to the engine.
    assert_eq!(factory.loads.load(Ordering::SeqCst), 0);
    *factory.reject_files.lock().unwrap() = None;
    svc.chat(chat_request("fake-a"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(factory.loads.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_does_not_abandon_the_load() {
    let mut factory = FakeFactory::new(Script::text(&["ok"]));
    factory.load_delay = Duration::from_millis(300);
    let factory = Arc::new(factory);
    let svc = service(Arc::clone(&factory));
    let impatient = tokio::time::timeout(
        Duration::from_millis(50),
        svc.chat(chat_request("fake-a"), CancellationToken::new()),
    );
    assert!(impatient.await.is_err(), "the first caller should time out");
    svc.chat(chat_request("fake-a"), CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(factory.loads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn states_follow_load_failure_and_unload() {
    let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
    *factory.reject_files.lock().unwrap() = Some(Error::unavailable("bad file"));
    let svc = service(Arc::clone(&factory));
    let state = |svc: &Service| svc.models().into_iter().find(|m| m.id == "fake-a").unwrap();
    assert_eq!(state(&svc).state, ModelState::Unloaded);
    svc.load("fake-a", None).await.unwrap_err();
    assert_eq!(
        (state(&svc).state, state(&svc).error.as_deref()),
        (ModelState::Failed, Some("bad file"))
    );
    *factory.reject_files.lock().unwrap() = None;
    svc.load("fake-a", None).await.unwrap();
    assert_eq!(state(&svc).state, ModelState::Loaded);
    assert!(svc.unload("fake-a").await.unwrap());
    assert_eq!(state(&svc).state, ModelState::Unloaded);
    assert!(!svc.unload("fake-a").await.unwrap());
    assert_eq!(svc.unload("nope").await.unwrap_err().kind, ErrorKind::NotFound);
    // The next request loads it again.
    svc.chat(chat_request("fake-a"), CancellationToken::new())
        .await
        .unwrap();
    // The rejected file never reached the engine: two loads, not three.
    assert_eq!(factory.loads.load(Ordering::SeqCst), 2);
}

fn with_keep_alive(model: &str, keep_alive: Option<KeepAlive>) -> ChatRequest {
    ChatRequest {
        keep_alive,
        ..chat_request(model)
    }
}

/// Let the keep-alive task and spawned unloads run on virtual time.
async fn advance(by: Duration) {
    tokio::time::advance(by).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn idle_models_unload_after_their_keep_alive_and_leased_ones_never() {
    let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
    let svc = service(Arc::clone(&factory));
    let _keeper = svc.spawn_keep_alive();
    // Default keep-alive (5 minutes) from the registry.
    svc.chat(chat_request("fake-a"), CancellationToken::new())
        .await
        .unwrap()
        .collect_response()
        .await
        .unwrap();
    advance(Duration::from_secs(4 * 60)).await;
    assert!(svc.is_loaded("fake-a"));
    advance(Duration::from_secs(61 + 2)).await;
    assert!(!svc.is_loaded("fake-a"), "idle past its keep-alive");

    // A stream that is still being read holds a lease.
    let held = svc
        .chat(
            with_keep_alive("fake-a", Some(KeepAlive::For(Duration::ZERO))),
            CancellationToken::new(),
        )
        .await
        .unwrap();
    advance(Duration::from_secs(3600)).await;
    assert!(svc.is_loaded("fake-a"), "a leased model is never unloaded");
    drop(held);
    advance(Duration::from_secs(2)).await;
    assert!(
        !svc.is_loaded("fake-a"),
        "keep_alive 0 unloads once the last request ends"
    );

    // Negative keep-alive: never.
    svc.load("fake-b", Some(KeepAlive::Forever)).await.unwrap();
    advance(Duration::from_secs(24 * 3600)).await;
    assert!(svc.is_loaded("fake-b"));
    assert_eq!(factory.loads.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn the_memory_budget_evicts_idle_models_lru_first_and_refuses_when_all_are_busy() {
    let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
    factory
        .sizes
        .lock()
        .unwrap()
        .extend([("fake-a".to_owned(), 60), ("fake-b".to_owned(), 60)]);
    let svc = Service::new(fake_registry(), Arc::clone(&factory) as Arc<dyn PipelineFactory>).with_memory_budget(100);
    svc.load("fake-a", None).await.unwrap();
    // b does not fit next to a; a is idle, so it goes.
    svc.load("fake-b", None).await.unwrap();
    assert!(!svc.is_loaded("fake-a") && svc.is_loaded("fake-b"));
    // While b streams, a cannot evict it: 503 with the figures.
    let busy = svc
        .chat(chat_request("fake-b"), CancellationToken::new())
        .await
        .unwrap();
    let err = svc
        .chat(chat_request("fake-a"), CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(
        err.message.contains("needs about 60 bytes but only 40 of the 100-byte"),
        "{}",
        err.message
    );
    assert!(err.retry_after_secs.is_some());
    drop(busy);
    svc.chat(chat_request("fake-a"), CancellationToken::new())
        .await
        .unwrap();
    assert!(svc.is_loaded("fake-a") && !svc.is_loaded("fake-b"));
    // A load that fails leaves no phantom usage behind.
    *factory.reject_files.lock().unwrap() = Some(Error::unavailable("broken"));
    svc.load("fake-b", None).await.unwrap_err();
    *factory.reject_files.lock().unwrap() = None;
    svc.unload("fake-a").await.unwrap();
    factory.sizes.lock().unwrap().insert("fake-b".to_owned(), 100);
    svc.load("fake-b", None).await.unwrap();
}

#[tokio::test]
async fn the_gpu_memory_budget_evicts_and_refuses_like_the_ram_budget() {
    let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
    factory
        .gpu_sizes
        .lock()
        .unwrap()
        .extend([("fake-a".to_owned(), 70), ("fake-b".to_owned(), 70)]);
    let svc = Service::new(fake_registry(), Arc::clone(&factory) as Arc<dyn PipelineFactory>)
        .with_memory_budget(1_000)
        .with_gpu_memory_budget(100);
    svc.load("fake-a", None).await.unwrap();
    assert_eq!(
        svc.models().iter().find(|m| m.id == "fake-a").unwrap().gpu_memory_bytes,
        Some(70)
    );
    svc.load("fake-b", None).await.unwrap();
    assert!(!svc.is_loaded("fake-a") && svc.is_loaded("fake-b"));
    let _busy = svc
        .chat(chat_request("fake-b"), CancellationToken::new())
        .await
        .unwrap();
    let err = svc.load("fake-a", None).await.unwrap_err();
    assert!(
        err.message
            .contains("needs about 70 bytes of GPU memory but only 30 of the 100-byte GPU memory budget"),
        "{}",
        err.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_models_loading_at_once_cannot_both_take_the_last_room() {
    let mut factory = FakeFactory::new(Script::text(&["ok"]));
    factory.load_delay = Duration::from_millis(200);
    factory
        .sizes
        .lock()
        .unwrap()
        .extend([("fake-a".to_owned(), 60), ("fake-b".to_owned(), 60)]);
    let factory = Arc::new(factory);
    let svc = Arc::new(
        Service::new(fake_registry(), Arc::clone(&factory) as Arc<dyn PipelineFactory>).with_memory_budget(100),
    );
    let load = |id: &'static str| {
        let svc = Arc::clone(&svc);
        tokio::spawn(async move { svc.load(id, None).await })
    };
    let (a, b) = tokio::join!(load("fake-a"), load("fake-b"));
    let results = [a.unwrap(), b.unwrap()];
    // The one that came second found the room reserved by a model still
    // loading (which cannot be evicted) and was refused.
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
    let refused = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert_eq!(refused.kind, ErrorKind::Unavailable);
    assert_eq!(factory.loads.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn pinned_models_are_neither_expired_nor_evicted() {
    let text = "models:\n  - {id: pinned, kind: chat, backend: llama, path: p.gguf, pinned: true, keep_alive: '0'}\n  - {id: other, kind: chat, backend: llama, path: o.gguf}\n";
    let registry = Registry::parse(text, std::path::Path::new("r.yaml"), std::path::Path::new("/m"), |_| {
        None
    })
    .unwrap();
    let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
    factory
        .sizes
        .lock()
        .unwrap()
        .extend([("pinned".to_owned(), 60), ("other".to_owned(), 60)]);
    let svc =
        Arc::new(Service::new(registry, Arc::clone(&factory) as Arc<dyn PipelineFactory>).with_memory_budget(100));
    let _keeper = svc.spawn_keep_alive();
    svc.chat(chat_request("pinned"), CancellationToken::new())
        .await
        .unwrap()
        .collect_response()
        .await
        .unwrap();
    advance(Duration::from_secs(60)).await;
    assert!(svc.is_loaded("pinned"), "keep_alive 0 does not unload a pinned model");
    let err = svc.load("other", None).await.unwrap_err();
    assert!(err.message.contains("in use or pinned"), "{}", err.message);
    assert!(svc
        .models()
        .iter()
        .any(|m| m.id == "pinned" && m.pinned && m.expires_in_secs.is_none()));
}

#[tokio::test]
async fn invalid_requests_never_load_a_model() {
    let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
    let svc = service(Arc::clone(&factory));
    let err = svc
        .chat(
            ChatRequest {
                model: "fake-a".into(),
                ..ChatRequest::default()
            },
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.param.as_deref(), Some("messages"));
    assert_eq!(factory.loads.load(Ordering::SeqCst), 0);
}

#[tokio::test(start_paused = true)]
async fn failing_loads_open_the_breaker_then_a_probe_after_the_cooldown_closes_it() {
    let factory = Arc::new(FakeFactory::new(Script::text(&["ok"])));
    *factory.fail_loads.lock().unwrap() = Some(Error::unavailable("corrupt file"));
    let svc = service(Arc::clone(&factory));
    let circuit = |svc: &Service| svc.models().into_iter().find(|m| m.id == "fake-a").unwrap().circuit;
    for _ in 0..3 {
        svc.load("fake-a", None).await.unwrap_err();
    }
    // Each load went down the whole ladder, and counted once.
    assert_eq!(factory.loads.load(Ordering::SeqCst), 3 * 4);
    assert_eq!(circuit(&svc), crate::guards::BreakerState::Open);
    // Open: refused at once, without touching the model file again.
    let err = svc
        .chat(chat_request("fake-a"), CancellationToken::new())
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert!(err.message.contains("circuit breaker is open"), "{}", err.message);
    assert_eq!(err.retry_after_secs, Some(30));
    assert_eq!(factory.loads.load(Ordering::SeqCst), 3 * 4);
    // The file is fixed, other models serve, but 'fake-a' waits out its cooldown.
    *factory.fail_loads.lock().unwrap() = None;
    svc.chat(chat_request("fake-b"), CancellationToken::new())
        .await
        .unwrap();
    assert!(svc
        .chat(chat_request("fake-a"), CancellationToken::new())
        .await
        .is_err());

    // After the cooldown one probe goes through; it succeeds and closes it.
    advance(Duration::from_secs(31)).await;
    svc.chat(chat_request("fake-a"), CancellationToken::new())
        .await
        .unwrap()
        .collect_response()
        .await
        .unwrap();
    assert_eq!(circuit(&svc), crate::guards::BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn engine_errors_in_streams_count_against_the_breaker() {
    let factory = Arc::new(FakeFactory::new(Script {
        events: vec![ChatEvent::Error(Error::internal("decode failed"))],
        ..Script::text(&[])
    }));
    let svc = service(Arc::clone(&factory));
    for _ in 0..3 {
        let stream = svc
            .chat(chat_request("fake-a"), CancellationToken::new())
            .await
            .unwrap();
        stream.collect_response().await.unwrap_err();
    }
    let err = svc
        .chat(chat_request("fake-a"), CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.message.contains("failed 3 times in a row"), "{}", err.message);
}

#[tokio::test(start_paused = true)]
async fn requests_that_time_out_in_the_queue_are_overload_and_never_open_the_breaker() {
    let factory = Arc::new(FakeFactory::new(
        Script::text(&["late"]).with_delay(Duration::from_secs(300)),
    ));
    factory.pipeline.held_in_queue.store(true, Ordering::SeqCst);
    let svc = service(Arc::clone(&factory));
    for _ in 0..5 {
        let stream = svc
            .chat(chat_request("fake-a"), CancellationToken::new())
            .await
            .unwrap();
        let err = stream.collect_response().await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Overloaded, "{}", err.message);
        assert!(err.retry_after_secs.is_some());
    }
    assert_eq!(svc.breaker_state("fake-a"), (crate::guards::BreakerState::Closed, 0));
}

#[tokio::test(start_paused = true)]
async fn a_clients_own_tight_deadlines_never_open_the_breaker() {
    let factory = Arc::new(FakeFactory::new(
        Script::text(&["slow"]).with_delay(Duration::from_secs(5)),
    ));
    let svc = service(Arc::clone(&factory));
    let mut tight = crate::guards::GuardSettings::default();
    tight.deadlines.first_token_secs = Some(0.5);
    for _ in 0..5 {
        let mut request = chat_request("fake-a");
        request.params.guards = Some(tight);
        let stream = svc.chat(request, CancellationToken::new()).await.unwrap();
        let err = stream.collect_response().await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout, "{}", err.message);
    }
    assert_eq!(svc.breaker_state("fake-a"), (crate::guards::BreakerState::Closed, 0));
}

#[tokio::test(start_paused = true)]
async fn a_model_that_produces_nothing_in_its_own_deadline_opens_the_breaker() {
    let factory = Arc::new(FakeFactory::new(
        Script::text(&["never"]).with_delay(Duration::from_secs(500)),
    ));
    let svc = service(Arc::clone(&factory));
    for _ in 0..3 {
        let stream = svc
            .chat(chat_request("fake-a"), CancellationToken::new())
            .await
            .unwrap();
        let err = stream.collect_response().await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Timeout, "{}", err.message);
    }
    assert_eq!(svc.breaker_state("fake-a").0, crate::guards::BreakerState::Open);
}
