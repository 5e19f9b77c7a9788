//! Our own CLIP text encoder (transformers' `CLIPTextModel` and
//! `CLIPTextModelWithProjection`), built from `text_encoder*/config.json`.
//!
//! candle's CLIP text models either cover only quick-GELU (SD 1.x) or are
//! built from presets with private fields; SD 2.x's and SDXL's OpenCLIP
//! encoders use exact GELU, and SDXL reads the second-to-last layer's
//! states and a pooled, projected embedding. This one does all three.

use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde_json::Value;

use super::configs::{ConfigResult, Fields};
use super::layers::causal_attention;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activation {
    /// x * sigmoid(1.702 x): OpenAI's CLIP (SD 1.x, SDXL's first encoder).
    QuickGelu,
    /// OpenCLIP's (SD 2.x, SDXL's second encoder).
    Gelu,
}

#[derive(Debug, Clone)]
pub(crate) struct TextEncoderConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    layers: usize,
    heads: usize,
    positions: usize,
    activation: Activation,
    layer_norm_eps: f64,
    /// Width of `text_projection` (with-projection models).
    projection_dim: usize,
}

impl TextEncoderConfig {
    /// Width of the states (`hidden_size`).
    pub fn width(&self) -> usize {
        self.hidden_size
    }

    pub fn from_json(json: &Value) -> ConfigResult<Self> {
        let c = Fields(json);
        let activation = match c.str("hidden_act", "quick_gelu")? {
            "quick_gelu" => Activation::QuickGelu,
            "gelu" => Activation::Gelu,
            other => return Err(format!("hidden_act {other} is not supported (quick_gelu or gelu)")),
        };
        let hidden_size = c.usize("hidden_size", None)?;
        let heads = c.usize("num_attention_heads", None)?;
        if heads == 0 || hidden_size % heads != 0 {
            return Err(format!(
                "num_attention_heads {heads} does not divide hidden_size {hidden_size}"
            ));
        }
        Ok(Self {
            vocab_size: c.usize("vocab_size", None)?,
            hidden_size,
            intermediate_size: c.usize("intermediate_size", None)?,
            layers: c.usize("num_hidden_layers", None)?.max(1),
            heads,
            positions: c.usize("max_position_embeddings", Some(77))?,
            activation,
            layer_norm_eps: c.f64("layer_norm_eps", 1e-5)?,
            projection_dim: c.usize("projection_dim", Some(hidden_size))?,
        })
    }
}

#[derive(Debug)]
struct EncoderLayer {
    norm1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

impl EncoderLayer {
    fn load(vb: VarBuilder, c: &TextEncoderConfig) -> Result<Self> {
        let (h, i, eps) = (c.hidden_size, c.intermediate_size, c.layer_norm_eps);
        let attn = vb.pp("self_attn");
        Ok(Self {
            norm1: candle_nn::layer_norm(h, eps, vb.pp("layer_norm1"))?,
            q: candle_nn::linear(h, h, attn.pp("q_proj"))?,
            k: candle_nn::linear(h, h, attn.pp("k_proj"))?,
            v: candle_nn::linear(h, h, attn.pp("v_proj"))?,
            out: candle_nn::linear(h, h, attn.pp("out_proj"))?,
            norm2: candle_nn::layer_norm(h, eps, vb.pp("layer_norm2"))?,
            fc1: candle_nn::linear(h, i, vb.pp("mlp.fc1"))?,
            fc2: candle_nn::linear(i, h, vb.pp("mlp.fc2"))?,
        })
    }

    fn forward(&self, xs: &Tensor, heads: usize, activation: Activation) -> Result<Tensor> {
        let normed = self.norm1.forward(xs)?;
        let attended = causal_attention(
            &self.q.forward(&normed)?,
            &self.k.forward(&normed)?,
            &self.v.forward(&normed)?,
            heads,
        )?;
        let xs = (self.out.forward(&attended)? + xs)?;
        let hidden = self.fc1.forward(&self.norm2.forward(&xs)?)?;
        let hidden = match activation {
            Activation::QuickGelu => (&hidden * candle_nn::ops::sigmoid(&(&hidden * 1.702)?)?)?,
            Activation::Gelu => hidden.gelu_erf()?,
        };
        self.fc2.forward(&hidden)? + xs
    }
}

/// What one pass over a batch of token ids gives.
#[derive(Debug)]
pub(crate) struct Encoded {
    /// The last layer's states after the final norm (batch, tokens, hidden):
    /// SD 1.x's and 2.x's conditioning.
    pub last: Tensor,
    /// The second-to-last layer's states, unnormed: SDXL's conditioning.
    pub penultimate: Tensor,
    /// The final-normed state at each sequence's end token, through
    /// `text_projection` where the model has one (batch, projection).
    pub pooled: Tensor,
}

#[derive(Debug)]
pub(crate) struct TextEncoder {
    config: TextEncoderConfig,
    tokens: Embedding,
    positions: Tensor,
    layers: Vec<EncoderLayer>,
    final_norm: LayerNorm,
    projection: Option<Linear>,
}

impl TextEncoder {
    /// The weights at `vb`: under `text_model.` (and `text_projection` for
    /// models with one), or saved without that prefix by transformers 5.
    pub fn load(vb: VarBuilder, config: &TextEncoderConfig) -> Result<Self> {
        let projection = if vb.contains_tensor("text_projection.weight") {
            Some(candle_nn::linear_no_bias(
                config.hidden_size,
                config.projection_dim,
                vb.pp("text_projection"),
            )?)
        } else {
            None
        };
        let model = if vb.contains_tensor("text_model.embeddings.token_embedding.weight") {
            vb.pp("text_model")
        } else {
            vb
        };
        let h = config.hidden_size;
        let embeddings = model.pp("embeddings");
        let layers = (0..config.layers)
            .map(|i| EncoderLayer::load(model.pp(format!("encoder.layers.{i}")), config))
            .collect::<Result<_>>()?;
        Ok(Self {
            tokens: candle_nn::embedding(config.vocab_size, h, embeddings.pp("token_embedding"))?,
            positions: embeddings.get((config.positions, h), "position_embedding.weight")?,
            layers,
            final_norm: candle_nn::layer_norm(h, config.layer_norm_eps, model.pp("final_layer_norm"))?,
            projection,
            config: config.clone(),
        })
    }

    /// Width of [`Encoded::pooled`].
    pub fn pooled_width(&self) -> usize {
        if self.projection.is_some() {
            self.config.projection_dim
        } else {
            self.config.hidden_size
        }
    }

    /// Encode `ids` (batch, tokens); `end_id` marks where each sequence's
    /// pooled state is read (its first end token, else its last token).
    pub fn encode(&self, ids: &Tensor, end_id: u32) -> Result<Encoded> {
        let (batch, length) = ids.dims2()?;
        let mut xs = self
            .tokens
            .forward(ids)?
            .broadcast_add(&self.positions.narrow(0, 0, length)?)?;
        let mut penultimate = xs.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            if i + 1 == self.layers.len() {
                penultimate = xs.clone();
            }
            xs = layer.forward(&xs, self.config.heads, self.config.activation)?;
        }
        let last = self.final_norm.forward(&xs)?;
        let rows = ids.to_vec2::<u32>()?;
        let ends: Vec<u32> = rows
            .iter()
            .map(|row| row.iter().position(|&id| id == end_id).unwrap_or(length - 1) as u32)
            .collect();
        let mut pooled = Vec::with_capacity(batch);
        for (b, &end) in ends.iter().enumerate() {
            pooled.push(last.get(b)?.get(end as usize)?);
        }
        let pooled = Tensor::stack(&pooled, 0)?;
        let pooled = match &self.projection {
            Some(projection) => projection.forward(&pooled)?,
            None => pooled,
        };
        Ok(Encoded {
            last,
            penultimate,
            pooled,
        })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use candle_nn::VarMap;
    use candle_transformers::models::clip::text_model::{
        Activation as CandleActivation, ClipTextConfig, ClipTextTransformer,
    };
    use serde_json::json;

    use super::*;
    use crate::diffusion::layers::largest_difference;

    #[test]
    fn encodes_what_candles_clip_encodes_from_the_same_weights() {
        let device = Device::Cpu;
        let config = TextEncoderConfig::from_json(&json!({
            "vocab_size": 50, "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 3, "num_attention_heads": 4, "max_position_embeddings": 9,
        }))
        .unwrap();
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let theirs = ClipTextTransformer::new(
            vb.pp("text_model"),
            &ClipTextConfig {
                vocab_size: 50,
                embed_dim: 16,
                activation: CandleActivation::QuickGelu,
                intermediate_size: 24,
                max_position_embeddings: 9,
                pad_with: None,
                num_hidden_layers: 3,
                num_attention_heads: 4,
                projection_dim: 16,
            },
        )
        .unwrap();
        for var in varmap.all_vars() {
            var.set(&Tensor::randn(0f32, 0.3, var.shape(), &device).unwrap())
                .unwrap();
        }
        let ours = TextEncoder::load(vb, &config).unwrap();
        let ids = Tensor::new(&[[1u32, 7, 9, 49, 3, 3, 3, 3, 3]], &device).unwrap();
        let expected = theirs.forward_with_mask(&ids, usize::MAX).unwrap();
        let encoded = ours.encode(&ids, 3).unwrap();
        let worst = largest_difference(&encoded.last, &expected);
        assert!(worst < 1e-4, "{worst}");
        // Without a projection, the pooled state is the final-normed state
        // at the first end token (position 4).
        let at_end = encoded.last.get(0).unwrap().get(4).unwrap();
        let pooled = encoded.pooled.get(0).unwrap();
        let worst = largest_difference(&pooled, &at_end);
        assert_eq!(worst, 0.0);
        assert_eq!(encoded.penultimate.dims(), [1, 9, 16]);
    }
}
