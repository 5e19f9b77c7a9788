//! llmlab-llama: GGUF models on llama.cpp (through `llama-cpp-2`).
//!
//! A loaded model lives on one engine thread that owns every llama.cpp
//! object; async code talks to it only through a command channel.

mod backend;
mod batcher;
mod cells;
mod control_text;
mod degrade;
mod embedder;
mod encoder;
mod engine;
mod engine_load;
mod facts;
mod gpu;
mod job;
mod logprobs;
mod memory;
mod output;
mod pipeline;
mod policy;
mod preflight;
mod sampler;
mod schedule;
mod sequence;
mod settings;
mod template;
mod vision;

pub use degrade::degrade;
pub use embedder::LlamaEmbeddingPipeline;
pub use encoder::EncoderInfo;
pub use facts::describe;
pub use gpu::{gpus, Gpu};
pub use memory::{estimate_memory, gpu_memory_free};
pub use pipeline::LlamaChatPipeline;
pub use preflight::check_model_file;
pub use template::ChatTemplate;
