//! diffusers saves SD3's and Flux's transformers under its own names, with
//! separate query, key and value projections; candle's MMDiT and Flux
//! models read the names of the original releases (SD3's `joint_blocks`,
//! Black Forest Labs' `double_blocks`), with the projections fused. These
//! maps rename, fuse and reorder a diffusers state dict for candle; a
//! tensor the map needs and the file lacks is an error naming it.

use std::collections::HashMap;

use candle_core::Tensor;

type Tensors = HashMap<String, Tensor>;

/// Moves tensors from the diffusers dict to candle's, by name.
struct Renamer {
    from: Tensors,
    to: Tensors,
}

impl Renamer {
    fn new(from: Tensors) -> Self {
        Self {
            from,
            to: HashMap::new(),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.from.contains_key(name)
    }

    fn take(&mut self, name: &str) -> Result<Tensor, String> {
        self.from.remove(name).ok_or_else(|| format!("{name} is missing"))
    }

    /// `from.weight` (and `from.bias` where there is one) to `to`.
    fn linear(&mut self, from: &str, to: &str) -> Result<(), String> {
        let weight = self.take(&format!("{from}.weight"))?;
        self.to.insert(format!("{to}.weight"), weight);
        if let Some(bias) = self.from.remove(&format!("{from}.bias")) {
            self.to.insert(format!("{to}.bias"), bias);
        }
        Ok(())
    }

    /// A single tensor to another name, where the file has it.
    fn optional(&mut self, from: &str, to: &str) {
        if let Some(tensor) = self.from.remove(from) {
            self.to.insert(to.to_owned(), tensor);
        }
    }

    /// Several linear layers fused into one, their outputs stacked in
    /// the order given (weights and biases alike).
    fn fused(&mut self, parts: &[String], to: &str) -> Result<(), String> {
        for suffix in ["weight", "bias"] {
            let names: Vec<String> = parts.iter().map(|part| format!("{part}.{suffix}")).collect();
            if suffix == "bias" && !names.iter().any(|name| self.has(name)) {
                continue;
            }
            let tensors = names
                .iter()
                .map(|name| self.take(name))
                .collect::<Result<Vec<_>, _>>()?;
            let fused = Tensor::cat(&tensors, 0).map_err(|e| format!("{to}.{suffix}: {e}"))?;
            self.to.insert(format!("{to}.{suffix}"), fused);
        }
        Ok(())
    }

    /// diffusers' `AdaLayerNormContinuous` gives (scale, shift) where the
    /// originals give (shift, scale): the two halves of the output swap.
    fn scale_shift_swapped(&mut self, from: &str, to: &str) -> Result<(), String> {
        for suffix in ["weight", "bias"] {
            let name = format!("{from}.{suffix}");
            let Some(tensor) = self.from.remove(&name) else {
                if suffix == "weight" {
                    return Err(format!("{name} is missing"));
                }
                continue;
            };
            let halves = tensor.chunk(2, 0).map_err(|e| format!("{name}: {e}"))?;
            let swapped = Tensor::cat(&[&halves[1], &halves[0]], 0).map_err(|e| format!("{name}: {e}"))?;
            self.to.insert(format!("{to}.{suffix}"), swapped);
        }
        Ok(())
    }
}

fn qkv(prefix: &str, names: [&str; 3]) -> Vec<String> {
    names.iter().map(|name| format!("{prefix}.{name}")).collect()
}

/// diffusers' `SD3Transformer2DModel` to candle's `MMDiT` (SD3, and SD3.5
/// with its query/key norms and the dual attention of 3.5 medium).
pub(crate) fn sd3_for_candle(tensors: Tensors, layers: usize) -> Result<Tensors, String> {
    let mut r = Renamer::new(tensors);
    r.linear("pos_embed.proj", "x_embedder.proj")?;
    let pos_embed = r.take("pos_embed.pos_embed")?;
    r.to.insert("pos_embed".into(), pos_embed);
    r.linear("time_text_embed.timestep_embedder.linear_1", "t_embedder.mlp.0")?;
    r.linear("time_text_embed.timestep_embedder.linear_2", "t_embedder.mlp.2")?;
    r.linear("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0")?;
    r.linear("time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2")?;
    r.linear("context_embedder", "context_embedder")?;
    for i in 0..layers {
        let (d, c) = (format!("transformer_blocks.{i}"), format!("joint_blocks.{i}"));
        let last = i + 1 == layers;
        r.linear(&format!("{d}.norm1.linear"), &format!("{c}.x_block.adaLN_modulation.1"))?;
        r.fused(
            &qkv(&format!("{d}.attn"), ["to_q", "to_k", "to_v"]),
            &format!("{c}.x_block.attn.qkv"),
        )?;
        r.linear(&format!("{d}.attn.to_out.0"), &format!("{c}.x_block.attn.proj"))?;
        r.optional(
            &format!("{d}.attn.norm_q.weight"),
            &format!("{c}.x_block.attn.ln_q.weight"),
        );
        r.optional(
            &format!("{d}.attn.norm_k.weight"),
            &format!("{c}.x_block.attn.ln_k.weight"),
        );
        r.linear(&format!("{d}.ff.net.0.proj"), &format!("{c}.x_block.mlp.fc1"))?;
        r.linear(&format!("{d}.ff.net.2"), &format!("{c}.x_block.mlp.fc2"))?;
        if r.has(&format!("{d}.attn2.to_q.weight")) {
            r.fused(
                &qkv(&format!("{d}.attn2"), ["to_q", "to_k", "to_v"]),
                &format!("{c}.x_block.attn2.qkv"),
            )?;
            r.linear(&format!("{d}.attn2.to_out.0"), &format!("{c}.x_block.attn2.proj"))?;
            r.optional(
                &format!("{d}.attn2.norm_q.weight"),
                &format!("{c}.x_block.attn2.ln_q.weight"),
            );
            r.optional(
                &format!("{d}.attn2.norm_k.weight"),
                &format!("{c}.x_block.attn2.ln_k.weight"),
            );
        }
        r.fused(
            &qkv(&format!("{d}.attn"), ["add_q_proj", "add_k_proj", "add_v_proj"]),
            &format!("{c}.context_block.attn.qkv"),
        )?;
        if last {
            // The last block only feeds the text's keys and values to the
            // picture: a shift and scale, no output projection, no MLP.
            r.scale_shift_swapped(
                &format!("{d}.norm1_context.linear"),
                &format!("{c}.context_block.adaLN_modulation.1"),
            )?;
        } else {
            r.linear(
                &format!("{d}.norm1_context.linear"),
                &format!("{c}.context_block.adaLN_modulation.1"),
            )?;
            r.linear(&format!("{d}.attn.to_add_out"), &format!("{c}.context_block.attn.proj"))?;
            r.optional(
                &format!("{d}.attn.norm_added_q.weight"),
                &format!("{c}.context_block.attn.ln_q.weight"),
            );
            r.optional(
                &format!("{d}.attn.norm_added_k.weight"),
                &format!("{c}.context_block.attn.ln_k.weight"),
            );
            r.linear(
                &format!("{d}.ff_context.net.0.proj"),
                &format!("{c}.context_block.mlp.fc1"),
            )?;
            r.linear(&format!("{d}.ff_context.net.2"), &format!("{c}.context_block.mlp.fc2"))?;
        }
    }
    r.scale_shift_swapped("norm_out.linear", "final_layer.adaLN_modulation.1")?;
    r.linear("proj_out", "final_layer.linear")?;
    Ok(r.to)
}

/// diffusers' `FluxTransformer2DModel` to candle's `Flux` (Black Forest
/// Labs' names).
pub(crate) fn flux_for_candle(tensors: Tensors, double: usize, single: usize) -> Result<Tensors, String> {
    let mut r = Renamer::new(tensors);
    r.linear("x_embedder", "img_in")?;
    r.linear("context_embedder", "txt_in")?;
    r.linear("time_text_embed.timestep_embedder.linear_1", "time_in.in_layer")?;
    r.linear("time_text_embed.timestep_embedder.linear_2", "time_in.out_layer")?;
    r.linear("time_text_embed.text_embedder.linear_1", "vector_in.in_layer")?;
    r.linear("time_text_embed.text_embedder.linear_2", "vector_in.out_layer")?;
    if r.has("time_text_embed.guidance_embedder.linear_1.weight") {
        r.linear("time_text_embed.guidance_embedder.linear_1", "guidance_in.in_layer")?;
        r.linear("time_text_embed.guidance_embedder.linear_2", "guidance_in.out_layer")?;
    }
    for i in 0..double {
        let (d, c) = (format!("transformer_blocks.{i}"), format!("double_blocks.{i}"));
        r.linear(&format!("{d}.norm1.linear"), &format!("{c}.img_mod.lin"))?;
        r.linear(&format!("{d}.norm1_context.linear"), &format!("{c}.txt_mod.lin"))?;
        r.fused(
            &qkv(&format!("{d}.attn"), ["to_q", "to_k", "to_v"]),
            &format!("{c}.img_attn.qkv"),
        )?;
        r.fused(
            &qkv(&format!("{d}.attn"), ["add_q_proj", "add_k_proj", "add_v_proj"]),
            &format!("{c}.txt_attn.qkv"),
        )?;
        for (norm, side, scale) in [
            ("norm_q", "img_attn", "query_norm"),
            ("norm_k", "img_attn", "key_norm"),
            ("norm_added_q", "txt_attn", "query_norm"),
            ("norm_added_k", "txt_attn", "key_norm"),
        ] {
            let tensor = r.take(&format!("{d}.attn.{norm}.weight"))?;
            r.to.insert(format!("{c}.{side}.norm.{scale}.scale"), tensor);
        }
        r.linear(&format!("{d}.attn.to_out.0"), &format!("{c}.img_attn.proj"))?;
        r.linear(&format!("{d}.attn.to_add_out"), &format!("{c}.txt_attn.proj"))?;
        r.linear(&format!("{d}.ff.net.0.proj"), &format!("{c}.img_mlp.0"))?;
        r.linear(&format!("{d}.ff.net.2"), &format!("{c}.img_mlp.2"))?;
        r.linear(&format!("{d}.ff_context.net.0.proj"), &format!("{c}.txt_mlp.0"))?;
        r.linear(&format!("{d}.ff_context.net.2"), &format!("{c}.txt_mlp.2"))?;
    }
    for i in 0..single {
        let (d, c) = (format!("single_transformer_blocks.{i}"), format!("single_blocks.{i}"));
        r.linear(&format!("{d}.norm.linear"), &format!("{c}.modulation.lin"))?;
        // One projection gives the attention's q, k, v and the MLP's input.
        let mut parts = qkv(&format!("{d}.attn"), ["to_q", "to_k", "to_v"]);
        parts.push(format!("{d}.proj_mlp"));
        r.fused(&parts, &format!("{c}.linear1"))?;
        r.linear(&format!("{d}.proj_out"), &format!("{c}.linear2"))?;
        for (norm, scale) in [("norm_q", "query_norm"), ("norm_k", "key_norm")] {
            let tensor = r.take(&format!("{d}.attn.{norm}.weight"))?;
            r.to.insert(format!("{c}.norm.{scale}.scale"), tensor);
        }
    }
    r.scale_shift_swapped("norm_out.linear", "final_layer.adaLN_modulation.1")?;
    r.linear("proj_out", "final_layer.linear")?;
    Ok(r.to)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    fn rows(values: &[f32]) -> Tensor {
        Tensor::from_slice(values, (values.len(), 1), &Device::Cpu).unwrap()
    }

    fn values(tensor: &Tensor) -> Vec<f32> {
        tensor.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn projections_fuse_in_order_and_the_final_modulation_swaps_its_halves() {
        let mut r = Renamer::new(HashMap::from([
            ("a.to_q.weight".to_owned(), rows(&[1.0])),
            ("a.to_k.weight".to_owned(), rows(&[2.0])),
            ("a.to_v.weight".to_owned(), rows(&[3.0])),
            ("a.to_q.bias".to_owned(), rows(&[4.0])),
            ("a.to_k.bias".to_owned(), rows(&[5.0])),
            ("a.to_v.bias".to_owned(), rows(&[6.0])),
            ("out.weight".to_owned(), rows(&[1.0, 2.0, 3.0, 4.0])),
            ("out.bias".to_owned(), rows(&[5.0, 6.0])),
        ]));
        r.fused(&qkv("a", ["to_q", "to_k", "to_v"]), "qkv").unwrap();
        r.scale_shift_swapped("out", "final").unwrap();
        assert_eq!(values(&r.to["qkv.weight"]), [1.0, 2.0, 3.0]);
        assert_eq!(values(&r.to["qkv.bias"]), [4.0, 5.0, 6.0]);
        assert_eq!(values(&r.to["final.weight"]), [3.0, 4.0, 1.0, 2.0]);
        assert_eq!(values(&r.to["final.bias"]), [6.0, 5.0]);
        assert!(r.from.is_empty(), "every tensor moved");
    }

    #[test]
    fn a_missing_tensor_is_named() {
        let err = flux_for_candle(HashMap::new(), 1, 1).unwrap_err();
        assert_eq!(err, "x_embedder.weight is missing");
        let mut r = Renamer::new(HashMap::from([("a.to_q.weight".to_owned(), rows(&[1.0]))]));
        let err = r.fused(&qkv("a", ["to_q", "to_k", "to_v"]), "qkv").unwrap_err();
        assert_eq!(err, "a.to_k.weight is missing");
    }
}
