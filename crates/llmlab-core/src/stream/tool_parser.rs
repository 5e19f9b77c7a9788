//! Tool calls in the content stream, for every format but Harmony.
//!
//! Content is plain text until the format's marker (`<tool_call>`,
//! `<|python_tag|>`, `[TOOL_CALLS]`) opens a block, which a format-specific
//! [`CallBlock`] reads. Independently of the format, a reply that *starts*
//! with a JSON object, array or code fence is held back as a possible bare
//! JSON call (see `bare_json`), because small models often ignore their
//! template and answer with nothing but the call.

use super::bare_json::{self, BareJson, BareStep, Opening};
use super::call_block::{BlockStep, CallBlock};
use super::hermes::HermesBlock;
use super::llama3::Llama3Block;
use super::markers::{find_first, safe_len};
use super::mistral::MistralBlock;
use super::sink::EventSink;
use super::{hermes, llama3, mistral, StreamProcessor, ToolCallFormat};
use crate::{ChatEvent, ToolDefinition};

enum Mode {
    /// Only whitespace so far (and `;` between calls after a bare call),
    /// held in the buffer until the reply's first character decides.
    Start {
        after_call: bool,
    },
    Text,
    Bare(BareJson),
    /// `raw` is the block's text (marker included) until it commits.
    Block {
        block: Box<dyn CallBlock>,
        raw: String,
    },
}

pub(super) struct ToolCallParser {
    format: ToolCallFormat,
    /// Names of the declared tools; a bare JSON reply must name one.
    tools: Vec<String>,
    buf: String,
    mode: Mode,
    sink: EventSink,
}

impl ToolCallParser {
    pub fn new(format: ToolCallFormat, tools: &[ToolDefinition]) -> Self {
        Self {
            format,
            tools: tools.iter().map(|tool| tool.function.name.clone()).collect(),
            buf: String::new(),
            mode: Mode::Start { after_call: false },
            sink: EventSink::default(),
        }
    }

    fn markers(&self) -> &'static [&'static str] {
        match self.format {
            ToolCallFormat::Hermes => &[hermes::OPEN],
            ToolCallFormat::Llama3 => &[llama3::PYTHON_TAG],
            ToolCallFormat::Mistral => &[mistral::TOOL_CALLS],
            ToolCallFormat::None | ToolCallFormat::Harmony => &[],
        }
    }

    fn open_block(&self) -> Box<dyn CallBlock> {
        match self.format {
            ToolCallFormat::Llama3 => Box::<Llama3Block>::default(),
            ToolCallFormat::Mistral => Box::<MistralBlock>::default(),
            _ => Box::<HermesBlock>::default(),
        }
    }

    /// Advance as far as the buffer allows; false when more text is needed.
    fn step(&mut self) -> bool {
        match std::mem::replace(&mut self.mode, Mode::Text) {
            Mode::Start { after_call } => self.step_start(after_call),
            Mode::Text => self.step_text(),
            Mode::Bare(bare) => self.step_bare(bare),
            Mode::Block { block, raw } => self.step_block(block, raw),
        }
    }

    fn step_start(&mut self, after_call: bool) -> bool {
        let first = self
            .buf
            .find(|c: char| !(c.is_whitespace() || (after_call && c == ';')));
        let opening = first.map_or(Opening::Undecided, |at| bare_json::opening(&self.buf[at..]));
        match opening {
            Opening::Json => self.mode = Mode::Bare(BareJson::default()),
            Opening::Text => self.mode = Mode::Text,
            Opening::Undecided => {
                self.mode = Mode::Start { after_call };
                return false;
            }
        }
        true
    }

    fn step_text(&mut self) -> bool {
        let markers = self.markers();
        let Some((at, marker)) = find_first(&self.buf, markers) else {
            let safe = safe_len(&self.buf, markers);
            self.sink.gap_text(&self.buf[..safe]);
            self.buf.drain(..safe);
            return false;
        };
        self.sink.gap_text(&self.buf[..at]);
        self.sink.close_gap();
        self.buf.drain(..at + marker.len());
        self.mode = Mode::Block {
            block: self.open_block(),
            raw: marker.to_owned(),
        };
        true
    }

    fn step_bare(&mut self, mut bare: BareJson) -> bool {
        match bare.step(&self.buf, &self.tools) {
            BareStep::Consumed(n) => {
                self.buf.drain(..n);
                self.mode = Mode::Bare(bare);
            }
            BareStep::NeedMore => {
                self.mode = Mode::Bare(bare);
                return false;
            }
            BareStep::Calls(n, calls) => {
                self.buf.drain(..n);
                for (name, arguments) in calls {
                    self.sink.begin_call(name);
                    self.sink.call_args(&arguments);
                }
                self.sink.close_gap();
                self.mode = Mode::Start { after_call: true };
            }
            BareStep::Reject(n) => {
                self.buf.drain(..n);
                self.sink.gap_text(&bare.into_raw());
                self.mode = Mode::Text;
            }
        }
        true
    }

    fn step_block(&mut self, mut block: Box<dyn CallBlock>, mut raw: String) -> bool {
        let step = block.step(&self.buf, &mut self.sink);
        match step {
            BlockStep::Consumed(n) => {
                if block.committed() {
                    raw.clear();
                } else {
                    raw.push_str(&self.buf[..n]);
                }
                self.buf.drain(..n);
            }
            BlockStep::NeedMore => {
                self.mode = Mode::Block { block, raw };
                return false;
            }
            BlockStep::Closed(n) | BlockStep::Malformed(n) if !block.committed() => {
                raw.push_str(&self.buf[..n]);
                self.buf.drain(..n);
                self.sink.gap_text(&raw);
                self.mode = Mode::Text;
                return true;
            }
            BlockStep::Closed(n) | BlockStep::Malformed(n) => {
                self.buf.drain(..n);
                self.sink.close_gap();
                self.mode = if block.reopens_reply() {
                    Mode::Start { after_call: true }
                } else {
                    Mode::Text
                };
                return true;
            }
        }
        self.mode = Mode::Block { block, raw };
        true
    }
}

impl StreamProcessor for ToolCallParser {
    fn push(&mut self, text: &str) -> Vec<ChatEvent> {
        self.buf.push_str(text);
        while !self.buf.is_empty() && self.step() {}
        self.sink.take()
    }

    fn finish(&mut self) -> Vec<ChatEvent> {
        let rest = std::mem::take(&mut self.buf);
        match std::mem::replace(&mut self.mode, Mode::Text) {
            // Separators after a last bare call are not content.
            Mode::Start { after_call: true } if rest.chars().all(|c| c.is_whitespace() || c == ';') => {}
            Mode::Start { .. } | Mode::Text => self.sink.gap_text(&rest),
            Mode::Bare(bare) => bare.finish(&rest, &self.tools, &mut self.sink),
            Mode::Block { mut block, raw } => {
                if block.committed() {
                    block.finish(&rest, &mut self.sink);
                } else {
                    self.sink.gap_text(&(raw + &rest));
                }
            }
        }
        self.sink.close_gap();
        self.sink.take()
    }
}

#[cfg(test)]
mod tests {
    use crate::stream::test_support::{check, content, tools};
    use crate::stream::{ProcessorChain, ReasoningFormat, StreamProcessor, ToolCallFormat};

    #[test]
    fn without_declared_tools_markup_stays_content() {
        let text = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        for format in [ToolCallFormat::Hermes, ToolCallFormat::None, ToolCallFormat::Llama3] {
            let chain = move || ProcessorChain::new(ReasoningFormat::None, format, &[], false);
            check(chain, text, &[content(text)]);
        }
        let bare = r#"{"name": "get_weather", "arguments": {}}"#;
        check(
            || ProcessorChain::new(ReasoningFormat::None, ToolCallFormat::None, &[], false),
            bare,
            &[content(bare)],
        );
    }

    #[test]
    fn plain_replies_stream_without_holding_back() {
        let mut chain = ProcessorChain::new(ReasoningFormat::None, ToolCallFormat::Hermes, &tools(&["f"]), false);
        let events = chain.push("Hello {\"name\"");
        assert_eq!(events, vec![crate::ChatEvent::Content("Hello {\"name\"".into())]);
        let events = chain.push(" <tool");
        assert_eq!(events, vec![crate::ChatEvent::Content(" ".into())]);
    }
}
