//! The T5 encoder SD3 and Flux read the prompt with (transformers'
//! `T5EncoderModel`, candle's implementation) and its tokenizer, from the
//! folder's `tokenizer.json`. The prompt is padded to a fixed length and
//! read without a mask, as diffusers does.

use std::sync::Mutex;

use candle_core::{DType, Tensor};
use candle_transformers::models::t5::{Config as T5Config, T5EncoderModel};
use tokenizers::Tokenizer;

use crate::diffusion::clip_tokenizer::fit_to_window;
use crate::diffusion::components::Folder;
use crate::diffusion::pictures::internal;
use llmlab_core::Error;

pub(crate) struct T5Tower {
    tokenizer: Tokenizer,
    /// candle's encoder keeps scratch state, hence `&mut` to run it;
    /// generations are one at a time per model anyway.
    encoder: Mutex<T5EncoderModel>,
    pub width: usize,
}

impl T5Tower {
    /// `text_encoder<suffix>/` and `tokenizer<suffix>/`, prompts cut and
    /// padded to `length` tokens; weights in `dtype`.
    pub fn load(folder: &Folder, suffix: &str, length: usize, dtype: DType) -> Result<Self, String> {
        let component = format!("text_encoder{suffix}");
        let config_name = format!("{component}/config.json");
        let config: T5Config =
            serde_json::from_value(folder.config(&config_name)?).map_err(|e| format!("{config_name}: {e}"))?;
        let tokenizer_path = folder.path.join(format!("tokenizer{suffix}/tokenizer.json"));
        if !tokenizer_path.is_file() {
            return Err(format!(
                "the diffusers folder lacks tokenizer{suffix}/tokenizer.json (the T5 tokenizer; \
                 spiece.model alone is not read)"
            ));
        }
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path)
            .map_err(|e| format!("tokenizer{suffix}/tokenizer.json does not read: {e}"))?;
        let pad = tokenizer
            .id_to_token(config.pad_token_id as u32)
            .unwrap_or_else(|| "<pad>".to_owned());
        fit_to_window(&mut tokenizer, length, config.pad_token_id as u32, pad)
            .map_err(|e| format!("tokenizer{suffix}/tokenizer.json: {e}"))?;
        let weights = folder.weights(&component, "model")?.set_dtype(dtype);
        let encoder =
            T5EncoderModel::load(weights, &config).map_err(|e| format!("{component}/model.safetensors: {e}"))?;
        Ok(Self {
            tokenizer,
            encoder: Mutex::new(encoder),
            width: config.d_model,
        })
    }

    /// The prompt's states (1, length, width), in F32.
    pub fn encode(&self, text: &str) -> llmlab_core::Result<Tensor> {
        let ids = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::invalid_param("prompt", format!("the prompt does not tokenize: {e}")))?
            .get_ids()
            .to_vec();
        let mut encoder = self.encoder.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        Tensor::new(ids.as_slice(), encoder.device())
            .and_then(|ids| ids.unsqueeze(0))
            .and_then(|ids| encoder.forward(&ids))
            .and_then(|states| states.to_dtype(DType::F32))
            .map_err(internal)
    }
}
