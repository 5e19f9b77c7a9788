//! Renders a model's jinja chat template the way Hugging Face transformers
//! does (the dialect every GGUF template is written for): trim_blocks and
//! lstrip_blocks on, Python string methods, `tojson` with Python's
//! separators, `raise_exception` and `strftime_now` helpers.

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};
use serde::Serialize;
use serde_json::{json, Map, Value as Json};

use std::sync::Arc;

use llmlab_core::{ChatMessage, ContentPart, Error, MessageContent, Result, ToolDefinition};

use crate::control_text::{escape_json, media_placeholder, ControlTexts};

const TEMPLATE_NAME: &str = "chat";

/// A compiled chat template plus the special-token strings it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// Escapes control-token text in every client string (none by default).
    control_texts: Arc<ControlTexts>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

impl ChatTemplate {
    /// Compile `source`; a syntax error is reported with its line.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", python_tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| Error::internal(format!("chat template does not compile: {e:#}")))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
            control_texts: Arc::default(),
        })
    }

    /// Escape these control-token texts wherever a client string holds
    /// them, so that only the template writes control tokens.
    pub(crate) fn with_control_texts(mut self, control_texts: Arc<ControlTexts>) -> Self {
        self.control_texts = control_texts;
        self
    }

    /// Render a conversation, ending with the assistant's generation prompt.
    pub fn render(&self, messages: &[ChatMessage], tools: &[ToolDefinition]) -> Result<String> {
        // Every string a client wrote is escaped; the template's own text
        // (and bos/eos) is not. Images become placeholders, numbered in
        // the order their parts appear.
        let mut next_image = 0;
        let messages = Json::Array(
            messages
                .iter()
                .map(|message| message_to_json(message, &self.control_texts, &mut next_image))
                .collect(),
        );
        let tools = (!tools.is_empty()).then(|| {
            let mut tools = serde_json::to_value(tools).unwrap_or_default();
            escape_json(&self.control_texts, &mut tools);
            tools
        });
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| Error::internal(e.to_string()))?;
        template
            .render(minijinja::context! {
                messages => messages,
                tools => tools,
                add_generation_prompt => true,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .map_err(|e| match e.kind() {
                // The template itself rejected the conversation (for example
                // roles that do not alternate): that is the caller's problem.
                ErrorKind::InvalidOperation => Error::invalid_param(
                    "messages",
                    format!(
                        "the model's chat template rejected the messages: {}",
                        e.detail().unwrap_or("invalid conversation")
                    ),
                ),
                _ => Error::internal(format!("chat template failed: {e:#}")),
            })
    }
}

/// A message as templates expect it: plain string content (an image part
/// becomes its placeholder, parts are joined by newlines), tool-call
/// arguments as objects when they parse as JSON, and keys only when present
/// (templates test them with `is defined`). Client strings come out
/// escaped (see `control_text`).
fn message_to_json(message: &ChatMessage, control_texts: &ControlTexts, next_image: &mut usize) -> Json {
    let text = match &message.content {
        MessageContent::Text(text) => control_texts.escape(text).into_owned(),
        MessageContent::Parts(parts) => {
            let pieces: Vec<String> = parts
                .iter()
                .map(|part| match part {
                    ContentPart::Text { text } => control_texts.escape(text).into_owned(),
                    ContentPart::ImageUrl { .. } => {
                        *next_image += 1;
                        media_placeholder(*next_image - 1)
                    }
                })
                .collect();
            pieces.join("\n")
        }
    };
    let mut out = Json::Object(other_fields(message));
    escape_json(control_texts, &mut out);
    let content = if text.is_empty() && !message.tool_calls.is_empty() {
        Json::Null
    } else {
        json!(text)
    };
    let Json::Object(mut rest) = out else {
        unreachable!("escaping keeps an object an object")
    };
    // Role, then content, then the rest: the order templates printed
    // before images existed.
    let mut ordered = Map::new();
    ordered.insert("role".into(), rest.remove("role").unwrap_or(Json::Null));
    ordered.insert("content".into(), content);
    ordered.extend(rest);
    Json::Object(ordered)
}

/// Every field of a message but its content.
fn other_fields(message: &ChatMessage) -> Map<String, Json> {
    let mut out = Map::new();
    out.insert("role".into(), json!(message.role.template_name()));
    if let Some(name) = &message.name {
        out.insert("name".into(), json!(name));
    }
    if !message.tool_calls.is_empty() {
        let calls: Vec<Json> = message
            .tool_calls
            .iter()
            .map(|call| {
                let arguments = serde_json::from_str::<Json>(&call.function.arguments)
                    .unwrap_or_else(|_| json!(call.function.arguments));
                json!({"id": call.id, "type": call.kind, "function": {"name": call.function.name, "arguments": arguments}})
            })
            .collect();
        out.insert("tool_calls".into(), Json::Array(calls));
    }
    if let Some(id) = &message.tool_call_id {
        out.insert("tool_call_id".into(), json!(id));
    }
    if let Some(reasoning) = &message.reasoning_content {
        out.insert("reasoning_content".into(), json!(reasoning));
    }
    out
}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// Current local time; an invalid format is a template error, not a panic
/// (chrono's `Display` fails on unknown specifiers).
fn strftime_now(format: String) -> std::result::Result<String, minijinja::Error> {
    use std::fmt::Write;
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(&format)).map_err(|_| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format '{format}'"),
        )
    })?;
    Ok(out)
}

/// `tojson` as transformers defines it: `json.dumps(x, ensure_ascii=False)`
/// with `", "` and `": "` separators (or an indent), keys in their order, and
/// no HTML escaping. The exact bytes matter: they become prompt tokens.
fn python_tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut out = Vec::new();
    let result = match indent {
        Some(n) => {
            let pad = " ".repeat(n);
            let mut ser = serde_json::Serializer::with_formatter(
                &mut out,
                serde_json::ser::PrettyFormatter::with_indent(pad.as_bytes()),
            );
            value.serialize(&mut ser)
        }
        None => value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, PythonFormatter)),
    };
    result.map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    Ok(Value::from_safe_string(String::from_utf8(out).unwrap_or_default()))
}

/// serde_json formatter with Python's default separators.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(&mut self, writer: &mut W, first: bool) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(b", ")
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, writer: &mut W) -> std::io::Result<()> {
        writer.write_all(b": ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmlab_core::{FunctionCall, FunctionDefinition, Role, ToolCall};

    const CHATML: &str = "{% for message in messages %}{% if loop.first and message.role != 'system' %}<|im_start|>system\nDefault.<|im_end|>\n{% endif %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    #[test]
    fn renders_chatml_with_default_system_prompt() {
        let t = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let out = t.render(&[ChatMessage::user("Hi")], &[]).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nDefault.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn tojson_matches_python_and_keeps_key_order() {
        let src = "{{ tools | tojson }}|{{ messages[0].tool_calls[0].function.arguments | tojson }}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        let tool = ToolDefinition {
            kind: "function".into(),
            function: FunctionDefinition {
                name: "get_weather".into(),
                description: Some("Weather <now> & here".into()),
                parameters: Some(
                    json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
                ),
            },
        };
        let mut msg = ChatMessage::new(Role::Assistant, "");
        msg.tool_calls.push(ToolCall {
            id: "c1".into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "get_weather".into(),
                arguments: "{\"city\":\"Zürich\"}".into(),
            },
        });
        let out = t.render(&[msg], &[tool]).unwrap();
        assert_eq!(
            out,
            "[{\"type\": \"function\", \"function\": {\"name\": \"get_weather\", \"description\": \"Weather <now> & here\", \"parameters\": {\"type\": \"object\", \"properties\": {\"city\": {\"type\": \"string\"}}, \"required\": [\"city\"]}}}]|{\"city\": \"Zürich\"}"
        );
    }

    #[test]
    fn raise_exception_becomes_an_invalid_request() {
        let t = ChatTemplate::new("{{ raise_exception('Conversation roles must alternate') }}", "", "").unwrap();
        let err = t.render(&[ChatMessage::user("x")], &[]).unwrap_err();
        assert_eq!(err.kind, llmlab_core::ErrorKind::InvalidRequest);
        assert!(
            err.message.contains("Conversation roles must alternate"),
            "{}",
            err.message
        );
    }

    #[test]
    fn python_methods_and_helpers_are_available() {
        let t = ChatTemplate::new(
            "{{ '  x '.strip() }}{{ bos_token }}{{ strftime_now('%Y') | length }}",
            "<s>",
            "",
        )
        .unwrap();
        assert_eq!(t.render(&[ChatMessage::user("x")], &[]).unwrap(), "x<s>4");
    }

    #[test]
    fn an_invalid_strftime_format_is_an_error_not_a_panic() {
        let t = ChatTemplate::new("{{ strftime_now('%Q') }}", "", "").unwrap();
        assert!(t.render(&[ChatMessage::user("x")], &[]).is_err());
    }

    #[test]
    fn syntax_errors_are_reported() {
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }
}
