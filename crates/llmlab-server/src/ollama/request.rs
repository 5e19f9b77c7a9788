//! Ollama's request bodies for `/api/chat` and `/api/generate`, and their
//! conversion to core requests. Unknown fields and unknown `options` are
//! ignored, as Ollama does; fields we know are type-checked, and the error
//! names the field. Everything that is a matter of validity (ranges, stop
//! strings, schemas) is left to core's `resolve`.

use serde::Deserialize;
use serde_json::{json, Value};

use llmlab_core::keep_alive::KeepAlive;
use llmlab_core::{
    ChatMessage, ChatRequest, CompletionRequest, ContentPart, Error, FunctionCall, GenerationParams, ImageUrl,
    MessageContent, Result, Role, SamplingParams, ToolCall, ToolDefinition,
};

use crate::openai::request::StopField;

/// `options`: the sampling settings llmlab has. Ollama's others (`num_gpu`,
/// `mirostat`, `num_thread`, ...) are accepted and ignored, as Ollama
/// ignores options a runner does not know.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Options {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    /// Tokens to generate; -1 (forever) and -2 (fill the context) both
    /// mean "until the context is full", which is core's `None`.
    pub num_predict: Option<i64>,
    /// The context is fixed when a model loads (its registry entry), so a
    /// request cannot change it; read only so that a wrong type is named.
    pub num_ctx: Option<i64>,
    /// Negative: a random seed, as in Ollama.
    pub seed: Option<i64>,
    pub stop: Option<StopField>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<i32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
}

impl Options {
    /// Core's generation settings; `schema` is the output constraint from
    /// `format`.
    pub fn params(&self, schema: Option<Value>) -> GenerationParams {
        GenerationParams {
            sampling: SamplingParams {
                temperature: self.temperature,
                top_p: self.top_p,
                top_k: self.top_k,
                min_p: self.min_p,
                repeat_penalty: self.repeat_penalty,
                presence_penalty: self.presence_penalty,
                frequency_penalty: self.frequency_penalty,
                penalty_last_n: self.repeat_last_n,
                seed: self.seed.and_then(|s| u64::try_from(s).ok()),
            },
            max_tokens: self
                .num_predict
                .filter(|n| *n > 0)
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
            stop: match &self.stop {
                None => Vec::new(),
                Some(StopField::One(s)) => vec![s.clone()],
                Some(StopField::Many(v)) => v.clone(),
            },
            json_schema: schema,
            ..GenerationParams::default()
        }
    }
}

/// `format`: `"json"` (any JSON object) or a JSON schema; `""` and `null`
/// leave the output free. Either becomes core's JSON-schema constraint, the
/// same grammar OpenAI's `response_format` gets.
pub fn format_schema(format: Option<&Value>) -> Result<Option<Value>> {
    match format {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) if s == "json" => Ok(Some(json!({"type": "object"}))),
        Some(schema @ Value::Object(_)) => Ok(Some(schema.clone())),
        Some(_) => Err(Error::invalid_param(
            "format",
            "invalid 'format': use \"json\" or a JSON schema object",
        )),
    }
}

/// `think`: a boolean, or a level ("high", "medium", "low") that models
/// with levels read; llmlab has no levels, so a level means "think".
/// `None`: not said, and reasoning is sent when the model produces it.
pub fn think(value: Option<&Value>) -> Result<Option<bool>> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::String(level)) if matches!(level.as_str(), "high" | "medium" | "low") => Ok(Some(true)),
        Some(_) => Err(Error::invalid_param(
            "think",
            "invalid 'think': use true, false, \"high\", \"medium\" or \"low\"",
        )),
    }
}

fn keep_alive(value: Option<&Value>) -> Result<Option<KeepAlive>> {
    value.map(KeepAlive::from_json).transpose()
}

/// A tool call as Ollama writes it: arguments are an object, not a text.
#[derive(Debug, Clone, Deserialize)]
pub struct OllamaToolCall {
    pub function: OllamaFunctionCall,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OllamaFunctionCall {
    pub name: String,
    #[serde(default)]
    pub arguments: Value,
}

/// One message: text, base64 images beside it, the assistant's tool calls
/// and thinking, and for `tool` messages the tool's name.
#[derive(Debug, Clone, Deserialize)]
pub struct OllamaMessage {
    pub role: Role,
    #[serde(default)]
    pub content: Option<String>,
    #[serde(default)]
    pub images: Option<Vec<String>>,
    #[serde(default)]
    pub tool_calls: Option<Vec<OllamaToolCall>>,
    #[serde(default)]
    pub thinking: Option<String>,
    #[serde(default)]
    pub tool_name: Option<String>,
}

/// Base64 images as core's image parts: a `data:` URL without a media
/// type, which core decodes (and sniffs) under its limits like any other.
fn image_parts(images: Vec<String>) -> Vec<ContentPart> {
    images
        .into_iter()
        .map(|b64| ContentPart::ImageUrl {
            image_url: ImageUrl {
                url: format!("data:;base64,{b64}"),
                detail: None,
            },
        })
        .collect()
}

/// Text alone, or the images first and the text after them, as Ollama
/// places a message's images before its text.
fn content(text: String, images: Option<Vec<String>>) -> MessageContent {
    match images.filter(|i| !i.is_empty()) {
        None => MessageContent::Text(text),
        Some(images) => {
            let mut parts = image_parts(images);
            if !text.is_empty() {
                parts.push(ContentPart::Text { text });
            }
            MessageContent::Parts(parts)
        }
    }
}

impl OllamaMessage {
    /// Core's message. Tool calls get ids (`call_<message>_<call>`) because
    /// core's (OpenAI's) shape has them; Ollama's tool results name the tool
    /// instead, carried as the message's `name`.
    fn into_core(self, at: usize) -> ChatMessage {
        let tool_calls = self
            .tool_calls
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, call)| ToolCall {
                id: format!("call_{at}_{i}"),
                kind: "function".to_owned(),
                function: FunctionCall {
                    name: call.function.name,
                    arguments: match call.function.arguments {
                        Value::Null => "{}".to_owned(),
                        Value::String(text) => text,
                        other => other.to_string(),
                    },
                },
            })
            .collect();
        ChatMessage {
            role: self.role,
            content: content(self.content.unwrap_or_default(), self.images),
            name: self.tool_name,
            tool_calls,
            tool_call_id: None,
            reasoning_content: self.thinking,
        }
    }
}

/// What the door must know besides the core request.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    /// NDJSON lines (Ollama's default) or one JSON object.
    pub stream: bool,
    /// `Some(false)`: reasoning is not sent.
    pub think: Option<bool>,
}

impl Delivery {
    pub fn sends_reasoning(self) -> bool {
        self.think != Some(false)
    }
}

/// What a body asks for: a generation, or, with nothing to generate from,
/// to load the model (or, with `keep_alive` 0, to unload it).
#[derive(Debug)]
pub enum Ask<R> {
    Generate(R),
    Load {
        model: String,
        keep_alive: Option<KeepAlive>,
    },
}

/// The body of `/api/chat`.
#[derive(Debug, Deserialize)]
pub struct ChatBody {
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub messages: Vec<OllamaMessage>,
    #[serde(default)]
    pub tools: Option<Vec<ToolDefinition>>,
    pub format: Option<Value>,
    #[serde(default)]
    pub options: Option<Options>,
    pub stream: Option<bool>,
    pub keep_alive: Option<Value>,
    pub think: Option<Value>,
}

impl ChatBody {
    pub fn into_request(self) -> Result<(Ask<ChatRequest>, Delivery)> {
        let delivery = Delivery {
            stream: self.stream.unwrap_or(true),
            think: think(self.think.as_ref())?,
        };
        let keep_alive = keep_alive(self.keep_alive.as_ref())?;
        if self.messages.is_empty() {
            return Ok((
                Ask::Load {
                    model: self.model,
                    keep_alive,
                },
                delivery,
            ));
        }
        let schema = format_schema(self.format.as_ref())?;
        let request = ChatRequest {
            model: self.model,
            messages: self
                .messages
                .into_iter()
                .enumerate()
                .map(|(i, m)| m.into_core(i))
                .collect(),
            tools: self.tools.unwrap_or_default(),
            tool_choice: Default::default(),
            params: self.options.unwrap_or_default().params(schema),
            keep_alive,
        };
        Ok((Ask::Generate(request), delivery))
    }
}

/// `/api/generate`'s input once decoded: through the chat template, or
/// (`raw`) the prompt as written.
#[derive(Debug)]
pub enum GenerateRequest {
    Templated(ChatRequest),
    Raw(CompletionRequest),
}

/// The body of `/api/generate`.
#[derive(Debug, Deserialize)]
pub struct GenerateBody {
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub prompt: String,
    pub system: Option<String>,
    pub suffix: Option<String>,
    #[serde(default)]
    pub raw: bool,
    pub images: Option<Vec<String>>,
    pub format: Option<Value>,
    #[serde(default)]
    pub options: Option<Options>,
    pub stream: Option<bool>,
    pub keep_alive: Option<Value>,
    pub think: Option<Value>,
    /// Ollama's older conversation memory (token ids of the last answer):
    /// accepted and ignored; clients keep history in `/api/chat` messages.
    #[serde(default)]
    pub context: Option<Vec<i64>>,
}

impl GenerateBody {
    pub fn into_request(self) -> Result<(Ask<GenerateRequest>, Delivery)> {
        let delivery = Delivery {
            stream: self.stream.unwrap_or(true),
            think: think(self.think.as_ref())?,
        };
        let keep_alive = keep_alive(self.keep_alive.as_ref())?;
        if self.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
            // Fill-in-the-middle needs a model's FIM template, which llmlab
            // does not render.
            return Err(Error::invalid_param(
                "suffix",
                "'suffix' (fill-in-the-middle) is not supported",
            ));
        }
        let images = self.images.filter(|i| !i.is_empty());
        if self.prompt.is_empty() && images.is_none() {
            return Ok((
                Ask::Load {
                    model: self.model,
                    keep_alive,
                },
                delivery,
            ));
        }
        let schema = format_schema(self.format.as_ref())?;
        let params = self.options.unwrap_or_default().params(schema);
        if self.raw {
            if images.is_some() {
                return Err(Error::invalid_param(
                    "images",
                    "'images' need the chat template; they cannot be sent with 'raw'",
                ));
            }
            let request = CompletionRequest {
                model: self.model,
                prompt: self.prompt,
                params,
                keep_alive,
            };
            return Ok((Ask::Generate(GenerateRequest::Raw(request)), delivery));
        }
        let mut messages = Vec::new();
        if let Some(system) = self.system.filter(|s| !s.is_empty()) {
            messages.push(ChatMessage::system(system));
        }
        let mut user = ChatMessage::user(String::new());
        user.content = content(self.prompt, images);
        messages.push(user);
        let request = ChatRequest {
            model: self.model,
            messages,
            params,
            keep_alive,
            ..ChatRequest::default()
        };
        Ok((Ask::Generate(GenerateRequest::Templated(request)), delivery))
    }
}

/// The body of `/api/show`, `/api/pull` and `/api/delete`: a model, as
/// `model` or, from older clients, `name`.
#[derive(Debug, Deserialize)]
pub struct ModelBody {
    pub model: Option<String>,
    pub name: Option<String>,
    pub stream: Option<bool>,
}

impl ModelBody {
    pub fn model(&self) -> Result<&str> {
        self.model
            .as_deref()
            .or(self.name.as_deref())
            .filter(|m| !m.is_empty())
            .ok_or_else(|| Error::invalid_param("model", "'model' is required"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::parse_json;
    use std::time::Duration;

    fn chat(body: Value) -> Result<(Ask<ChatRequest>, Delivery)> {
        parse_json::<ChatBody>(body.to_string().as_bytes())?.into_request()
    }

    fn generated<R>(ask: Ask<R>) -> R {
        match ask {
            Ask::Generate(r) => r,
            Ask::Load { .. } => panic!("expected a generation"),
        }
    }

    #[test]
    fn options_map_to_sampling_and_unknown_ones_are_ignored() {
        let (ask, delivery) = chat(json!({
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "options": {"temperature": 0, "top_p": 0.5, "top_k": 7, "num_predict": 12, "num_ctx": 1000000,
                        "seed": 42, "stop": ["\n\n"], "repeat_penalty": 1.1, "repeat_last_n": 32,
                        "mirostat": 2, "num_gpu": 99},
            "keep_alive": "5m",
        }))
        .unwrap();
        assert!(delivery.stream, "Ollama streams unless told otherwise");
        let r = generated(ask);
        let s = &r.params.sampling;
        assert_eq!(
            (s.temperature, s.top_p, s.top_k, s.seed),
            (Some(0.0), Some(0.5), Some(7), Some(42))
        );
        assert_eq!((s.repeat_penalty, s.penalty_last_n), (Some(1.1), Some(32)));
        assert_eq!(r.params.max_tokens, Some(12));
        assert_eq!(r.params.stop, vec!["\n\n".to_owned()]);
        assert_eq!(r.keep_alive, Some(KeepAlive::For(Duration::from_secs(300))));
    }

    #[test]
    fn unbounded_predictions_and_random_seeds_are_left_to_core() {
        let o = Options {
            num_predict: Some(-1),
            seed: Some(-1),
            ..Options::default()
        };
        let p = o.params(None);
        assert_eq!((p.max_tokens, p.sampling.seed), (None, None));
        let err = chat(json!({"messages": [{"role": "user", "content": "x"}], "options": {"temperature": "hot"}}))
            .unwrap_err();
        assert_eq!(err.param.as_deref(), Some("options.temperature"));
    }

    #[test]
    fn format_is_json_or_a_schema() {
        assert_eq!(
            format_schema(Some(&json!("json"))).unwrap(),
            Some(json!({"type": "object"}))
        );
        assert_eq!(format_schema(Some(&json!(""))).unwrap(), None);
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        assert_eq!(format_schema(Some(&schema)).unwrap(), Some(schema.clone()));
        assert!(format_schema(Some(&json!("yaml"))).is_err());
        assert!(format_schema(Some(&json!(3))).is_err());
    }

    #[test]
    fn keep_alive_takes_durations_and_seconds() {
        let ka = |v: Value| {
            let body = json!({"model": "m", "keep_alive": v});
            match chat(body).unwrap().0 {
                Ask::Load { keep_alive, .. } => keep_alive,
                Ask::Generate(_) => panic!("no messages is a load"),
            }
        };
        assert_eq!(ka(json!(0)), Some(KeepAlive::For(Duration::ZERO)));
        assert_eq!(ka(json!("10s")), Some(KeepAlive::For(Duration::from_secs(10))));
        assert_eq!(ka(json!(-1)), Some(KeepAlive::Forever));
        assert!(chat(json!({"model": "m", "keep_alive": "soon"})).is_err());
    }

    #[test]
    fn tool_calls_and_results_become_core_messages() {
        let (ask, _) = chat(json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                {"role": "tool", "content": "{\"c\": 21}", "tool_name": "get_weather"},
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
        }))
        .unwrap();
        let r = generated(ask);
        assert_eq!(r.tools[0].function.name, "get_weather");
        let call = &r.messages[1].tool_calls[0];
        assert_eq!(call.function.name, "get_weather");
        assert_eq!(
            serde_json::from_str::<Value>(&call.function.arguments).unwrap(),
            json!({"city": "Paris"})
        );
        assert_eq!(r.messages[2].role, Role::Tool);
        assert_eq!(r.messages[2].name.as_deref(), Some("get_weather"));
    }

    #[test]
    fn images_are_data_urls_before_the_text() {
        let (ask, _) =
            chat(json!({"messages": [{"role": "user", "content": "what is it?", "images": ["iVBORw0K"]}]})).unwrap();
        let r = generated(ask);
        let MessageContent::Parts(parts) = &r.messages[0].content else {
            panic!("parts expected")
        };
        assert!(matches!(&parts[0], ContentPart::ImageUrl { image_url } if image_url.url == "data:;base64,iVBORw0K"));
        assert!(matches!(&parts[1], ContentPart::Text { text } if text == "what is it?"));
    }

    #[test]
    fn think_is_a_boolean_or_a_level() {
        assert_eq!(think(Some(&json!(false))).unwrap(), Some(false));
        assert_eq!(think(Some(&json!("high"))).unwrap(), Some(true));
        assert_eq!(think(None).unwrap(), None);
        assert!(think(Some(&json!("max"))).is_err());
        assert!(!Delivery {
            stream: true,
            think: Some(false)
        }
        .sends_reasoning());
    }

    #[test]
    fn generate_templates_the_prompt_unless_raw() {
        let decode = |body: Value| {
            parse_json::<GenerateBody>(body.to_string().as_bytes())
                .unwrap()
                .into_request()
        };
        let (ask, _) = decode(json!({"model": "m", "prompt": "hi", "system": "be brief", "stream": false})).unwrap();
        let GenerateRequest::Templated(r) = generated(ask) else {
            panic!("templated expected")
        };
        assert_eq!((r.messages[0].role, r.messages[1].role), (Role::System, Role::User));
        let (ask, delivery) = decode(json!({"model": "m", "prompt": "Once", "raw": true, "stream": false})).unwrap();
        assert!(!delivery.stream);
        assert!(matches!(generated(ask), GenerateRequest::Raw(r) if r.prompt == "Once"));
        assert!(matches!(decode(json!({"model": "m"})).unwrap().0, Ask::Load { .. }));
        let err = decode(json!({"model": "m", "prompt": "def f(", "suffix": "return x"})).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("suffix"));
    }

    #[test]
    fn a_model_body_names_the_model_either_way() {
        let body = |v: Value| parse_json::<ModelBody>(v.to_string().as_bytes()).unwrap();
        assert_eq!(body(json!({"model": "a"})).model().unwrap(), "a");
        assert_eq!(body(json!({"name": "b"})).model().unwrap(), "b");
        assert!(body(json!({"model": ""})).model().is_err());
    }
}
