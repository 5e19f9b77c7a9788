//! The checker of the OpenAPI document's schema subset, for
//! openapi_drift.rs: its operations, `$ref`s, examples made from schemas,
//! and whether a value or a whole reply fits what the document says.

use axum::http::header;
use serde_json::{json, Value};

use crate::common::Reply;

/// The HTTP methods a route may answer (the keys of a path item that are operations).
pub const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

/// Every documented operation: method (upper case), path, operation.
pub fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let paths = doc["paths"].as_object().unwrap().iter();
    let ops = paths.flat_map(|(path, ops)| ops.as_object().unwrap().iter().map(move |(m, op)| (m, path, op)));
    ops.filter(|(m, ..)| METHODS.contains(&m.to_uppercase().as_str()))
        .map(|(m, path, op)| (m.to_uppercase(), path.clone(), op))
        .collect()
}

/// Follows local `$ref`s (the document has no others).
pub fn resolve<'a>(doc: &'a Value, mut schema: &'a Value) -> &'a Value {
    while let Some(r) = schema.get("$ref").and_then(Value::as_str) {
        schema = doc.pointer(&r[1..]).unwrap_or_else(|| panic!("dangling $ref {r}"));
    }
    schema
}

fn variants(schema: &Value) -> &[Value] {
    let list = schema.get("oneOf").or_else(|| schema.get("anyOf"));
    list.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

fn types(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn has_type(value: &Value, ty: &str) -> bool {
    match value {
        Value::Number(n) => ty == "number" || (ty == "integer" && !n.is_f64()),
        Value::Null => ty == "null",
        Value::Bool(_) => ty == "boolean",
        Value::String(_) => ty == "string",
        Value::Array(_) => ty == "array",
        Value::Object(_) => ty == "object",
    }
}

/// Records where `value` breaks `schema`: a field the schema does not list,
/// a missing required field, a wrong type, const or enum value. oneOf and
/// anyOf pass when any variant fits; an object schema without `properties`
/// is free-form.
pub fn check(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if !variants(schema).is_empty() {
        let fits = |v: &Value| {
            let mut e = Vec::new();
            check(doc, v, value, at, &mut e);
            e.is_empty()
        };
        if !variants(schema).iter().any(fits) {
            errors.push(format!("{at}: {value} fits no documented variant"));
        }
        return;
    }
    let types = types(schema);
    if !types.is_empty() && !types.iter().any(|t| has_type(value, t)) {
        return errors.push(format!("{at}: {value} is not {types:?}"));
    }
    let allowed = schema.get("const").map(|c| vec![c.clone()]);
    let allowed = allowed.or_else(|| schema["enum"].as_array().cloned());
    if allowed.is_some_and(|a| !a.contains(value)) {
        errors.push(format!("{at}: {value} is not a documented value"));
    }
    if let Value::Object(map) = value {
        let required = schema["required"].as_array().into_iter().flatten();
        for name in required.filter_map(Value::as_str) {
            if !map.contains_key(name) {
                errors.push(format!("{at}: required field '{name}' is missing"));
            }
        }
        let props = schema.get("properties").and_then(Value::as_object);
        for (key, item) in map {
            let here = format!("{at}.{key}");
            match (props.and_then(|p| p.get(key)), schema.get("additionalProperties")) {
                (Some(s), _) | (None, Some(s @ Value::Object(_))) => check(doc, s, item, &here, errors),
                (None, extra) if props.is_some() || extra == Some(&json!(false)) => {
                    errors.push(format!("{here}: field is not documented"))
                }
                _ => {}
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check(doc, item_schema, item, &format!("{at}[{i}]"), errors);
        }
    }
}

/// A valid value for `schema`: its first example, default, const or enum
/// value, else the first variant's, else the least its type and bounds
/// allow. Objects get every documented property, arrays one item.
pub fn example(doc: &Value, schema: &Value) -> Value {
    let schema = resolve(doc, schema);
    let given = schema["examples"].get(0).or(schema.get("default"));
    let given = given.or(schema.get("const"));
    if let Some(v) = given.or(schema["enum"].get(0)) {
        return v.clone();
    }
    if let Some(first) = variants(schema).first() {
        return example(doc, first);
    }
    let bound = |k: &str| schema.get(k).and_then(Value::as_f64);
    let number = bound("minimum").or(bound("maximum"));
    let number = number.or(bound("exclusiveMinimum").map(|m| m + 1.0)).unwrap_or(1.0);
    match types(schema).into_iter().find(|t| *t != "null") {
        Some("object") => {
            let props = schema["properties"].as_object().into_iter().flatten();
            Value::Object(props.map(|(k, s)| (k.clone(), example(doc, s))).collect())
        }
        Some("array") => json!([example(doc, &schema["items"])]),
        Some("string") => json!("x"),
        Some("boolean") => json!(true),
        Some("integer") => json!(number as i64),
        Some("number") => json!(number),
        _ => panic!("no example can be made for {schema}"),
    }
}

/// The shapes a top-level field may take: one value per oneOf/anyOf
/// variant and per enum value.
pub fn alternatives(doc: &Value, schema: &Value) -> Vec<Value> {
    let schema = resolve(doc, schema);
    match (variants(schema), schema["enum"].as_array()) {
        ([], Some(values)) => values.clone(),
        ([], None) => vec![example(doc, schema)],
        (variants, _) => variants.iter().flat_map(|v| alternatives(doc, v)).collect(),
    }
}

/// Checks one answer against the document: its status and media type are
/// documented for the operation (for a 405, any operation of the path), it
/// carries the headers marked required, and its body fits the schema (for
/// SSE, each `data:` line fits the media type's `x-event-data`).
pub fn check_reply(doc: &Value, method: &str, path: &str, reply: &Reply) -> Vec<String> {
    let at = format!("{method} {path} -> {}", reply.status.as_u16());
    let ops = doc["paths"][path].as_object().expect("a documented path");
    let op = ops.get(&method.to_lowercase()).unwrap_or(ops.values().next().unwrap());
    let Some(response) = op["responses"].get(reply.status.as_str()) else {
        return vec![format!("{at}: status not documented ({})", reply.body)];
    };
    let mut errors = Vec::new();
    let headers = resolve(doc, response)["headers"].as_object().into_iter().flatten();
    for (name, _) in headers.filter(|(_, h)| resolve(doc, h)["required"] == json!(true)) {
        if !reply.headers.contains_key(name.as_str()) {
            errors.push(format!("{at}: required header {name} is missing"));
        }
    }
    let kind = reply.headers[header::CONTENT_TYPE].to_str().unwrap();
    let kind = kind.split(';').next().unwrap().trim();
    let Some(media) = resolve(doc, response)["content"].get(kind) else {
        return vec![format!("{at}: content type '{kind}' not documented")];
    };
    let data = reply.sse_data().into_iter().filter(|d| d != "[DONE]");
    let bodies: Vec<Value> = match kind {
        "application/json" => vec![reply.json()],
        "text/event-stream" => data.map(|d| serde_json::from_str(&d).unwrap()).collect(),
        _ => Vec::new(),
    };
    let schema = media.get("x-event-data").unwrap_or(&media["schema"]);
    for body in bodies {
        check(doc, schema, &body, &at, &mut errors);
        check_code(doc, &body, &at, &mut errors);
    }
    errors
}

/// Clients must accept codes they do not know, so the document lists the
/// codes as `examples` rather than an enum; every code answered is listed.
pub fn check_code(doc: &Value, body: &Value, at: &str, errors: &mut Vec<String>) {
    let listed = doc.pointer("/components/schemas/ErrorObject/properties/code/examples");
    let code = &body["error"]["code"];
    if code.is_string() && !listed.unwrap().as_array().unwrap().contains(code) {
        errors.push(format!("{at}: error code {code} is not documented"));
    }
}

pub fn assert_agree(errors: Vec<String>) {
    let all = errors.join("\n");
    assert!(errors.is_empty(), "the document and the code disagree:\n{all}");
}
