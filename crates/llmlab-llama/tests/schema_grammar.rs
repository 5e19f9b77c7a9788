//! The schema check in core (`check_grammar_schema`) must never let through
//! a schema that llama.cpp then fails on: every schema it accepts has to
//! convert (`json_schema_to_grammar`) and the grammar has to load in
//! llama.cpp's GBNF parser. No model is needed.

// llama.cpp's grammar loader is reached through the sys crate with a null
// vocabulary (it needs one only for `<token>` literals, which converted
// schemas never contain): that call is the one unsafe block here.
#![allow(unsafe_code)]

use std::ffi::CString;

use llmlab_core::check_grammar_schema;
use serde_json::{json, Value};

/// Whether llama.cpp's grammar parser loads `gbnf` (no left recursion, no
/// undefined rule, no over-large repetition).
fn grammar_loads(gbnf: &str) -> bool {
    let grammar = CString::new(gbnf).expect("no NUL in a converted grammar");
    let root = CString::new("root").expect("static");
    // SAFETY: both strings outlive the call; a null vocabulary is only read
    // for token literals; the sampler is freed at once and never used.
    unsafe {
        let sampler = llama_cpp_sys_2::llama_rs_sampler_init_grammar(std::ptr::null(), grammar.as_ptr(), root.as_ptr());
        if sampler.is_null() {
            return false;
        }
        llama_cpp_sys_2::llama_sampler_free(sampler);
    }
    true
}

/// Accepted by the check ⇒ converted and loaded by llama.cpp.
fn assert_accept_side(schema: &Value) -> bool {
    if check_grammar_schema(schema, "response_format").is_err() {
        return false;
    }
    let gbnf = llama_cpp_2::json_schema_to_grammar(&schema.to_string())
        .unwrap_or_else(|e| panic!("accepted schema {schema} failed to convert: {e}"));
    assert!(
        grammar_loads(&gbnf),
        "accepted schema {schema} gave a grammar llama.cpp refuses:\n{gbnf}"
    );
    // A pattern the converter cannot translate falls back to any string.
    if schema.get("pattern").is_some() {
        assert!(
            !gbnf.contains("root ::= string\n"),
            "pattern of {schema} was dropped:\n{gbnf}"
        );
    }
    true
}

fn fixed_schemas() -> Vec<Value> {
    vec![
        json!({"type": "object", "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 64},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1000},
            "unit": {"enum": ["c", "f", "k"]}, "kind": {"const": "weather"}
        }, "required": ["name", "unit"]}),
        json!({"type": "integer", "minimum": -999_999_999_999_999i64, "maximum": 999_999_999_999_999i64}),
        json!({"type": "integer", "minimum": 999_999_999_999_999i64}),
        json!({"type": "integer", "maximum": -999_999_999_999_999i64}),
        json!({"type": "integer", "exclusiveMinimum": 0.5, "exclusiveMaximum": 77}),
        json!({"type": "string", "minLength": 1000}),
        json!({"type": "string", "pattern": "^[a-z]+$"}),
        json!({"type": "string", "pattern": "^[a-f0-9]{8}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{4}-[a-f0-9]{12}$"}),
        json!({"type": "string", "pattern": "^(?:\\+1)?\\(?[0-9]{3}\\)? ?[0-9]{3}\\-[0-9]{4}$"}),
        json!({"type": "string", "pattern": "^(é)+ [^\"\\\\]*\\.$"}),
        json!({"type": "string", "pattern": "^(a{500}b{500})?$"}),
        json!({"type": "string", "pattern": "^(?:)x|y*?$"}),
        json!({"type": ["string", "null"], "format": "uuid"}),
        json!({"$ref": "#/$defs/node", "$defs": {"node": {"type": "object", "properties": {
            "value": {"type": "integer"},
            "children": {"type": "array", "items": {"$ref": "#/$defs/node"}},
            "next": {"$ref": "#/$defs/node"}
        }, "required": ["value", "children"]}}}),
        json!({"type": "object", "properties": {
            "home": {"$ref": "#/$defs/Address"},
            "work": {"allOf": [{"$ref": "#/$defs/Address"}]}
        }, "$defs": {"Address": {"type": "object", "properties": {"street": {"type": "string"}}}}}),
        json!({"properties": {"root": {"enum": [1]}, "string": {"maxLength": 3}, "value": {}}, "required": ["root"]}),
        json!({"properties": {"a": {"properties": {"": {"type": "integer"}}, "additionalProperties": true}}}),
        json!({"type": "object", "properties": {"a-b": {}, "a[": {"type": "boolean"}},
            "additionalProperties": {"type": "integer"}}),
    ]
}

#[test]
fn schemas_the_check_accepts_become_grammars() {
    for schema in fixed_schemas() {
        assert!(assert_accept_side(&schema), "{schema} should be accepted");
    }

    // The live reproductions really fail in llama.cpp, and are refused.
    for bad in [
        json!({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}),
        json!({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}),
        json!({"type": "string", "minLength": 5000}),
        json!({"type": "array", "minItems": 1_000_000}),
    ] {
        assert!(
            check_grammar_schema(&bad, "response_format").is_err(),
            "{bad} should be refused"
        );
        let loads = llama_cpp_2::json_schema_to_grammar(&bad.to_string()).is_ok_and(|g| grammar_loads(&g));
        assert!(!loads, "{bad} was expected to fail in llama.cpp");
    }

    // Random schemas from good and bad parts: whatever the check accepts
    // must convert and load.
    let mut rng = Lcg(0x5eed);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..3000 {
        let mut schema = random_schema(&mut rng, 0);
        if let Value::Object(o) = &mut schema {
            o.insert("$defs".into(), defs());
        }
        if assert_accept_side(&schema) {
            accepted += 1;
        } else {
            refused += 1;
        }
    }
    assert!(
        accepted > 300 && refused > 300,
        "accepted {accepted}, refused {refused}"
    );
}

struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % n
    }

    fn one<T: Clone>(&mut self, options: &[T]) -> T {
        options[self.below(options.len())].clone()
    }
}

/// Definitions the random schemas point into: some fine, some recursive
/// without a way out, some left-recursive.
fn defs() -> Value {
    json!({
        "leaf": {"type": "string", "maxLength": 8},
        "tree": {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": "#/$defs/tree"}}}},
        "opt": {"anyOf": [{"type": "null"}, {"type": "array", "items": {"$ref": "#/$defs/opt"}, "minItems": 1}]},
        "loop": {"$ref": "#/$defs/loop"},
        "ping": {"anyOf": [{"$ref": "#/$defs/pong"}, {"type": "null"}]},
        "pong": {"$ref": "#/$defs/ping"},
        "must": {"type": "object", "properties": {"m": {"$ref": "#/$defs/must"}}, "required": ["m"]},
        "obj": {"type": "object", "properties": {"o": {"type": "integer"}, "p": {"allOf": [{"$ref": "#/$defs/obj"}]}}},
        "str": {"type": "string", "pattern": "^[0-9]+$"}
    })
}

fn random_schema(rng: &mut Lcg, depth: usize) -> Value {
    let pick = if depth > 3 { rng.below(10) } else { rng.below(16) };
    match pick {
        0 => {
            let (min, max) = (rng.one(&[0, 3, 9, 2500]), rng.one(&[1, 5, 900, 3000]));
            json!({"type": "string", "minLength": min, "maxLength": max})
        }
        1 => {
            let pattern = rng.one(&[
                "^[a-z]{2,5}$",
                "^\\d+$",
                "^a|b$",
                "abc",
                "^(x|y)*[0-9]?$",
                "^é{2}$",
                "^[\\w]$",
                "^a{3,2}$",
                "^(?i)x$",
                "^a{0}*$",
                "^\\x41\\u00e9.$",
                "^[^a-]+\\.$",
                "^((a)+)+$",
            ]);
            json!({"type": "string", "pattern": pattern})
        }
        2 => {
            let bounds = [
                json!(-5),
                json!(0),
                json!(7.5),
                json!(12_345_678_901_234i64),
                json!(9e17),
                json!("1"),
            ];
            let mut s = json!({"type": "integer"});
            for key in ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"] {
                if rng.below(3) == 0 {
                    s[key] = rng.one(&bounds);
                }
            }
            s
        }
        3 => json!({"enum": (0..rng.one(&[2, 40, 300])).collect::<Vec<usize>>()}),
        4 => {
            let name = rng.one(&["leaf", "tree", "opt", "loop", "ping", "must", "obj", "str", "nope"]);
            json!({"$ref": format!("#/$defs/{name}")})
        }
        5 => json!({"type": rng.one(&["boolean", "null", "number", "string"])}),
        6 => json!({"const": rng.one(&["a", "b\"c", "d\\e"])}),
        7 => json!({"type": "string", "format": rng.one(&["date", "time", "date-time", "uuid", "email"])}),
        8 => json!({"type": ["integer", "string", "null"], "maxLength": 3}),
        9 => json!({}),
        10 | 11 => {
            let mut props = serde_json::Map::new();
            for i in 0..rng.below(4) {
                let name = format!("{}{i}", rng.one(&["a", "b", "ref-defs-leaf", "c]", "d-e"]));
                props.insert(name, random_schema(rng, depth + 1));
            }
            let required: Vec<String> = props.keys().filter(|_| rng.below(2) == 0).cloned().collect();
            let mut s = json!({"type": "object", "properties": props, "required": required});
            if rng.below(3) == 0 {
                s["additionalProperties"] = if rng.below(2) == 0 {
                    json!(true)
                } else {
                    random_schema(rng, depth + 1)
                };
            }
            s
        }
        12 => {
            let items = random_schema(rng, depth + 1);
            let (min, max) = (rng.one(&[0, 1, 3, 1500]), rng.one(&[2, 10, 400]));
            json!({"type": "array", "items": items, "minItems": min, "maxItems": max})
        }
        13 => json!({"anyOf": (0..1 + rng.below(3)).map(|_| random_schema(rng, depth + 1)).collect::<Vec<_>>()}),
        14 => json!({"allOf": (0..1 + rng.below(2)).map(|_| random_schema(rng, depth + 1)).collect::<Vec<_>>()}),
        _ => {
            json!({"type": "array", "prefixItems": (0..rng.below(3)).map(|_| random_schema(rng, depth + 1)).collect::<Vec<_>>()})
        }
    }
}
