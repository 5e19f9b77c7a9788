//! Proto messages to core requests and core answers to proto messages.
//! Only shapes change here: the core service validates every value, and
//! the errors raised here name the proto field at fault.

use base64::Engine as _;
use serde::Serialize;
use serde_json::Value;

use llmlab_core::embedding::{EmbedInput, EmbeddingRequest, EmbeddingResponse};
use llmlab_core::keep_alive::KeepAlive;
use llmlab_core::service::ModelStatus;
use llmlab_core::{
    ChatMessage, ChatRequest, CompletionRequest, ContentPart, Error, FunctionCall, FunctionDefinition,
    GenerationParams, ImageRequest, ImageResult, ImageUrl, MessageContent, Result, Role, SamplingParams, ToolCall,
    ToolChoice, ToolDefinition,
};

use super::proto;

fn keep_alive(text: &str, field: &str) -> Result<Option<KeepAlive>> {
    if text.is_empty() {
        return Ok(None);
    }
    KeepAlive::parse(text)
        .map(Some)
        .map_err(|e| Error::invalid_param(field, format!("'{field}': {}", e.message)))
}

fn json_text(text: &str, field: &str) -> Result<Option<Value>> {
    if text.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| Error::invalid_param(field, format!("'{field}' is not JSON: {e}")))
}

fn role(name: &str, field: &str) -> Result<Role> {
    serde_json::from_value(Value::String(name.to_owned())).map_err(|_| {
        Error::invalid_param(
            field,
            format!("'{field}' must be system, developer, user, assistant or tool, got '{name}'"),
        )
    })
}

fn message(message: proto::Message, index: usize) -> Result<ChatMessage> {
    let mut out = ChatMessage::new(role(&message.role, &format!("messages[{index}].role"))?, "");
    out.content = if message.parts.is_empty() {
        MessageContent::Text(message.content)
    } else if message.content.is_empty() {
        MessageContent::Parts(
            message
                .parts
                .into_iter()
                .enumerate()
                .map(|(j, part)| content_part(part, &format!("messages[{index}].parts[{j}]")))
                .collect::<Result<_>>()?,
        )
    } else {
        return Err(Error::invalid_param(
            format!("messages[{index}].content"),
            "set 'content' or 'parts', not both",
        ));
    };
    out.tool_call_id = Some(message.tool_call_id).filter(|id| !id.is_empty());
    out.tool_calls = message
        .tool_calls
        .into_iter()
        .map(|call| ToolCall {
            id: call.id,
            kind: "function".to_owned(),
            function: FunctionCall {
                name: call.name,
                arguments: call.arguments,
            },
        })
        .collect();
    Ok(out)
}

/// An image's bytes travel as a base64 data URL, the one form core reads
/// (core decodes and checks them).
fn content_part(part: proto::ContentPart, field: &str) -> Result<ContentPart> {
    use proto::content_part::Part;
    match part.part {
        Some(Part::Text(text)) => Ok(ContentPart::Text { text }),
        Some(Part::Image(image)) => {
            let url = match (image.data.is_empty(), image.url.is_empty()) {
                (false, true) => format!(
                    "data:application/octet-stream;base64,{}",
                    base64::engine::general_purpose::STANDARD.encode(&image.data)
                ),
                (true, false) => image.url,
                _ => {
                    return Err(Error::invalid_param(
                        format!("{field}.image"),
                        "an image needs exactly one of 'data' and 'url'",
                    ))
                }
            };
            Ok(ContentPart::ImageUrl {
                image_url: ImageUrl { url, detail: None },
            })
        }
        None => Err(Error::invalid_param(field, "a content part needs 'text' or 'image'")),
    }
}

fn tool(tool: proto::Tool, index: usize) -> Result<ToolDefinition> {
    Ok(ToolDefinition {
        kind: "function".to_owned(),
        function: FunctionDefinition {
            name: tool.name,
            description: Some(tool.description).filter(|d| !d.is_empty()),
            parameters: json_text(&tool.parameters_json, &format!("tools[{index}].parameters_json"))?,
        },
    })
}

fn tool_choice(text: &str) -> ToolChoice {
    match text {
        "" | "auto" => ToolChoice::Auto,
        "none" => ToolChoice::None,
        "required" => ToolChoice::Required,
        name => ToolChoice::Function(name.to_owned()),
    }
}

fn sampling(sampling: Option<proto::Sampling>) -> SamplingParams {
    let s = sampling.unwrap_or_default();
    SamplingParams {
        temperature: s.temperature,
        top_p: s.top_p,
        top_k: s.top_k,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        presence_penalty: s.presence_penalty,
        frequency_penalty: s.frequency_penalty,
        penalty_last_n: None,
        seed: s.seed,
    }
}

/// Generation settings and the keep-alive they carry.
fn settings(settings: Option<proto::GenerationSettings>) -> Result<(GenerationParams, Option<KeepAlive>)> {
    let s = settings.unwrap_or_default();
    let params = GenerationParams {
        sampling: sampling(s.sampling),
        max_tokens: s.max_tokens,
        stop: s.stop,
        json_schema: json_text(&s.json_schema, "settings.json_schema")?,
        batch_invariant: s.batch_invariant,
        ..GenerationParams::default()
    };
    Ok((params, keep_alive(&s.keep_alive, "settings.keep_alive")?))
}

pub fn chat_request(request: proto::ChatRequest) -> Result<ChatRequest> {
    let (params, keep_alive) = settings(request.settings)?;
    Ok(ChatRequest {
        model: request.model,
        messages: request
            .messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| message(m, i))
            .collect::<Result<_>>()?,
        tools: request
            .tools
            .into_iter()
            .enumerate()
            .map(|(i, t)| tool(t, i))
            .collect::<Result<_>>()?,
        tool_choice: tool_choice(&request.tool_choice),
        params,
        keep_alive,
    })
}

pub fn completion_request(request: proto::CompleteRequest) -> Result<CompletionRequest> {
    let (params, keep_alive) = settings(request.settings)?;
    Ok(CompletionRequest {
        model: request.model,
        prompt: request.prompt,
        params,
        keep_alive,
    })
}

pub fn embed_request(request: proto::EmbedRequest) -> EmbeddingRequest {
    EmbeddingRequest {
        model: request.model,
        inputs: request.inputs.into_iter().map(EmbedInput::Text).collect(),
        dimensions: request.dimensions.map(|d| d as usize),
        normalize: request.normalize,
        truncate: request.truncate,
        keep_alive: None,
    }
}

pub fn embed_response(answer: EmbeddingResponse) -> proto::EmbedResponse {
    proto::EmbedResponse {
        model: answer.model,
        embeddings: answer
            .embeddings
            .into_iter()
            .map(|values| proto::Embedding { values })
            .collect(),
        prompt_tokens: answer.prompt_tokens,
    }
}

pub fn load_keep_alive(text: &str) -> Result<Option<KeepAlive>> {
    keep_alive(text, "keep_alive")
}

/// The serde name of a unit enum value (`half_open`, `loaded`…), as the
/// HTTP door shows it.
fn serde_name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(name)) => name,
        _ => String::new(),
    }
}

pub fn model_info(status: &ModelStatus) -> proto::ModelInfo {
    proto::ModelInfo {
        id: status.id.clone(),
        kind: status.kind.as_str().to_owned(),
        state: serde_name(&status.state),
        error: status.error.clone().unwrap_or_default(),
        memory_bytes: status.memory_bytes.unwrap_or(0),
        active_requests: u32::try_from(status.active_requests).unwrap_or(u32::MAX),
        circuit: serde_name(&status.circuit),
        input_modalities: status.input_modalities.iter().map(|m| (*m).to_owned()).collect(),
    }
}

pub fn image_request(request: proto::GenerateImageRequest) -> Result<ImageRequest> {
    let text = |value: String| Some(value).filter(|v| !v.is_empty());
    let bytes = |value: Vec<u8>| Some(value).filter(|v| !v.is_empty());
    Ok(ImageRequest {
        model: request.model,
        prompt: request.prompt,
        negative_prompt: text(request.negative_prompt),
        n: request.n,
        size: text(request.size),
        steps: request.steps,
        guidance_scale: request.guidance_scale,
        seed: request.seed,
        scheduler: text(request.scheduler),
        image: bytes(request.image),
        mask: bytes(request.mask),
        strength: request.strength,
        output_format: text(request.output_format),
        partial_images: request.partial_images,
        keep_alive: keep_alive(&request.keep_alive, "keep_alive")?,
    })
}

pub fn image_result(result: ImageResult) -> proto::GeneratedImages {
    let first = result.images.first();
    proto::GeneratedImages {
        output_format: first.map_or("png", |i| i.format.as_str()).to_owned(),
        width: first.map_or(0, |i| i.width),
        height: first.map_or(0, |i| i.height),
        seed: result.seed,
        model: result.model,
        images: result.images.into_iter().map(|i| i.bytes).collect(),
    }
}

pub fn guard_name(trip: &llmlab_core::guards::GuardTrip) -> String {
    serde_name(&trip.kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_requests_keep_every_field() {
        let request = proto::ChatRequest {
            model: "m".into(),
            messages: vec![
                proto::Message {
                    role: "system".into(),
                    content: "be brief".into(),
                    ..Default::default()
                },
                proto::Message {
                    role: "tool".into(),
                    content: "42".into(),
                    tool_call_id: "call_1".into(),
                    ..Default::default()
                },
            ],
            settings: Some(proto::GenerationSettings {
                max_tokens: Some(7),
                sampling: Some(proto::Sampling {
                    temperature: Some(0.0),
                    seed: Some(3),
                    ..Default::default()
                }),
                stop: vec!["\n".into()],
                json_schema: r#"{"type":"object"}"#.into(),
                keep_alive: "5m".into(),
                batch_invariant: Some(true),
            }),
            tools: vec![proto::Tool {
                name: "add".into(),
                description: String::new(),
                parameters_json: r#"{"type":"object"}"#.into(),
            }],
            tool_choice: "add".into(),
        };
        let core = chat_request(request).unwrap();
        assert_eq!(core.messages[0].role, Role::System);
        assert_eq!(core.messages[1].tool_call_id.as_deref(), Some("call_1"));
        assert_eq!(core.params.max_tokens, Some(7));
        assert_eq!(core.params.sampling.seed, Some(3));
        assert_eq!(core.params.stop, vec!["\n".to_owned()]);
        assert!(core.params.json_schema.is_some());
        assert_eq!(core.tool_choice, ToolChoice::Function("add".into()));
        assert_eq!(core.tools[0].function.description, None);
        assert!(core.keep_alive.is_some());
        assert_eq!(core.params.batch_invariant, Some(true));
    }

    #[test]
    fn image_parts_become_data_urls_and_misshapen_ones_are_refused() {
        use proto::content_part::Part;
        let image = |data: &[u8], url: &str| proto::ContentPart {
            part: Some(Part::Image(proto::Image {
                data: data.to_vec(),
                url: url.into(),
            })),
        };
        let message = |parts: Vec<proto::ContentPart>, content: &str| proto::ChatRequest {
            messages: vec![proto::Message {
                role: "user".into(),
                content: content.into(),
                parts,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = proto::ContentPart {
            part: Some(Part::Text("look".into())),
        };
        let core = chat_request(message(vec![image(&[1, 2, 3], ""), text.clone()], "")).unwrap();
        let MessageContent::Parts(parts) = &core.messages[0].content else {
            panic!("parts expected")
        };
        assert_eq!(
            parts[0],
            ContentPart::ImageUrl {
                image_url: ImageUrl {
                    url: "data:application/octet-stream;base64,AQID".into(),
                    detail: None
                }
            }
        );
        assert_eq!(parts[1], ContentPart::Text { text: "look".into() });
        for (bad, field) in [
            (
                message(vec![image(&[1], "http://x/y.png")], ""),
                "messages[0].parts[0].image",
            ),
            (message(vec![image(&[], "")], ""), "messages[0].parts[0].image"),
            (
                message(vec![proto::ContentPart { part: None }], ""),
                "messages[0].parts[0]",
            ),
            (message(vec![text], "also text"), "messages[0].content"),
        ] {
            let err = chat_request(bad).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(field), "{}", err.message);
        }
    }

    #[test]
    fn errors_name_the_proto_field() {
        let bad_role = proto::ChatRequest {
            messages: vec![proto::Message {
                role: "robot".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            chat_request(bad_role).unwrap_err().param.as_deref(),
            Some("messages[0].role")
        );
        let bad_schema = proto::ChatRequest {
            settings: Some(proto::GenerationSettings {
                json_schema: "{".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            chat_request(bad_schema).unwrap_err().param.as_deref(),
            Some("settings.json_schema")
        );
    }
}
