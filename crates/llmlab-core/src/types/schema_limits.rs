//! Which JSON schemas may become a grammar (`response_format`, a forced
//! tool call's `parameters`), checked when a request is validated.
//!
//! llama.cpp turns a schema into GBNF in two steps (common/json-schema.cpp
//! builds a tree, common/json-schema-to-grammar.cpp writes rules) and then
//! parses the GBNF (src/llama-grammar.cpp). Each step has ways to fail late
//! or to take the whole process down: a `$ref` cycle through only `$ref` or
//! `anyOf` is a left-recursive grammar that llama.cpp refuses; the same cycle
//! inside `allOf` recurses without end (stack overflow); a cycle whose every
//! branch requires itself gives a grammar no text can finish; `minLength`
//! above 2000 is refused and `minLength` > `maxLength` makes the GBNF parser
//! loop until memory runs out; huge `enum`s stall every token. This module
//! mirrors the tree builder (which keywords lead where, with the same
//! precedence) so that it refuses exactly those cases, with the limits below,
//! as a client error that names the place in the schema.

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value};

use crate::{Error, Result};
use bounds::{check_counts_and_bounds, check_integer_bounds, string_format};

mod analysis;
mod bounds;
mod pattern;
#[cfg(test)]
mod tests;

/// Most subschemas the converter may build and visit. A `type` list builds
/// the schema once per type and `allOf` copies the properties it merges, so
/// this counts what the converter walks, not the JSON text. Real tool and
/// response schemas have tens of subschemas; a thousand is far beyond them
/// and keeps conversion and grammar setup to a few milliseconds.
pub const MAX_SCHEMA_NODES: usize = 1024;
/// Deepest nesting of subschemas (each `properties`, `items`, `anyOf`,
/// `$ref` step is one level). The converter and this check recurse once
/// per level; 64 keeps both far from any thread's stack limit.
pub const MAX_SCHEMA_DEPTH: usize = 64;
/// Largest `minLength`, `maxLength`, `minItems`, `maxItems` or `{m,n}` count
/// in a pattern. Each count becomes that many copies of a rule; llama.cpp
/// refuses counts above 2000 and silently drops maxima above 2000, and a
/// group holding more than 2000 generated rules fails too, so 1000 keeps
/// every case (a whole pattern included) below its threshold.
pub const MAX_REPETITIONS: u64 = 1000;
/// Sum of all those counts in one schema: the rules they generate must stay
/// a small grammar however many strings and arrays the schema has.
pub const MAX_TOTAL_REPETITIONS: u64 = 8192;
/// Most values in one `enum`, branches in one `anyOf`/`oneOf`, or types in
/// one `type` list. Alternatives that start alike stay alive together in
/// the grammar sampler, which then tests the whole vocabulary against each
/// of them for every token: a 10,000-value enum stalled a model for 49 s.
/// 256 keeps that work a fortieth of it.
pub const MAX_CHOICES: usize = 256;
/// All enum values, branches and types of a schema together.
pub const MAX_TOTAL_CHOICES: usize = 1024;
/// Longest `const` or `enum` value, as JSON text, in bytes.
pub const MAX_LITERAL_BYTES: usize = 1024;
/// All `const` and `enum` values of a schema together, in bytes.
pub const MAX_TOTAL_LITERAL_BYTES: usize = 65_536;
/// Most `properties` of one object. Each optional property is one more
/// alternative alive after `{` (see [`MAX_CHOICES`]).
pub const MAX_PROPERTIES: usize = 128;
/// Longest property name, in bytes. The converter names each rule after
/// the path to it, so long names along a deep path make every rule name
/// below them long; with [`MAX_SCHEMA_DEPTH`] this bounds a name to 8 KiB.
pub const MAX_PROPERTY_NAME_BYTES: usize = 128;
/// Longest `pattern`, in bytes (see [`MAX_REPETITIONS`] for why it matters).
pub const MAX_PATTERN_BYTES: usize = 512;
/// Largest magnitude of an integer schema's bounds. llama.cpp writes digit
/// rules for them; a lower bound of 16 digits yields a repetition `{16,15}`
/// that its GBNF parser loops on, and bounds near 2^63 overflow.
pub const MAX_INTEGER_BOUND: i64 = 999_999_999_999_999;

/// Refuse a schema that llama.cpp cannot turn into a working grammar, or
/// only into one too large or slow; `param` names the request field.
pub fn check_grammar_schema(schema: &Value, param: &str) -> Result<()> {
    analysis::analyse(schema)
        .map(|_| ())
        .map_err(|message| Error::invalid_param(param, message))
}

/// `schema` with each local `$ref` that the converter follows moved under
/// `prefix` (a JSON pointer such as `/properties/arguments`), for embedding
/// it in a larger schema whose root is elsewhere. Only `$ref`s at schema
/// positions change; a `"$ref"` inside a `const` value stays as it is.
pub(crate) fn rebase_refs(schema: &Value, prefix: &str) -> Value {
    let mut out = schema.clone();
    let mut builder = Builder::new(schema);
    if builder.build(schema, &mut Vec::new(), None, 0).is_err() {
        return out;
    }
    let sites: HashSet<&Vec<String>> = builder.ref_sites.iter().collect();
    for site in sites {
        let Some(Value::Object(object)) = lookup_mut(&mut out, site) else {
            continue;
        };
        if let Some(Value::String(r)) = object.get_mut("$ref") {
            if r.starts_with("#/") {
                *r = format!("#{prefix}{}", &r[1..]);
            }
        }
    }
    out
}

type Check<T> = std::result::Result<T, String>;

/// One subschema as llama.cpp's tree builder sees it.
#[derive(Debug)]
enum Kind {
    /// A schema that cannot contain others: "any", "const", "enum", "string",
    /// "integer", "number", "boolean", "null".
    Leaf(&'static str),
    /// A string with a supported `pattern`; the count of rules the
    /// converter names after it (`name-1`, `name-2`…).
    Pattern(usize),
    /// A `$ref` and the node built at its target.
    Ref(String, usize),
    AnyOf(Vec<usize>),
    AllOf(Vec<usize>),
    Array {
        items: usize,
        min: u64,
    },
    Tuple(Vec<usize>),
    Object {
        props: Vec<Prop>,
        additional: Option<usize>,
    },
}

#[derive(Debug)]
struct Prop {
    name: String,
    node: usize,
    required: bool,
}

#[derive(Debug)]
struct Node {
    kind: Kind,
    /// Where it is, as a JSON pointer; for use in messages.
    at: String,
}

/// Mirror of `common_chat_schema_builder`: same keywords, same precedence,
/// same failures, plus the limits of this module as it goes.
struct Builder<'a> {
    root: &'a Value,
    nodes: Vec<Node>,
    built: usize,
    /// `$ref` text → node of its target (`None` while that target is built).
    refs: HashMap<String, Option<usize>>,
    /// GBNF rule name of a `$ref` → the `$ref` that has it.
    ref_names: HashMap<String, String>,
    /// Paths (as object keys / array indices) of objects holding a `$ref`.
    ref_sites: Vec<Vec<String>>,
    choices: usize,
    repetitions: u64,
    literal_bytes: usize,
}

impl<'a> Builder<'a> {
    fn new(root: &'a Value) -> Self {
        Self {
            root,
            nodes: Vec::new(),
            built: 0,
            refs: HashMap::new(),
            ref_names: HashMap::new(),
            ref_sites: Vec::new(),
            choices: 0,
            repetitions: 0,
            literal_bytes: 0,
        }
    }

    fn push(&mut self, kind: Kind, path: &[String]) -> usize {
        self.nodes.push(Node {
            kind,
            at: pointer(path),
        });
        self.nodes.len() - 1
    }

    /// `ty` replaces the schema's own `type` (one entry of a `type` list).
    fn build(&mut self, value: &Value, path: &mut Vec<String>, ty: Option<&Value>, depth: usize) -> Check<usize> {
        let at = pointer(path);
        if depth > MAX_SCHEMA_DEPTH {
            return Err(format!(
                "the schema nests deeper than {MAX_SCHEMA_DEPTH} levels at {at}"
            ));
        }
        self.built += 1;
        if self.built > MAX_SCHEMA_NODES {
            return Err(format!(
                "the schema has more than {MAX_SCHEMA_NODES} subschemas (counting each entry of a 'type' list separately)"
            ));
        }
        let Some(schema) = value.as_object() else {
            return Err(format!(
                "the schema at {at} is {}; llama.cpp's grammar converter needs a JSON object there (boolean schemas are not supported)",
                json_kind(value)
            ));
        };
        check_counts_and_bounds(schema, &at)?;
        if let Some(r) = schema.get("$ref") {
            return self.build_ref(r, path, depth);
        }
        if let Some(key) = ["oneOf", "anyOf"].into_iter().find(|k| schema.contains_key(*k)) {
            let children = self.build_list(&schema[key], path, key, depth, true)?;
            return Ok(self.push(Kind::AnyOf(children), path));
        }
        let ty = ty.or_else(|| schema.get("type")).filter(|t| !t.is_null());
        if let Some(Value::Array(types)) = ty {
            if types.is_empty() {
                return Err(format!("'type' at {at} must not be an empty list"));
            }
            self.count_choices(types.len(), "'type' list", &at)?;
            let mut children = Vec::with_capacity(types.len());
            for t in types {
                children.push(self.build(value, path, Some(t), depth + 1)?);
            }
            return Ok(self.push(Kind::AnyOf(children), path));
        }
        if let Some(value) = schema.get("const") {
            self.count_literal(value, "'const'", &at)?;
            return Ok(self.push(Kind::Leaf("const"), path));
        }
        if let Some(values) = schema.get("enum") {
            let values = values
                .as_array()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("'enum' at {at} must be a non-empty array"))?;
            self.count_choices(values.len(), "'enum'", &at)?;
            for value in values {
                self.count_literal(value, "an 'enum' value", &at)?;
            }
            return Ok(self.push(Kind::Leaf("enum"), path));
        }
        let type_name = match ty {
            None => "",
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(format!("'type' at {at} must be a string or an array of strings")),
        };
        let has_properties = schema.contains_key("properties")
            || schema
                .get("additionalProperties")
                .is_some_and(|a| *a != Value::Bool(true));
        let has_all_of = schema.contains_key("allOf");
        let kind = match type_name {
            "" if has_properties => self.build_object(schema, path, depth)?,
            "" if has_all_of => Kind::AllOf(self.build_list(&schema["allOf"], path, "allOf", depth, false)?),
            "" if schema.contains_key("items") || schema.contains_key("prefixItems") => {
                self.build_array(schema, path, depth)?
            }
            "" if ["pattern", "minLength", "maxLength"]
                .iter()
                .any(|k| schema.contains_key(*k))
                || string_format(schema, &at)? =>
            {
                self.build_string(schema, &at)?
            }
            "" => Kind::Leaf("any"),
            "object" if !has_properties && has_all_of => {
                Kind::AllOf(self.build_list(&schema["allOf"], path, "allOf", depth, false)?)
            }
            "object" => self.build_object(schema, path, depth)?,
            "string" if has_all_of => Kind::AllOf(self.build_list(&schema["allOf"], path, "allOf", depth, false)?),
            "string" => self.build_string(schema, &at)?,
            "array" => self.build_array(schema, path, depth)?,
            "integer" => {
                check_integer_bounds(schema, &at)?;
                Kind::Leaf("integer")
            }
            "number" => Kind::Leaf("number"),
            "boolean" => Kind::Leaf("boolean"),
            "null" => Kind::Leaf("null"),
            other => {
                return Err(format!(
                    "'type' at {at} is '{}', which is not a JSON Schema type",
                    crate::text::echo(other)
                ))
            }
        };
        Ok(self.push(kind, path))
    }

    fn build_ref(&mut self, value: &Value, path: &[String], depth: usize) -> Check<usize> {
        let at = pointer(path);
        let Some(r) = value.as_str() else {
            return Err(format!("'$ref' at {at} must be a string"));
        };
        let shown = crate::text::echo(r);
        if r.len() > MAX_PROPERTY_NAME_BYTES * 2 {
            return Err(format!(
                "'$ref' at {at} is {} bytes long; at most {} are supported",
                r.len(),
                MAX_PROPERTY_NAME_BYTES * 2
            ));
        }
        if !r.starts_with("#/") {
            return Err(format!(
                "'$ref' at {at} is '{shown}'; only references into the same schema ('#/…') are supported, and not '#' itself (move a recursive root under '$defs')"
            ));
        }
        // The converter names the rule after the reference with every run
        // of other characters made one '-'; two references with one name
        // would share a rule.
        let name = format!("ref{}", rule_name(&r[1..]));
        match self.ref_names.get(&name) {
            Some(other) if other != r => {
                return Err(format!(
                    "'$ref' '{shown}' at {at} and '$ref' '{}' differ only in punctuation, which llama.cpp's grammar converter cannot tell apart; rename one definition",
                    crate::text::echo(other)
                ))
            }
            Some(_) => {}
            None => {
                self.ref_names.insert(name, r.to_owned());
            }
        }
        self.ref_sites.push(path.to_vec());
        if !self.refs.contains_key(r) {
            // Reserved first, so that a cycle back to this reference stops here.
            self.refs.insert(r.to_owned(), None);
            let mut target_path: Vec<String> = r[2..].split('/').map(str::to_owned).collect();
            let target = resolve(self.root, &target_path)
                .ok_or_else(|| format!("'$ref' '{shown}' at {at} points at nothing in the schema"))?;
            let id = self.build(target, &mut target_path, None, depth + 1)?;
            self.refs.insert(r.to_owned(), Some(id));
        }
        Ok(self.push(Kind::Ref(r.to_owned(), usize::MAX), path))
    }

    fn build_list(
        &mut self,
        list: &Value,
        path: &mut Vec<String>,
        key: &str,
        depth: usize,
        choices: bool,
    ) -> Check<Vec<usize>> {
        let at = pointer(path);
        let list = list
            .as_array()
            .filter(|l| !l.is_empty())
            .ok_or_else(|| format!("'{key}' at {at} must be a non-empty array of schemas"))?;
        if choices {
            self.count_choices(list.len(), &format!("'{key}'"), &at)?;
        }
        let mut children = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            path.extend([key.to_owned(), i.to_string()]);
            let child = self.build(item, path, None, depth + 1);
            path.truncate(path.len() - 2);
            children.push(child?);
        }
        Ok(children)
    }

    fn build_child(&mut self, value: &Value, path: &mut Vec<String>, keys: &[&str], depth: usize) -> Check<usize> {
        path.extend(keys.iter().map(|k| (*k).to_owned()));
        let child = self.build(value, path, None, depth + 1);
        path.truncate(path.len() - keys.len());
        child
    }

    fn build_object(&mut self, schema: &Map<String, Value>, path: &mut Vec<String>, depth: usize) -> Check<Kind> {
        let at = pointer(path);
        let required: HashSet<&str> = match schema.get("required") {
            Some(Value::Array(names)) => names.iter().filter_map(Value::as_str).collect(),
            _ => HashSet::new(),
        };
        let mut props = Vec::new();
        if let Some(properties) = schema.get("properties") {
            let properties = properties
                .as_object()
                .ok_or_else(|| format!("'properties' at {at} must be an object"))?;
            if properties.len() > MAX_PROPERTIES {
                return Err(format!(
                    "the object at {at} has {} properties; at most {MAX_PROPERTIES} are supported in grammar-constrained output",
                    properties.len()
                ));
            }
            for (name, prop) in properties {
                if name.len() > MAX_PROPERTY_NAME_BYTES {
                    return Err(format!(
                        "property '{}' at {at} has a name of {} bytes; at most {MAX_PROPERTY_NAME_BYTES} are supported",
                        crate::text::echo(name),
                        name.len()
                    ));
                }
                self.count_literal(&Value::String(name.clone()), "a property name", &at)?;
                let node = self.build_child(prop, path, &["properties", name], depth)?;
                props.push(Prop {
                    name: name.clone(),
                    node,
                    required: required.contains(name.as_str()),
                });
            }
        }
        let additional = match schema.get("additionalProperties") {
            Some(Value::Bool(true)) => Some(self.push(Kind::Leaf("any"), path)),
            Some(Value::Bool(false)) => None,
            Some(extra @ Value::Object(_)) => Some(self.build_child(extra, path, &["additionalProperties"], depth)?),
            Some(_) => return Err(format!("'additionalProperties' at {at} must be a boolean or a schema")),
            None if schema.contains_key("properties") => None,
            None => Some(self.push(Kind::Leaf("any"), path)),
        };
        // Other keys are then written as "none of these names" with each
        // name's characters inside GBNF brackets, where ']' and '\' break it.
        if additional.is_some() {
            if let Some(p) = props.iter().find(|p| p.name.contains([']', '\\'])) {
                return Err(format!(
                    "property '{}' at {at} contains ']' or '\\', which llama.cpp's grammar converter cannot handle beside 'additionalProperties'",
                    crate::text::echo(&p.name)
                ));
            }
        }
        Ok(Kind::Object { props, additional })
    }

    fn build_array(&mut self, schema: &Map<String, Value>, path: &mut Vec<String>, depth: usize) -> Check<Kind> {
        let at = pointer(path);
        let key = ["items", "prefixItems"].into_iter().find(|k| schema.contains_key(*k));
        let items = match key {
            Some(key) => match &schema[key] {
                Value::Array(list) => {
                    let mut items = Vec::with_capacity(list.len());
                    for (i, item) in list.iter().enumerate() {
                        items.push(self.build_child(item, path, &[key, &i.to_string()], depth)?);
                    }
                    return Ok(Kind::Tuple(items));
                }
                items => self.build_child(items, path, &[key], depth)?,
            },
            None => self.push(Kind::Leaf("any"), path),
        };
        let min = self.count_repetitions(schema, "minItems", "maxItems", &at)?;
        Ok(Kind::Array { items, min })
    }

    fn build_string(&mut self, schema: &Map<String, Value>, at: &str) -> Check<Kind> {
        if let Some(p) = schema.get("pattern") {
            let p = p
                .as_str()
                .ok_or_else(|| format!("'pattern' at {at} must be a string"))?;
            let cost = pattern::check_pattern(p, at)?;
            self.add_repetitions(cost.repetitions, at)?;
            // The converter ignores format and lengths beside a pattern.
            return Ok(Kind::Pattern(cost.sub_rules));
        }
        if !string_format(schema, at)? {
            self.count_repetitions(schema, "minLength", "maxLength", at)?;
        }
        Ok(Kind::Leaf("string"))
    }

    /// Check a min/max count pair that the converter expands; the minimum.
    fn count_repetitions(&mut self, schema: &Map<String, Value>, min: &str, max: &str, at: &str) -> Check<u64> {
        let low = schema.get(min).and_then(Value::as_u64);
        let high = schema.get(max).and_then(Value::as_u64);
        for (key, count) in [(min, low), (max, high)] {
            if let Some(n) = count.filter(|n| *n > MAX_REPETITIONS) {
                return Err(format!(
                    "'{key}' at {at} is {n}; at most {MAX_REPETITIONS} repetitions are supported in grammar-constrained output"
                ));
            }
        }
        self.add_repetitions(high.or(low).unwrap_or(0), at)?;
        Ok(low.unwrap_or(0))
    }

    fn add_repetitions(&mut self, n: u64, at: &str) -> Check<()> {
        self.repetitions += n;
        if self.repetitions > MAX_TOTAL_REPETITIONS {
            return Err(format!(
                "the schema's lengths, item counts and pattern counts add up to more than {MAX_TOTAL_REPETITIONS} (reached at {at}); each becomes copies of a grammar rule"
            ));
        }
        Ok(())
    }

    fn count_choices(&mut self, n: usize, what: &str, at: &str) -> Check<()> {
        if n > MAX_CHOICES {
            return Err(format!(
                "{what} at {at} has {n} entries; at most {MAX_CHOICES} are supported in grammar-constrained output"
            ));
        }
        self.choices += n;
        if self.choices > MAX_TOTAL_CHOICES {
            return Err(format!(
                "the schema's enum values, anyOf/oneOf branches and type lists add up to more than {MAX_TOTAL_CHOICES} (reached at {at})"
            ));
        }
        Ok(())
    }

    fn count_literal(&mut self, value: &Value, what: &str, at: &str) -> Check<()> {
        let bytes = value.to_string().len();
        if bytes > MAX_LITERAL_BYTES {
            return Err(format!(
                "{what} at {at} is {bytes} bytes of JSON; at most {MAX_LITERAL_BYTES} are supported"
            ));
        }
        self.literal_bytes += bytes;
        if self.literal_bytes > MAX_TOTAL_LITERAL_BYTES {
            return Err(format!(
                "the schema's const and enum values add up to more than {MAX_TOTAL_LITERAL_BYTES} bytes (reached at {at})"
            ));
        }
        Ok(())
    }
}

/// The value at `path` as llama.cpp resolves a `$ref`: segments are object
/// keys taken literally (no `~0`/`~1` decoding) or decimal array indices.
fn resolve<'v>(root: &'v Value, path: &[String]) -> Option<&'v Value> {
    path.iter().try_fold(root, |value, segment| match value {
        Value::Object(o) => o.get(segment),
        Value::Array(a) if segment.bytes().all(|b| b.is_ascii_digit()) => a.get(segment.parse::<usize>().ok()?),
        _ => None,
    })
}

fn lookup_mut<'v>(root: &'v mut Value, path: &[String]) -> Option<&'v mut Value> {
    path.iter().try_fold(root, |value, segment| match value {
        Value::Object(o) => o.get_mut(segment),
        Value::Array(a) => a.get_mut(segment.parse::<usize>().ok()?),
        _ => None,
    })
}

/// A JSON pointer for messages; long segments are shortened.
fn pointer(path: &[String]) -> String {
    let mut out = String::from("#");
    for segment in path {
        out.push('/');
        out.push_str(&crate::text::echo(segment).replace('~', "~0").replace('/', "~1"));
    }
    out
}

/// A GBNF rule name as the converter makes it: each run of characters other
/// than ASCII letters, digits and '-' becomes one '-'.
fn rule_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_run = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '-' {
            out.push(c);
            in_run = false;
        } else if !in_run {
            out.push('-');
            in_run = true;
        }
    }
    out
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
