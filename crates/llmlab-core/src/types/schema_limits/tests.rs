use serde_json::{json, Value};

use super::*;

fn refused(schema: Value) -> String {
    let err = check_grammar_schema(&schema, "response_format").expect_err(&format!("refused: {schema}"));
    assert_eq!(err.kind, crate::ErrorKind::InvalidRequest);
    assert_eq!(err.param.as_deref(), Some("response_format"));
    err.message
}

fn refused_with(schema: Value, needle: &str) {
    let message = refused(schema);
    assert!(message.contains(needle), "{message:?} should mention {needle:?}");
}

/// Schemas that must keep working; the llama crate's test feeds the same
/// kinds of schema through the real converter.
pub(super) fn accepted() -> Vec<Value> {
    vec![
        json!({"type": "object", "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 64},
            "address": {"type": "object", "properties": {
                "city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}
            }, "required": ["city"]},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 10},
            "unit": {"enum": ["c", "f", "k"]},
            "kind": {"const": "weather"}
        }, "required": ["name", "unit"]}),
        json!({"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 500}}),
        json!({"type": "integer", "minimum": 1}),
        json!({"type": "integer", "exclusiveMaximum": -3}),
        json!({"type": "integer", "minimum": -MAX_INTEGER_BOUND, "maximum": MAX_INTEGER_BOUND}),
        json!({"type": "integer", "minimum": MAX_INTEGER_BOUND}),
        json!({"type": "integer", "maximum": -MAX_INTEGER_BOUND}),
        json!({"type": "number", "minimum": 0.5, "exclusiveMaximum": 1}),
        json!({"type": "string", "pattern": "^[a-z]+$"}),
        json!({"type": "string", "pattern": "^[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}$"}),
        json!({"type": "string", "pattern": "^(?:\\+1)?\\(?[0-9]{3}\\)? ?[0-9]{3}\\-[0-9]{4}$"}),
        json!({"type": "string", "pattern": "^(é)+ [^\"\\\\]*\\.$"}),
        json!({"type": "string", "format": "date-time"}),
        json!({"type": ["string", "null"], "maxLength": 1000}),
        json!({"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]}),
        json!({"oneOf": [{"$ref": "#/$defs/cat"}, {"$ref": "#/$defs/dog"}], "$defs": {
            "cat": {"type": "object", "properties": {"meow": {"type": "boolean"}}, "required": ["meow"]},
            "dog": {"type": "object", "properties": {"bark": {"$ref": "#/$defs/loud"}}, "required": ["bark"]},
            "loud": {"enum": [1, 2, 3]}
        }}),
        // Pydantic's shape: a model used twice, and allOf around a $ref.
        json!({"type": "object", "properties": {
            "home": {"$ref": "#/$defs/Address"},
            "work": {"allOf": [{"$ref": "#/$defs/Address"}], "description": "office"}
        }, "required": ["home"], "$defs": {"Address": {"type": "object",
            "properties": {"street": {"type": "string"}}, "required": ["street"]}}}),
        // Recursion with a way out: optional children and an empty list.
        json!({"$ref": "#/$defs/node", "$defs": {"node": {"type": "object", "properties": {
            "value": {"type": "integer"},
            "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
            "next": {"$ref": "#/$defs/node"}
        }, "required": ["value", "children"]}}}),
        json!({"$ref": "#/$defs/expr", "$defs": {"expr": {"anyOf": [
            {"type": "number"},
            {"type": "array", "items": {"$ref": "#/$defs/expr"}, "minItems": 2}
        ]}}}),
        json!({"type": "array", "prefixItems": [{"type": "string"}, {"type": "number"}]}),
        json!({"type": "object", "additionalProperties": {"type": "integer"}}),
        json!({"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": true}),
        json!({"type": "object"}),
        json!({}),
        json!({"type": "string", "minLength": 2, "maxLength": 2}),
        json!({"type": "array", "items": {"const": {"$ref": "#/nowhere"}}}),
    ]
}

#[test]
fn valid_schemas_pass() {
    for schema in accepted() {
        if let Err(e) = check_grammar_schema(&schema, "response_format") {
            panic!("{schema} was refused: {}", e.message);
        }
    }
}

#[test]
fn ref_cycles_without_text_are_refused() {
    refused_with(
        json!({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}),
        "left-recursive",
    );
    refused_with(
        json!({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}),
        "left-recursive",
    );
    refused_with(
        json!({"$defs": {"a": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"}),
        "left-recursive",
    );
}

#[test]
fn recursion_without_a_way_out_is_refused() {
    refused_with(
        json!({"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}},
            "required": ["next"]}}, "$ref": "#/$defs/n"}),
        "no way out",
    );
    refused_with(
        json!({"$defs": {"l": {"type": "array", "items": {"$ref": "#/$defs/l"}, "minItems": 1}},
            "type": "object", "properties": {"x": {"$ref": "#/$defs/l"}}}),
        "no way out",
    );
}

#[test]
fn recursion_through_all_of_is_refused() {
    // The converter would overflow its stack on this one.
    refused_with(
        json!({"$defs": {"a": {"type": "object", "properties": {"p": {"allOf": [{"$ref": "#/$defs/a"}]}}}},
            "allOf": [{"$ref": "#/$defs/a"}]}),
        "recurses without end",
    );
    refused_with(json!({"type": "string", "allOf": [{"minLength": 1}]}), "would drop it");
}

#[test]
fn references_must_resolve_locally() {
    refused_with(json!({"$ref": "https://example.com/s.json"}), "same schema");
    refused_with(json!({"$ref": "#"}), "same schema");
    refused_with(json!({"$ref": "#/$defs/missing"}), "points at nothing");
    refused_with(json!({"$ref": 3}), "must be a string");
    refused_with(
        json!({"anyOf": [{"$ref": "#/$defs/a-b"}, {"$ref": "#/$defs/a.b"}],
            "$defs": {"a-b": {"type": "string"}, "a.b": {"type": "integer"}}}),
        "differ only in punctuation",
    );
    refused_with(
        json!({"type": "object", "properties": {"ref-defs-a": {"enum": ["x"]}, "b": {"$ref": "#/$defs/a"}},
            "$defs": {"a": {"type": "integer"}}}),
        "rule name 'ref-defs-a'",
    );
    refused_with(
        json!({"type": "object", "properties": {"": {"type": "integer"}}}),
        "empty name",
    );
    // Names the converter reserves are renamed by it, not confused.
    assert!(check_grammar_schema(&json!({"properties": {"root": {"enum": [1]}, "string": {}}}), "p").is_ok());
    assert!(check_grammar_schema(&json!({"properties": {"a": {"properties": {"": {}}}}}), "p").is_ok());
}

#[test]
fn repetition_counts_are_capped() {
    let message = refused(json!({"type": "object", "properties": {"name": {"type": "string", "minLength": 5000}}}));
    assert_eq!(
        message,
        "'minLength' at #/properties/name is 5000; at most 1000 repetitions are supported in grammar-constrained output"
    );
    refused_with(
        json!({"type": "array", "minItems": 1_000_000}),
        "'minItems' at # is 1000000",
    );
    refused_with(json!({"type": "string", "maxLength": 1001}), "'maxLength'");
    refused_with(json!({"type": "string", "pattern": "^a{2000}$"}), "repeats 2000 times");
    refused_with(json!({"type": "string", "pattern": "^(a{600}b{600})?$"}), "in all");
    let many: serde_json::Map<String, Value> = (0..20)
        .map(|i| (format!("p{i}"), json!({"type": "string", "maxLength": 1000})))
        .collect();
    refused_with(json!({"type": "object", "properties": many}), "add up to more than");
    refused_with(json!({"type": "string", "minLength": 2.5}), "non-negative integer");
    refused_with(json!({"type": "array", "maxItems": -1}), "non-negative integer");
}

#[test]
fn sizes_are_capped() {
    let values: Vec<u32> = (0..10_000).collect();
    refused_with(json!({"enum": values}), "'enum' at # has 10000 entries");
    let alternatives: Vec<Value> = (0..300).map(|i| json!({"const": i})).collect();
    refused_with(json!({"anyOf": alternatives}), "'anyOf'");
    let enums: serde_json::Map<String, Value> = (0..5)
        .map(|i| (format!("e{i}"), json!({"enum": (0..250).collect::<Vec<u32>>()})))
        .collect();
    refused_with(
        json!({"type": "object", "properties": enums}),
        "add up to more than 1024",
    );
    refused_with(json!({"const": "x".repeat(2000)}), "'const' at #");
    refused_with(json!({"properties": {"x".repeat(200): {}}}), "name of 200 bytes");
    refused_with(json!({"$ref": format!("#/{}", "x".repeat(300))}), "bytes long");
    let props: serde_json::Map<String, Value> = (0..200).map(|i| (format!("p{i}"), json!({}))).collect();
    refused_with(json!({"type": "object", "properties": props}), "200 properties");
    let mut deep = json!({"type": "string"});
    for _ in 0..70 {
        deep = json!({"type": "array", "items": deep});
    }
    refused_with(deep, "deeper than 64");
    // Nested type lists would multiply the tree the converter builds.
    let mut wide = json!({"type": "string"});
    for _ in 0..20 {
        wide = json!({"type": ["object", "object"], "properties": {"a": wide, "b": {"type": "string"}}});
    }
    refused_with(wide, "more than 1024 subschemas");
    // allOf copies what it merges: 4 copies per level, 6 levels.
    let mut defs = serde_json::Map::new();
    defs.insert(
        "d0".into(),
        json!({"type": "object", "properties": {"x": {"type": "string"}}}),
    );
    for i in 1..7 {
        let part = json!({"allOf": [{"$ref": format!("#/$defs/d{}", i - 1)}]});
        let props: serde_json::Map<String, Value> = (0..4).map(|k| (format!("p{k}"), part.clone())).collect();
        defs.insert(format!("d{i}"), json!({"type": "object", "properties": props}));
    }
    refused_with(json!({"$ref": "#/$defs/d6", "$defs": defs}), "would visit");
}

#[test]
fn patterns_must_be_supported() {
    refused_with(
        json!({"type": "string", "pattern": "^[a-$"}),
        "not a valid regular expression",
    );
    refused_with(
        json!({"type": "string", "pattern": "^a{3,2}$"}),
        "not a valid regular expression",
    );
    refused_with(json!({"type": "string", "pattern": "[a-z]+"}), "anchors");
    refused_with(json!({"type": "string", "pattern": "^\\d+$"}), "write [0-9]");
    refused_with(json!({"type": "string", "pattern": "^[\\w.]+$"}), "inside '[…]'");
    refused_with(json!({"type": "string", "pattern": "^(?i:a)$"}), "special group");
    refused_with(json!({"type": "string", "pattern": "^a^b$"}), "anchor inside");
    refused_with(json!({"type": "string", "pattern": "^é+$"}), "non-ASCII");
    refused_with(json!({"type": "string", "pattern": "^a{0}$"}), "zero times");
    refused_with(json!({"type": "string", "pattern": 5}), "must be a string");
    refused_with(
        json!({"type": "string", "pattern": format!("^{}$", "a".repeat(600))}),
        "bytes",
    );
}

#[test]
fn contradictory_bounds_are_refused() {
    refused_with(json!({"type": "number", "minimum": 5, "maximum": 1}), "lower bound 5");
    refused_with(
        json!({"type": "integer", "exclusiveMinimum": 3, "exclusiveMaximum": 3}),
        "lower bound",
    );
    refused_with(
        json!({"type": "number", "minimum": 3, "exclusiveMaximum": 3}),
        "lower bound",
    );
    refused_with(json!({"type": "integer", "minimum": 0.2, "maximum": 0.8}), "no integer");
    refused_with(
        json!({"type": "integer", "exclusiveMinimum": 1, "exclusiveMaximum": 2}),
        "no integer",
    );
    refused_with(
        json!({"type": "string", "minLength": 5, "maxLength": 3}),
        "'minLength' (5) is greater",
    );
    refused_with(json!({"type": "array", "minItems": 4, "maxItems": 2}), "'minItems' (4)");
    refused_with(
        json!({"type": "object", "minProperties": 3, "maxProperties": 1}),
        "'minProperties' (3)",
    );
    refused_with(json!({"type": "integer", "exclusiveMinimum": true}), "boolean without");
    refused_with(json!({"type": "integer", "minimum": "0"}), "must be a number");
    refused_with(
        json!({"type": "integer", "minimum": 1e300}),
        "integer bounds are limited",
    );
    refused_with(
        json!({"type": "integer", "maximum": 9_223_372_036_854_775_807i64}),
        "limited",
    );
    // Draft 4's boolean form still works beside its bound.
    assert!(check_grammar_schema(&json!({"type": "integer", "minimum": 0, "exclusiveMinimum": true}), "p").is_ok());
}

#[test]
fn shapes_the_converter_rejects_are_refused() {
    refused_with(json!({"type": "array", "items": false}), "boolean schemas");
    refused_with(json!({"type": "object", "properties": {"a": true}}), "#/properties/a");
    refused_with(json!({"type": []}), "empty list");
    refused_with(json!({"type": "text"}), "not a JSON Schema type");
    refused_with(json!({"type": 3}), "string or an array");
    refused_with(json!({"enum": []}), "non-empty array");
    refused_with(json!({"anyOf": {}}), "non-empty array");
    refused_with(json!({"type": "string", "format": 3}), "'format'");
    refused_with(
        json!({"type": "object", "properties": {"a]": {}}, "additionalProperties": {"type": "string"}}),
        "contains ']'",
    );
}

#[test]
fn refs_move_under_a_prefix() {
    let schema = json!({"type": "object", "properties": {
        "a": {"$ref": "#/$defs/a"}, "c": {"const": {"$ref": "#/$defs/a"}}
    }, "$defs": {"a": {"type": "array", "items": {"$ref": "#/$defs/a"}}}});
    let moved = rebase_refs(&schema, "/properties/arguments");
    assert_eq!(moved["properties"]["a"]["$ref"], "#/properties/arguments/$defs/a");
    assert_eq!(moved["$defs"]["a"]["items"]["$ref"], "#/properties/arguments/$defs/a");
    assert_eq!(moved["properties"]["c"]["const"]["$ref"], "#/$defs/a");
}
