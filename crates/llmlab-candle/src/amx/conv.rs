//! Stride-1 convolutions on AMX tiles, for the diffusion networks' CPU path.
//!
//! The kernel is packed once, at load, as the row-tile side of the product
//! (c_out rows of taps * c_in values, tap-major, as `diffusion/layers/conv.rs`
//! orders them). A call packs the picture's shifted windows straight into
//! pair tiles, band by band of output pixels (no im2col matrix in f32 and
//! no padded copy of the picture), then multiplies blocks of the output in
//! parallel, the bias added as each block is written. The result is
//! (c_out, batch * pixels): for one picture, its NCHW layout as it is.

use std::cell::RefCell;

use rayon::prelude::*;

#[cfg(llmlab_amx)]
use super::ffi;
use super::{round_up, Amx, BLOCK};

/// Packed columns a band may take (bf16 high and low parts together):
/// the band is read once for every block of output rows, so it should stay
/// in the last-level cache.
const BAND_BYTES: usize = 8 << 20;
/// Output rows and columns of one parallel block: its slice of the kernel
/// and of the band (one K chunk of each) and its accumulators stay in L2.
const BLOCK_ROWS: usize = 128;
const BLOCK_COLUMNS: usize = 256;

/// A convolution kernel as tile rows: `c_out` rows of `k` values.
pub(crate) struct PackedKernel {
    hi: Vec<u16>,
    lo: Vec<u16>,
    c_out: usize,
    k: usize,
}

impl PackedKernel {
    /// Pack `w`, row-major `c_out` x `k` (k = kernel * kernel * c_in,
    /// tap-major).
    pub fn new(_amx: Amx, w: &[f32], c_out: usize, k: usize) -> Self {
        assert_eq!(w.len(), c_out * k, "kernel is not {c_out} x {k}");
        let size = round_up(c_out) * round_up(k);
        let (mut hi, mut lo) = (vec![0u16; size], vec![0u16; size]);
        #[cfg(llmlab_amx)]
        // SAFETY: w holds c_out*k floats; hi and lo hold rows_pad*k_pad
        // values, all that pack_rows writes.
        unsafe {
            ffi::llmlab_amx_pack_rows(
                w.as_ptr(),
                c_out,
                k,
                round_up(k),
                round_up(c_out),
                hi.as_mut_ptr(),
                lo.as_mut_ptr(),
            );
        }
        #[cfg(not(llmlab_amx))]
        unreachable!("an Amx value exists only where the kernels were built");
        #[allow(unreachable_code)]
        Self { hi, lo, c_out, k }
    }
}

/// The input and the window of one convolution (stride 1).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvShape {
    pub batch: usize,
    pub c_in: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: usize,
    pub padding: usize,
}

impl ConvShape {
    pub fn out_height(&self) -> usize {
        self.height + 2 * self.padding + 1 - self.kernel
    }

    pub fn out_width(&self) -> usize {
        self.width + 2 * self.padding + 1 - self.kernel
    }
}

thread_local! {
    /// The calling thread's packed band (high, low parts), kept between
    /// calls so that a step does not fault in fresh pages for every layer.
    static BAND: RefCell<(Vec<u16>, Vec<u16>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    /// Each thread's block accumulators.
    static ACCUMULATORS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// A pointer the parallel blocks share; each writes its own rows x columns.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: blocks write disjoint elements (see conv2d), and the buffer
// outlives the parallel section.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

/// `x` (NCHW, `shape`) convolved with `kernel`, plus `bias` (c_out):
/// (c_out, batch * out_height * out_width), row-major. `split` keeps
/// ~fp32 accuracy (three bf16 tile products).
pub(crate) fn conv2d(
    amx: Amx,
    x: &[f32],
    shape: ConvShape,
    kernel: &PackedKernel,
    bias: &[f32],
    split: bool,
) -> Vec<f32> {
    let ConvShape {
        batch,
        c_in,
        height,
        width,
        kernel: taps_wide,
        padding,
    } = shape;
    assert!(taps_wide >= 1 && height + 2 * padding >= taps_wide && width + 2 * padding >= taps_wide);
    assert_eq!(x.len(), batch * c_in * height * width, "input is not {shape:?}");
    assert_eq!(
        kernel.k,
        taps_wide * taps_wide * c_in,
        "kernel does not match {shape:?}"
    );
    let c_out = kernel.c_out;
    assert_eq!(bias.len(), c_out, "bias is not {c_out} long");
    let columns = batch * shape.out_height() * shape.out_width();
    let k_pad = round_up(kernel.k);
    let mut out: Vec<f32> = Vec::with_capacity(c_out * columns);
    if columns == 0 || c_out == 0 {
        return out;
    }
    let band = (BAND_BYTES / (4 * k_pad) / BLOCK * BLOCK).clamp(BLOCK, round_up(columns));
    let shared = SharedOut(out.spare_capacity_mut().as_mut_ptr().cast::<f32>());
    BAND.with_borrow_mut(|(hi, lo)| {
        if hi.len() < band * k_pad {
            hi.resize(band * k_pad, 0);
            lo.resize(band * k_pad, 0);
        }
        let mut first = 0;
        while first < columns {
            let count = band.min(columns - first);
            pack_band(amx, x, shape, first, count, k_pad, hi, lo, split);
            let row_blocks = c_out.div_ceil(BLOCK_ROWS);
            let column_blocks = count.div_ceil(BLOCK_COLUMNS);
            (0..row_blocks * column_blocks).into_par_iter().for_each(|index| {
                let (row, column) = (
                    index / column_blocks * BLOCK_ROWS,
                    index % column_blocks * BLOCK_COLUMNS,
                );
                let rows = BLOCK_ROWS.min(c_out - row);
                let cols = BLOCK_COLUMNS.min(count - column);
                let block = Block {
                    row,
                    rows,
                    column,
                    cols,
                };
                product_block(
                    amx,
                    kernel,
                    hi,
                    lo,
                    k_pad,
                    block,
                    &bias[row..row + rows],
                    shared,
                    columns,
                    first,
                    split,
                );
            });
            first += count;
        }
    });
    // SAFETY: the bands cover every column and the row blocks every row;
    // product_block wrote each element once (a panic never reaches here).
    unsafe { out.set_len(c_out * columns) };
    out
}

/// Pack columns [first, first + count) into `hi`/`lo`, in parallel by
/// 32-column groups.
#[allow(clippy::too_many_arguments)]
fn pack_band(
    _amx: Amx,
    x: &[f32],
    shape: ConvShape,
    first: usize,
    count: usize,
    k_pad: usize,
    hi: &mut [u16],
    lo: &mut [u16],
    split: bool,
) {
    let group_values = BLOCK * k_pad;
    let groups = count.div_ceil(BLOCK);
    // Several groups per task, so that a task is worth scheduling.
    let per_task = groups.div_ceil(4 * rayon::current_num_threads().max(1)).max(1);
    hi[..groups * group_values]
        .par_chunks_mut(per_task * group_values)
        .zip(lo[..groups * group_values].par_chunks_mut(per_task * group_values))
        .enumerate()
        .for_each(|(task, (hi, lo))| {
            let start = task * per_task * BLOCK;
            let cols = (per_task * BLOCK).min(count - start);
            assert!(hi.len() >= round_up(cols) * k_pad && lo.len() == hi.len());
            #[cfg(llmlab_amx)]
            // SAFETY: x holds the whole picture (checked by conv2d); hi and
            // lo hold round_up(cols)*k_pad values, all the function writes;
            // lo is written only when split.
            unsafe {
                let lo = if split { lo.as_mut_ptr() } else { std::ptr::null_mut() };
                ffi::llmlab_amx_pack_conv_columns(
                    x.as_ptr(),
                    shape.c_in,
                    shape.height,
                    shape.width,
                    shape.kernel,
                    shape.padding,
                    first + start,
                    cols,
                    k_pad,
                    hi.as_mut_ptr(),
                    lo,
                );
            }
            #[cfg(not(llmlab_amx))]
            unreachable!("no AMX kernels here {}{}{split}{x:?}", hi.len(), lo.len());
        });
}

/// Rows [row, row + rows) and band columns [column, column + cols) of the
/// output.
struct Block {
    row: usize,
    rows: usize,
    column: usize,
    cols: usize,
}

#[allow(clippy::too_many_arguments)]
fn product_block(
    _amx: Amx,
    kernel: &PackedKernel,
    hi: &[u16],
    lo: &[u16],
    k_pad: usize,
    block: Block,
    bias: &[f32],
    out: SharedOut,
    columns: usize,
    band_first: usize,
    split: bool,
) {
    let Block {
        row,
        rows,
        column,
        cols,
    } = block;
    // Both sides' tile groups start every 16 rows / columns, 16 * k_pad
    // values apart; blocks start on multiples of 32.
    let (kernel_at, band_at) = (row * k_pad, column * k_pad);
    assert!(kernel_at + round_up(rows) * k_pad <= kernel.hi.len() && kernel.lo.len() == kernel.hi.len());
    assert!(band_at + round_up(cols) * k_pad <= hi.len() && lo.len() == hi.len());
    assert!(row + rows <= kernel.c_out && band_first + column + cols <= columns && bias.len() == rows);
    ACCUMULATORS.with_borrow_mut(|acc| {
        let need = round_up(rows) * round_up(cols);
        if acc.len() < need {
            acc.resize(need, 0.0);
        }
        #[cfg(llmlab_amx)]
        // SAFETY: sizes checked above: the kernel's and the band's tiles
        // from the block's first row / column hold round_up(rows|cols) *
        // k_pad values per part; acc holds the padded block; out is c_out x
        // columns floats (conv2d's buffer) and this block writes only its
        // rows x cols elements, which no other block writes.
        unsafe {
            ffi::llmlab_amx_conv_block(
                kernel.hi.as_ptr().add(kernel_at),
                kernel.lo.as_ptr().add(kernel_at),
                rows,
                k_pad / BLOCK,
                hi.as_ptr().add(band_at),
                lo.as_ptr().add(band_at),
                cols,
                bias.as_ptr(),
                out.0.add(row * columns + band_first + column),
                columns,
                acc.as_mut_ptr(),
                i32::from(split),
            );
        }
        #[cfg(not(llmlab_amx))]
        unreachable!("no AMX kernels here {}{:?}{}", acc.len(), out.0, u8::from(split));
    });
}
