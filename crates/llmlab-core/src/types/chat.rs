//! A chat request: messages, tools and sampling settings.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    /// OpenAI's newer name for system instructions; rendered as `system`.
    Developer,
    User,
    Assistant,
    Tool,
}

impl Role {
    /// The role name chat templates expect (`developer` is folded into `system`).
    pub fn template_name(self) -> &'static str {
        match self {
            Self::System | Self::Developer => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }
}

/// Message content: plain text or a list of typed parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

impl Default for MessageContent {
    fn default() -> Self {
        Self::Text(String::new())
    }
}

impl MessageContent {
    /// True when some part is an image.
    pub fn has_images(&self) -> bool {
        matches!(self, Self::Parts(parts) if parts.iter().any(|p| matches!(p, ContentPart::ImageUrl { .. })))
    }

    /// The text parts joined by newlines (images are skipped).
    pub fn joined_text(&self) -> String {
        match self {
            Self::Text(text) => text.clone(),
            Self::Parts(parts) => parts
                .iter()
                .filter_map(|p| match p {
                    ContentPart::Text { text } => Some(text.as_str()),
                    ContentPart::ImageUrl { .. } => None,
                })
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// One part of a multi-part message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageUrl {
    /// An `http(s)` URL or a `data:` URL with base64 image bytes.
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A tool call made by the assistant (OpenAI shape).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as a JSON text, as OpenAI sends them.
    pub arguments: String,
}

fn function_type() -> String {
    "function".to_owned()
}

/// Deserialize `null` as the type's default (serde's `default` only covers
/// a missing field).
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    /// `null` is what OpenAI clients send for an assistant turn that only
    /// called tools; it reads as empty text.
    #[serde(default, deserialize_with = "null_as_default")]
    pub content: MessageContent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "null_as_default")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Reasoning the assistant produced earlier, for templates that replay it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
}

impl ChatMessage {
    pub fn new(role: Role, text: impl Into<String>) -> Self {
        Self {
            role,
            content: MessageContent::Text(text.into()),
            name: None,
            tool_calls: Vec::new(),
            tool_call_id: None,
            reasoning_content: None,
        }
    }

    pub fn system(text: impl Into<String>) -> Self {
        Self::new(Role::System, text)
    }

    pub fn user(text: impl Into<String>) -> Self {
        Self::new(Role::User, text)
    }

    pub fn assistant(text: impl Into<String>) -> Self {
        Self::new(Role::Assistant, text)
    }
}

/// A tool the model may call (OpenAI shape: `{"type":"function","function":{…}}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    pub function: FunctionDefinition,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FunctionDefinition {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// JSON schema of the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
}

/// Sampling settings. `None` means "use the model's default, else llmlab's"
/// (see [`crate::config::SamplingDefaults`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingParams {
    /// 0 selects greedy decoding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// 0 disables top-k.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_p: Option<f32>,
    /// Multiplicative penalty on recently seen tokens (1.0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat_penalty: Option<f32>,
    /// OpenAI presence penalty (0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f32>,
    /// OpenAI frequency penalty (0 = off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f32>,
    /// How many recent tokens the penalties look at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub penalty_last_n: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
}

impl SamplingParams {
    /// Fill every unset field from `fallback`.
    pub fn or(&self, fallback: &SamplingParams) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature.or(fallback.temperature),
            top_p: self.top_p.or(fallback.top_p),
            top_k: self.top_k.or(fallback.top_k),
            min_p: self.min_p.or(fallback.min_p),
            repeat_penalty: self.repeat_penalty.or(fallback.repeat_penalty),
            presence_penalty: self.presence_penalty.or(fallback.presence_penalty),
            frequency_penalty: self.frequency_penalty.or(fallback.frequency_penalty),
            penalty_last_n: self.penalty_last_n.or(fallback.penalty_last_n),
            seed: self.seed.or(fallback.seed),
        }
    }

    /// Check ranges; the error names the offending field.
    pub fn validate(&self) -> crate::Result<()> {
        use crate::Error;
        let check = |name: &str, value: Option<f32>, ok: fn(f32) -> bool, what: &str| match value {
            Some(v) if !v.is_finite() || !ok(v) => {
                Err(Error::invalid_param(name, format!("'{name}' must be {what}, got {v}")))
            }
            _ => Ok(()),
        };
        check(
            "temperature",
            self.temperature,
            |v| (0.0..=100.0).contains(&v),
            "between 0 and 100",
        )?;
        check("top_p", self.top_p, |v| v > 0.0 && v <= 1.0, "in (0, 1]")?;
        check("min_p", self.min_p, |v| (0.0..=1.0).contains(&v), "in [0, 1]")?;
        check("repeat_penalty", self.repeat_penalty, |v| v > 0.0, "greater than 0")?;
        check(
            "presence_penalty",
            self.presence_penalty,
            |v| (-2.0..=2.0).contains(&v),
            "between -2 and 2",
        )?;
        check(
            "frequency_penalty",
            self.frequency_penalty,
            |v| (-2.0..=2.0).contains(&v),
            "between -2 and 2",
        )?;
        if let Some(k) = self.top_k.filter(|k| *k < 0) {
            return Err(Error::invalid_param(
                "top_k",
                format!("'top_k' must be 0 (off) or positive, got {k}"),
            ));
        }
        if let Some(seed) = self.seed.filter(|s| *s > MAX_SEED) {
            return Err(Error::invalid_param(
                "seed",
                format!("'seed' must be between 0 and {MAX_SEED} (llama.cpp's samplers take 32-bit seeds), got {seed}"),
            ));
        }
        if let Some(n) = self.penalty_last_n.filter(|n| *n < -1) {
            return Err(Error::invalid_param(
                "penalty_last_n",
                format!("'penalty_last_n' must be -1 (whole context), 0 (off) or positive, got {n}"),
            ));
        }
        Ok(())
    }
}

/// Largest seed a request may give: samplers take 32 bits, and the top
/// 32-bit value means "pick one at random" to llama.cpp. A larger seed is
/// refused rather than silently cut to another one.
pub const MAX_SEED: u64 = u32::MAX as u64 - 1;

/// What to generate and when to stop, shared by chat and plain completion.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationParams {
    pub sampling: SamplingParams,
    /// Upper bound on generated tokens; `None` = until the context is full.
    pub max_tokens: Option<u32>,
    /// Strings that end generation; they are never part of the output.
    pub stop: Vec<String>,
    /// Keep generating past end-of-generation tokens (benchmarks).
    pub ignore_eos: bool,
    /// Constrain the output to JSON matching this schema (grammar sampling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<Value>,
    /// Report each token's log-probability with this many alternatives
    /// (`Some(0)`: the sampled token only); `None`: no log-probabilities.
    pub logprobs: Option<u32>,
    /// Guard settings for this request; `None`: the model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guards: Option<crate::guards::GuardSettings>,
    /// The answer must equal the same request's alone on an idle server,
    /// whatever else runs (slower); `None`: the model's setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_invariant: Option<bool>,
}

/// Most alternatives reported per token (OpenAI's limit).
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// Longest accepted stop string, in bytes, and most stop strings per request.
pub const MAX_STOP_STRING_BYTES: usize = 256;
pub const MAX_STOP_STRINGS: usize = 16;

impl GenerationParams {
    pub fn validate(&self) -> crate::Result<()> {
        use crate::Error;
        self.sampling.validate()?;
        if let Some(guards) = &self.guards {
            guards.validate()?;
        }
        if self.max_tokens == Some(0) {
            return Err(Error::invalid_param("max_tokens", "'max_tokens' must be at least 1"));
        }
        if let Some(n) = self.logprobs.filter(|n| *n > MAX_TOP_LOGPROBS) {
            return Err(Error::invalid_param(
                "top_logprobs",
                format!("at most {MAX_TOP_LOGPROBS} alternatives per token, got {n}"),
            ));
        }
        if self.stop.len() > MAX_STOP_STRINGS {
            return Err(Error::invalid_param(
                "stop",
                format!("at most {MAX_STOP_STRINGS} stop strings are allowed"),
            ));
        }
        for s in &self.stop {
            if s.is_empty() {
                return Err(Error::invalid_param("stop", "stop strings must not be empty"));
            }
            if s.len() > MAX_STOP_STRING_BYTES {
                return Err(Error::invalid_param(
                    "stop",
                    format!("stop strings are limited to {MAX_STOP_STRING_BYTES} bytes"),
                ));
            }
        }
        // A schema that cannot become a working grammar is the client's
        // mistake: refuse it here, before it reaches (and fails in) the engine.
        if let Some(schema) = &self.json_schema {
            super::check_grammar_schema(schema, "response_format")?;
        }
        Ok(())
    }
}

/// A chat request after transport decoding.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default)]
    pub tools: Vec<ToolDefinition>,
    #[serde(default)]
    pub tool_choice: super::ToolChoice,
    #[serde(default)]
    pub params: GenerationParams,
    /// How long the model stays loaded after this request (Ollama's meaning).
    #[serde(skip)]
    pub keep_alive: Option<crate::keep_alive::KeepAlive>,
}

impl ChatRequest {
    /// Check everything the request asks for; the answer is the schema a
    /// forced tool call must match, if the request forces one (worked out
    /// here once, since checking the choice needs it). Called by
    /// [`ChatRequest::resolve`] only.
    pub(super) fn validate(&self) -> crate::Result<Option<Value>> {
        use crate::Error;
        if self.messages.is_empty() {
            return Err(Error::invalid_param(
                "messages",
                "'messages' must contain at least one message",
            ));
        }
        for (i, tool) in self.tools.iter().enumerate() {
            if tool.function.name.trim().is_empty() {
                return Err(Error::invalid_param(
                    format!("tools[{i}].function.name"),
                    "tool names must not be empty",
                ));
            }
        }
        // Fails early (naming tool_choice) when the choice is impossible.
        let forced = super::forced_tool_call_schema(&self.tools, &self.tool_choice)?;
        if forced.is_some() && self.params.json_schema.is_some() {
            return Err(Error::invalid_param(
                "response_format",
                "'response_format' cannot be combined with a forced 'tool_choice'",
            ));
        }
        self.params.validate()?;
        Ok(forced)
    }
}

/// A plain text completion request (no chat template).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: String,
    #[serde(default)]
    pub params: GenerationParams,
    #[serde(skip)]
    pub keep_alive: Option<crate::keep_alive::KeepAlive>,
}

impl CompletionRequest {
    /// Called by [`CompletionRequest::resolve`] only.
    pub(super) fn validate(&self) -> crate::Result<()> {
        self.params.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn null_content_and_tool_calls_read_as_empty() {
        let m: ChatMessage = serde_json::from_str(r#"{"role":"assistant","content":null,"tool_calls":null}"#).unwrap();
        assert_eq!(m.content, MessageContent::Text(String::new()));
        assert!(m.tool_calls.is_empty());
        let err = serde_json::from_str::<ChatMessage>(r#"{"role":"user","content":5}"#);
        assert!(err.is_err());
    }
}
