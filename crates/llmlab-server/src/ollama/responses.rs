//! Ollama's answers for `/api/chat` and `/api/generate`: one JSON object,
//! or NDJSON lines (one object per line, the last with `done: true` and
//! the timing fields, in nanoseconds). Built from core's event stream, so
//! streamed and whole answers cannot disagree.

use std::time::{Duration, Instant};

use futures::Stream;
use serde_json::{json, Map, Value};

use llmlab_core::{
    ChatEvent, ChatResponse, ChatResponseBuilder, ChatStream, Error, ErrorKind, FinishReason, Timings, ToolCall, Usage,
};

use super::errors;
use super::request::Delivery;

/// Which endpoint the answer is for: chat answers carry a `message`,
/// generate answers a `response` text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Generate,
}

/// Now, as Ollama writes `created_at` (RFC 3339, UTC, nanoseconds).
pub fn created_at() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

/// Ollama's `done_reason`. A reply of tool calls ends with "stop" there:
/// the calls are in the message.
pub fn done_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::ToolCalls | FinishReason::Cancelled => "stop",
    }
}

fn nanos(ms: f64) -> u64 {
    (ms.max(0.0) * 1e6) as u64
}

/// A tool call in Ollama's shape: the arguments as an object, where core
/// (OpenAI's shape) carries a JSON text. Ollama's clients require an
/// object, so arguments that are not one (a model that wrote broken JSON)
/// become `{}`, with a warning in the log.
pub fn tool_call_json(call: &ToolCall) -> Value {
    let arguments = match serde_json::from_str::<Value>(&call.function.arguments) {
        Ok(object @ Value::Object(_)) => object,
        _ if call.function.arguments.trim().is_empty() => json!({}),
        _ => {
            tracing::warn!(tool = %call.function.name, "tool call arguments are not a JSON object; sent as {{}}");
            json!({})
        }
    };
    json!({"function": {"name": call.function.name, "arguments": arguments}})
}

/// The identity and clock of one answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub endpoint: Endpoint,
    /// The model name as the client gave it (Ollama echoes it).
    pub model: String,
    pub delivery: Delivery,
    /// When the request arrived: `total_duration` runs from here.
    pub started: Instant,
    /// Time until the service handed back a stream: resolving the request
    /// and, when the model was not loaded, loading it.
    pub load: Duration,
}

impl Answer {
    fn line(&self, done: bool) -> Map<String, Value> {
        let mut line = Map::new();
        line.insert("model".into(), json!(self.model));
        line.insert("created_at".into(), json!(created_at()));
        if self.endpoint == Endpoint::Generate {
            line.insert("response".into(), json!(""));
        }
        line.insert("done".into(), json!(done));
        line
    }

    /// A line with `message` (chat) or `response` (generate) parts.
    fn partial(
        &self,
        content: &str,
        thinking: Option<&str>,
        tool_calls: &[ToolCall],
        done: bool,
    ) -> Map<String, Value> {
        let mut line = self.line(done);
        match self.endpoint {
            Endpoint::Chat => {
                let mut message = Map::new();
                message.insert("role".into(), json!("assistant"));
                message.insert("content".into(), json!(content));
                if let Some(thinking) = thinking {
                    message.insert("thinking".into(), json!(thinking));
                }
                if !tool_calls.is_empty() {
                    let calls: Vec<Value> = tool_calls.iter().map(tool_call_json).collect();
                    message.insert("tool_calls".into(), Value::Array(calls));
                }
                line.insert("message".into(), Value::Object(message));
            }
            Endpoint::Generate => {
                line.insert("response".into(), json!(content));
                if let Some(thinking) = thinking {
                    line.insert("thinking".into(), json!(thinking));
                }
            }
        }
        line
    }

    pub fn content(&self, text: &str) -> Value {
        Value::Object(self.partial(text, None, &[], false))
    }

    /// Reasoning, unless the request said `think: false`.
    pub fn thinking(&self, text: &str) -> Option<Value> {
        self.delivery
            .sends_reasoning()
            .then(|| Value::Object(self.partial("", Some(text), &[], false)))
    }

    /// The finished tool calls, in one line before the last (Ollama sends
    /// each call whole, never as fragments of its arguments).
    pub fn tool_calls(&self, calls: &[ToolCall]) -> Option<Value> {
        (self.endpoint == Endpoint::Chat && !calls.is_empty())
            .then(|| Value::Object(self.partial("", None, calls, false)))
    }

    fn finish(&self, mut line: Map<String, Value>, reason: &str, usage: &Usage, timings: &Timings) -> Value {
        let total = self.started.elapsed();
        line.insert("done_reason".into(), json!(reason));
        line.insert("total_duration".into(), json!(total.as_nanos() as u64));
        line.insert("load_duration".into(), json!(self.load.as_nanos() as u64));
        line.insert("prompt_eval_count".into(), json!(usage.prompt_tokens));
        line.insert("prompt_eval_duration".into(), json!(nanos(timings.prompt_ms)));
        line.insert("eval_count".into(), json!(usage.completion_tokens));
        line.insert("eval_duration".into(), json!(nanos(timings.generation_ms)));
        Value::Object(line)
    }

    /// The last line of a stream: nothing new to say, `done` and the figures.
    pub fn done(&self, reason: FinishReason, usage: &Usage, timings: &Timings) -> Value {
        self.finish(self.partial("", None, &[], true), done_reason(reason), usage, timings)
    }

    /// The whole answer (`stream: false`).
    pub fn whole(&self, response: &ChatResponse) -> Value {
        let thinking = response
            .reasoning
            .as_deref()
            .filter(|_| self.delivery.sends_reasoning());
        let line = self.partial(&response.content, thinking, &response.tool_calls, true);
        self.finish(
            line,
            done_reason(response.finish_reason),
            &response.usage,
            &response.timings,
        )
    }

    /// The answer to a body with nothing to generate from: the model was
    /// loaded (`"load"`) or unloaded (`"unload"`), as Ollama answers.
    pub fn lifecycle(&self, reason: &'static str) -> Value {
        let mut line = self.partial("", None, &[], true);
        line.insert("done_reason".into(), json!(reason));
        Value::Object(line)
    }
}

/// Core's events as Ollama's NDJSON objects (the door adds the newlines).
/// Exactly one terminal line: the `done` one, or `{"error": ...}`.
/// Dropping the stream (the client went away) drops the core stream,
/// which stops the generation.
pub fn ndjson_lines(mut events: ChatStream, answer: Answer) -> impl Stream<Item = Value> {
    async_stream::stream! {
        // Tool calls are gathered as core folds them for whole answers.
        let mut calls = ChatResponseBuilder::default();
        let mut measured: Option<(Usage, Timings)> = None;
        while let Some(event) = events.next_event().await {
            match event {
                ChatEvent::Started | ChatEvent::Logprobs(_) | ChatEvent::Stopped(_) => {}
                ChatEvent::Content(text) => yield answer.content(&text),
                ChatEvent::Reasoning(text) => {
                    if let Some(line) = answer.thinking(&text) {
                        yield line;
                    }
                }
                ChatEvent::ToolCall(delta) => calls.push(ChatEvent::ToolCall(delta)),
                ChatEvent::Usage { usage, timings } => measured = Some((usage, timings)),
                ChatEvent::Done { finish_reason: FinishReason::Cancelled } => {
                    // The client still reads, so the server cancelled (shutdown).
                    let error = Error::new(ErrorKind::Cancelled, "the request was cancelled: the server is shutting down");
                    yield errors::body(&error);
                    break;
                }
                ChatEvent::Done { finish_reason } => {
                    calls.push(ChatEvent::Done { finish_reason });
                    let tool_calls = std::mem::take(&mut calls).finish().map(|r| r.tool_calls).unwrap_or_default();
                    if let Some(line) = answer.tool_calls(&tool_calls) {
                        yield line;
                    }
                    let (usage, timings) = measured.unwrap_or_default();
                    yield answer.done(finish_reason, &usage, &timings);
                    break;
                }
                ChatEvent::Error(error) => {
                    tracing::warn!(error = %error, "generation failed after streaming began");
                    yield errors::body(&error);
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use llmlab_core::ToolCallDelta;

    fn answer(endpoint: Endpoint, think: Option<bool>) -> Answer {
        Answer {
            endpoint,
            model: "m:latest".into(),
            delivery: Delivery { stream: true, think },
            started: Instant::now(),
            load: Duration::from_millis(5),
        }
    }

    fn finished(reason: FinishReason) -> [ChatEvent; 2] {
        let timings = Timings {
            prompt_ms: 2.0,
            generation_ms: 3.5,
            ..Timings::default()
        };
        [
            ChatEvent::Usage {
                usage: Usage::new(7, 2),
                timings,
            },
            ChatEvent::Done { finish_reason: reason },
        ]
    }

    async fn lines(events: Vec<ChatEvent>, answer: Answer) -> Vec<Value> {
        ndjson_lines(ChatStream::from_events(events), answer).collect().await
    }

    #[tokio::test]
    async fn chat_lines_end_with_the_figures_in_nanoseconds() {
        let mut events = vec![
            ChatEvent::Started,
            ChatEvent::Content("Hel".into()),
            ChatEvent::Content("lo".into()),
        ];
        events.extend(finished(FinishReason::Length));
        let lines = lines(events, answer(Endpoint::Chat, None)).await;
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["message"], json!({"role": "assistant", "content": "Hel"}));
        assert_eq!(lines[0]["done"], json!(false));
        assert_eq!(lines[0]["model"], "m:latest");
        assert!(chrono::DateTime::parse_from_rfc3339(lines[0]["created_at"].as_str().unwrap()).is_ok());
        let last = &lines[2];
        assert_eq!(
            (last["done"].clone(), last["done_reason"].clone()),
            (json!(true), json!("length"))
        );
        assert_eq!(
            (last["prompt_eval_count"].as_u64(), last["eval_count"].as_u64()),
            (Some(7), Some(2))
        );
        assert_eq!(last["prompt_eval_duration"], json!(2_000_000));
        assert_eq!(last["eval_duration"], json!(3_500_000));
        assert_eq!(last["load_duration"], json!(5_000_000));
        assert!(last["total_duration"].as_u64().is_some());
    }

    #[tokio::test]
    async fn tool_calls_arrive_whole_with_object_arguments() {
        let delta = |id: Option<&str>, name: Option<&str>, args: &str| {
            ChatEvent::ToolCall(ToolCallDelta {
                index: 0,
                id: id.map(str::to_owned),
                name: name.map(str::to_owned),
                arguments: args.into(),
            })
        };
        let mut events = vec![
            delta(Some("c"), Some("get_weather"), "{\"city\":"),
            delta(None, None, "\"Paris\"}"),
        ];
        events.extend(finished(FinishReason::ToolCalls));
        let lines = lines(events, answer(Endpoint::Chat, None)).await;
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[0]["message"]["tool_calls"],
            json!([{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}])
        );
        assert_eq!(lines[1]["done_reason"], "stop");
    }

    #[tokio::test]
    async fn reasoning_is_dropped_when_think_is_false_and_errors_end_the_stream() {
        let events = vec![
            ChatEvent::Reasoning("hmm".into()),
            ChatEvent::Content("ok".into()),
            ChatEvent::Error(Error::unavailable("engine gone")),
        ];
        let quiet = lines(events.clone(), answer(Endpoint::Generate, Some(false))).await;
        assert_eq!(quiet.len(), 2);
        assert_eq!(quiet[0]["response"], "ok");
        assert_eq!(quiet[1], json!({"error": "engine gone"}));
        let told = lines(events, answer(Endpoint::Generate, Some(true))).await;
        assert_eq!(
            (told[0]["thinking"].clone(), told[0]["response"].clone()),
            (json!("hmm"), json!(""))
        );
    }

    #[test]
    fn whole_answers_and_lifecycle_answers() {
        let a = answer(Endpoint::Generate, None);
        let response = ChatResponse {
            content: "Paris".into(),
            reasoning: Some("easy".into()),
            tool_calls: Vec::new(),
            finish_reason: FinishReason::Stop,
            usage: Usage::new(3, 1),
            timings: Timings::default(),
            logprobs: None,
            stopped_by: None,
        };
        let whole = a.whole(&response);
        assert_eq!(
            (whole["response"].clone(), whole["thinking"].clone()),
            (json!("Paris"), json!("easy"))
        );
        assert_eq!(
            (whole["done"].clone(), whole["done_reason"].clone()),
            (json!(true), json!("stop"))
        );
        let loaded = answer(Endpoint::Chat, None).lifecycle("load");
        assert_eq!(loaded["done_reason"], "load");
        assert_eq!(loaded["message"]["content"], "");
        let broken = ToolCall {
            id: "c".into(),
            kind: "function".into(),
            function: llmlab_core::FunctionCall {
                name: "f".into(),
                arguments: "{oops".into(),
            },
        };
        assert_eq!(tool_call_json(&broken)["function"]["arguments"], json!({}));
    }
}
