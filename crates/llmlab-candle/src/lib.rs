//! candle backend of llmlab: BERT-family sentence embeddings from a folder
//! of safetensors weights, a `config.json` and a `tokenizer.json`, on the CPU.
//!
//! The pipeline tokenises, cuts long inputs into windows the model can read,
//! runs windows in length-sorted padded batches and pools each window's token
//! states under its attention mask. Vectors leave unnormalised: the core
//! service normalises, once, for every backend.

mod batch;
mod bert;
mod pooling;
mod windows;

pub use bert::BertEmbeddingPipeline;
