//! candle backend of llmlab: BERT-family sentence embeddings from a folder
//! of safetensors weights, a `config.json` and a `tokenizer.json`, on the
//! CPU; and Stable Diffusion image generation from a diffusers folder
//! (`diffusion/`), on the CPU or, built with `cuda`, a GPU (`device.rs`).
//!
//! The pipeline tokenises, cuts long inputs into windows the model can read,
//! runs batches of windows packed without padding through its own encoder
//! (matrix products on AMX tiles where the CPU has them, else candle's
//! matmul) and pools each window's token states. Vectors leave
//! unnormalised: the core service normalises, once, for every backend.

#[allow(unsafe_code)]
mod amx;
mod batch;
mod bert;
mod denormals;
mod device;
mod diffusion;
mod encoder;
#[allow(unsafe_code)]
mod gemm_f32;
mod pooling;
mod windows;

pub use bert::BertEmbeddingPipeline;
pub use device::{images_on_gpu, DEVICE_ENV};
pub use diffusion::DiffusionPipeline;
