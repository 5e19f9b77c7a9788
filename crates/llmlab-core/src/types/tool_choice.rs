//! `tool_choice`, and the JSON schema that forces a tool call when the
//! caller requires one. The schema describes the plain JSON object
//! `{"name": …, "arguments": …}` that every tool-call parser accepts, so one
//! grammar works whatever the model's own tool-call format.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{check_grammar_schema, ToolDefinition};
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
/// is free. Errors name `tool_choice` when it asks for something impossible,
/// and `tools[i].function.parameters` (or `tools`, for all of them together)
/// when a schema cannot become a grammar (see [`check_grammar_schema`]).
pub fn forced_tool_call_schema(tools: &[ToolDefinition], choice: &ToolChoice) -> Result<Option<Value>> {
    // Each allowed tool with its index in `tools`, for error messages.
    let allowed: Vec<(usize, &ToolDefinition)> = match choice {
        ToolChoice::Auto | ToolChoice::None => return Ok(None),
        ToolChoice::Required => tools.iter().enumerate().collect(),
        ToolChoice::Function(name) => tools
            .iter()
            .enumerate()
            .filter(|(_, t)| &t.function.name == name)
            .collect(),
    };
    if allowed.is_empty() {
        let message = match choice {
            ToolChoice::Function(name) => {
                format!(
                    "tool_choice names '{}', which is not among the declared tools",
                    crate::text::echo(name)
                )
            }
            _ => "tool_choice 'required' needs at least one tool in 'tools'".to_owned(),
        };
        return Err(Error::invalid_param("tool_choice", message));
    }
    // The parameters become part of a grammar: check each on its own, so
    // that an error points into the tool the client wrote.
    for (i, tool) in &allowed {
        if let Some(parameters) = &tool.function.parameters {
            check_grammar_schema(parameters, &format!("tools[{i}].function.parameters"))?;
        }
    }
    let single = allowed.len() == 1;
    let variants: Vec<Value> = allowed
        .iter()
        .enumerate()
        .map(|(k, (_, tool))| {
            // `$ref`s in the parameters start from the parameters' root,
            // which the wrapper below moves: move the references with it.
            let prefix = if single {
                "/properties/arguments".to_owned()
            } else {
                format!("/oneOf/{k}/properties/arguments")
            };
            let arguments = tool.function.parameters.as_ref().map_or_else(
                || json!({"type": "object"}),
                |parameters| super::schema_limits::rebase_refs(parameters, &prefix),
            );
            json!({
                "type": "object",
                "properties": {"name": {"const": tool.function.name}, "arguments": arguments},
                "required": ["name", "arguments"],
                "additionalProperties": false
            })
        })
        .collect();
    let schema = if single {
        variants.into_iter().next().unwrap_or_default()
    } else {
        json!({"oneOf": variants})
    };
    // Together the tools must still fit the limits of one grammar.
    check_grammar_schema(&schema, "tools")?;
    Ok(Some(schema))
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

    #[test]
    fn tool_schemas_are_checked_and_their_refs_follow_the_wrapper() {
        let mut with_defs = tool("d");
        with_defs.function.parameters = Some(json!({
            "type": "object", "properties": {"at": {"$ref": "#/$defs/place"}},
            "$defs": {"place": {"type": "string"}}
        }));
        let one = forced_tool_call_schema(std::slice::from_ref(&with_defs), &ToolChoice::Required)
            .unwrap()
            .unwrap();
        assert_eq!(
            one["properties"]["arguments"]["properties"]["at"]["$ref"],
            "#/properties/arguments/$defs/place"
        );
        let two = forced_tool_call_schema(&[tool("a"), with_defs.clone()], &ToolChoice::Required)
            .unwrap()
            .unwrap();
        assert_eq!(
            two["oneOf"][1]["properties"]["arguments"]["properties"]["at"]["$ref"],
            "#/oneOf/1/properties/arguments/$defs/place"
        );
        check_grammar_schema(&two, "tools").unwrap();

        let mut cyclic = tool("c");
        cyclic.function.parameters = Some(json!({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}));
        let tools = [tool("a"), cyclic];
        let err = forced_tool_call_schema(&tools, &ToolChoice::Function("c".into())).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("tools[1].function.parameters"));
        // Not forced: the schema never becomes a grammar.
        assert_eq!(forced_tool_call_schema(&tools, &ToolChoice::Auto).unwrap(), None);
    }
}
