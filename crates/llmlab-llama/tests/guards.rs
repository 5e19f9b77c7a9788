//! Repetition and perplexity guards on the real default model.

mod common;

use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

use common::ResolveFirst;
use llmlab_core::guards::GuardKind;
use llmlab_core::{ChatResponse, CompletionRequest, FinishReason, GenerationParams, SamplingParams};
use llmlab_llama::LlamaChatPipeline;

const MODEL: &str = "qwen2.5-coder-0.5b";
static PIPELINE: OnceLock<LlamaChatPipeline> = OnceLock::new();

fn complete(prompt: &str, sampling: SamplingParams, max_tokens: u32) -> ChatResponse {
    let request = CompletionRequest {
        model: MODEL.into(),
        prompt: prompt.into(),
        params: GenerationParams {
            sampling,
            max_tokens: Some(max_tokens),
            ..GenerationParams::default()
        },
        keep_alive: None,
    };
    common::pipeline(&PIPELINE, MODEL)
        .complete_request(request, CancellationToken::new())
        .expect("request accepted")
        .collect_blocking()
        .expect("generation succeeds")
}

fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: Some(0.0),
        ..SamplingParams::default()
    }
}

/// Sampling from the whole flattened distribution: no top-k, top-p or
/// min-p to keep the draw on plausible tokens.
fn noisy() -> SamplingParams {
    SamplingParams {
        temperature: Some(2.0),
        top_k: Some(0),
        top_p: Some(1.0),
        min_p: Some(0.0),
        seed: Some(42),
        ..SamplingParams::default()
    }
}

const LOOPING_PROMPT: &str = "ping pong ping pong ping pong ping pong ping pong ping pong ping pong";

#[test]
fn a_greedy_loop_trips_the_repetition_guard_long_before_max_tokens() {
    let _turn = common::serial();
    let response = complete(LOOPING_PROMPT, greedy(), 400);
    let trip = response.stopped_by.expect("the loop is stopped by a guard");
    assert_eq!(trip.kind, GuardKind::Repetition, "{trip:?}");
    assert_eq!(response.finish_reason, FinishReason::Stop);
    assert!(
        response.usage.completion_tokens < 120,
        "stopped only after {} tokens",
        response.usage.completion_tokens
    );
}

#[test]
fn noise_trips_the_perplexity_guard_and_the_same_prompt_at_temperature_zero_does_not() {
    let _turn = common::serial();
    let prompt = "Write a short paragraph about the history of bread.";
    let noise = complete(prompt, noisy(), 200);
    let trip = noise.stopped_by.expect("noise is stopped by a guard");
    assert_eq!(trip.kind, GuardKind::Perplexity, "{trip:?}: {}", noise.content);
    assert!(trip.figure > 6.0);
    assert!(noise.usage.completion_tokens < 200);

    // Greedy text is what the model finds likely: the perplexity guard
    // leaves it alone. (This small base model may still fall into a loop,
    // which is the repetition guard's to stop.)
    let calm = complete(prompt, greedy(), 120);
    assert!(
        calm.stopped_by
            .as_ref()
            .is_none_or(|trip| trip.kind != GuardKind::Perplexity),
        "{:?}: {}",
        calm.stopped_by,
        calm.content
    );
}
