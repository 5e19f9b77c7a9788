//! The CLIP tokenizer of a diffusers folder, built from its own
//! `vocab.json` and `merges.txt` (diffusers ships no `tokenizer.json`):
//! byte-level BPE with `</w>` ending each word, lower-cased, start and end
//! tokens around the text, cut and padded to the model's 77 tokens.

use std::path::Path;

use serde_json::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{replace::ReplacePattern, Lowercase, Replace, Sequence as Normalizers, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizers;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, SplitDelimiterBehavior, Tokenizer,
    TruncationDirection, TruncationParams, TruncationStrategy,
};

use super::configs::{read_json, ConfigResult};

/// How CLIP splits text into words before BPE: its special tokens,
/// English contractions, runs of letters, single digits, runs of other
/// symbols.
const WORDS: &str = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

pub(crate) struct ClipTokenizer {
    tokenizer: Tokenizer,
    /// The end token: where a text encoder reads its pooled state.
    end_id: u32,
}

impl ClipTokenizer {
    pub fn load(folder: &Path) -> ConfigResult<Self> {
        if !(folder.join("vocab.json").is_file() && folder.join("merges.txt").is_file()) {
            return Self::from_tokenizer_json(folder);
        }
        let config = read_json(&folder.join("tokenizer_config.json")).unwrap_or(Value::Null);
        let token = |key: &str, default: &str| -> String {
            match config.get(key) {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Object(fields)) => fields
                    .get("content")
                    .and_then(Value::as_str)
                    .unwrap_or(default)
                    .to_owned(),
                _ => default.to_owned(),
            }
        };
        let length = config
            .get("model_max_length")
            .and_then(Value::as_u64)
            .filter(|n| (2..=1024).contains(n))
            .unwrap_or(77) as usize;
        let start = token("bos_token", "<|startoftext|>");
        let end = token("eos_token", "<|endoftext|>");
        // SD 1.x pads with the end token, SD 2.x with "!".
        let pad = token("pad_token", &end);
        let unknown = token("unk_token", &end);
        let path = |name: &str| folder.join(name).to_string_lossy().into_owned();
        let bpe = BPE::from_file(&path("vocab.json"), &path("merges.txt"))
            .end_of_word_suffix("</w>".into())
            .unk_token(unknown)
            .build()
            .map_err(|e| format!("vocab.json / merges.txt do not read: {e}"))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let whitespace = Replace::new(ReplacePattern::Regex(r"\s+".into()), " ").map_err(|e| e.to_string())?;
        tokenizer
            .with_normalizer(Some(Normalizers::new(vec![
                NFC.into(),
                whitespace.into(),
                Lowercase.into(),
            ])))
            .map_err(|e| e.to_string())?;
        let words = Split::new(SplitPattern::Regex(WORDS.into()), SplitDelimiterBehavior::Removed, true)
            .map_err(|e| e.to_string())?;
        tokenizer.with_pre_tokenizer(Some(PreTokenizers::new(vec![
            words.into(),
            ByteLevel::new(false, true, false).into(),
        ])));
        tokenizer
            .add_special_tokens([
                AddedToken::from(start.clone(), true),
                AddedToken::from(end.clone(), true),
            ])
            .map_err(|e| e.to_string())?;
        let id = |text: &str| {
            tokenizer
                .token_to_id(text)
                .ok_or_else(|| format!("vocab.json has no {text} token"))
        };
        let (start_id, end_id, pad_id) = (id(&start)?, id(&end)?, id(&pad)?);
        let around = TemplateProcessing::builder()
            .try_single(format!("{start} $A {end}"))
            .map_err(|e| e.to_string())?
            .special_tokens(vec![(start, start_id), (end, end_id)])
            .build()
            .map_err(|e| e.to_string())?;
        tokenizer.with_post_processor(Some(around));
        fit_to_window(&mut tokenizer, length, pad_id, pad)?;
        Ok(Self { tokenizer, end_id })
    }

    /// A folder that newer transformers wrote: only `tokenizer.json`
    /// (the whole pipeline), cut and padded here to the window.
    fn from_tokenizer_json(folder: &Path) -> ConfigResult<Self> {
        let path = folder.join("tokenizer.json");
        if !path.is_file() {
            return Err("the diffusers folder lacks tokenizer/vocab.json and merges.txt (or tokenizer.json)".into());
        }
        let mut tokenizer = Tokenizer::from_file(&path).map_err(|e| format!("tokenizer.json does not read: {e}"))?;
        let length = 77;
        let end_id = tokenizer
            .token_to_id("<|endoftext|>")
            .ok_or("tokenizer.json has no <|endoftext|> token")?;
        fit_to_window(&mut tokenizer, length, end_id, "<|endoftext|>".to_owned())?;
        Ok(Self { tokenizer, end_id })
    }

    pub fn end_id(&self) -> u32 {
        self.end_id
    }

    /// Token ids of `text`, exactly the model's window long.
    pub fn ids(&self, text: &str) -> Result<Vec<u32>, String> {
        self.tokenizer
            .encode(text, true)
            .map(|encoding| encoding.get_ids().to_vec())
            .map_err(|e| format!("the prompt does not tokenize: {e}"))
    }
}

/// Cut and pad every encoding to exactly `length` tokens: the text
/// encoder reads a fixed window.
pub(crate) fn fit_to_window(
    tokenizer: &mut Tokenizer,
    length: usize,
    pad_id: u32,
    pad_token: String,
) -> ConfigResult<()> {
    tokenizer
        .with_truncation(Some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length: length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        }))
        .map_err(|e| e.to_string())?;
    tokenizer.with_padding(Some(PaddingParams {
        strategy: PaddingStrategy::Fixed(length),
        direction: PaddingDirection::Right,
        pad_to_multiple_of: None,
        pad_id,
        pad_type_id: 0,
        pad_token,
    }));
    Ok(())
}
