//! JSON shapes of answers: whole responses and stream chunks, for chat
//! (`chat.completion[.chunk]`) and text completion (`text_completion`).

use serde_json::{json, Map, Value};

use llmlab_core::guards::GuardTrip;
use llmlab_core::{ChatResponse, FinishReason, TokenLogprob, ToolCallDelta, Usage};

use super::request::{chat_logprobs_json, completion_logprobs_json, usage_json, ResponseMeta};

/// Which OpenAI endpoint the answer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completion,
}

impl Endpoint {
    pub fn id_prefix(self) -> &'static str {
        match self {
            Self::Chat => "chatcmpl",
            Self::Completion => "cmpl",
        }
    }

    fn chunk_object(self) -> &'static str {
        match self {
            Self::Chat => "chat.completion.chunk",
            Self::Completion => "text_completion",
        }
    }
}

/// The whole (non-streaming) answer.
pub fn full_response(endpoint: Endpoint, meta: &ResponseMeta, response: &ChatResponse) -> Value {
    let finish_reason = response.finish_reason.as_str();
    let choice = match endpoint {
        Endpoint::Chat => {
            let mut message = Map::new();
            message.insert("role".into(), json!("assistant"));
            let content = if response.content.is_empty() && !response.tool_calls.is_empty() {
                Value::Null
            } else {
                json!(response.content)
            };
            message.insert("content".into(), content);
            if let Some(reasoning) = &response.reasoning {
                message.insert("reasoning_content".into(), json!(reasoning));
            }
            if !response.tool_calls.is_empty() {
                message.insert("tool_calls".into(), json!(response.tool_calls));
            }
            let logprobs = response.logprobs.as_deref().map_or(Value::Null, chat_logprobs_json);
            json!({"index": 0, "message": message, "logprobs": logprobs, "finish_reason": finish_reason})
        }
        Endpoint::Completion => {
            let logprobs = response
                .logprobs
                .as_deref()
                .map_or(Value::Null, |l| completion_logprobs_json(l, 0));
            json!({"index": 0, "text": response.content, "logprobs": logprobs, "finish_reason": finish_reason})
        }
    };
    let mut choice = choice;
    mark_guard_stop(&mut choice, response.stopped_by.as_ref());
    let object = match endpoint {
        Endpoint::Chat => "chat.completion",
        Endpoint::Completion => "text_completion",
    };
    json!({
        "id": meta.id,
        "object": object,
        "created": meta.created,
        "model": meta.model,
        "choices": [choice],
        "usage": usage_json(&response.usage),
    })
}

/// When a guard stopped the generation, the finish reason stays OpenAI's
/// `stop` and two extension fields say which guard and why.
fn mark_guard_stop(choice: &mut Value, stopped_by: Option<&GuardTrip>) {
    if let Some(trip) = stopped_by {
        choice["stop_reason"] = json!(trip.kind.stop_reason());
        choice["guard"] = json!({"kind": trip.kind, "figure": trip.figure, "detail": trip.detail});
    }
}

/// Builds the chunks of one streamed answer.
#[derive(Debug, Clone)]
pub struct ChunkBuilder {
    pub endpoint: Endpoint,
    pub meta: ResponseMeta,
    /// Bytes of text already streamed (for legacy `text_offset`).
    pub streamed_bytes: usize,
}

impl ChunkBuilder {
    fn chunk(&self, choices: Value) -> Value {
        json!({
            "id": self.meta.id,
            "object": self.endpoint.chunk_object(),
            "created": self.meta.created,
            "model": self.meta.model,
            "choices": choices,
        })
    }

    fn delta(&self, delta: Value, finish_reason: Option<FinishReason>) -> Value {
        self.delta_with_logprobs(delta, finish_reason, &[])
    }

    fn delta_with_logprobs(
        &self,
        delta: Value,
        finish_reason: Option<FinishReason>,
        logprobs: &[TokenLogprob],
    ) -> Value {
        let finish = finish_reason.map(FinishReason::as_str);
        match self.endpoint {
            Endpoint::Chat => {
                let logprobs = if logprobs.is_empty() {
                    Value::Null
                } else {
                    chat_logprobs_json(logprobs)
                };
                self.chunk(json!([{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]))
            }
            Endpoint::Completion => {
                let text = delta.get("content").cloned().unwrap_or(json!(""));
                let logprobs = if logprobs.is_empty() {
                    Value::Null
                } else {
                    completion_logprobs_json(logprobs, self.streamed_bytes)
                };
                self.chunk(json!([{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}]))
            }
        }
    }

    /// The first chat chunk carries the role (completions have none).
    pub fn role(&self) -> Option<Value> {
        (self.endpoint == Endpoint::Chat).then(|| self.delta(json!({"role": "assistant", "content": ""}), None))
    }

    /// A text delta with the log-probabilities of the tokens it came from.
    pub fn content(&mut self, text: &str, logprobs: &[TokenLogprob]) -> Value {
        let chunk = self.delta_with_logprobs(json!({"content": text}), None, logprobs);
        self.streamed_bytes += text.len();
        chunk
    }

    /// Reasoning has no place in a text completion; it is dropped there.
    pub fn reasoning(&self, text: &str) -> Option<Value> {
        (self.endpoint == Endpoint::Chat).then(|| self.delta(json!({"reasoning_content": text}), None))
    }

    pub fn tool_call(&self, delta: &ToolCallDelta) -> Option<Value> {
        if self.endpoint != Endpoint::Chat {
            return None;
        }
        let mut call = Map::new();
        call.insert("index".into(), json!(delta.index));
        if let Some(id) = &delta.id {
            call.insert("id".into(), json!(id));
            call.insert("type".into(), json!("function"));
        }
        let mut function = Map::new();
        if let Some(name) = &delta.name {
            function.insert("name".into(), json!(name));
        }
        function.insert("arguments".into(), json!(delta.arguments));
        call.insert("function".into(), Value::Object(function));
        Some(self.delta(json!({"tool_calls": [call]}), None))
    }

    /// The last chunk, carrying log-probabilities of tokens whose text was
    /// never shown (held back, then cut by a stop string).
    pub fn finish(&self, reason: FinishReason, logprobs: &[TokenLogprob], stopped_by: Option<&GuardTrip>) -> Value {
        let mut chunk = self.delta_with_logprobs(json!({}), Some(reason), logprobs);
        mark_guard_stop(&mut chunk["choices"][0], stopped_by);
        chunk
    }

    /// The usage chunk (`choices: []`) sent when `include_usage` is set.
    pub fn usage(&self, usage: &Usage) -> Value {
        let mut chunk = self.chunk(json!([]));
        chunk["usage"] = usage_json(usage);
        chunk
    }
}
