//! A base model without a chat template (Gemma 3 270M): chat is refused with
//! a clear error, plain completion works.

mod common;

use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

use common::ResolveFirst;
use llmlab_core::{
    ChatMessage, ChatRequest, CompletionRequest, ErrorKind, FinishReason, GenerationParams, SamplingParams,
};
use llmlab_llama::LlamaChatPipeline;

const MODEL: &str = "gemma-3-270m";
static PIPELINE: OnceLock<LlamaChatPipeline> = OnceLock::new();

#[test]
fn chat_without_a_template_is_a_clear_error() {
    let _turn = common::serial();
    let model = common::pipeline(&PIPELINE, MODEL);
    assert!(!model.has_chat_template());
    let err = model
        .chat_request(
            ChatRequest {
                model: MODEL.into(),
                messages: vec![ChatMessage::user("hi")],
                ..ChatRequest::default()
            },
            CancellationToken::new(),
        )
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::InvalidRequest);
    assert!(
        err.message.contains("no chat template") && err.message.contains("chat_template"),
        "{}",
        err.message
    );
}

#[test]
fn plain_completion_works_and_is_deterministic() {
    let _turn = common::serial();
    let model = common::pipeline(&PIPELINE, MODEL);
    let request = CompletionRequest {
        model: MODEL.into(),
        prompt: "1, 2, 3, 4, 5,".into(),
        params: GenerationParams {
            sampling: SamplingParams {
                temperature: Some(0.0),
                ..SamplingParams::default()
            },
            max_tokens: Some(8),
            // Repeatable: the second run must not start from the first's
            // cached prefix (see `batch_invariant`).
            batch_invariant: Some(true),
            ..GenerationParams::default()
        },
        keep_alive: None,
    };
    let a = model
        .complete_request(request.clone(), CancellationToken::new())
        .unwrap()
        .collect_blocking()
        .unwrap();
    let b = model
        .complete_request(request, CancellationToken::new())
        .unwrap()
        .collect_blocking()
        .unwrap();
    assert_eq!(a.content, b.content);
    assert!(a.content.starts_with(" 6, 7"), "{:?}", a.content);
    assert!(matches!(a.finish_reason, FinishReason::Length | FinishReason::Stop));
}

#[test]
fn a_full_queue_is_refused_as_overloaded() {
    let _turn = common::serial();
    let mut spec = common::spec(MODEL);
    spec.max_queue = 1;
    // One slot: with more, the batcher can admit the second request to a
    // free slot before the third arrives, and nothing waits (seen on CI).
    spec.backend.llama_mut().unwrap().parallel = 1;
    let model = LlamaChatPipeline::load(&spec).unwrap();
    let long = || CompletionRequest {
        model: MODEL.into(),
        prompt: "Once upon a time".into(),
        params: GenerationParams {
            max_tokens: Some(500),
            ignore_eos: true,
            ..GenerationParams::default()
        },
        keep_alive: None,
    };
    let mut running = model.complete_request(long(), CancellationToken::new()).unwrap();
    // Once the first request produces text it has left the queue.
    assert!(running.blocking_next().is_some());
    let waiting = model.complete_request(long(), CancellationToken::new()).unwrap();
    let err = model.complete_request(long(), CancellationToken::new()).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Overloaded);
    assert!(err.retry_after_secs.is_some());
    drop((running, waiting));
}
