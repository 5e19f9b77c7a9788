//! The BERT-family embedding pipeline: loading a model folder and running
//! padded batches of windows through the encoder.

use std::path::Path;

use llmlab_core::embedding::{combine_chunks, EmbedInput, Pooling, RawEmbedding};
use llmlab_core::pipeline::EmbeddingPipeline;
use llmlab_core::registry::ModelSpec;
use llmlab_core::{Error, Result};
use tokenizers::Tokenizer;

use crate::batch::{plan_batches, MAX_BATCH_TOKENS, MAX_SEQUENCES};
use crate::encoder::{BertConfig, Encoder, MatmulKernel};
use crate::pooling::pool;
use crate::windows::{content_tokens, Specials, Window, Windowing};

/// Files a model folder must hold.
const CONFIG_FILE: &str = "config.json";
const TOKENIZER_FILE: &str = "tokenizer.json";
const WEIGHTS_FILE: &str = "model.safetensors";

/// A BERT-family encoder (BERT, MiniLM, …) that pools token states into
/// sentence embeddings, on the CPU. Runs on the caller's thread and spreads
/// each step over every core (rayon's pool).
pub struct BertEmbeddingPipeline {
    id: String,
    encoder: Encoder,
    tokenizer: Tokenizer,
    windowing: Windowing,
    pooling: Pooling,
    hidden_size: usize,
}

impl BertEmbeddingPipeline {
    /// Load the model folder at `spec.path` (config.json, tokenizer.json,
    /// model.safetensors). Blocking: reads and checks every weight.
    pub fn load(spec: &ModelSpec) -> Result<Self> {
        let dir = spec.path.as_path();
        let unavailable =
            |what: &str, e: &dyn std::fmt::Display| Error::unavailable(format!("model '{}': {what}: {e}", spec.id));
        let config_path = dir.join(CONFIG_FILE);
        let config_text = std::fs::read_to_string(&config_path)
            .map_err(|e| unavailable(&format!("cannot read {CONFIG_FILE}"), &e.kind()))?;
        let config: BertConfig = serde_json::from_str(&config_text)
            .map_err(|e| unavailable(&format!("{CONFIG_FILE} is not a BERT config"), &e))?;

        let tokenizer = load_tokenizer(&dir.join(TOKENIZER_FILE)).map_err(|e| unavailable("tokenizer", &e))?;
        let specials = probe_specials(&tokenizer).map_err(|e| unavailable("tokenizer", &e))?;

        let weights_path = dir.join(WEIGHTS_FILE);
        // Read into memory rather than mmap: mapping a file is `unsafe`
        // (another process could change it under us), and 100 MB is cheap.
        let weights =
            std::fs::read(&weights_path).map_err(|e| unavailable(&format!("cannot read {WEIGHTS_FILE}"), &e.kind()))?;
        let encoder = Encoder::load(&config, &weights, MatmulKernel::detect())
            .map_err(|e| unavailable(&format!("{WEIGHTS_FILE} does not fit its config"), &e))?;

        tracing::info!(
            model = %spec.id,
            hidden_size = config.hidden_size,
            window = config.max_position_embeddings,
            matmul = encoder.kernel().name(),
            "loaded BERT embedding model"
        );
        Ok(Self {
            id: spec.id.clone(),
            encoder,
            tokenizer,
            windowing: Windowing {
                specials,
                window: config.max_position_embeddings,
                vocab_size: config.vocab_size,
            },
            // sentence-transformers' BERT models (all-MiniLM among them)
            // mean-pool; the registry names the exceptions.
            pooling: spec.embedding.pooling.unwrap_or(Pooling::Mean),
            hidden_size: config.hidden_size,
        })
    }

    /// The matrix-product kernel this model runs on: `amx-bf16x3` or
    /// `candle-gemm`.
    pub fn matmul_kernel(&self) -> &'static str {
        self.encoder.kernel().name()
    }

    /// Content tokens of each text, without specials (the pipeline adds
    /// them per window).
    fn encode(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), false)
            .map_err(|e| Error::internal(format!("model '{}': tokenizing failed: {e}", self.id)))?;
        Ok(encodings.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Pooled vectors of `windows`, in their order.
    fn embed_windows(&self, windows: &[Window]) -> Result<Vec<Vec<f32>>> {
        let lengths: Vec<usize> = windows.iter().map(|w| w.tokens.len()).collect();
        let mut pooled: Vec<Option<Vec<f32>>> = vec![None; windows.len()];
        for batch in plan_batches(&lengths, MAX_SEQUENCES, MAX_BATCH_TOKENS) {
            let members: Vec<&[u32]> = batch.iter().map(|&i| &windows[i].tokens[..]).collect();
            let vectors = self.run_batch(&members)?;
            for (index, vector) in batch.into_iter().zip(vectors) {
                pooled[index] = Some(vector);
            }
        }
        pooled
            .into_iter()
            .map(|v| v.ok_or_else(|| Error::internal("a window was left out of every batch")))
            .collect()
    }

    /// One forward pass over `sequences`, packed without padding.
    fn run_batch(&self, sequences: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let hidden = self.encoder.forward(sequences).map_err(|e| {
            Error::internal(format!(
                "model '{}': forward pass over {} sequences failed: {e}",
                self.id,
                sequences.len()
            ))
        })?;
        let lengths: Vec<usize> = sequences.iter().map(|s| s.len()).collect();
        let vectors = pool(&hidden, self.hidden_size, &lengths, self.pooling);
        // A non-finite vector would poison every similarity computed from
        // it; fail loudly instead.
        if vectors.iter().flatten().any(|x| !x.is_finite()) {
            return Err(Error::internal(format!(
                "model '{}' produced a non-finite embedding",
                self.id
            )));
        }
        Ok(vectors)
    }
}

impl EmbeddingPipeline for BertEmbeddingPipeline {
    fn dimensions(&self) -> usize {
        self.hidden_size
    }

    fn embed(&self, inputs: &[EmbedInput], truncate: bool) -> Result<Vec<RawEmbedding>> {
        let content = content_tokens(&self.windowing, inputs, |texts| self.encode(texts))?;
        let windows = self.windowing.windows(&content, truncate);
        let vectors = self.embed_windows(&windows)?;
        // Windows come out grouped by input, in order: fold each input's.
        let mut per_input: Vec<Vec<RawEmbedding>> = vec![Vec::new(); inputs.len()];
        for (window, vector) in windows.iter().zip(vectors) {
            per_input[window.input].push(RawEmbedding {
                vector,
                tokens: window.tokens.len(),
            });
        }
        Ok(per_input
            .into_iter()
            .map(|mut chunks| {
                if chunks.len() == 1 {
                    chunks.remove(0)
                } else {
                    combine_chunks(&chunks)
                }
            })
            .collect())
    }
}

/// The tokenizer with its file's padding and truncation removed: the
/// pipeline pads per batch and windows long inputs itself, and a tokenizer
/// that cut inputs would cut them silently.
fn load_tokenizer(path: &Path) -> std::result::Result<Tokenizer, String> {
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| format!("cannot load {TOKENIZER_FILE}: {e}"))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|e| format!("cannot turn truncation off: {e}"))?;
    Ok(tokenizer)
}

fn probe_specials(tokenizer: &Tokenizer) -> std::result::Result<Specials, String> {
    const PROBE: &str = "hello";
    let ids = |specials: bool| {
        tokenizer
            .encode(PROBE, specials)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| format!("cannot encode a probe text: {e}"))
    };
    Specials::from_probe(&ids(true)?, &ids(false)?)
        .ok_or_else(|| "cannot tell its special tokens from the text".to_owned())
}
