//! llmlab's own BERT encoder (BERT, MiniLM and other post-norm encoders
//! with absolute positions).
//!
//! Sequences run packed one after another, without padding: every linear
//! layer is one product over all tokens of the batch, and attention runs per
//! sequence and head, so no token attends across sequences and none is
//! wasted on padding. A token's result does not depend on the rest of the
//! batch. Products run on AMX tiles where the CPU and the OS allow them
//! (see `crate::amx`), else on candle's matmul.

mod linear;
mod ops;
mod weights;

pub(crate) use linear::MatmulKernel;
pub(crate) use weights::BertConfig;

use linear::Linear;
use ops::{Activation, LayerNorm};
use weights::Checkpoint;

struct Layer {
    /// Query, key and value in one product: `3 * hidden` outputs.
    qkv: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

pub(crate) struct Encoder {
    hidden: usize,
    heads: usize,
    vocab: usize,
    positions: usize,
    word_embeddings: Vec<f32>,
    position_embeddings: Vec<f32>,
    /// Segment 0's embedding: inputs are single-segment.
    token_type_embedding: Vec<f32>,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    activation: Activation,
    kernel: MatmulKernel,
}

impl Encoder {
    /// Build the encoder from a checked config and the bytes of its
    /// safetensors file; errors name the tensor or field at fault.
    pub fn load(config: &BertConfig, safetensors: &[u8], kernel: MatmulKernel) -> Result<Self, String> {
        config.check()?;
        let activation = Activation::from_config(&config.hidden_act)
            .ok_or_else(|| format!("hidden_act '{}' is not supported", config.hidden_act))?;
        let (h, inner) = (config.hidden_size, config.intermediate_size);
        let eps = config.layer_norm_eps as f32;
        let mut checkpoint = Checkpoint::from_safetensors(safetensors)?;
        let norm = |checkpoint: &mut Checkpoint, name: &str| -> Result<LayerNorm, String> {
            let (weight, bias) = checkpoint.take_norm(name, h)?;
            Ok(LayerNorm { weight, bias, eps })
        };
        let linear = |checkpoint: &mut Checkpoint, name: &str, outputs: usize, inputs: usize| {
            let weight = checkpoint.take(&format!("{name}.weight"), &[outputs, inputs])?;
            let bias = checkpoint.take(&format!("{name}.bias"), &[outputs])?;
            Linear::new(kernel, &weight, bias, outputs, inputs).map_err(|e| format!("{name}: {e}"))
        };

        let word_embeddings = checkpoint.take("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
        let position_embeddings = checkpoint.take(
            "embeddings.position_embeddings.weight",
            &[config.max_position_embeddings, h],
        )?;
        let mut token_type_embedding =
            checkpoint.take("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, h])?;
        token_type_embedding.truncate(h);
        let embedding_norm = norm(&mut checkpoint, "embeddings.LayerNorm")?;

        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let at = format!("encoder.layer.{i}");
            // Fuse query, key and value: one product of 3h outputs instead
            // of three of h.
            let (mut qkv_weight, mut qkv_bias) = (Vec::with_capacity(3 * h * h), Vec::with_capacity(3 * h));
            for part in ["query", "key", "value"] {
                let name = format!("{at}.attention.self.{part}");
                qkv_weight.extend(checkpoint.take(&format!("{name}.weight"), &[h, h])?);
                qkv_bias.extend(checkpoint.take(&format!("{name}.bias"), &[h])?);
            }
            layers.push(Layer {
                qkv: Linear::new(kernel, &qkv_weight, qkv_bias, 3 * h, h).map_err(|e| format!("{at} qkv: {e}"))?,
                attention_out: linear(&mut checkpoint, &format!("{at}.attention.output.dense"), h, h)?,
                attention_norm: norm(&mut checkpoint, &format!("{at}.attention.output.LayerNorm"))?,
                intermediate: linear(&mut checkpoint, &format!("{at}.intermediate.dense"), inner, h)?,
                output: linear(&mut checkpoint, &format!("{at}.output.dense"), h, inner)?,
                output_norm: norm(&mut checkpoint, &format!("{at}.output.LayerNorm"))?,
            });
        }
        Ok(Self {
            hidden: h,
            heads: config.num_attention_heads,
            vocab: config.vocab_size,
            positions: config.max_position_embeddings,
            word_embeddings,
            position_embeddings,
            token_type_embedding,
            embedding_norm,
            layers,
            activation,
            kernel,
        })
    }

    pub fn kernel(&self) -> MatmulKernel {
        self.kernel
    }

    /// The last hidden states of `sequences` (specials included), packed:
    /// `[sum of lengths, hidden]`, row-major, in order.
    pub fn forward(&self, sequences: &[&[u32]]) -> candle_core::Result<Vec<f32>> {
        let h = self.hidden;
        let lengths: Vec<usize> = sequences.iter().map(|s| s.len()).collect();
        let tokens: usize = lengths.iter().sum();
        let mut x = Vec::with_capacity(tokens * h);
        for sequence in sequences {
            if sequence.len() > self.positions {
                candle_core::bail!(
                    "a sequence of {} tokens exceeds {} positions",
                    sequence.len(),
                    self.positions
                );
            }
            for (position, &id) in sequence.iter().enumerate() {
                let id = id as usize;
                if id >= self.vocab {
                    candle_core::bail!("token id {id} is outside the vocabulary of {}", self.vocab);
                }
                let word = &self.word_embeddings[id * h..(id + 1) * h];
                let place = &self.position_embeddings[position * h..(position + 1) * h];
                x.extend(
                    word.iter()
                        .zip(place)
                        .zip(&self.token_type_embedding)
                        .map(|((w, p), t)| w + p + t),
                );
            }
        }
        self.embedding_norm.apply(&mut x, None);

        // Buffers reused from layer to layer.
        let (mut qkv, mut context, mut attended, mut inner) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for layer in &self.layers {
            layer.qkv.forward_into(&x, tokens, &mut qkv)?;
            ops::attention_into(&qkv, &lengths, self.heads, h, &mut context);
            layer.attention_out.forward_into(&context, tokens, &mut attended)?;
            layer.attention_norm.apply(&mut attended, Some(&x));
            layer.intermediate.forward_into(&attended, tokens, &mut inner)?;
            self.activation.apply(&mut inner);
            layer.output.forward_into(&inner, tokens, &mut x)?;
            layer.output_norm.apply(&mut x, Some(&attended));
        }
        Ok(x)
    }
}
