//! Matrix multiply over the pure-Rust `gemm` crate (runtime-dispatched AVX2/AVX-512/NEON
//! kernels, within a few percent of OpenBLAS on this workload) with the transposes expressed as
//! strides, so that no operand is ever copied to change its layout.

/// How a row-major operand buffer is to be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// As stored: a row-major `[rows, cols]` buffer used as `[rows, cols]`.
    N,
    /// Transposed: a row-major `[cols, rows]` buffer used as `[rows, cols]`.
    T,
}

/// `c = a · b` (or `c += a · b` when `accumulate`), all row-major.
///
/// # Shapes
/// `a`: `[m, k]` (stored `[k, m]` when `ta == T`); `b`: `[k, n]` (stored `[n, k]` when
/// `tb == T`); `c`: `[m, n]`.
///
/// `threads` > 1 splits the output over rayon's pool; the split never cuts the inner dimension,
/// so each output element is summed in the same order whatever the thread count.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    c: &mut [f32],
    a: &[f32],
    ta: Layout,
    b: &[f32],
    tb: Layout,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    threads: usize,
) {
    assert_eq!(c.len(), m * n, "matmul: c is not [m, n]");
    assert_eq!(a.len(), m * k, "matmul: a is not [m, k]");
    assert_eq!(b.len(), k * n, "matmul: b is not [k, n]");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(0.0);
        }
        return;
    }
    let (a_rs, a_cs) = match ta {
        Layout::N => (k as isize, 1),
        Layout::T => (1, m as isize),
    };
    let (b_rs, b_cs) = match tb {
        Layout::N => (n as isize, 1),
        Layout::T => (1, k as isize),
    };
    let par = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above check every buffer against the extents and strides passed.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}
