//! llmlab-llama: GGUF models on llama.cpp (through `llama-cpp-2`).
//!
//! A loaded model lives on one engine thread that owns every llama.cpp
//! object; async code talks to it only through a command channel.

mod backend;
mod engine;
mod generate;
mod logprobs;
mod memory;
mod pipeline;
mod sampler;
mod template;

pub use memory::estimate_bytes;
pub use pipeline::LlamaChatPipeline;
pub use template::ChatTemplate;
