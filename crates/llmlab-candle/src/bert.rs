//! The BERT-family embedding pipeline: loading a model folder and running
//! padded batches of windows through the encoder.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use llmlab_core::embedding::{combine_chunks, EmbedInput, Pooling, RawEmbedding};
use llmlab_core::pipeline::EmbeddingPipeline;
use llmlab_core::registry::ModelSpec;
use llmlab_core::{Error, Result};
use tokenizers::Tokenizer;

use crate::batch::{plan_batches, MAX_PADDED_TOKENS, MAX_SEQUENCES};
use crate::pooling::pool;
use crate::windows::{content_tokens, Specials, Window, Windowing};

/// Files a model folder must hold.
const CONFIG_FILE: &str = "config.json";
const TOKENIZER_FILE: &str = "tokenizer.json";
const WEIGHTS_FILE: &str = "model.safetensors";

/// A BERT-family encoder (BERT, MiniLM, …) that pools token states into
/// sentence embeddings, on the CPU. Runs on the caller's thread; candle
/// spreads each matrix product over every core.
pub struct BertEmbeddingPipeline {
    id: String,
    model: BertModel,
    tokenizer: Tokenizer,
    windowing: Windowing,
    pooling: Pooling,
    hidden_size: usize,
    pad_id: u32,
    device: Device,
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
            .map_err(|e| unavailable(&format!("cannot read {}", config_path.display()), &e))?;
        let config: Config = serde_json::from_str(&config_text)
            .map_err(|e| unavailable(&format!("{} is not a BERT config", config_path.display()), &e))?;

        let tokenizer = load_tokenizer(&dir.join(TOKENIZER_FILE)).map_err(|e| unavailable("tokenizer", &e))?;
        let specials = probe_specials(&tokenizer).map_err(|e| unavailable("tokenizer", &e))?;

        let device = Device::Cpu;
        let weights_path = dir.join(WEIGHTS_FILE);
        // Read into memory rather than mmap: mapping a file is `unsafe`
        // (another process could change it under us), and 100 MB is cheap.
        let weights = std::fs::read(&weights_path)
            .map_err(|e| unavailable(&format!("cannot read {}", weights_path.display()), &e))?;
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &device)
            .map_err(|e| unavailable(&format!("{} is not safetensors", weights_path.display()), &e))?;
        let model = BertModel::load(vb, &config).map_err(|e| unavailable("weights do not fit the config", &e))?;

        tracing::info!(
            model = %spec.id,
            hidden_size = config.hidden_size,
            window = config.max_position_embeddings,
            "loaded BERT embedding model"
        );
        Ok(Self {
            id: spec.id.clone(),
            model,
            tokenizer,
            windowing: Windowing {
                specials,
                window: config.max_position_embeddings,
                vocab_size: config.vocab_size,
            },
            // sentence-transformers' BERT models (all-MiniLM among them)
            // mean-pool; the registry names the exceptions.
            pooling: spec.pooling.unwrap_or(Pooling::Mean),
            hidden_size: config.hidden_size,
            pad_id: u32::try_from(config.pad_token_id).unwrap_or(0),
            device,
        })
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
        for batch in plan_batches(&lengths, MAX_SEQUENCES, MAX_PADDED_TOKENS) {
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

    /// One forward pass over sequences padded on the right to the longest.
    fn run_batch(&self, sequences: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let longest = sequences.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(sequences.len() * longest);
        let mut mask = Vec::with_capacity(sequences.len() * longest);
        for sequence in sequences {
            ids.extend_from_slice(sequence);
            ids.resize(ids.len() + longest - sequence.len(), self.pad_id);
            mask.extend(std::iter::repeat_n(1u32, sequence.len()));
            mask.resize(mask.len() + longest - sequence.len(), 0);
        }
        let hidden = self.forward(ids, mask, sequences.len(), longest).map_err(|e| {
            Error::internal(format!(
                "model '{}': forward pass over {} sequences of up to {longest} tokens failed: {e}",
                self.id,
                sequences.len()
            ))
        })?;
        let lengths: Vec<usize> = sequences.iter().map(|s| s.len()).collect();
        let vectors = pool(&hidden, longest, self.hidden_size, &lengths, self.pooling);
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

    /// The last hidden states, flattened `[sequences, longest, hidden]`.
    fn forward(
        &self,
        ids: Vec<u32>,
        mask: Vec<u32>,
        sequences: usize,
        longest: usize,
    ) -> candle_core::Result<Vec<f32>> {
        let ids = Tensor::from_vec(ids, (sequences, longest), &self.device)?;
        let mask = Tensor::from_vec(mask, (sequences, longest), &self.device)?;
        // Single-segment inputs: every token is of type 0.
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?;
        hidden.flatten_all()?.to_vec1::<f32>()
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
    let mut tokenizer = Tokenizer::from_file(path).map_err(|e| format!("cannot load {}: {e}", path.display()))?;
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
