//! Every metric llmlab exports: names, help texts, units and buckets are
//! defined here and nowhere else. Code records through the functions below
//! (the `metrics` facade; the binary installs a Prometheus recorder), so no
//! caller ever spells a metric name.

use std::time::Duration;

use std::time::Instant;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Unit};

pub const REQUESTS: &str = "llmlab_requests_total";
pub const REQUEST_DURATION: &str = "llmlab_request_duration_seconds";
pub const GENERATION_DURATION: &str = "llmlab_generation_duration_seconds";
pub const JOBS: &str = "llmlab_jobs_total";
pub const TIME_TO_FIRST_TOKEN: &str = "llmlab_time_to_first_token_seconds";
pub const INTER_TOKEN_LATENCY: &str = "llmlab_inter_token_latency_seconds";
pub const PROMPT_TOKENS: &str = "llmlab_prompt_tokens_total";
pub const GENERATED_TOKENS: &str = "llmlab_generated_tokens_total";
pub const QUEUE_DEPTH: &str = "llmlab_queue_depth";
pub const ACTIVE_SEQUENCES: &str = "llmlab_active_sequences";
pub const MODEL_LOADS: &str = "llmlab_model_loads_total";
pub const MODEL_LOAD_FAILURES: &str = "llmlab_model_load_failures_total";
pub const MODEL_EVICTIONS: &str = "llmlab_model_evictions_total";
pub const MODEL_LOAD_DURATION: &str = "llmlab_model_load_duration_seconds";
pub const MODEL_MEMORY: &str = "llmlab_model_memory_bytes";
pub const MODEL_GPU_MEMORY: &str = "llmlab_model_gpu_memory_bytes";
pub const GUARD_TRIPS: &str = "llmlab_guard_trips_total";
pub const CIRCUIT_STATE: &str = "llmlab_circuit_breaker_state";

/// Buckets (seconds) for the latency histograms, chosen for LLM serving:
/// inter-token gaps of a few ms up to multi-minute generations.
pub fn buckets_for(name: &str) -> Option<&'static [f64]> {
    match name {
        INTER_TOKEN_LATENCY => Some(&[
            0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5,
        ]),
        TIME_TO_FIRST_TOKEN => Some(&[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]),
        // Requests at the doors include the quick ones (health, model
        // lists, embeddings), hence the millisecond buckets at the bottom.
        REQUEST_DURATION => Some(&[
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        ]),
        GENERATION_DURATION => Some(&[
            0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
        ]),
        MODEL_LOAD_DURATION => Some(&[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]),
        _ => None,
    }
}

/// Histogram names, for exporters that need buckets per metric.
pub const HISTOGRAMS: [&str; 5] = [
    REQUEST_DURATION,
    GENERATION_DURATION,
    TIME_TO_FIRST_TOKEN,
    INTER_TOKEN_LATENCY,
    MODEL_LOAD_DURATION,
];

/// Register help texts and units with the installed recorder.
pub fn describe() {
    describe_counter!(
        REQUESTS,
        "Finished requests by transport, route, model, HTTP-equivalent status and outcome."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "End-to-end time of a request at its door, from arrival to its last byte or frame."
    );
    describe_histogram!(
        GENERATION_DURATION,
        Unit::Seconds,
        "Generation time, from admission to the last event."
    );
    describe_counter!(
        JOBS,
        "Job-queue deliveries by queue and outcome: received, succeeded, requeued, dead_lettered."
    );
    describe_histogram!(
        TIME_TO_FIRST_TOKEN,
        Unit::Seconds,
        "Time from admission to the first generated text."
    );
    describe_histogram!(
        INTER_TOKEN_LATENCY,
        Unit::Seconds,
        "Time between consecutive pieces of generated text."
    );
    describe_counter!(PROMPT_TOKENS, "Prompt tokens processed.");
    describe_counter!(GENERATED_TOKENS, "Tokens generated.");
    describe_gauge!(QUEUE_DEPTH, "Requests waiting for a model's engine.");
    describe_gauge!(ACTIVE_SEQUENCES, "Sequences a model's engine is generating right now.");
    describe_counter!(MODEL_LOADS, "Successful model loads.");
    describe_counter!(MODEL_LOAD_FAILURES, "Failed model loads.");
    describe_counter!(
        MODEL_EVICTIONS,
        "Models unloaded to make room or after their keep-alive."
    );
    describe_histogram!(MODEL_LOAD_DURATION, Unit::Seconds, "Time to load a model.");
    describe_gauge!(MODEL_MEMORY, Unit::Bytes, "Memory held by a loaded model.");
    describe_gauge!(
        MODEL_GPU_MEMORY,
        Unit::Bytes,
        "GPU memory reserved for a model while it loads or is loaded (its estimate; 0 once unloaded)."
    );
    describe_counter!(GUARD_TRIPS, "Generations stopped by a guard, by guard kind.");
    describe_gauge!(
        CIRCUIT_STATE,
        "Circuit breaker per model: 0 closed, 1 half-open, 2 open."
    );
}

/// The HTTP-equivalent status of a request that its client abandoned
/// (closed the socket, dropped the stream, cancelled): nginx's 499.
pub const CLIENT_CLOSED: u16 = 499;

/// The coarse class of a status, for the latency histogram (where one
/// series per status code would multiply every bucket) and for error-rate
/// queries that should not list codes.
pub fn outcome(status: u16) -> &'static str {
    match status {
        CLIENT_CLOSED => "cancelled",
        400..=499 => "client_error",
        500.. => "server_error",
        _ => "ok",
    }
}

/// One request finished at a door. Every door (HTTP, WebSocket, gRPC,
/// job queue) calls this, through the server's `observe` module, so the
/// same labels mean the same thing whatever the transport. `route` and
/// `model` must come from bounded sets (routes of the door, registry ids
/// or "unknown"): callers never pass client text.
pub fn request_finished(transport: &str, route: &str, model: &str, status: u16, elapsed: Duration) {
    let outcome = outcome(status);
    counter!(
        REQUESTS,
        "transport" => transport.to_owned(),
        "route" => route.to_owned(),
        "model" => model.to_owned(),
        "status" => status.to_string(),
        "outcome" => outcome,
    )
    .increment(1);
    histogram!(
        REQUEST_DURATION,
        "transport" => transport.to_owned(),
        "route" => route.to_owned(),
        "model" => model.to_owned(),
        "outcome" => outcome,
    )
    .record(elapsed.as_secs_f64());
}

/// What happened to a job-queue delivery. Every delivery is `Received`
/// once and then ends as exactly one of the others (a broker failure
/// while settling counts as `Requeued`: the broker hands it back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEvent {
    Received,
    Succeeded,
    Requeued,
    DeadLettered,
}

impl JobEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Succeeded => "succeeded",
            Self::Requeued => "requeued",
            Self::DeadLettered => "dead_lettered",
        }
    }
}

/// `queue` is a queue the worker consumes (named by its configuration,
/// so bounded).
pub fn job_event(queue: &str, event: JobEvent) {
    counter!(JOBS, "queue" => queue.to_owned(), "outcome" => event.as_str()).increment(1);
}

pub fn generation_finished(model: &str, elapsed: Duration, prompt_tokens: u32, generated_tokens: u32) {
    histogram!(GENERATION_DURATION, "model" => model.to_owned()).record(elapsed.as_secs_f64());
    counter!(PROMPT_TOKENS, "model" => model.to_owned()).increment(u64::from(prompt_tokens));
    counter!(GENERATED_TOKENS, "model" => model.to_owned()).increment(u64::from(generated_tokens));
}

pub fn queue_depth(model: &str, depth: usize) {
    gauge!(QUEUE_DEPTH, "model" => model.to_owned()).set(depth as f64);
}

pub fn active_sequences(model: &str, active: usize) {
    gauge!(ACTIVE_SEQUENCES, "model" => model.to_owned()).set(active as f64);
}

pub fn model_loaded(model: &str, elapsed: Duration) {
    counter!(MODEL_LOADS, "model" => model.to_owned()).increment(1);
    histogram!(MODEL_LOAD_DURATION, "model" => model.to_owned()).record(elapsed.as_secs_f64());
}

pub fn model_load_failed(model: &str) {
    counter!(MODEL_LOAD_FAILURES, "model" => model.to_owned()).increment(1);
}

pub fn model_memory(model: &str, bytes: u64) {
    gauge!(MODEL_MEMORY, "model" => model.to_owned()).set(bytes as f64);
}

pub fn model_gpu_memory(model: &str, bytes: u64) {
    gauge!(MODEL_GPU_MEMORY, "model" => model.to_owned()).set(bytes as f64);
}

pub fn model_evicted(model: &str) {
    counter!(MODEL_EVICTIONS, "model" => model.to_owned()).increment(1);
}

pub fn circuit_state(model: &str, state: crate::guards::BreakerState) {
    gauge!(CIRCUIT_STATE, "model" => model.to_owned()).set(state.gauge());
}

pub fn guard_tripped(model: &str, kind: &'static str) {
    counter!(GUARD_TRIPS, "model" => model.to_owned(), "kind" => kind).increment(1);
}

/// Observes one generation stream and records its latencies and token
/// counts when the consumer receives the events (what the client sees).
pub struct GenerationMeter {
    model: String,
    started: Instant,
    last_text: Option<Instant>,
    usage: crate::Usage,
    // Resolved once per request: the inter-token histogram is hit per token.
    time_to_first_token: metrics::Histogram,
    inter_token_latency: metrics::Histogram,
}

impl std::fmt::Debug for GenerationMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationMeter")
            .field("model", &self.model)
            .finish_non_exhaustive()
    }
}

impl GenerationMeter {
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            started: Instant::now(),
            last_text: None,
            usage: crate::Usage::default(),
            time_to_first_token: histogram!(TIME_TO_FIRST_TOKEN, "model" => model.to_owned()),
            inter_token_latency: histogram!(INTER_TOKEN_LATENCY, "model" => model.to_owned()),
        }
    }
}

impl crate::StreamObserver for GenerationMeter {
    fn observe(&mut self, event: &crate::ChatEvent) {
        use crate::ChatEvent;
        match event {
            ChatEvent::Content(_) | ChatEvent::Reasoning(_) | ChatEvent::ToolCall(_) => {
                let now = Instant::now();
                match self.last_text {
                    None => self.time_to_first_token.record((now - self.started).as_secs_f64()),
                    Some(previous) => self.inter_token_latency.record((now - previous).as_secs_f64()),
                }
                self.last_text = Some(now);
            }
            ChatEvent::Usage { usage, .. } => self.usage = *usage,
            ChatEvent::Done { .. } | ChatEvent::Error(_) => generation_finished(
                &self.model,
                self.started.elapsed(),
                self.usage.prompt_tokens,
                self.usage.completion_tokens,
            ),
            ChatEvent::Stopped(trip) => guard_tripped(&self.model, trip.kind.stop_reason()),
            ChatEvent::Logprobs(_) | ChatEvent::Started => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_class_statuses_and_a_gone_client_is_its_own() {
        assert_eq!(outcome(200), "ok");
        assert_eq!(outcome(101), "ok");
        assert_eq!(outcome(400), "client_error");
        assert_eq!(outcome(429), "client_error");
        assert_eq!(outcome(CLIENT_CLOSED), "cancelled");
        assert_eq!(outcome(503), "server_error");
        let names: Vec<_> = [
            JobEvent::Received,
            JobEvent::Succeeded,
            JobEvent::Requeued,
            JobEvent::DeadLettered,
        ]
        .map(JobEvent::as_str)
        .into();
        assert_eq!(names, ["received", "succeeded", "requeued", "dead_lettered"]);
    }

    #[test]
    fn every_histogram_has_buckets() {
        for name in HISTOGRAMS {
            assert!(
                buckets_for(name).is_some_and(|b| b.windows(2).all(|w| w[0] < w[1])),
                "{name}"
            );
        }
    }
}
