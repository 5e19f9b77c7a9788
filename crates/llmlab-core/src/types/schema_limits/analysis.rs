//! Whole-schema checks on the tree the builder made: recursion that
//! llama.cpp cannot turn into a grammar, how much the converter expands, and
//! rule names that collide.
//!
//! What llama.cpp does with recursion (common/json-schema-to-grammar.cpp):
//! a `$ref` met while its own target is being converted becomes a reference
//! to a rule not written yet, so recursion is fine for the converter as long
//! as it goes through a `$ref`. The resulting grammar still fails when
//! - the cycle passes only through `$ref`s and `anyOf`s: the rule begins
//!   with itself, and llama.cpp refuses left-recursive grammars;
//! - every branch of the cycle is required (required properties, arrays
//!   with `minItems` > 0): no finite text matches, and sampling is forced
//!   ever deeper until the tokens run out;
//! - it passes through `allOf`: `allOf` merges the properties of its parts
//!   by following their `$ref`s directly, with no guard, so the converter
//!   recurses until the stack overflows and the process dies.
//!
//! A cycle with a way out (an optional property, `minItems` 0, an `anyOf`
//! branch without recursion) is a valid grammar and passes.

use std::collections::HashSet;

use super::{Builder, Check, Kind, Node, MAX_SCHEMA_NODES};

/// The checked tree; `Err` carries the client-facing message.
pub(super) fn analyse(schema: &serde_json::Value) -> Check<Builder<'_>> {
    let mut b = Builder::new(schema);
    let root = b.build(schema, &mut Vec::new(), None, 0)?;
    for node in &mut b.nodes {
        if let Kind::Ref(r, target) = &mut node.kind {
            *target = b.refs.get(r.as_str()).copied().flatten().unwrap_or(root);
        }
    }
    let tree = Tree { nodes: &b.nodes };
    tree.check_left_recursion()?;
    let merged = tree.merge_all_of()?;
    let targets: Vec<usize> = b.refs.values().flatten().copied().collect();
    tree.check_expansion(root, &targets, &merged)?;
    tree.check_finite(&merged)?;
    tree.check_rule_names(root, &b.ref_names, &merged)?;
    Ok(b)
}

/// One property that an `allOf` merges in, as llama.cpp collects it: every
/// property of a part outside an `anyOf` counts as required.
struct Merged {
    name: String,
    node: usize,
    required: bool,
}

struct Tree<'n> {
    nodes: &'n [Node],
}

impl Tree<'_> {
    fn kind(&self, id: usize) -> &Kind {
        &self.nodes[id].kind
    }

    fn at(&self, id: usize) -> &str {
        &self.nodes[id].at
    }

    /// A cycle along `$ref` and `anyOf` edges, which add no text before
    /// their target: the grammar rule would start with itself.
    fn check_left_recursion(&self) -> Check<()> {
        let mut state = vec![0u8; self.nodes.len()];
        for id in 0..self.nodes.len() {
            self.left_dfs(id, &mut state)?;
        }
        Ok(())
    }

    fn left_dfs(&self, id: usize, state: &mut [u8]) -> Check<()> {
        match state[id] {
            1 => {
                return Err(format!(
                    "the schema at {} refers back to itself through '$ref'/'anyOf'/'oneOf' alone, without any JSON text in between; llama.cpp's grammar would be left-recursive, which it rejects",
                    self.at(id)
                ))
            }
            2 => return Ok(()),
            _ => {}
        }
        state[id] = 1;
        match self.kind(id) {
            Kind::Ref(_, target) => self.left_dfs(*target, state)?,
            Kind::AnyOf(children) => {
                for child in children {
                    self.left_dfs(*child, state)?;
                }
            }
            _ => {}
        }
        state[id] = 2;
        Ok(())
    }

    fn follow_refs(&self, mut id: usize) -> usize {
        // Terminates: `$ref`-only cycles were refused above.
        while let Kind::Ref(_, target) = self.kind(id) {
            id = *target;
        }
        id
    }

    /// For each `allOf` node, the properties the converter merges. Parts it
    /// would silently drop (anything but objects and enums) are refused: a
    /// string `allOf` would otherwise come out as the object `{}`.
    fn merge_all_of(&self) -> Check<Vec<Vec<Merged>>> {
        let mut merged: Vec<Vec<Merged>> = (0..self.nodes.len()).map(|_| Vec::new()).collect();
        for (id, slot) in merged.iter_mut().enumerate() {
            let Kind::AllOf(parts) = self.kind(id) else { continue };
            for &part in parts {
                let (alternatives, required) = match self.kind(part) {
                    Kind::AnyOf(alts) => (alts.as_slice(), false),
                    _ => (std::slice::from_ref(&part), true),
                };
                for &alt in alternatives {
                    let target = self.follow_refs(alt);
                    match self.kind(target) {
                        Kind::Object { props, .. } => slot.extend(props.iter().map(|p| Merged {
                            name: p.name.clone(),
                            node: p.node,
                            required,
                        })),
                        Kind::Leaf("enum" | "any") => {}
                        other => {
                            return Err(format!(
                                "'allOf' at {} includes {} at {}; llama.cpp's grammar converter only merges objects and enums in 'allOf' and would drop it",
                                self.at(id),
                                kind_name(other),
                                self.at(target)
                            ))
                        }
                    }
                }
            }
        }
        Ok(merged)
    }

    /// The subschemas the converter visits directly (not through a `$ref`,
    /// whose target it converts once).
    fn visited(&self, id: usize, merged: &[Vec<Merged>]) -> Vec<usize> {
        match self.kind(id) {
            Kind::Object { props, additional } => props.iter().map(|p| p.node).chain(*additional).collect(),
            Kind::Array { items, .. } => vec![*items],
            Kind::Tuple(children) | Kind::AnyOf(children) => children.clone(),
            Kind::AllOf(_) => merged[id].iter().map(|m| m.node).collect(),
            Kind::Ref(..) | Kind::Leaf(_) | Kind::Pattern(_) => Vec::new(),
        }
    }

    /// Count what the converter visits (an `allOf` copies what it merges),
    /// and refuse recursion through `allOf`, which the converter never ends.
    fn check_expansion(&self, root: usize, targets: &[usize], merged: &[Vec<Merged>]) -> Check<()> {
        let mut memo: Vec<Option<u64>> = vec![None; self.nodes.len()];
        let mut on_path = vec![false; self.nodes.len()];
        let mut total = 0u64;
        for &start in std::iter::once(&root).chain(targets) {
            total = total.saturating_add(self.expanded(start, merged, &mut memo, &mut on_path)?);
        }
        if total > MAX_SCHEMA_NODES as u64 {
            return Err(format!(
                "llama.cpp's grammar converter would visit {total} subschemas for this schema ('allOf' copies the properties it merges); at most {MAX_SCHEMA_NODES} are supported"
            ));
        }
        Ok(())
    }

    fn expanded(
        &self,
        id: usize,
        merged: &[Vec<Merged>],
        memo: &mut [Option<u64>],
        on_path: &mut [bool],
    ) -> Check<u64> {
        if let Some(n) = memo[id] {
            return Ok(n);
        }
        if on_path[id] {
            return Err(format!(
                "the 'allOf' at {} includes itself again through '$ref'; llama.cpp's grammar converter recurses without end on this (use the '$ref' directly instead of inside 'allOf')",
                self.at(id)
            ));
        }
        on_path[id] = true;
        let mut n = 1u64;
        for child in self.visited(id, merged) {
            n = n.saturating_add(self.expanded(child, merged, memo, on_path)?);
            if n > MAX_SCHEMA_NODES as u64 {
                break;
            }
        }
        on_path[id] = false;
        memo[id] = Some(n);
        Ok(n)
    }

    /// Every subschema must admit some finite JSON text; a branch that
    /// cannot end would trap the sampler once it starts it.
    fn check_finite(&self, merged: &[Vec<Merged>]) -> Check<()> {
        let mut finite = vec![false; self.nodes.len()];
        loop {
            let mut changed = false;
            for id in 0..self.nodes.len() {
                if !finite[id] && self.ends(id, &finite, merged) {
                    finite[id] = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let stuck = (0..self.nodes.len()).filter(|id| !finite[*id]);
        let first = stuck
            .clone()
            .find(|id| matches!(self.kind(*id), Kind::Ref(..)))
            .or_else(|| stuck.clone().next());
        match first {
            None => Ok(()),
            Some(id) => Err(format!(
                "the recursion through {} has no way out: every value it allows must contain another such value, so no JSON text can finish it; make the recursion optional (an optional property, 'minItems' 0, or an 'anyOf' branch without it)",
                self.at(id)
            )),
        }
    }

    fn ends(&self, id: usize, finite: &[bool], merged: &[Vec<Merged>]) -> bool {
        match self.kind(id) {
            Kind::Leaf(_) | Kind::Pattern(_) => true,
            Kind::Ref(_, target) => finite[*target],
            Kind::AnyOf(children) => children.iter().any(|c| finite[*c]),
            Kind::Tuple(children) => children.iter().all(|c| finite[*c]),
            Kind::Array { items, min } => *min == 0 || finite[*items],
            Kind::Object { props, .. } => props.iter().all(|p| !p.required || finite[p.node]),
            Kind::AllOf(_) => merged[id].iter().all(|m| !m.required || finite[m.node]),
        }
    }

    /// The converter names rules after the path to them (`address-city`)
    /// and after `$ref`s (`ref-defs-address`). It looks a `$ref`'s rule up by
    /// name, so a rule of the same name from elsewhere would be used in its
    /// place; refuse such schemas rather than constrain to the wrong thing.
    fn check_rule_names(
        &self,
        root: usize,
        ref_names: &std::collections::HashMap<String, String>,
        merged: &[Vec<Merged>],
    ) -> Check<()> {
        let mut names = HashSet::new();
        let mut resolved = HashSet::new();
        // The root's own rule is `root`, the grammar's start symbol; any
        // other rule of that name would take its place.
        self.names(root, String::new(), true, merged, &mut names, &mut resolved);
        if names.contains("root") {
            return Err(
                "a property with an empty name at the top level of the schema would take over the start rule of llama.cpp's grammar; give it a name".to_owned(),
            );
        }
        match ref_names.iter().find(|(name, _)| names.contains(name.as_str())) {
            None => Ok(()),
            Some((name, r)) => Err(format!(
                "llama.cpp's grammar converter would give '$ref' '{}' the rule name '{}', which another part of the schema also gets; rename that definition or property",
                crate::text::echo(r),
                crate::text::echo(name)
            )),
        }
    }

    /// Mirror of the converter's naming in `visit`; `own` when `name` is the
    /// `$ref` rule this node is converted for (that one is expected).
    fn names(
        &self,
        id: usize,
        name: String,
        own: bool,
        merged: &[Vec<Merged>],
        out: &mut HashSet<String>,
        resolved: &mut HashSet<usize>,
    ) {
        // The converter's rule name for `name` (`visit`): reserved names
        // (its own rules') get a '-', the empty name is the start rule.
        let rule = if RESERVED.contains(&name.as_str()) {
            format!("{name}-")
        } else if name.is_empty() {
            "root".to_owned()
        } else {
            super::rule_name(&name)
        };
        if !own {
            out.insert(rule.clone());
        }
        let sub = if name.is_empty() {
            String::new()
        } else {
            format!("{name}-")
        };
        let object = |props: Vec<(&str, usize, bool)>,
                      additional: Option<usize>,
                      out: &mut HashSet<String>,
                      resolved: &mut HashSet<usize>| {
            let mut optional = Vec::new();
            for (prop, node, required) in props {
                self.names(node, format!("{sub}{prop}"), false, merged, out, resolved);
                out.insert(super::rule_name(&format!("{sub}{prop}-kv")));
                if !required {
                    optional.push(prop.to_owned());
                }
            }
            if let Some(extra) = additional {
                if !matches!(self.kind(extra), Kind::Leaf("any")) {
                    self.names(extra, format!("{sub}additional-value"), false, merged, out, resolved);
                }
                out.insert(super::rule_name(&format!("{sub}additional-k")));
                out.insert(super::rule_name(&format!("{sub}additional-kv")));
                optional.push("*".to_owned());
            }
            for key in optional.iter().take(optional.len().saturating_sub(1)) {
                out.insert(super::rule_name(&format!("{sub}{key}-rest")));
            }
        };
        match self.kind(id) {
            Kind::Ref(r, target) => {
                if resolved.insert(*target) {
                    self.names(
                        *target,
                        format!("ref{}", super::rule_name(&r[1..])),
                        true,
                        merged,
                        out,
                        resolved,
                    );
                }
            }
            Kind::AnyOf(children) => {
                for (i, child) in children.iter().enumerate() {
                    let alt = if name.is_empty() {
                        format!("alternative-{i}")
                    } else {
                        format!("{name}-{i}")
                    };
                    self.names(*child, alt, false, merged, out, resolved);
                }
            }
            Kind::Tuple(children) => {
                for (i, child) in children.iter().enumerate() {
                    self.names(*child, format!("{sub}tuple-{i}"), false, merged, out, resolved);
                }
            }
            Kind::Array { items, .. } => self.names(*items, format!("{sub}item"), false, merged, out, resolved),
            Kind::Object { props, additional } => object(
                props.iter().map(|p| (p.name.as_str(), p.node, p.required)).collect(),
                *additional,
                out,
                resolved,
            ),
            Kind::AllOf(_) => object(
                merged[id]
                    .iter()
                    .map(|m| (m.name.as_str(), m.node, m.required))
                    .collect(),
                None,
                out,
                resolved,
            ),
            Kind::Pattern(sub_rules) => {
                out.extend((1..=*sub_rules).map(|i| format!("{rule}-{i}")));
            }
            Kind::Leaf(_) => {}
        }
    }
}

/// Names the converter keeps for its own rules (`is_reserved_name`).
const RESERVED: [&str; 19] = [
    "root",
    "boolean",
    "decimal-part",
    "integral-part",
    "number",
    "integer",
    "value",
    "object",
    "array",
    "uuid",
    "char",
    "string",
    "null",
    "date",
    "time",
    "date-time",
    "date-string",
    "time-string",
    "date-time-string",
];

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Leaf("const") => "a 'const'",
        Kind::Leaf("string") | Kind::Pattern(_) => "a string schema",
        Kind::Leaf(_) => "a scalar schema",
        Kind::Ref(..) => "a '$ref'",
        Kind::AnyOf(_) => "a nested 'anyOf'/'oneOf'",
        Kind::AllOf(_) => "a nested 'allOf'",
        Kind::Array { .. } | Kind::Tuple(_) => "an array schema",
        Kind::Object { .. } => "an object schema",
    }
}
