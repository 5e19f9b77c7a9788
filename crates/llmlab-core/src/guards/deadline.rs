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
                    format!("deadlines.{name}"),
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

/// Forward `inner` through a task that enforces `settings`; cancelling
/// `cancel` stops the generation when a deadline passes. Must be called
/// inside a tokio runtime.
pub fn with_deadlines(mut inner: ChatStream, settings: DeadlineSettings, cancel: CancellationToken) -> ChatStream {
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
        // Whether the engine took the request; before that it only waited.
        let mut engine_started = false;
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
                        ChatEvent::Started => engine_started = true,
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
                    let events = if engine_started {
                        expired_events(which, elapsed, last_output.is_some(), &settings)
                    } else {
                        vec![ChatEvent::Error(queued_too_long(elapsed))]
                    };
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

/// A deadline that ran out while the request still waited for the engine:
/// the server is overloaded (429, retry later), not failing; the model's
/// breaker does not count it.
fn queued_too_long(elapsed: f64) -> Error {
    Error::new(
        ErrorKind::Overloaded,
        format!("the request waited {elapsed:.1}s in the model's queue and ran out of time before it could start; retry later"),
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
        let inner = pipeline.chat(crate::ChatRequest::default(), cancel.clone()).unwrap();
        let mut stream = with_deadlines(inner, deadlines, cancel.clone());
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
        let inner = pipeline.chat(crate::ChatRequest::default(), cancel.clone()).unwrap();
        let mut stream = with_deadlines(inner, settings(600.0, 10.0, 60.0), cancel.clone());
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
