//! Stride-1 convolutions on CPUs without AMX tiles: the picture's shifted
//! windows copied band by band into an im2col matrix (kh * kw * c_in rows,
//! one column per output pixel) and multiplied by the kernel packed at load
//! with candle's GEMM, written straight into the band's columns of the
//! output. A 1x1 convolution multiplies the picture as it lies.
//!
//! Before this, the same product went through candle tensors (a padded
//! copy, nine shifted copies stacked, a batched matmul, a concatenation and
//! a broadcast add): a 320-channel 3x3 layer at 32x32 took 58 ms where its
//! GEMM alone takes 24.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::amx::ConvShape;
use crate::gemm_f32;

/// Most elements an im2col band may hold (4 MiB of f32). A VAE decoder
/// layer at 1024x1024 would otherwise need gigabytes at once; a band this
/// small stays in the caches, and its buffer is kept for the next call
/// instead of faulted in afresh (at 64 MiB bands the SD 1.5 VAE decoder
/// spent a sixth of its time in page faults and copies).
const MAX_BAND_ELEMENTS: usize = 1 << 20;
/// Fewest columns a band holds (unless there are fewer): GEMMs narrower
/// than this lose more to packing and edges than small bands save.
const MIN_BAND_COLUMNS: usize = 512;
/// Rows of the im2col band one parallel task fills.
const ROWS_PER_TASK: usize = 32;

thread_local! {
    /// The calling thread's im2col band, kept between calls.
    static BAND: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `x` (NCHW, `shape`) convolved with `weight` (c_out x kernel * kernel *
/// c_in, tap-major), plus `bias`: (c_out, batch * out_height * out_width),
/// row-major.
pub(crate) fn conv2d(x: &[f32], shape: ConvShape, weight: &[f32], bias: &[f32]) -> Vec<f32> {
    let ConvShape {
        batch,
        c_in,
        height,
        width,
        kernel,
        padding,
    } = shape;
    let k = kernel * kernel * c_in;
    let c_out = bias.len();
    assert_eq!(x.len(), batch * c_in * height * width, "input is not {shape:?}");
    assert_eq!(weight.len(), c_out * k, "kernel does not match {shape:?}");
    let pixels = shape.out_height() * shape.out_width();
    let columns = batch * pixels;
    let mut out = vec![0f32; c_out * columns];
    if kernel == 1 && padding == 0 {
        // The picture is its own im2col matrix, one image at a time.
        for image in 0..batch {
            let picture = &x[image * c_in * pixels..(image + 1) * c_in * pixels];
            gemm_f32::product_into(
                &mut out[image * pixels..],
                columns,
                weight,
                picture,
                pixels,
                c_out,
                k,
                pixels,
            );
        }
    } else {
        let band = (MAX_BAND_ELEMENTS / k.max(1)).max(MIN_BAND_COLUMNS).min(columns);
        BAND.with_borrow_mut(|buffer| {
            if buffer.len() < band * k {
                buffer.resize(band * k, 0.0);
            }
            let mut first = 0;
            while first < columns {
                let count = band.min(columns - first);
                pack_band(x, shape, first, count, &mut buffer[..count * k]);
                gemm_f32::product_into(&mut out[first..], columns, weight, buffer, count, c_out, k, count);
                first += count;
            }
        });
    }
    out.par_chunks_mut(columns)
        .zip(bias.par_iter())
        .for_each(|(row, bias)| row.iter_mut().for_each(|value| *value += bias));
    out
}

/// Columns of one output row inside a band.
struct Run {
    image: usize,
    out_y: usize,
    out_x: usize,
    len: usize,
    /// Where the run starts in a band row.
    at: usize,
}

/// Rows of the im2col matrix for columns [first, first + count) into
/// `band` (k rows of `count`).
fn pack_band(x: &[f32], shape: ConvShape, first: usize, count: usize, band: &mut [f32]) {
    let ConvShape {
        c_in,
        height,
        width,
        kernel,
        padding,
        ..
    } = shape;
    let out_w = shape.out_width();
    let pixels = shape.out_height() * out_w;
    let mut runs = Vec::new();
    let mut column = first;
    while column < first + count {
        let (image, pixel) = (column / pixels, column % pixels);
        let (out_y, out_x) = (pixel / out_w, pixel % out_w);
        let len = (out_w - out_x).min(first + count - column);
        runs.push(Run {
            image,
            out_y,
            out_x,
            len,
            at: column - first,
        });
        column += len;
    }
    band.par_chunks_mut(count * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, rows)| {
            for (offset, row) in rows.chunks_mut(count).enumerate() {
                let index = task * ROWS_PER_TASK + offset;
                let (tap, channel) = (index / c_in, index % c_in);
                let (dy, dx) = (tap / kernel, tap % kernel);
                for run in &runs {
                    let dst = &mut row[run.at..run.at + run.len];
                    let y = (run.out_y + dy).checked_sub(padding).filter(|&y| y < height);
                    let Some(y) = y else {
                        dst.fill(0.0);
                        continue;
                    };
                    let source = &x[((run.image * c_in + channel) * height + y) * width..][..width];
                    // Input columns out_x + dx - padding onwards; those left
                    // of 0 or right of the picture are padding.
                    let start = (run.out_x + dx) as isize - padding as isize;
                    let left = ((-start).max(0) as usize).min(run.len);
                    let from = (start + left as isize) as usize;
                    let inside = (run.len - left).min(width.saturating_sub(from));
                    dst[..left].fill(0.0);
                    if inside > 0 {
                        dst[left..left + inside].copy_from_slice(&source[from..from + inside]);
                    }
                    dst[left + inside..].fill(0.0);
                }
            }
        });
}
