//! `tool_choice`, and the JSON schema that forces a tool call when the
//! caller requires one. The schema describes the plain JSON object
//! `{"name": …, "arguments": …}` that every tool-call parser accepts, so one
//! grammar works whatever the model's own tool-call format.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::ToolDefinition;
use crate::{Error, Result};

/// Whether and which tool the model must call.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolChoice {
    /// The model decides (the default).
    #[default]
    Auto,
    /// No tool calls: tools are neither shown to the model nor parsed.
    None,
    /// The reply must be a call of one of the declared tools.
    Required,
    /// The reply must be a call of this tool.
    Function(String),
}

impl ToolChoice {
    /// Parse OpenAI's forms: `"auto"`, `"none"`, `"required"`, or
    /// `{"type": "function", "function": {"name": "…"}}`.
    pub fn from_openai(value: &Value) -> Result<Self> {
        let bad = || {
            Error::invalid_param(
                "tool_choice",
                "'tool_choice' must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": {\"name\": …}}",
            )
        };
        match value {
            Value::String(s) => match s.as_str() {
                "auto" => Ok(Self::Auto),
                "none" => Ok(Self::None),
                "required" => Ok(Self::Required),
                _ => Err(bad()),
            },
            Value::Object(o) => o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|name| !name.is_empty())
                .map(|name| Self::Function(name.to_owned()))
                .ok_or_else(bad),
            _ => Err(bad()),
        }
    }
}

/// The JSON schema a reply must match for `choice`, or `None` when the model
/// is free. Errors name `tool_choice` when it asks for something impossible.
pub fn forced_tool_call_schema(tools: &[ToolDefinition], choice: &ToolChoice) -> Result<Option<Value>> {
    let allowed: Vec<&ToolDefinition> = match choice {
        ToolChoice::Auto | ToolChoice::None => return Ok(None),
        ToolChoice::Required => tools.iter().collect(),
        ToolChoice::Function(name) => tools.iter().filter(|t| &t.function.name == name).collect(),
    };
    if allowed.is_empty() {
        let message = match choice {
            ToolChoice::Function(name) => {
                format!("tool_choice names '{name}', which is not among the declared tools")
            }
            _ => "tool_choice 'required' needs at least one tool in 'tools'".to_owned(),
        };
        return Err(Error::invalid_param("tool_choice", message));
    }
    let variants: Vec<Value> = allowed
        .iter()
        .map(|tool| {
            let arguments = tool
                .function
                .parameters
                .clone()
                .unwrap_or_else(|| json!({"type": "object"}));
            json!({
                "type": "object",
                "properties": {"name": {"const": tool.function.name}, "arguments": arguments},
                "required": ["name", "arguments"],
                "additionalProperties": false
            })
        })
        .collect();
    Ok(Some(if variants.len() == 1 {
        variants.into_iter().next().unwrap_or_default()
    } else {
        json!({"oneOf": variants})
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FunctionDefinition;

    fn tool(name: &str) -> ToolDefinition {
        ToolDefinition {
            kind: "function".into(),
            function: FunctionDefinition {
                name: name.into(),
                description: None,
                parameters: Some(json!({"type": "object", "properties": {"city": {"type": "string"}}})),
            },
        }
    }

    #[test]
    fn parses_openai_forms() {
        assert_eq!(
            ToolChoice::from_openai(&json!("required")).unwrap(),
            ToolChoice::Required
        );
        assert_eq!(
            ToolChoice::from_openai(&json!({"type": "function", "function": {"name": "f"}})).unwrap(),
            ToolChoice::Function("f".into())
        );
        assert_eq!(
            ToolChoice::from_openai(&json!("sometimes"))
                .unwrap_err()
                .param
                .as_deref(),
            Some("tool_choice")
        );
        assert!(ToolChoice::from_openai(&json!(3)).is_err());
    }

    #[test]
    fn schema_forces_name_and_arguments() {
        let tools = [tool("a"), tool("b")];
        assert_eq!(forced_tool_call_schema(&tools, &ToolChoice::Auto).unwrap(), None);
        let one = forced_tool_call_schema(&tools, &ToolChoice::Function("b".into()))
            .unwrap()
            .unwrap();
        assert_eq!(one["properties"]["name"]["const"], "b");
        assert_eq!(one["properties"]["arguments"]["properties"]["city"]["type"], "string");
        let any = forced_tool_call_schema(&tools, &ToolChoice::Required).unwrap().unwrap();
        assert_eq!(any["oneOf"].as_array().unwrap().len(), 2);
        assert!(forced_tool_call_schema(&tools, &ToolChoice::Function("c".into())).is_err());
        assert!(forced_tool_call_schema(&[], &ToolChoice::Required).is_err());
    }
}
