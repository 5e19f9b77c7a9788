//! Safe wrappers over the AMX tile kernels in `csrc/amx_gemm.c`: linear
//! layers for the BERT encoder (here) and convolutions for the diffusion
//! networks (`conv.rs`).
//!
//! With `denormals.rs`, this is the crate's only `unsafe` code (allowed
//! where the module is declared). It is sound because:
//! - a kernel runs only through an [`Amx`] value, which exists only after
//!   the CPU, the OS and the kernel's permission call all said yes, so no
//!   tile instruction can fault;
//! - every wrapper checks the buffer sizes the C side reads and writes
//!   (stated at each C function) before calling it;
//! - the C functions keep no pointer past the call and share nothing
//!   between threads (tile state is per thread), so concurrent calls on
//!   disjoint outputs are fine.

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::sync::OnceLock;

use rayon::prelude::*;

mod conv;

pub(crate) use conv::{conv2d, ConvShape, PackedKernel};

/// Rows and inner dimension go to the kernels in tiles of 32 bf16 columns
/// and in blocks of two 16-row tiles.
const BLOCK: usize = 32;

pub(crate) fn round_up(x: usize) -> usize {
    x.div_ceil(BLOCK) * BLOCK
}

#[cfg(llmlab_amx)]
mod ffi {
    use std::os::raw::c_int;

    extern "C" {
        pub fn llmlab_amx_init() -> c_int;
        pub fn llmlab_amx_pack_rows(
            x: *const f32,
            rows: usize,
            k: usize,
            k_pad: usize,
            rows_pad: usize,
            hi: *mut u16,
            lo: *mut u16,
        );
        pub fn llmlab_amx_pack_weights(
            w: *const f32,
            n: usize,
            k: usize,
            n_pad: usize,
            k_pad: usize,
            hi: *mut u16,
            lo: *mut u16,
        );
        pub fn llmlab_amx_gemm(
            a_hi: *const u16,
            a_lo: *const u16,
            m: usize,
            k_pad: usize,
            w_hi: *const u16,
            w_lo: *const u16,
            n: usize,
            n_pad: usize,
            bias: *const f32,
            out: *mut f32,
            ldc: usize,
            split: c_int,
        );
        pub fn llmlab_amx_pack_conv_columns(
            x: *const f32,
            c_in: usize,
            h: usize,
            w: usize,
            kernel: usize,
            padding: usize,
            first: usize,
            count: usize,
            k_pad: usize,
            hi: *mut u16,
            lo: *mut u16,
        );
        pub fn llmlab_amx_conv_block(
            a_hi: *const u16,
            a_lo: *const u16,
            rows: usize,
            k_tiles: usize,
            w_hi: *const u16,
            w_lo: *const u16,
            cols: usize,
            row_bias: *const f32,
            out: *mut f32,
            ldc: usize,
            acc: *mut f32,
            split: c_int,
        );
    }
}

/// Proof that this process may run AMX-BF16 tile instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Amx {
    _checked: (),
}

impl Amx {
    /// `Some` when the CPU has AMX-BF16 and the OS granted this process
    /// its tile state. Asked once per process.
    pub fn detect() -> Option<Self> {
        static USABLE: OnceLock<bool> = OnceLock::new();
        let usable = *USABLE.get_or_init(|| {
            #[cfg(llmlab_amx)]
            {
                // SAFETY: cpuid, xgetbv (after checking OSXSAVE) and one
                // arch_prctl; no memory of ours is touched.
                unsafe { ffi::llmlab_amx_init() == 1 }
            }
            #[cfg(not(llmlab_amx))]
            false
        });
        usable.then_some(Self { _checked: () })
    }

    /// [`Amx::detect`], unless switched off (`LLMLAB_AMX=0`): what every
    /// layer asks when it is loaded.
    pub fn allowed() -> Option<Self> {
        Self::detect().filter(|_| llmlab_core::config::amx_allowed())
    }
}

/// A Linear weight (`n` outputs of `k` inputs), split into bf16 high and
/// low parts and laid out in the tiles the kernel reads.
pub(crate) struct PackedWeights {
    hi: Vec<u16>,
    lo: Vec<u16>,
    n: usize,
    k: usize,
}

impl PackedWeights {
    /// Pack the row-major `n` x `k` matrix `w`.
    pub fn new(_amx: Amx, w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "weight is not {n} x {k}");
        let size = round_up(n) * round_up(k);
        let (mut hi, mut lo) = (vec![0u16; size], vec![0u16; size]);
        #[cfg(llmlab_amx)]
        // SAFETY: w holds n*k floats; hi and lo hold n_pad*k_pad values, all
        // the function writes.
        unsafe {
            ffi::llmlab_amx_pack_weights(
                w.as_ptr(),
                n,
                k,
                round_up(n),
                round_up(k),
                hi.as_mut_ptr(),
                lo.as_mut_ptr(),
            );
        }
        #[cfg(not(llmlab_amx))]
        unreachable!("an Amx value exists only where the kernels were built");
        #[allow(unreachable_code)]
        Self { hi, lo, n, k }
    }
}

/// `x` (rows x k, row-major) times the weight's transpose, plus `bias`:
/// rows x n, row-major. Rows are split over rayon's threads in whole
/// 32-row blocks; every thread reads all of W, which stays in cache.
/// `split` keeps ~fp32 accuracy (three bf16 tile products); without it the
/// product is plain bf16. The result replaces `out`'s contents, reusing its
/// allocation.
pub(crate) fn linear(
    amx: Amx,
    x: &[f32],
    rows: usize,
    w: &PackedWeights,
    bias: &[f32],
    split: bool,
    out: &mut Vec<f32>,
) {
    let (n, k) = (w.n, w.k);
    assert_eq!(x.len(), rows * k, "input is not {rows} x {k}");
    assert_eq!(bias.len(), n, "bias is not {n} long");
    out.clear();
    if rows == 0 || n == 0 {
        return;
    }
    let threads = rayon::current_num_threads().max(1);
    let chunk_rows = round_up(rows.div_ceil(threads));
    // Left uninitialised: the kernel writes every element, and zeroing
    // megabytes per layer cost ~5% of a forward pass.
    out.reserve(rows * n);
    out.spare_capacity_mut()[..rows * n]
        .par_chunks_mut(chunk_rows * n)
        .zip(x.par_chunks(chunk_rows * k))
        .for_each(|(out, x)| product_rows(amx, x, x.len() / k, w, bias, out, split));
    // SAFETY: the chunks cover all rows * n elements and product_rows wrote
    // each of its chunk's (a panic above never reaches this line).
    unsafe { out.set_len(rows * n) };
}

thread_local! {
    /// Each thread's packed activations, kept between calls so that a
    /// forward pass does not fault in fresh pages for every product.
    static PACKED_ROWS: RefCell<(Vec<u16>, Vec<u16>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// One thread's share of [`linear`]: writes every element of `out`
/// (rows x n).
fn product_rows(
    _amx: Amx,
    x: &[f32],
    rows: usize,
    w: &PackedWeights,
    bias: &[f32],
    out: &mut [MaybeUninit<f32>],
    split: bool,
) {
    let (n, k) = (w.n, w.k);
    assert!(x.len() == rows * k && out.len() == rows * n && bias.len() == n);
    let (rows_pad, k_pad) = (round_up(rows), round_up(k));
    PACKED_ROWS.with_borrow_mut(|(hi, lo)| {
        let size = rows_pad * k_pad;
        if hi.len() < size {
            hi.resize(size, 0);
            lo.resize(size, 0);
        }
        #[cfg(llmlab_amx)]
        // SAFETY: sizes checked above: x holds rows*k floats; hi and lo hold
        // at least rows_pad*k_pad values (all pack_rows writes, and all the
        // product reads); the packed weight holds n_pad*k_pad values per
        // part; bias holds n floats; out holds rows*n floats with ldc = n,
        // all of which the product writes (MaybeUninit<f32> has f32's
        // layout).
        unsafe {
            let lo_out = if split { lo.as_mut_ptr() } else { std::ptr::null_mut() };
            ffi::llmlab_amx_pack_rows(x.as_ptr(), rows, k, k_pad, rows_pad, hi.as_mut_ptr(), lo_out);
            ffi::llmlab_amx_gemm(
                hi.as_ptr(),
                lo.as_ptr(),
                rows,
                k_pad,
                w.hi.as_ptr(),
                w.lo.as_ptr(),
                n,
                round_up(n),
                bias.as_ptr(),
                out.as_mut_ptr().cast::<f32>(),
                n,
                i32::from(split),
            );
        }
        #[cfg(not(llmlab_amx))]
        unreachable!(
            "an Amx value exists only where the kernels were built {}",
            hi.len() + lo.len() + usize::from(split) + out.len()
        );
    });
}
