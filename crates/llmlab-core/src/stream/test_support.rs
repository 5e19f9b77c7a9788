//! Test helpers: feed a fixture in every chunking and compare the normalised
//! events with the expected reply.
//!
//! Normalising merges neighbouring text of one kind and folds each tool call's
//! deltas into one item, so results can be compared however the text was cut;
//! on the way it checks the delta invariants (index order, id and name only
//! in the first delta, no empty text events).

use serde_json::Value;

use super::{ProcessorChain, StreamProcessor};
use crate::{ChatEvent, FunctionDefinition, ToolDefinition};

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    Content(String),
    Reasoning(String),
    Call { name: String, arguments: Value },
}

pub fn content(text: &str) -> Item {
    Item::Content(text.to_owned())
}

pub fn reasoning(text: &str) -> Item {
    Item::Reasoning(text.to_owned())
}

pub fn call(name: &str, arguments: Value) -> Item {
    Item::Call {
        name: name.to_owned(),
        arguments,
    }
}

pub fn tools(names: &[&str]) -> Vec<ToolDefinition> {
    names
        .iter()
        .map(|name| ToolDefinition {
            kind: "function".to_owned(),
            function: FunctionDefinition {
                name: (*name).to_owned(),
                description: None,
                parameters: None,
            },
        })
        .collect()
}

/// Feed `text` whole, split in two at every character boundary, and one
/// character at a time; every run must give `expected`.
pub fn check(make: impl Fn() -> ProcessorChain, text: &str, expected: &[Item]) {
    let expects_call = expected.iter().any(|item| matches!(item, Item::Call { .. }));
    let run = |chunks: &[&str], how: &str| {
        let mut chain = make();
        let mut events = Vec::new();
        for chunk in chunks {
            events.extend(chain.push(chunk));
        }
        events.extend(chain.finish());
        assert_eq!(normalize(&events, how), expected, "{how}, fed {chunks:?}");
        assert_eq!(chain.saw_tool_call(), expects_call, "{how}: saw_tool_call");
    };
    run(&[text], "whole");
    for (cut, _) in text.char_indices().skip(1) {
        run(&[&text[..cut], &text[cut..]], "split in two");
    }
    let chars: Vec<&str> = text
        .char_indices()
        .map(|(at, c)| &text[at..at + c.len_utf8()])
        .collect();
    run(&chars, "char by char");
}

pub fn normalize(events: &[ChatEvent], how: &str) -> Vec<Item> {
    let mut items = Vec::new();
    // Per call, in index order: (position in `items`, arguments so far).
    let mut calls: Vec<(usize, String)> = Vec::new();
    let mut ids: Vec<&str> = Vec::new();
    for event in events {
        match event {
            ChatEvent::Content(text) | ChatEvent::Reasoning(text) => {
                assert!(!text.is_empty(), "{how}: empty text event in {events:?}");
                let reasoning = matches!(event, ChatEvent::Reasoning(_));
                match items.last_mut() {
                    Some(Item::Content(last)) if !reasoning => last.push_str(text),
                    Some(Item::Reasoning(last)) if reasoning => last.push_str(text),
                    _ if reasoning => items.push(Item::Reasoning(text.clone())),
                    _ => items.push(Item::Content(text.clone())),
                }
            }
            ChatEvent::ToolCall(delta) => {
                let index = delta.index as usize;
                if index == calls.len() {
                    let id = delta
                        .id
                        .as_deref()
                        .unwrap_or_else(|| panic!("{how}: first delta has no id"));
                    let tail = id.strip_prefix("call_").unwrap_or_else(|| panic!("{how}: bad id {id}"));
                    assert!(
                        tail.len() == 24 && tail.bytes().all(|b| b.is_ascii_alphanumeric()),
                        "{how}: {id}"
                    );
                    assert!(!ids.contains(&id), "{how}: repeated id {id}");
                    ids.push(id);
                    let name = delta
                        .name
                        .clone()
                        .unwrap_or_else(|| panic!("{how}: first delta has no name"));
                    calls.push((items.len(), delta.arguments.clone()));
                    items.push(Item::Call {
                        name,
                        arguments: Value::Null,
                    });
                } else {
                    assert!(index < calls.len(), "{how}: call index {index} skips ahead");
                    assert!(
                        delta.id.is_none() && delta.name.is_none(),
                        "{how}: id or name repeated: {delta:?}"
                    );
                    calls[index].1.push_str(&delta.arguments);
                }
            }
            other => panic!("{how}: processors must not produce {other:?}"),
        }
    }
    for (position, arguments) in calls {
        let parsed = serde_json::from_str(&arguments)
            .unwrap_or_else(|err| panic!("{how}: arguments are not JSON ({err}): {arguments}"));
        if let Item::Call { arguments, .. } = &mut items[position] {
            *arguments = parsed;
        }
    }
    items
}
