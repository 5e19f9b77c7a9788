//! OpenAI wire types for chat and text completions, and their conversion to
//! core requests. Unknown fields are ignored (clients send many); fields we
//! know are type-checked, and the error names the field.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use llmlab_core::keep_alive::KeepAlive;
use llmlab_core::{
    ChatMessage, ChatRequest, CompletionRequest, Error, GenerationParams, Result, SamplingParams, TokenLogprob,
    ToolChoice, ToolDefinition, Usage,
};

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

/// `logprobs`: a boolean on chat, a count of alternatives on completions.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
pub enum LogprobsField {
    Enabled(bool),
    Count(u32),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// The body of `/v1/chat/completions` and `/v1/completions`: one struct
/// without `#[serde(flatten)]`, so that type errors carry the exact field
/// path. Each endpoint requires its own input field.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OpenAiRequest {
    #[serde(default)]
    pub model: String,
    pub messages: Option<Vec<ChatMessage>>,
    pub prompt: Option<PromptField>,
    pub tools: Option<Vec<ToolDefinition>>,
    pub tool_choice: Option<Value>,
    pub response_format: Option<Value>,
    /// llmlab extension with Ollama's meaning: how long the model stays
    /// loaded after this request ("5m", "0", "-1", or seconds).
    pub keep_alive: Option<Value>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<StopField>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub n: Option<u32>,
    pub logprobs: Option<LogprobsField>,
    pub top_logprobs: Option<u32>,
    /// llmlab extension (as in vLLM): keep going past end-of-generation.
    #[serde(default)]
    pub ignore_eos: bool,
    /// Extension: repetition and perplexity guard settings for this request
    /// (a guard named replaces the model's settings for it).
    #[serde(default)]
    pub guards: Option<llmlab_core::guards::GuardSettings>,
    /// Extension: an answer that does not depend on concurrent requests.
    pub batch_invariant: Option<bool>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
}

/// How the client wants the answer delivered.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub stream: bool,
    pub include_usage: bool,
}

impl OpenAiRequest {
    fn params(&self) -> Result<GenerationParams> {
        if let Some(n) = self.n.filter(|n| *n != 1) {
            return Err(Error::invalid_param("n", format!("only n=1 is supported, got {n}")));
        }
        if self.stream_options.is_some() && !self.stream {
            return Err(Error::invalid_param(
                "stream_options",
                "'stream_options' is only allowed when 'stream' is true",
            ));
        }
        let seed = match self.seed {
            Some(s) if s < 0 => return Err(Error::invalid_param("seed", "'seed' must not be negative")),
            other => other.map(|s| s as u64),
        };
        let logprobs = match (self.logprobs, self.top_logprobs) {
            (None | Some(LogprobsField::Enabled(false)), Some(_)) => {
                return Err(Error::invalid_param(
                    "top_logprobs",
                    "'top_logprobs' requires 'logprobs' to be true",
                ))
            }
            (None | Some(LogprobsField::Enabled(false)), None) => None,
            (Some(LogprobsField::Enabled(true)), top) => Some(top.unwrap_or(0)),
            (Some(LogprobsField::Count(n)), _) => Some(n),
        };
        Ok(GenerationParams {
            sampling: SamplingParams {
                temperature: self.temperature,
                top_p: self.top_p,
                top_k: self.top_k,
                min_p: self.min_p,
                repeat_penalty: self.repeat_penalty,
                presence_penalty: self.presence_penalty,
                frequency_penalty: self.frequency_penalty,
                penalty_last_n: None,
                seed,
            },
            // max_completion_tokens is the newer name; it wins when both are set.
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            stop: match &self.stop {
                None => Vec::new(),
                Some(StopField::One(s)) => vec![s.clone()],
                Some(StopField::Many(v)) => v.clone(),
            },
            ignore_eos: self.ignore_eos,
            logprobs,
            guards: self.guards,
            batch_invariant: self.batch_invariant,
            json_schema: self
                .response_format
                .as_ref()
                .map(response_format_schema)
                .transpose()?
                .flatten(),
        })
    }

    fn delivery(&self) -> Delivery {
        Delivery {
            stream: self.stream,
            include_usage: self.stream_options.as_ref().is_some_and(|o| o.include_usage),
        }
    }

    /// Ollama's `keep_alive`: a duration string or seconds.
    fn keep_alive(&self) -> Result<Option<KeepAlive>> {
        self.keep_alive.as_ref().map(KeepAlive::from_json).transpose()
    }

    pub fn into_chat(self) -> Result<(ChatRequest, Delivery)> {
        let params = self.params()?;
        let keep_alive = self.keep_alive()?;
        let delivery = self.delivery();
        let messages = self
            .messages
            .ok_or_else(|| Error::invalid_param("messages", "'messages' is required"))?;
        let tool_choice = self
            .tool_choice
            .as_ref()
            .map(ToolChoice::from_openai)
            .transpose()?
            .unwrap_or_default();
        let request = ChatRequest {
            model: self.model,
            messages,
            tools: self.tools.unwrap_or_default(),
            tool_choice,
            params,
            keep_alive,
        };
        Ok((request, delivery))
    }

    pub fn into_completion(self) -> Result<(CompletionRequest, Delivery)> {
        let params = self.params()?;
        let keep_alive = self.keep_alive()?;
        let delivery = self.delivery();
        let prompt = match self.prompt {
            None => return Err(Error::invalid_param("prompt", "'prompt' is required")),
            Some(PromptField::One(p)) => p,
            Some(PromptField::Many(mut v)) if v.len() == 1 => v.remove(0),
            Some(PromptField::Many(v)) => {
                return Err(Error::invalid_param(
                    "prompt",
                    format!("exactly one prompt is supported, got {}", v.len()),
                ))
            }
        };
        Ok((
            CompletionRequest {
                model: self.model,
                prompt,
                params,
                keep_alive,
            },
            delivery,
        ))
    }
}

/// `prompt` of the completions endpoint: a string or a one-element list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    One(String),
    Many(Vec<String>),
}

/// `response_format`: `{"type":"text"}` (free), `{"type":"json_object"}`
/// (any JSON object) or `{"type":"json_schema","json_schema":{"schema":…}}`.
fn response_format_schema(format: &Value) -> Result<Option<Value>> {
    let bad = |why: &str| Error::invalid_param("response_format", format!("invalid 'response_format': {why}"));
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "object"}))),
        Some("json_schema") => format
            .get("json_schema")
            .and_then(|s| s.get("schema"))
            .filter(|s| s.is_object())
            .cloned()
            .map(Some)
            .ok_or_else(|| bad("'json_schema.schema' must be an object")),
        _ => Err(bad("'type' must be \"text\", \"json_object\" or \"json_schema\"")),
    }
}

/// Parse a JSON body; errors name the field path (`messages[0].role`).
/// The whole body must be the one value: a `Deserializer` stops after the
/// value it was asked for, so `.end()` is what rejects `{…} garbage`
/// (`serde_json::from_slice` calls it too; going through
/// `serde_path_to_error` means calling it here).
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(field_error)?;
    de.end()
        .map_err(|e| Error::invalid(format!("invalid JSON body: {e}")))?;
    Ok(value)
}

/// The same for JSON already parsed (a WebSocket frame's `body`).
pub fn parse_value<T: serde::de::DeserializeOwned>(value: Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(field_error)
}

fn field_error(e: serde_path_to_error::Error<serde_json::Error>) -> Error {
    let path = e.path().to_string();
    let inner = e.into_inner();
    let syntax = matches!(
        inner.classify(),
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof
    );
    if syntax || path == "." || path == "?" || path.is_empty() {
        Error::invalid(format!("invalid JSON body: {inner}"))
    } else {
        Error::invalid_param(path.clone(), format!("invalid value for '{path}': {inner}"))
    }
}

/// Chat format: `{"content": [{token, logprob, bytes, top_logprobs}]}`.
pub fn chat_logprobs_json(items: &[TokenLogprob]) -> Value {
    json!({ "content": items })
}

/// Legacy completions format: parallel arrays, offsets into the text
/// generated so far (`offset` is where these tokens start).
pub fn completion_logprobs_json(items: &[TokenLogprob], offset: usize) -> Value {
    let mut text_offset = Vec::with_capacity(items.len());
    let mut at = offset;
    for item in items {
        text_offset.push(at);
        // Byte offsets into the UTF-8 text (a token may hold part of a character).
        at += item.bytes.len();
    }
    let top: Vec<Value> = items
        .iter()
        .map(|i| {
            Value::Object(
                i.top_logprobs
                    .iter()
                    .map(|t| (t.token.clone(), json!(t.logprob)))
                    .collect(),
            )
        })
        .collect();
    json!({
        "tokens": items.iter().map(|i| i.token.as_str()).collect::<Vec<_>>(),
        "token_logprobs": items.iter().map(|i| i.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": text_offset,
    })
}

pub fn usage_json(usage: &Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    })
}

/// Identity of one response: id, creation time, model.
#[derive(Debug, Clone, Serialize)]
pub struct ResponseMeta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl ResponseMeta {
    pub fn new(prefix: &str, model: &str) -> Self {
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            id: format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
            created,
            model: model.to_owned(),
        }
    }
}
