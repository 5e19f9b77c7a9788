//! Deadlines on a generation: total time, time to the first output, and the
//! longest silence between outputs. A stream that runs out is cancelled (the
//! engine frees its slot) and ends with a clear reason: an error when nothing
//! was produced yet, else a `Stopped` event and `Done { stop }` so that the
//! client keeps what it already received.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{GuardKind, GuardTrip};
use crate::{ChatEvent, ChatStream, Error, ErrorKind, FinishReason};

/// Seconds; `None` (or `0` in a request) turns a deadline off.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeadlineSettings {
    pub total_secs: Option<f64>,
    /// From submission (queue wait included) to the first content.
    pub first_token_secs: Option<f64>,
    pub max_silence_secs: Option<f64>,
}

impl Default for DeadlineSettings {
    /// Generous enough for a long answer on a small CPU, short enough that
    /// a stuck request cannot hold a slot for half an hour.
    fn default() -> Self {
        Self {
            total_secs: Some(600.0),
            first_token_secs: Some(120.0),
            max_silence_secs: Some(60.0),
        }
    }
}

impl DeadlineSettings {
    pub fn validate(&self) -> crate::Result<()> {
        for (name, value) in [
            ("total_secs", self.total_secs),
            ("first_token_secs", self.first_token_secs),
            ("max_silence_secs", self.max_silence_secs),
        ] {
            if value.is_some_and(|v| !v.is_finite() || v < 0.0) {
                return Err(Error::invalid_param(
                    // Named as the request spells it, like the other guards.
                    format!("guards.deadlines.{name}"),
                    "must be a non-negative number of seconds (0 turns it off)",
                ));
            }
        }
        Ok(())
    }

    /// The first-token deadline, when one is set.
    pub fn first_token(&self) -> Option<Duration> {
        Self::get(self.first_token_secs)
    }

    /// The whole-request deadline, when one is set.
    pub fn total(&self) -> Option<Duration> {
        Self::get(self.total_secs)
    }

    fn get(value: Option<f64>) -> Option<Duration> {
        value.filter(|v| *v > 0.0).map(Duration::from_secs_f64)
    }

    fn is_off(&self) -> bool {
        [self.total_secs, self.first_token_secs, self.max_silence_secs]
            .into_iter()
            .all(|v| Self::get(v).is_none())
    }
}

/// Which deadline ran out first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    Total,
    FirstToken,
    Silence,
}

/// Called when a deadline ran out through the model's own fault.
pub type ModelFault = Box<dyn FnOnce() + Send>;

/// Forward `inner` through a task that enforces `settings`; cancelling
/// `cancel` stops the generation when a deadline passes. Must be called
/// inside a tokio runtime.
///
/// `on_model_fault` (the model's circuit breaker) hears only of expiries
/// that are the model's fault: a stall after output began, or no first
/// output although the engine had the whole allowance to itself after it
/// took the request. Time spent in the queue is overload (the request
/// fails with a 429), and a long answer cut by the total limit is nobody's
/// fault.
pub fn with_deadlines(
    mut inner: ChatStream,
    settings: DeadlineSettings,
    cancel: CancellationToken,
    on_model_fault: Option<ModelFault>,
) -> ChatStream {
    if settings.is_off() {
        return inner;
    }
    let total = DeadlineSettings::get(settings.total_secs);
    let first_token = DeadlineSettings::get(settings.first_token_secs);
    let silence = DeadlineSettings::get(settings.max_silence_secs);
    let (tx, outer) = ChatStream::channel();
    tokio::spawn(async move {
        let started = Instant::now();
        let mut last_output: Option<Instant> = None;
        // When the engine took the request; before that it only waited.
        let mut engine_started: Option<Instant> = None;
        loop {
            let candidates = [
                total.map(|d| (started + d, Expired::Total)),
                match last_output {
                    None => first_token.map(|d| (started + d, Expired::FirstToken)),
                    Some(at) => silence.map(|d| (at + d, Expired::Silence)),
                },
            ];
            let next = candidates.into_iter().flatten().min_by_key(|(at, _)| *at);
            let expire = async {
                match next {
                    Some((at, which)) => {
                        tokio::time::sleep_until(at).await;
                        which
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                event = inner.next_event() => {
                    let Some(event) = event else { return };
                    match event {
                        ChatEvent::Started => engine_started = Some(Instant::now()),
                        ChatEvent::Content(_) | ChatEvent::Reasoning(_) | ChatEvent::ToolCall(_) => {
                            last_output = Some(Instant::now());
                        }
                        _ => {}
                    }
                    let terminal = event.is_terminal();
                    if tx.send(event).is_err() || terminal {
                        return;
                    }
                }
                which = expire => {
                    cancel.cancel();
                    let elapsed = started.elapsed().as_secs_f64();
                    let produced = last_output.is_some();
                    // The allowance the engine had after it took the request.
                    let engine_had = engine_started.map(|at| at.elapsed());
                    let limit = match which {
                        Expired::Total => total,
                        Expired::FirstToken => first_token,
                        Expired::Silence => silence,
                    };
                    let whole_allowance = matches!((engine_had, limit), (Some(had), Some(limit)) if had >= limit);
                    let events = match which {
                        _ if engine_started.is_none() => vec![ChatEvent::Error(queued_too_long(elapsed))],
                        Expired::Silence => expired_events(which, elapsed, produced, &settings),
                        _ if produced => expired_events(which, elapsed, produced, &settings),
                        _ if !whole_allowance => vec![ChatEvent::Error(queued_too_long(elapsed))],
                        _ => expired_events(which, elapsed, produced, &settings),
                    };
                    let model_at_fault = engine_started.is_some()
                        && match which {
                            Expired::Silence => true,
                            Expired::FirstToken | Expired::Total => !produced && whole_allowance,
                        };
                    if let (true, Some(report)) = (model_at_fault, on_model_fault) {
                        report();
                    }
                    for event in events {
                        let _ = tx.send(event);
                    }
                    return;
                }
                () = tx.closed() => return,
            }
        }
    });
    outer
}

/// A deadline that ran out while the request waited for the engine, or
/// whose time the wait used up: the server is overloaded (429, retry
/// later), not failing. The hint to retry after about as long as this
/// request waited is the best the deadline task knows of the queue.
fn queued_too_long(elapsed: f64) -> Error {
    Error::new(
        ErrorKind::Overloaded,
        format!(
            "the request ran out of time after {elapsed:.1}s, most of it waiting in the model's queue; retry later"
        ),
    )
    .with_retry_after(elapsed.ceil().max(1.0) as u64)
}

fn expired_events(which: Expired, elapsed: f64, produced: bool, settings: &DeadlineSettings) -> Vec<ChatEvent> {
    let (limit, what) = match which {
        Expired::Total => (settings.total_secs, "the request's total time limit"),
        Expired::FirstToken => (settings.first_token_secs, "the time limit for the first token"),
        Expired::Silence => (settings.max_silence_secs, "the longest allowed silence between tokens"),
    };
    let detail = format!("{what} of {}s ran out after {elapsed:.1}s", limit.unwrap_or_default());
    if !produced {
        return vec![ChatEvent::Error(Error::new(ErrorKind::Timeout, detail))];
    }
    vec![
        ChatEvent::Stopped(GuardTrip {
            kind: GuardKind::Deadline,
            figure: elapsed,
            detail,
        }),
        ChatEvent::Done {
            finish_reason: FinishReason::Stop,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::ChatPipeline;
    use crate::testing::{FakeChatPipeline, Script};

    fn settings(total: f64, first: f64, silence: f64) -> DeadlineSettings {
        DeadlineSettings {
            total_secs: Some(total),
            first_token_secs: Some(first),
            max_silence_secs: Some(silence),
        }
    }

    async fn run(script: Script, deadlines: DeadlineSettings) -> (Vec<ChatEvent>, CancellationToken) {
        let pipeline = FakeChatPipeline::new(script);
        let cancel = CancellationToken::new();
        let inner = pipeline
            .chat(crate::testing::fake_resolved_chat("hi"), cancel.clone())
            .unwrap();
        let mut stream = with_deadlines(inner, deadlines, cancel.clone(), None);
        let mut events = Vec::new();
        while let Some(event) = stream.next_event().await {
            events.push(event);
        }
        (events, cancel)
    }

    #[tokio::test(start_paused = true)]
    async fn no_first_token_in_time_is_a_timeout_error() {
        let script = Script::text(&["late"]).with_delay(Duration::from_secs(30));
        let (events, cancel) = run(script, settings(600.0, 10.0, 60.0)).await;
        assert!(cancel.is_cancelled());
        match events.as_slice() {
            [ChatEvent::Started, ChatEvent::Error(e)] => {
                assert_eq!(e.kind, ErrorKind::Timeout);
                assert!(e.message.contains("first token of 10s"), "{}", e.message);
            }
            other => panic!("unexpected events {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silence_after_output_ends_with_the_reason_and_keeps_the_output() {
        let script = Script::text(&["a", "b", "c"]).with_delay(Duration::from_secs(5));
        let (events, cancel) = run(script, settings(600.0, 10.0, 4.0)).await;
        assert!(cancel.is_cancelled());
        assert!(
            matches!(&events[..2], [ChatEvent::Started, ChatEvent::Content(t)] if t == "a"),
            "{events:?}"
        );
        match &events[2..] {
            [ChatEvent::Stopped(trip), ChatEvent::Done {
                finish_reason: FinishReason::Stop,
            }] => {
                assert_eq!(trip.kind, GuardKind::Deadline);
                assert!(trip.detail.contains("silence"), "{}", trip.detail);
            }
            other => panic!("unexpected events {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_total_limit_stops_a_steady_stream() {
        let pieces: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        let pieces: Vec<&str> = pieces.iter().map(String::as_str).collect();
        let script = Script::text(&pieces).with_delay(Duration::from_secs(1));
        let (events, _) = run(script, settings(20.5, 10.0, 4.0)).await;
        let content = events.iter().filter(|e| matches!(e, ChatEvent::Content(_))).count();
        assert_eq!(content, 20);
        assert!(matches!(&events[content + 1], ChatEvent::Stopped(t) if t.detail.contains("total time")));
    }

    #[tokio::test(start_paused = true)]
    async fn running_out_of_time_in_the_queue_is_overload_not_timeout() {
        let pipeline = FakeChatPipeline::new(Script::text(&["late"]).with_delay(Duration::from_secs(30)));
        pipeline.held_in_queue.store(true, std::sync::atomic::Ordering::SeqCst);
        let cancel = CancellationToken::new();
        let inner = pipeline
            .chat(crate::testing::fake_resolved_chat("hi"), cancel.clone())
            .unwrap();
        let mut stream = with_deadlines(inner, settings(600.0, 10.0, 60.0), cancel.clone(), None);
        let mut events = Vec::new();
        while let Some(event) = stream.next_event().await {
            events.push(event);
        }
        assert!(cancel.is_cancelled());
        match events.as_slice() {
            [ChatEvent::Error(e)] => {
                assert_eq!(e.kind, ErrorKind::Overloaded);
                assert!(e.message.contains("queue"), "{}", e.message);
                assert_eq!(e.retry_after_secs, Some(10));
            }
            other => panic!("unexpected events {other:?}"),
        }
    }

    /// Plays `events` (each after `delay`), `Started` at once when
    /// `starts_at_once` (else only where the script has it), and says
    /// whether the model was blamed.
    async fn verdict(
        starts_at_once: bool,
        events: Vec<ChatEvent>,
        delay: Duration,
        deadlines: DeadlineSettings,
    ) -> (Vec<ChatEvent>, bool) {
        let pipeline = FakeChatPipeline::new(Script {
            events,
            delay,
            reject: None,
        });
        pipeline
            .held_in_queue
            .store(!starts_at_once, std::sync::atomic::Ordering::SeqCst);
        let cancel = CancellationToken::new();
        let inner = pipeline
            .chat(crate::testing::fake_resolved_chat("hi"), cancel.clone())
            .unwrap();
        let blamed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let report = std::sync::Arc::clone(&blamed);
        let fault: ModelFault = Box::new(move || report.store(true, std::sync::atomic::Ordering::SeqCst));
        let mut stream = with_deadlines(inner, deadlines, cancel, Some(fault));
        let mut seen = Vec::new();
        while let Some(event) = stream.next_event().await {
            seen.push(event);
        }
        (seen, blamed.load(std::sync::atomic::Ordering::SeqCst))
    }

    fn text(t: &str) -> ChatEvent {
        ChatEvent::Content(t.into())
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_models_own_overruns_are_blamed_on_it() {
        let second = Duration::from_secs(1);
        // A stall after output began: the model's fault.
        let (_, blamed) = verdict(true, vec![text("a"), text("b")], 5 * second, settings(600.0, 20.0, 4.0)).await;
        assert!(blamed, "a stall");
        // The engine took the request late (8 s of 10 gone in the queue) and
        // had no fair chance: overload, not the model's fault.
        let (events, blamed) = verdict(
            false,
            vec![ChatEvent::Started, text("a")],
            8 * second,
            settings(600.0, 10.0, 60.0),
        )
        .await;
        assert!(!blamed, "the queue used up the allowance");
        assert!(
            matches!(events.last(), Some(ChatEvent::Error(e)) if e.kind == ErrorKind::Overloaded),
            "{events:?}"
        );
        // The engine had its whole allowance and produced nothing: blamed.
        let (events, blamed) = verdict(true, vec![text("a")], 30 * second, settings(600.0, 10.0, 60.0)).await;
        assert!(blamed, "no first token in a whole allowance");
        assert!(
            matches!(events.last(), Some(ChatEvent::Error(e)) if e.kind == ErrorKind::Timeout),
            "{events:?}"
        );
        // A long answer cut by the total limit: nobody's fault.
        let many: Vec<ChatEvent> = (0..50).map(|_| text("x")).collect();
        let (events, blamed) = verdict(true, many, second, settings(10.5, 10.0, 4.0)).await;
        assert!(!blamed, "a long answer");
        assert!(events.iter().any(|e| matches!(e, ChatEvent::Stopped(_))), "{events:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_within_its_limits_is_untouched() {
        let script = Script::text(&["a", "b"]).with_delay(Duration::from_secs(1));
        let (events, cancel) = run(script, DeadlineSettings::default()).await;
        assert!(!cancel.is_cancelled());
        assert!(matches!(
            events.last(),
            Some(ChatEvent::Done {
                finish_reason: FinishReason::Stop
            })
        ));
        assert_eq!(events.len(), 5);
    }
}
