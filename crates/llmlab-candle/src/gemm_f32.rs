//! A safe wrapper over the `gemm` crate's f32 product (candle's CPU matmul)
//! for products into part of a larger buffer, which candle's `Tensor`
//! cannot express: a convolution band written straight into its columns of
//! the layer's output.
//!
//! Sound because every slice is checked to hold all that the strides reach
//! before the raw-pointer call, and `out` is borrowed mutably for it.

use gemm::Parallelism;

/// `out[r * ldo + c] = sum_k a[r * k + j] * b[j * ldb + c]` for r < m,
/// c < n: `a` row-major m x k, `b` k rows of `ldb` (n used), `out` m rows
/// of `ldo` (n written, the rest untouched). On rayon's threads.
pub(crate) fn product_into(
    out: &mut [f32],
    ldo: usize,
    a: &[f32],
    b: &[f32],
    ldb: usize,
    m: usize,
    k: usize,
    n: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(n <= ldo && n <= ldb, "rows shorter than {n}");
    assert!(
        out.len() >= (m - 1) * ldo + n,
        "out holds {} < {m} rows of {ldo}",
        out.len()
    );
    assert_eq!(a.len(), m * k, "a is not {m} x {k}");
    assert!(
        k == 0 || b.len() >= (k - 1) * ldb + n,
        "b holds {} < {k} rows of {ldb}",
        b.len()
    );
    if k == 0 {
        for row in out.chunks_mut(ldo).take(m) {
            row[..n].fill(0.0);
        }
        return;
    }
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above: out reaches (m-1)*ldo + n elements, a m*k,
    // b (k-1)*ldb + n; strides are in elements; read_dst is false, so out
    // is only written; nothing is kept past the call.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            ldo as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            ldb as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
