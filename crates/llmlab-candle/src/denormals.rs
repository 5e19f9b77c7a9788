//! Subnormal floats flushed to zero while candle computes on the CPU.
//!
//! An x86 core handles a subnormal operand or result of a multiply-add in
//! microcode, tens to hundreds of times slower than a normal one: candle's
//! GEMM ran at 1-8 GFLOP/s instead of 250 on our 2-core machine when one
//! input held values below 1e-36. Diffusion networks can make them as a
//! matter of course (softmax probabilities of e^-90, SiLU of large negative
//! inputs, the products of the two), depending on the weights and the
//! prompt. Values below 1.2e-38 change nothing a picture can show, so the
//! threads that run candle's kernels for a generation set the MXCSR's
//! flush-to-zero (results) and denormals-are-zero (inputs) bits. Other
//! architectures keep their default.

/// Flush-to-zero (bit 15) and denormals-are-zero (bit 6) of the MXCSR.
#[cfg(target_arch = "x86_64")]
const FLUSH_BITS: u32 = (1 << 15) | (1 << 6);
#[cfg(not(target_arch = "x86_64"))]
const FLUSH_BITS: u32 = 0;

/// Turn flushing on for the calling thread until the guard drops, and for
/// every thread of rayon's global pool (where candle's parallel kernels
/// and GEMM run) for good: those threads run only candle's work, for which
/// flushing is always wanted.
pub(crate) fn flush_while_computing() -> FlushGuard {
    rayon::broadcast(|_| {
        set_mxcsr(mxcsr() | FLUSH_BITS);
    });
    let saved = mxcsr();
    set_mxcsr(saved | FLUSH_BITS);
    FlushGuard { saved }
}

/// Restores the calling thread's floating-point mode: it may be a tokio
/// blocking thread that runs other code next.
pub(crate) struct FlushGuard {
    saved: u32,
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        set_mxcsr(self.saved);
    }
}

#[cfg(target_arch = "x86_64")]
fn mxcsr() -> u32 {
    let mut value: u32 = 0;
    // SAFETY: `stmxcsr` stores the 32-bit control register to the address
    // given, a live local; it touches nothing else.
    #[allow(unsafe_code)]
    unsafe {
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut value, options(nostack, preserves_flags));
    }
    value
}

#[cfg(target_arch = "x86_64")]
fn set_mxcsr(value: u32) {
    // SAFETY: `ldmxcsr` loads the control register from a live local. The
    // values written differ from the thread's own only in the FTZ and DAZ
    // bits (or restore what `stmxcsr` read): rounding and exception masks
    // stay as they were, so no code on this thread starts trapping.
    #[allow(unsafe_code)]
    unsafe {
        std::arch::asm!("ldmxcsr [{}]", in(reg) &value, options(nostack, preserves_flags, readonly));
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn mxcsr() -> u32 {
    0
}

#[cfg(not(target_arch = "x86_64"))]
fn set_mxcsr(_value: u32) {}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    /// Keeps the optimiser from folding the product at compile time.
    fn product(a: f32, b: f32) -> f32 {
        std::hint::black_box(a) * std::hint::black_box(b)
    }

    #[test]
    fn subnormal_results_flush_to_zero_only_under_the_guard() {
        let before = mxcsr();
        assert!(product(1e-20, 1e-20) > 0.0, "a subnormal result by default");
        {
            let _guard = flush_while_computing();
            assert_eq!(product(1e-20, 1e-20), 0.0);
            assert_eq!(product(1e-20, 1e20), 1.0, "normal values are untouched");
            let on_pool = rayon::broadcast(|_| product(1e-20, 1e-20));
            assert!(on_pool.iter().all(|&p| p == 0.0), "every pool thread flushes");
        }
        // The low six bits are sticky exception flags the products set.
        let mode = |csr: u32| csr & !0x3f;
        assert_eq!(mode(mxcsr()), mode(before), "the calling thread's mode comes back");
        assert!(product(1e-20, 1e-20) > 0.0);
    }
}
