//! Embeddings on the encoder thread. The context runs without llama.cpp's
//! own pooling and hands back every token's state; pooling (mean, CLS, last)
//! happens here. That keeps every input a sequence of its own in one decode,
//! where llama.cpp's mean pooling aborts the process once a context holds
//! more than one sequence (see ARCHITECTURE.md's pitfalls), and lets any
//! GGUF model, decoder or encoder, be pooled any way the registry says.

use std::num::NonZeroU32;

use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;

use llmlab_core::embedding::{combine_chunks, split_into_windows, EmbedInput, Pooling, RawEmbedding};
use llmlab_core::registry::{LlamaSettings, ModelSpec};
use llmlab_core::{config, Error, Result};

use crate::backend::backend;

/// What callers learn about a loaded embedding model.
#[derive(Debug, Clone)]
pub struct EncoderInfo {
    pub dimensions: usize,
    /// Most tokens one sequence may hold, special tokens included.
    pub window: usize,
    pub pooling: Pooling,
}

/// One window of one input, ready to decode.
struct Window {
    input: usize,
    tokens: Vec<LlamaToken>,
}

pub(crate) struct Encoder<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    batch: LlamaBatch<'static>,
    /// Tokens one decode call holds (all its sequences together).
    batch_tokens: usize,
    max_sequences: usize,
    /// Special tokens the model's tokenizer puts around a text.
    prefix: Vec<LlamaToken>,
    suffix: Vec<LlamaToken>,
    info: EncoderInfo,
}

/// The pooling the GGUF file declares (`<arch>.pooling_type`), if any.
fn pooling_from_file(model: &LlamaModel) -> Option<Pooling> {
    let arch = model.meta_val_str("general.architecture").ok()?;
    match model.meta_val_str(&format!("{arch}.pooling_type")).ok()?.trim() {
        "1" => Some(Pooling::Mean),
        "2" => Some(Pooling::Cls),
        "3" => Some(Pooling::Last),
        _ => None,
    }
}

impl<'m> Encoder<'m> {
    pub fn new(model: &'m LlamaModel, spec: &ModelSpec, settings: &LlamaSettings) -> Result<Self> {
        let batch_tokens = settings.batch_size.max(1) as usize;
        let window = (settings.context_size as usize)
            .min(model.n_ctx_train() as usize)
            .min(batch_tokens);
        let max_sequences = config::MAX_PARALLEL as usize;
        let threads = i32::try_from(settings.threads).unwrap_or(i32::MAX);
        let params = LlamaContextParams::default()
            .with_embeddings(true)
            .with_pooling_type(LlamaPoolingType::None)
            .with_n_ctx(NonZeroU32::new(settings.batch_size.max(1)))
            .with_n_batch(settings.batch_size)
            .with_n_ubatch(settings.batch_size)
            .with_n_seq_max(max_sequences as u32)
            .with_kv_unified(true)
            .with_flash_attention_policy(llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        let ctx = model
            .new_context(backend()?, params)
            .map_err(|e| Error::unavailable(format!("cannot create an embedding context for '{}': {e}", spec.id)))?;
        let vocab = model.vocab();
        let prefix = vocab.should_add_bos().then(|| vocab.bos()).into_iter().collect();
        let suffix = if vocab.should_add_sep() {
            vec![vocab.sep()]
        } else if vocab.should_add_eos() {
            vec![vocab.eos()]
        } else {
            Vec::new()
        };
        let info = EncoderInfo {
            dimensions: usize::try_from(model.n_embd()).unwrap_or(0),
            window,
            pooling: spec
                .embedding
                .pooling
                .or_else(|| pooling_from_file(model))
                .unwrap_or(Pooling::Mean),
        };
        Ok(Self {
            model,
            ctx,
            batch: LlamaBatch::new(batch_tokens, 1),
            batch_tokens,
            max_sequences,
            prefix,
            suffix,
            info,
        })
    }

    pub fn info(&self) -> &EncoderInfo {
        &self.info
    }

    /// Token ids of a text, without special tokens.
    pub fn tokenize(&self, text: &str) -> Vec<u32> {
        let vocab = self.model.vocab();
        vocab
            .tokenize(text.as_bytes(), false, false)
            .into_iter()
            .map(|t| u32::try_from(t.0).unwrap_or(0))
            .collect()
    }

    /// The vocabulary ids of one input, without special tokens.
    fn content_tokens(&self, index: usize, input: &EmbedInput) -> Result<Vec<LlamaToken>> {
        let vocab = self.model.vocab();
        match input {
            // User text never turns into control tokens.
            EmbedInput::Text(text) => Ok(vocab.tokenize(text.as_bytes(), false, false)),
            EmbedInput::Tokens(ids) => {
                let size = vocab.n_tokens();
                ids.iter()
                    .map(|&id| match i32::try_from(id) {
                        Ok(id) if id < size => Ok(LlamaToken(id)),
                        _ => Err(Error::invalid_param(
                            format!("input[{index}]"),
                            format!("token id {id} is outside the model's vocabulary of {size}"),
                        )),
                    })
                    .collect()
            }
        }
    }

    /// Cut every input into windows the model can read at once.
    fn windows(&self, inputs: &[EmbedInput], truncate: bool) -> Result<Vec<Window>> {
        let specials = self.prefix.len() + self.suffix.len();
        let room = self.info.window.saturating_sub(specials).max(1);
        let mut windows = Vec::new();
        for (index, input) in inputs.iter().enumerate() {
            let content = self.content_tokens(index, input)?;
            if content.is_empty() && specials == 0 {
                return Err(Error::invalid_param(format!("input[{index}]"), "holds no tokens"));
            }
            let pieces: Vec<&[LlamaToken]> = if content.is_empty() {
                vec![&[]]
            } else if truncate {
                vec![&content[..content.len().min(room)]]
            } else {
                split_into_windows(&content, room)
            };
            for piece in pieces {
                let mut tokens = Vec::with_capacity(piece.len() + specials);
                tokens.extend_from_slice(&self.prefix);
                tokens.extend_from_slice(piece);
                tokens.extend_from_slice(&self.suffix);
                windows.push(Window { input: index, tokens });
            }
        }
        Ok(windows)
    }

    /// Pooled vectors of every input, in input order.
    pub fn embed(&mut self, inputs: &[EmbedInput], truncate: bool) -> Result<Vec<RawEmbedding>> {
        let windows = self.windows(inputs, truncate)?;
        let mut pooled: Vec<Vec<RawEmbedding>> = vec![Vec::new(); inputs.len()];
        let mut start = 0;
        while start < windows.len() {
            // As many whole windows as one decode holds.
            let mut end = start;
            let mut tokens = 0;
            while end < windows.len()
                && end - start < self.max_sequences
                && tokens + windows[end].tokens.len() <= self.batch_tokens
            {
                tokens += windows[end].tokens.len();
                end += 1;
            }
            for (window, vector) in windows[start..end].iter().zip(self.decode_group(&windows[start..end])?) {
                pooled[window.input].push(RawEmbedding {
                    vector,
                    tokens: window.tokens.len(),
                });
            }
            start = end;
        }
        Ok(pooled.iter().map(|chunks| combine_chunks(chunks)).collect())
    }

    /// Decode windows together, each its own sequence, and pool each.
    fn decode_group(&mut self, group: &[Window]) -> Result<Vec<Vec<f32>>> {
        self.ctx.clear_kv_cache();
        self.batch.clear();
        for (seq, window) in group.iter().enumerate() {
            for (pos, token) in window.tokens.iter().enumerate() {
                self.batch
                    .add(*token, pos as i32, &[seq as i32], true)
                    .map_err(|e| Error::internal(format!("embedding batch: {e}")))?;
            }
        }
        self.ctx
            .decode(&mut self.batch)
            .map_err(|e| Error::internal(format!("embedding decode failed: {e}")))?;
        let mut first = 0usize;
        let mut vectors = Vec::with_capacity(group.len());
        for window in group {
            let rows = first..first + window.tokens.len();
            let picked: Vec<usize> = match self.info.pooling {
                Pooling::Mean => rows.collect(),
                Pooling::Cls => vec![rows.start],
                Pooling::Last => vec![rows.end - 1],
            };
            let mut sum = vec![0f64; self.info.dimensions];
            for row in &picked {
                let state = self
                    .ctx
                    .embeddings_ith(*row as i32)
                    .map_err(|e| Error::internal(format!("reading token state {row}: {e}")))?;
                for (s, x) in sum.iter_mut().zip(state) {
                    *s += f64::from(*x);
                }
            }
            vectors.push(sum.iter().map(|s| (s / picked.len() as f64) as f32).collect());
            first += window.tokens.len();
        }
        Ok(vectors)
    }
}
