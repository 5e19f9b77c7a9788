//! Continuous batching on the real default model: concurrent requests share
//! decode steps; a batch-invariant request gets exactly what it gets alone.

mod common;

use std::sync::OnceLock;

use tokio_util::sync::CancellationToken;

use common::ResolveFirst;
use llmlab_core::{ChatEvent, ChatMessage, ChatRequest, ChatStream, FinishReason, GenerationParams, SamplingParams};
use llmlab_llama::LlamaChatPipeline;

const MODEL: &str = "qwen2.5-coder-0.5b";
const PARALLEL: u32 = 8;
static PIPELINE: OnceLock<LlamaChatPipeline> = OnceLock::new();

/// The default model with eight sequence slots.
fn model() -> &'static LlamaChatPipeline {
    PIPELINE.get_or_init(|| {
        let mut spec = common::spec(MODEL);
        let llama = spec.backend.llama_mut().expect("a llama model");
        llama.parallel = PARALLEL;
        llama.context_size = 1024;
        LlamaChatPipeline::load(&spec).expect("model loads")
    })
}

const QUESTIONS: [&str; 8] = [
    "Name three prime numbers.",
    "Write a Python function that reverses a string.",
    "What is the capital of France? Answer in one sentence.",
    "Explain recursion to a child in two sentences.",
    "List the planets of the solar system.",
    "Write a haiku about the sea.",
    "What does HTTP stand for?",
    "Give a SQL query that counts the rows of a table named users.",
];

/// How a request asks to be batched.
#[derive(Clone, Copy)]
enum Mode {
    /// llama.cpp's batched kernels over every sequence together (the default).
    Batched,
    /// `batch_invariant: true`: decoded as if alone.
    Invariant,
}

fn greedy_request(question: &str, max_tokens: u32, mode: Mode) -> ChatRequest {
    ChatRequest {
        model: MODEL.into(),
        messages: vec![ChatMessage::user(question)],
        tools: Vec::new(),
        tool_choice: Default::default(),
        params: GenerationParams {
            sampling: SamplingParams {
                temperature: Some(0.0),
                ..SamplingParams::default()
            },
            max_tokens: Some(max_tokens),
            batch_invariant: Some(matches!(mode, Mode::Invariant)),
            ..GenerationParams::default()
        },
        keep_alive: None,
    }
}

fn start(question: &str, max_tokens: u32, mode: Mode) -> ChatStream {
    model()
        .chat_request(greedy_request(question, max_tokens, mode), CancellationToken::new())
        .expect("request accepted")
}

fn answer_alone(question: &str, max_tokens: u32) -> String {
    start(question, max_tokens, Mode::Invariant)
        .collect_blocking()
        .expect("generation succeeds")
        .content
}

/// Wait for a stream's first piece of content; it is part of the answer.
fn first_content(stream: &mut ChatStream) -> String {
    loop {
        match stream.blocking_next().expect("stream open") {
            ChatEvent::Content(text) => return text,
            ChatEvent::Started | ChatEvent::Reasoning(_) | ChatEvent::Logprobs(_) => {}
            other => panic!("unexpected event before content: {other:?}"),
        }
    }
}

fn rest_of(mut stream: ChatStream) -> (String, FinishReason) {
    let mut text = String::new();
    while let Some(event) = stream.blocking_next() {
        match event {
            ChatEvent::Content(piece) => text.push_str(&piece),
            ChatEvent::Done { finish_reason } => return (text, finish_reason),
            ChatEvent::Error(e) => panic!("generation failed: {e}"),
            _ => {}
        }
    }
    panic!("stream ended without a terminal event")
}

#[test]
fn concurrent_invariant_streams_equal_the_same_requests_run_alone() {
    let _turn = common::serial();
    let max_tokens = 48;
    let alone: Vec<String> = QUESTIONS.iter().map(|q| answer_alone(q, max_tokens)).collect();
    assert!(alone.iter().all(|a| !a.is_empty()));

    // Each request joins while the ones before it are already decoding, so
    // steps mix prompt chunks with generated tokens and admission happens
    // between decode steps, not only when the engine is idle.
    let mut streams = Vec::new();
    let mut heads = Vec::new();
    for question in QUESTIONS {
        let mut stream = start(question, max_tokens, Mode::Invariant);
        heads.push(first_content(&mut stream));
        streams.push(stream);
    }
    let together: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = streams
            .into_iter()
            .zip(heads)
            .map(|(stream, head)| {
                scope.spawn(move || {
                    let (rest, finish) = rest_of(stream);
                    assert!(matches!(finish, FinishReason::Stop | FinishReason::Length));
                    head + &rest
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("reader thread")).collect()
    });
    for ((question, alone), together) in QUESTIONS.iter().zip(&alone).zip(&together) {
        assert_eq!(alone, together, "batching changed the greedy answer to {question:?}");
    }
}

#[test]
fn eight_batched_streams_all_complete_with_sensible_text() {
    let _turn = common::serial();
    let streams: Vec<ChatStream> = QUESTIONS.iter().map(|q| start(q, 48, Mode::Batched)).collect();
    let answers: Vec<String> = streams
        .into_iter()
        .map(|stream| {
            let response = stream.collect_blocking().expect("generation succeeds");
            assert!(matches!(
                response.finish_reason,
                FinishReason::Stop | FinishReason::Length
            ));
            response.content
        })
        .collect();
    assert!(
        answers.iter().all(|a| a.split_whitespace().count() >= 3),
        "{answers:#?}"
    );
    assert!(answers[2].contains("Paris"), "{}", answers[2]);
    assert!(
        answers[6].contains("Hypertext") || answers[6].contains("HyperText"),
        "{}",
        answers[6]
    );
}

#[test]
fn more_requests_than_slots_wait_and_all_complete() {
    let _turn = common::serial();
    let streams: Vec<ChatStream> = (0..PARALLEL as usize + 4)
        .map(|i| start(QUESTIONS[i % QUESTIONS.len()], 8, Mode::Batched))
        .collect();
    for stream in streams {
        let response = stream.collect_blocking().expect("generation succeeds");
        assert!(!response.content.is_empty());
        assert!(response.usage.completion_tokens <= 8);
    }
}

#[test]
fn cancelling_one_stream_leaves_the_others_untouched() {
    let _turn = common::serial();
    let max_tokens = 32;
    let alone = answer_alone(QUESTIONS[1], max_tokens);

    let cancel = CancellationToken::new();
    let mut doomed = model()
        .chat_request(greedy_request(QUESTIONS[3], 400, Mode::Batched), cancel.clone())
        .expect("request accepted");
    first_content(&mut doomed);
    let survivor = start(QUESTIONS[1], max_tokens, Mode::Invariant);
    cancel.cancel();
    let (_, finish) = rest_of(doomed);
    assert_eq!(finish, FinishReason::Cancelled);
    let response = survivor.collect_blocking().expect("generation succeeds");
    assert_eq!(response.content, alone);
}

#[test]
fn a_prompt_starts_from_the_prefix_another_running_slot_holds() {
    let _turn = common::serial();
    // A system prompt no earlier test used, long enough to be worth a copy.
    let system = "You are a terse assistant for the harbour office of Port Aldwyn. ".repeat(12);
    let ask = |question: &str, max_tokens: u32| {
        let mut request = greedy_request(question, max_tokens, Mode::Batched);
        request.messages.insert(0, ChatMessage::system(system.clone()));
        model()
            .chat_request(request, CancellationToken::new())
            .expect("request accepted")
    };
    let mut running = ask("Name three prime numbers.", 64);
    first_content(&mut running);
    // `running` holds the system prompt in its slot; this request takes
    // another slot and gets the shared prefix copied instead of recomputed.
    let shared = ask("What does HTTP stand for?", 24)
        .collect_blocking()
        .expect("generation succeeds");
    assert!(
        shared.usage.cached_tokens >= 100,
        "only {} of {} prompt tokens came from the cache",
        shared.usage.cached_tokens,
        shared.usage.prompt_tokens
    );
    assert!(
        shared.content.contains("Hypertext") || shared.content.contains("HyperText"),
        "{}",
        shared.content
    );
    let (_, finish) = rest_of(running);
    assert!(matches!(finish, FinishReason::Stop | FinishReason::Length));
}
