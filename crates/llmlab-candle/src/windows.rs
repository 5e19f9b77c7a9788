//! Turning inputs into the token windows the model reads: tokenising texts,
//! checking raw token ids, wrapping content in the tokenizer's special
//! tokens, and cutting or splitting what is longer than the model's window.

use llmlab_core::embedding::{split_into_windows, EmbedInput};
use llmlab_core::{Error, Result};

/// The tokens a tokenizer puts around every text (BERT: `[CLS]` … `[SEP]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Specials {
    pub prefix: Vec<u32>,
    pub suffix: Vec<u32>,
}

impl Specials {
    /// Learn the specials from how the tokenizer encodes one probe text with
    /// and without them, so any post-processor's template is honoured
    /// without naming its tokens.
    pub fn from_probe(with: &[u32], without: &[u32]) -> Option<Self> {
        let start = (0..=with.len().checked_sub(without.len())?).find(|&i| with[i..].starts_with(without))?;
        Some(Self {
            prefix: with[..start].to_vec(),
            suffix: with[start + without.len()..].to_vec(),
        })
    }

    pub fn len(&self) -> usize {
        self.prefix.len() + self.suffix.len()
    }

    fn wrap(&self, content: &[u32]) -> Vec<u32> {
        let mut tokens = Vec::with_capacity(content.len() + self.len());
        tokens.extend_from_slice(&self.prefix);
        tokens.extend_from_slice(content);
        tokens.extend_from_slice(&self.suffix);
        tokens
    }
}

/// One window of one input, specials included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Window {
    /// Position of its input in the request.
    pub input: usize,
    pub tokens: Vec<u32>,
}

/// How the pipeline reads inputs: the model's window and vocabulary, and
/// the tokenizer's specials.
#[derive(Debug, Clone)]
pub(crate) struct Windowing {
    pub specials: Specials,
    /// Most tokens one window holds, specials included.
    pub window: usize,
    pub vocab_size: usize,
}

impl Windowing {
    /// Content tokens (without specials) one window holds.
    fn room(&self) -> usize {
        self.window.saturating_sub(self.specials.len()).max(1)
    }

    /// Check raw token ids: an id outside the vocabulary would index past
    /// the embedding table.
    pub fn check_ids(&self, index: usize, ids: &[u32]) -> Result<()> {
        match ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            Some(id) => Err(Error::invalid_param(
                format!("input[{index}]"),
                format!("token id {id} is outside the vocabulary of {} tokens", self.vocab_size),
            )),
            None => Ok(()),
        }
    }

    /// The windows of every input, in input order. `content` holds each
    /// input's tokens without specials. A long input is cut to one window
    /// when `truncate` is set, else split into consecutive windows.
    pub fn windows(&self, content: &[Vec<u32>], truncate: bool) -> Vec<Window> {
        let room = self.room();
        let mut windows = Vec::new();
        for (input, tokens) in content.iter().enumerate() {
            let parts = if tokens.len() <= room {
                // An empty input still has its specials: it is one window.
                vec![&tokens[..]]
            } else if truncate {
                vec![&tokens[..room]]
            } else {
                split_into_windows(tokens, room)
            };
            windows.extend(parts.into_iter().map(|part| Window {
                input,
                tokens: self.specials.wrap(part),
            }));
        }
        windows
    }
}

/// Content tokens of every input: texts through `encode` (which must not
/// add specials), token arrays checked against the vocabulary.
pub(crate) fn content_tokens(
    windowing: &Windowing,
    inputs: &[EmbedInput],
    encode: impl Fn(&[&str]) -> Result<Vec<Vec<u32>>>,
) -> Result<Vec<Vec<u32>>> {
    let texts: Vec<&str> = inputs
        .iter()
        .filter_map(|input| match input {
            EmbedInput::Text(text) => Some(text.as_str()),
            EmbedInput::Tokens(_) => None,
        })
        .collect();
    // One call for all texts: the tokenizer spreads a batch over threads.
    let mut encoded = encode(&texts)?.into_iter();
    let mut content = Vec::with_capacity(inputs.len());
    for (index, input) in inputs.iter().enumerate() {
        match input {
            EmbedInput::Text(_) => content.push(
                encoded
                    .next()
                    .ok_or_else(|| Error::internal("the tokenizer returned fewer encodings than texts"))?,
            ),
            EmbedInput::Tokens(ids) => {
                windowing.check_ids(index, ids)?;
                content.push(ids.clone());
            }
        }
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windowing(window: usize) -> Windowing {
        Windowing {
            specials: Specials {
                prefix: vec![101],
                suffix: vec![102],
            },
            window,
            vocab_size: 1000,
        }
    }

    #[test]
    fn specials_are_learned_from_a_probe() {
        let specials = Specials::from_probe(&[101, 7, 8, 102], &[7, 8]).unwrap();
        assert_eq!((specials.prefix, specials.suffix), (vec![101], vec![102]));
        let none = Specials::from_probe(&[7], &[7]).unwrap();
        assert_eq!(none.len(), 0);
        assert!(Specials::from_probe(&[1, 2], &[3]).is_none());
    }

    #[test]
    fn short_inputs_are_one_wrapped_window() {
        let w = windowing(6).windows(&[vec![1, 2], vec![]], false);
        assert_eq!(w[0].tokens, [101, 1, 2, 102]);
        assert_eq!((w[1].input, &w[1].tokens[..]), (1, &[101, 102][..]));
    }

    #[test]
    fn long_inputs_split_or_cut_to_the_window_with_specials() {
        let content = vec![(1..=9).collect::<Vec<u32>>()];
        let split = windowing(6).windows(&content, false);
        let tokens: Vec<&[u32]> = split.iter().map(|w| &w.tokens[..]).collect();
        assert_eq!(
            tokens,
            [&[101, 1, 2, 3, 4, 102][..], &[101, 5, 6, 7, 8, 102], &[101, 9, 102]]
        );
        let cut = windowing(6).windows(&content, true);
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].tokens, [101, 1, 2, 3, 4, 102]);
    }

    #[test]
    fn ids_outside_the_vocabulary_name_their_input() {
        let err = windowing(6).check_ids(3, &[5, 1000]).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("input[3]"));
        assert_eq!(err.kind, llmlab_core::ErrorKind::InvalidRequest);
        windowing(6).check_ids(0, &[999]).unwrap();
    }

    #[test]
    fn texts_and_token_arrays_keep_input_order() {
        let inputs = [
            EmbedInput::Tokens(vec![9]),
            EmbedInput::Text("a".into()),
            EmbedInput::Text("b".into()),
        ];
        let encode = |texts: &[&str]| Ok(texts.iter().map(|t| vec![t.as_bytes()[0] as u32]).collect());
        let content = content_tokens(&windowing(6), &inputs, encode).unwrap();
        assert_eq!(content, [vec![9], vec![97], vec![98]]);
    }
}
