//! Scaled dot-product attention over heads, in bands of queries.
//!
//! A UNet's first level attends over every latent pixel: at 512x512 that is
//! 4096 queries by 4096 keys per head, a gigabyte of scores for a guided
//! batch. Queries are taken in bands so that one band's scores stay under
//! [`MAX_SCORES`]; the result is the same as one product.

use candle_core::{Result, Tensor};

/// Most score elements one band may hold on the CPU (64 MiB of f32).
const MAX_SCORES: usize = 16 << 20;
/// The same on a GPU (512 MiB of F16): a 512x512 UNet's first level in
/// one band, as each band is three kernel launches of its own.
const MAX_SCORES_GPU: usize = 256 << 20;

/// `q` (batch, queries, heads * head_dim), `k` and `v` (batch, keys,
/// heads * head_dim) to (batch, queries, heads * head_dim).
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    attend(q, k, v, heads, None)
}

/// [`attention`] where each query sees only the keys up to its own
/// position (a text encoder's tokens).
pub(crate) fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
    let (queries, keys) = (q.dim(1)?, k.dim(1)?);
    let mask: Vec<f32> = (0..queries)
        .flat_map(|i| (0..keys).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    let mask = Tensor::from_vec(mask, (queries, keys), q.device())?;
    attend(q, k, v, heads, Some(&mask))
}

/// `mask` (queries, keys) is added to every head's scores.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, mask: Option<&Tensor>) -> Result<Tensor> {
    let (batch, queries, width) = q.dims3()?;
    let keys = k.dim(1)?;
    let head_dim = width / heads;
    let split = |t: &Tensor, len: usize| -> Result<Tensor> {
        t.reshape((batch, len, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((batch * heads, len, head_dim))
    };
    let scale = 1.0 / (head_dim as f64).sqrt();
    let q = (split(q, queries)? * scale)?;
    // Keys transposed as a view: the matrix product reads either layout,
    // so no copy.
    let k_t = split(k, keys)?.transpose(1, 2)?;
    let v = split(v, keys)?;
    let max_scores = if q.device().is_cpu() {
        MAX_SCORES
    } else {
        MAX_SCORES_GPU
    };
    let band = (max_scores / (batch * heads * keys).max(1)).clamp(1, queries);
    let mut outputs = Vec::with_capacity(queries.div_ceil(band));
    let mut start = 0;
    while start < queries {
        let len = band.min(queries - start);
        let mut scores = q.narrow(1, start, len)?.matmul(&k_t)?;
        if let Some(mask) = mask {
            scores = scores.broadcast_add(&mask.narrow(0, start, len)?)?;
        }
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        outputs.push(weights.matmul(&v)?);
        start += len;
    }
    let out = if outputs.len() == 1 {
        outputs.remove(0)
    } else {
        Tensor::cat(&outputs, 1)?
    };
    out.reshape((batch, heads, queries, head_dim))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((batch, queries, width))
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Tensor {
        let (b, n, w) = q.dims3().unwrap();
        let d = w / heads;
        let split = |t: &Tensor| {
            let len = t.dim(1).unwrap();
            t.reshape((b, len, heads, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let scores = (split(q).matmul(&split(k).t().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
        let weights = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        weights
            .matmul(&split(v))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, n, w))
            .unwrap()
    }

    #[test]
    fn a_causal_query_ignores_later_keys() {
        let device = Device::Cpu;
        let q = Tensor::randn(0f32, 1.0, (1, 4, 6), &device).unwrap();
        let k = Tensor::randn(0f32, 1.0, (1, 4, 6), &device).unwrap();
        let v = Tensor::randn(0f32, 1.0, (1, 4, 6), &device).unwrap();
        let full = causal_attention(&q, &k, &v, 3).unwrap();
        // Query 1 over keys 0..=1 alone gives what the causal form gives.
        let alone = attention(
            &q.narrow(1, 1, 1).unwrap(),
            &k.narrow(1, 0, 2).unwrap(),
            &v.narrow(1, 0, 2).unwrap(),
            3,
        )
        .unwrap();
        let difference = (full.narrow(1, 1, 1).unwrap() - alone).unwrap();
        let worst: f32 = difference.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
        assert!(worst < 1e-5, "{worst}");
    }

    #[test]
    fn equals_plain_attention_in_one_band_and_in_many() {
        let device = Device::Cpu;
        // 2 x 2 heads x 6000 keys: 24000 scores per query, so a band holds
        // 699 queries and 1500 queries take three bands.
        for (queries, keys) in [(10, 7), (1500, 6000)] {
            let q = Tensor::randn(0f32, 1.0, (2, queries, 8), &device).unwrap();
            let k = Tensor::randn(0f32, 1.0, (2, keys, 8), &device).unwrap();
            let v = Tensor::randn(0f32, 1.0, (2, keys, 8), &device).unwrap();
            let difference = (attention(&q, &k, &v, 2).unwrap() - reference(&q, &k, &v, 2)).unwrap();
            let worst: f32 = difference.abs().unwrap().max_all().unwrap().to_scalar().unwrap();
            assert!(worst < 1e-4, "{worst}");
        }
    }
}
