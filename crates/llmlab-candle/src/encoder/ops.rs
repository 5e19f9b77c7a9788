//! The encoder's element-wise and per-row kernels: layer norm, activations,
//! softmax and attention, over row-major f32 matrices.
//!
//! Loops are written so that LLVM vectorises them: sums run in 16 lanes and
//! `exp` and `erf` are branch-free polynomials instead of libm calls, which
//! the compiler cannot vectorise (libm's erf alone took 9% of the time).

use rayon::prelude::*;

/// Lanes of the vectorised sums (one AVX-512 register, two AVX2 ones).
const LANES: usize = 16;
/// Rows per parallel task for row-wise kernels: enough work to pay for the
/// hand-off to another thread.
const ROWS_PER_TASK: usize = 32;

/// Sum of `a[i] * b[i]`.
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for l in 0..LANES {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

fn sum(a: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = a.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for x in chunks {
        for l in 0..LANES {
            lanes[l] += x[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// e^x, within ~2 ulp over the whole f32 range (inputs below -87 give the
/// smallest normal, above 88 a finite 2^127-scale value).
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // ln 2 in two parts so that x - n ln2 is exact for |n| < 2^8.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5 * 2^23 rounds to an integer held in the low mantissa bits
    // (no call to `round`, and no saturating float-to-int cast: both keep
    // LLVM from vectorising).
    const ROUNDER: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * LOG2_E + ROUNDER;
    let n = shifted - ROUNDER;
    let n_int = shifted.to_bits().wrapping_sub(ROUNDER.to_bits()) as i32;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    // Taylor to r^6 on |r| <= ln2/2: truncation below 1.2e-7 relative.
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n through the exponent bits; n is in [-126, 127].
    p * f32::from_bits((n_int.wrapping_add(127) as u32) << 23)
}

/// erf(x) to within 5e-7 absolute in f32 arithmetic (Abramowitz and
/// Stegun 7.1.26, 1.5e-7 in exact arithmetic).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_8 + t * (-1.453_152 + t * 1.061_405_4))));
    (1.0 - poly * exp(-a * a)).copysign(x)
}

/// How an encoder's feed-forward layer activates (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Activation {
    /// `gelu`: x Φ(x) with the exact erf, as BERT and MiniLM use.
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    Relu,
}

impl Activation {
    pub fn from_config(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Self::GeluTanh),
            "relu" => Some(Self::Relu),
            _ => None,
        }
    }

    pub fn apply(self, x: &mut [f32]) {
        x.par_chunks_mut(4096).for_each(|chunk| match self {
            Self::Gelu => chunk
                .iter_mut()
                .for_each(|v| *v = 0.5 * *v * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2))),
            Self::GeluTanh => chunk.iter_mut().for_each(|v| {
                const SQRT_2_OVER_PI: f32 = 0.797_884_6;
                let y = SQRT_2_OVER_PI * (*v + 0.044_715 * *v * *v * *v);
                // tanh(y) = 1 - 2 / (e^{2y} + 1), finite for every y.
                let tanh = 1.0 - 2.0 / (exp(2.0 * y) + 1.0);
                *v = 0.5 * *v * (1.0 + tanh);
            }),
            Self::Relu => chunk.iter_mut().for_each(|v| *v = v.max(0.0)),
        });
    }
}

/// A layer norm's scale, shift and epsilon.
pub(crate) struct LayerNorm {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub eps: f32,
}

impl LayerNorm {
    /// Normalise each row of `x` (rows of `weight.len()`), after adding
    /// the matching row of `residual` when there is one.
    pub fn apply(&self, x: &mut [f32], residual: Option<&[f32]>) {
        let width = self.weight.len();
        let block = width * ROWS_PER_TASK;
        let rows_of = |x: &mut [f32], residual: Option<&[f32]>| {
            for (i, row) in x.chunks_exact_mut(width).enumerate() {
                if let Some(residual) = residual {
                    row.iter_mut()
                        .zip(&residual[i * width..(i + 1) * width])
                        .for_each(|(v, r)| *v += r);
                }
                self.normalise(row);
            }
        };
        match residual {
            Some(residual) => x
                .par_chunks_mut(block)
                .zip(residual.par_chunks(block))
                .for_each(|(x, r)| rows_of(x, Some(r))),
            None => x.par_chunks_mut(block).for_each(|x| rows_of(x, None)),
        }
    }

    fn normalise(&self, row: &mut [f32]) {
        let n = row.len() as f32;
        let mean = sum(row) / n;
        row.iter_mut().for_each(|v| *v -= mean);
        let variance = dot(row, row) / n;
        let scale = 1.0 / (variance + self.eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(&self.weight).zip(&self.bias) {
            *v = *v * scale * w + b;
        }
    }
}

/// Multi-head self-attention over sequences packed one after another
/// (no padding, so no mask): `qkv` holds each token's query, key and value
/// (`3 * hidden` values per row); the `hidden`-wide context rows replace
/// `context`'s contents.
pub(crate) fn attention_into(qkv: &[f32], lengths: &[usize], heads: usize, hidden: usize, context: &mut Vec<f32>) {
    let head_dim = hidden / heads;
    let total: usize = lengths.iter().sum();
    debug_assert_eq!(qkv.len(), total * 3 * hidden);
    context.clear();
    context.resize(total * hidden, 0.0);
    // Each sequence's context rows, a contiguous slice of their own.
    let mut rows_of: Vec<(usize, &mut [f32])> = Vec::with_capacity(lengths.len());
    let (mut rest, mut start) = (context.as_mut_slice(), 0);
    for &length in lengths {
        let (rows, tail) = rest.split_at_mut(length * hidden);
        rows_of.push((start, rows));
        (rest, start) = (tail, start + length);
    }
    let head_of = |start, length, h: usize| Head {
        qkv,
        start,
        length,
        column: h * head_dim,
        head_dim,
        hidden,
    };
    if lengths.len() >= 2 * rayon::current_num_threads() {
        // Enough sequences to keep every thread busy: one task per
        // sequence, writing its rows in place, all heads in turn.
        rows_of
            .into_par_iter()
            .zip(lengths)
            .for_each(|((start, rows), &length)| {
                let mut scratch = Scratch::default();
                for h in 0..heads {
                    let head = head_of(start, length, h);
                    head.attend(&mut rows[h * head_dim..], hidden, &mut scratch);
                }
            });
    } else {
        // Few (long) sequences: one task per head, then copy into place.
        let jobs: Vec<(usize, usize)> = (0..lengths.len())
            .flat_map(|s| (0..heads).map(move |h| (s, h)))
            .collect();
        let per_head: Vec<Vec<f32>> = jobs
            .par_iter()
            .map(|&(s, h)| {
                let head = head_of(rows_of[s].0, lengths[s], h);
                let mut values = vec![0f32; lengths[s] * head_dim];
                head.attend(&mut values, head_dim, &mut Scratch::default());
                values
            })
            .collect();
        for (&(s, h), values) in jobs.iter().zip(&per_head) {
            let rows = &mut rows_of[s].1;
            for (t, row) in values.chunks_exact(head_dim).enumerate() {
                let at = t * hidden + h * head_dim;
                rows[at..at + head_dim].copy_from_slice(row);
            }
        }
    }
}

#[cfg(test)]
fn attention(qkv: &[f32], lengths: &[usize], heads: usize, hidden: usize) -> Vec<f32> {
    let mut context = Vec::new();
    attention_into(qkv, lengths, heads, hidden, &mut context);
    context
}

/// Buffers one task reuses from head to head.
#[derive(Default)]
struct Scratch {
    keys: Vec<f32>,
    scores: Vec<f32>,
}

/// One attention head of one sequence in the packed `qkv` rows.
struct Head<'a> {
    qkv: &'a [f32],
    /// The sequence's first row and its tokens.
    start: usize,
    length: usize,
    /// The head's first column within each of query, key and value.
    column: usize,
    head_dim: usize,
    hidden: usize,
}

impl Head<'_> {
    fn part(&self, token: usize, offset: usize) -> &[f32] {
        let at = (self.start + token) * 3 * self.hidden + offset + self.column;
        &self.qkv[at..at + self.head_dim]
    }

    /// Write token i's context values to `out[i * stride..][..head_dim]`,
    /// for each of the sequence's tokens.
    fn attend(&self, out: &mut [f32], stride: usize, scratch: &mut Scratch) {
        let (head_dim, hidden, length) = (self.head_dim, self.hidden, self.length);
        // Keys transposed (`head_dim` rows, each padded with zero keys to
        // whole vectors of LANES), so that a query's scores against every
        // key build up as `head_dim` full-vector updates instead of one short
        // dot product (and its horizontal sum) per key; the padding's scores
        // are never read.
        let padded = length.div_ceil(LANES) * LANES;
        let keys = &mut scratch.keys;
        keys.clear();
        keys.resize(head_dim * padded, 0.0);
        for j in 0..length {
            for (d, value) in self.part(j, hidden).iter().enumerate() {
                keys[d * padded + j] = *value;
            }
        }
        let scale = 1.0 / (head_dim as f32).sqrt();
        let scores = &mut scratch.scores;
        scores.resize(padded, 0.0);
        for i in 0..length {
            let query = self.part(i, 0);
            // Scores LANES keys at a time, accumulated in registers.
            for (c, chunk) in scores.chunks_exact_mut(LANES).enumerate() {
                let mut acc = [0f32; LANES];
                for (d, &q) in query.iter().enumerate() {
                    let keys = &keys[d * padded + c * LANES..][..LANES];
                    for l in 0..LANES {
                        acc[l] += q * keys[l];
                    }
                }
                for l in 0..LANES {
                    chunk[l] = acc[l] * scale;
                }
            }
            let total = exponentiate(scores, length);
            // Context = the values weighted by the scores, LANES columns at
            // a time in registers, divided by the softmax's sum once.
            let row = &mut out[i * stride..i * stride + head_dim];
            let whole = head_dim / LANES * LANES;
            for (c, chunk) in row[..whole].chunks_exact_mut(LANES).enumerate() {
                let mut acc = [0f32; LANES];
                for (j, &p) in scores[..length].iter().enumerate() {
                    let values = &self.part(j, 2 * hidden)[c * LANES..][..LANES];
                    for l in 0..LANES {
                        acc[l] += p * values[l];
                    }
                }
                for l in 0..LANES {
                    chunk[l] = acc[l] / total;
                }
            }
            for (column, value) in row.iter_mut().enumerate().skip(whole) {
                let sum: f32 = scores[..length]
                    .iter()
                    .enumerate()
                    .map(|(j, p)| p * self.part(j, 2 * hidden)[column])
                    .sum();
                *value = sum / total;
            }
        }
    }
}

/// The unnormalised softmax of the first `length` of `scores` (a whole
/// number of LANES long): each becomes e^(score - max), the rest 0;
/// returns their sum.
fn exponentiate(scores: &mut [f32], length: usize) -> f32 {
    let max = scores[..length].iter().copied().fold(f32::NEG_INFINITY, f32::max);
    scores.iter_mut().for_each(|s| *s = exp(*s - max));
    scores[length..].fill(0.0);
    sum(scores)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_match_libm() {
        let mut worst_exp = 0f64;
        let mut worst_erf = 0f64;
        for i in -20_000..=20_000 {
            let x = i as f32 * 0.004; // -80 .. 80
            let want = f64::from(x).exp();
            worst_exp = worst_exp.max(((f64::from(exp(x)) - want) / want).abs());
            let y = i as f32 * 0.0005; // -10 .. 10
            worst_erf = worst_erf.max((f64::from(erf(y)) - erf_reference(f64::from(y))).abs());
        }
        assert!(worst_exp < 5e-7, "exp relative error {worst_exp:e}");
        assert!(worst_erf < 5e-7, "erf absolute error {worst_erf:e}");
    }

    /// erf by its Maclaurin series (|x| < 3) or continued fraction, in f64.
    fn erf_reference(x: f64) -> f64 {
        let a = x.abs();
        let value = if a < 3.0 {
            let (mut term, mut total, mut n) = (a, a, 0.0);
            while term.abs() > 1e-17 {
                n += 1.0;
                term *= -a * a / n;
                total += term / (2.0 * n + 1.0);
            }
            total * 2.0 / std::f64::consts::PI.sqrt()
        } else {
            let mut fraction = 0.0;
            for k in (1..60).rev() {
                fraction = f64::from(k) / 2.0 / (a + fraction);
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + fraction)
        };
        value.copysign(x)
    }

    #[test]
    fn layer_norm_centres_and_scales_each_row() {
        let norm = LayerNorm {
            weight: vec![2.0; 4],
            bias: vec![1.0; 4],
            eps: 0.0,
        };
        let mut x = vec![1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 8.0];
        norm.apply(&mut x, Some(&[1.0; 8]));
        for row in x.chunks(4) {
            let centred: Vec<f32> = row.iter().map(|v| (v - 1.0) / 2.0).collect();
            let mean: f32 = centred.iter().sum::<f32>() / 4.0;
            let var: f32 = centred.iter().map(|v| v * v).sum::<f32>() / 4.0;
            assert!(mean.abs() < 1e-6 && (var - 1.0).abs() < 1e-5, "{row:?}");
        }
    }

    #[test]
    fn attention_of_one_token_is_its_value_and_sequences_stay_apart() {
        // Two sequences (1 and 2 tokens), one head of width 2.
        let hidden = 2;
        #[rustfmt::skip]
        let qkv = vec![
            1.0, 0.0, /* k */ 1.0, 0.0, /* v */ 5.0, 6.0,
            0.0, 1.0, /* k */ 0.0, 9.0, /* v */ 1.0, 1.0,
            0.0, 1.0, /* k */ 0.0, -9.0, /* v */ 3.0, 3.0,
        ];
        let context = attention(&qkv, &[1, 2], 1, hidden);
        assert_eq!(&context[..2], &[5.0, 6.0]);
        // The second sequence's queries favour its first key (score 9/√2
        // against -9/√2): nearly all weight on value (1, 1).
        for row in context[2..].chunks(2) {
            assert!((row[0] - 1.0).abs() < 1e-4 && (row[1] - 1.0).abs() < 1e-4, "{row:?}");
        }
    }

    /// Many sequences take the one-task-per-sequence path, one alone the
    /// one-task-per-head path: both must give the same numbers.
    #[test]
    fn both_attention_paths_agree() {
        let (heads, hidden) = (3, 48);
        let lengths = [17, 1, 40, 5, 9, 23, 2, 33];
        let total: usize = lengths.iter().sum();
        let qkv: Vec<f32> = (0..total * 3 * hidden)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0)
            .collect();
        // Two threads, so that 8 sequences take the many-sequences path on
        // any machine.
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        let together = pool.install(|| attention(&qkv, &lengths, heads, hidden));
        let mut start = 0;
        for &length in &lengths {
            let own = &qkv[start * 3 * hidden..(start + length) * 3 * hidden];
            let alone = pool.install(|| attention(own, &[length], heads, hidden));
            assert_eq!(&together[start * hidden..(start + length) * hidden], &alone[..]);
            start += length;
        }
    }

    #[test]
    fn gelu_matches_its_definition() {
        let xs: Vec<f32> = (-40..=40).map(|i| i as f32 * 0.25).collect();
        let mut got = xs.clone();
        Activation::Gelu.apply(&mut got);
        for (x, g) in xs.iter().zip(&got) {
            let want = 0.5 * f64::from(*x) * (1.0 + erf_reference(f64::from(*x) / 2f64.sqrt()));
            assert!((f64::from(*g) - want).abs() < 1e-6, "gelu({x}) = {g}, want {want}");
        }
    }
}
