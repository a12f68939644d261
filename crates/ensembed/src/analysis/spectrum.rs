//! Singular-value spectra of representation matrices (the paper's Figure 11: the learned
//! representations spread their variance over more directions than the average). The singular
//! values of X `[n, d]` are the square roots of the eigenvalues of the smaller Gram matrix, XᵀX
//! `[d, d]` or XXᵀ `[n, n]` (the same non-zero eigenvalues), one GEMM; its eigenvalues come from
//! Householder tridiagonalisation and the implicit QL algorithm (values only), written out here
//! because it is ~150 lines and an eigensolver crate would more than double the build time for
//! this one diagnostic.
//!
//! The tridiagonalisation is the O(d³) part (the concatenation of three 1280-d backbones has
//! d = 3,840). Numerical Recipes' tred2, which this file used first, reads the lower triangle
//! down its columns and runs on one core. This version keeps the arithmetic but reorders it so
//! that every pass reads rows: the rank-2 update of one Householder step and the
//! matrix-vector product of the next are fused into one parallel sweep over the rows of the
//! lower triangle, so the matrix streams through memory once per step instead of twice, on
//! every core. Singular values of a [4000, 3840] matrix, Gram included, on two busy cores:
//! 165 s before, 41 s now, agreeing to 6e-12 relative.

use rayon::prelude::*;

use crate::kernels::{matmul, Layout};
use crate::matrix::Matrix;

/// Singular values of `x`, largest first (`d` of them; beyond `n` they are 0).
///
/// # Shapes
/// `x`: `[n, d]`; returns `[d]`.
pub fn singular_values(x: &Matrix) -> Vec<f64> {
    let (n, d) = (x.rows, x.cols);
    let threads = rayon::current_num_threads();
    let side = n.min(d);
    let mut gram = vec![0.0f32; side * side];
    if d <= n {
        // [d, d] = xᵀ [d, n] · x [n, d]
        matmul(&mut gram, &x.data, Layout::T, &x.data, Layout::N, d, d, n, false, threads);
    } else {
        // [n, n] = x [n, d] · xᵀ [d, n]
        matmul(&mut gram, &x.data, Layout::N, &x.data, Layout::T, n, n, d, false, threads);
    }
    let mut ev = symmetric_eigenvalues(gram.iter().map(|&v| v as f64).collect(), side);
    ev.iter_mut().for_each(|v| *v = v.max(0.0).sqrt());
    ev.resize(d, 0.0);
    ev
}

/// Eigenvalues of the symmetric matrix `a`, largest first. Only the lower triangle is read.
///
/// # Shapes
/// `a`: `[n, n]` (consumed).
pub fn symmetric_eigenvalues(mut a: Vec<f64>, n: usize) -> Vec<f64> {
    assert_eq!(a.len(), n * n);
    if n == 0 {
        return Vec::new();
    }
    let (mut diag, mut off) = (vec![0.0; n], vec![0.0; n]);
    tridiagonalize(&mut a, n, &mut diag, &mut off);
    tql(&mut diag, &mut off);
    diag.sort_by(|x, y| y.total_cmp(x));
    diag
}

/// Rows of the lower triangle per rayon task in the fused sweep.
const ROWS_PER_TASK: usize = 8;

/// Householder reduction of the symmetric `a` (lower triangle) to tridiagonal form, last row
/// first as tred2 does: step `i` maps row `i`'s part left of the diagonal, x = a[i, 0..i], to a
/// multiple of the last unit vector with H = I - u uᵀ / h, and applies H to the leading block
/// A = a[0..i, 0..i]: with p = A u / h, K = uᵀp / 2h and q = p - K u, A -= u qᵀ + q uᵀ.
/// `diag` gets the diagonal, `off[i]` the element below `diag[i - 1]` (off[0] = 0). The update
/// of step `i` is applied lazily, fused with the product A u' of step `i - 1`.
///
/// # Shapes
/// `a`: `[n, n]`; `diag`, `off`: `[n]`.
fn tridiagonalize(a: &mut [f64], n: usize, diag: &mut [f64], off: &mut [f64]) {
    // The rank-2 update (u, q) still owed by the leading block a[0..=i, 0..=i].
    let mut pending: Option<(Vec<f64>, Vec<f64>)> = None;
    for i in (1..n).rev() {
        let l = i - 1;
        if let Some((u, q)) = &pending {
            rank2_row(&mut a[i * n..i * n + i + 1], i, u, q);
        }
        let x = &a[i * n..i * n + i];
        let norm2: f64 = x.iter().map(|v| v * v).sum();
        let f = x[l];
        if l == 0 || norm2 == 0.0 || norm2 == f * f {
            // Already tridiagonal in this row: no reflection, only the owed update.
            off[i] = f;
            sweep(a, n, l, pending.as_ref(), None);
            pending = None;
            continue;
        }
        let alpha = if f >= 0.0 { -norm2.sqrt() } else { norm2.sqrt() };
        off[i] = alpha;
        let h = norm2 - f * alpha;
        let mut u = x.to_vec();
        u[l] = f - alpha;
        let mut p = sweep(a, n, l, pending.as_ref(), Some(&u)).expect("a product was asked for");
        p.iter_mut().for_each(|v| *v /= h);
        let k = u.iter().zip(&p).map(|(a, b)| a * b).sum::<f64>() / (2.0 * h);
        let q: Vec<f64> = p.iter().zip(&u).map(|(p, u)| p - k * u).collect();
        pending = Some((u, q));
    }
    off[0] = 0.0;
    for i in 0..n {
        diag[i] = a[i * n + i];
    }
}

/// Row `j` of the lower triangle, `row = a[j, 0..=j]`, minus (u qᵀ + q uᵀ)[j, 0..=j].
///
/// # Shapes
/// `row`: `[j + 1]`; `u`, `q`: at least `[j + 1]`.
#[inline]
fn rank2_row(row: &mut [f64], j: usize, u: &[f64], q: &[f64]) {
    let (uj, qj) = (u[j], q[j]);
    for ((r, &uk), &qk) in row.iter_mut().zip(&u[..=j]).zip(&q[..=j]) {
        *r -= uj * qk + qj * uk;
    }
}

/// One parallel sweep over the rows 0..=l of the lower triangle: applies the owed update, then
/// (when `v` is given) accumulates the symmetric product A v of the updated block from the
/// lower triangle alone (each off-diagonal element counts for its row and its column).
///
/// # Shapes
/// `a`: `[n, n]`; `v`: `[l + 1]`; returns `[l + 1]`.
fn sweep(a: &mut [f64], n: usize, l: usize, owed: Option<&(Vec<f64>, Vec<f64>)>, v: Option<&[f64]>) -> Option<Vec<f64>> {
    let rows = a[..(l + 1) * n].par_chunks_mut(n).with_min_len(ROWS_PER_TASK).enumerate();
    let Some(v) = v else {
        if let Some((u, q)) = owed {
            rows.for_each(|(j, row)| rank2_row(&mut row[..=j], j, u, q));
        }
        return None;
    };
    let p = rows
        .fold(
            || vec![0.0f64; l + 1],
            |mut p, (j, row)| {
                let row = &mut row[..=j];
                if let Some((u, q)) = owed {
                    rank2_row(row, j, u, q);
                }
                let vj = v[j];
                let mut dot = row[j] * vj;
                for ((&r, &vk), pk) in row[..j].iter().zip(&v[..j]).zip(&mut p[..j]) {
                    dot += r * vk;
                    *pk += r * vj;
                }
                p[j] += dot;
                p
            },
        )
        .reduce(
            || vec![0.0f64; l + 1],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    Some(p)
}

/// Eigenvalues of the symmetric tridiagonal matrix (`diag`, `off` as from [`tridiagonalize`])
/// by the implicit QL algorithm with Wilkinson shifts; they replace `diag`.
fn tql(diag: &mut [f64], off: &mut [f64]) {
    let n = diag.len();
    for i in 1..n {
        off[i - 1] = off[i];
    }
    off[n - 1] = 0.0;
    for l in 0..n {
        for _ in 0..60 {
            let mut m = l;
            while m + 1 < n {
                let dd = diag[m].abs() + diag[m + 1].abs();
                if off[m].abs() <= f64::EPSILON * dd {
                    break;
                }
                m += 1;
            }
            if m == l {
                break;
            }
            let mut g = (diag[l + 1] - diag[l]) / (2.0 * off[l]);
            let mut r = g.hypot(1.0);
            g = diag[m] - diag[l] + off[l] / (g + if g >= 0.0 { r.abs() } else { -r.abs() });
            let (mut s, mut c, mut p) = (1.0, 1.0, 0.0);
            let mut i = m;
            let mut underflow = false;
            while i > l {
                i -= 1;
                let f = s * off[i];
                let b = c * off[i];
                r = f.hypot(g);
                off[i + 1] = r;
                if r == 0.0 {
                    diag[i + 1] -= p;
                    off[m] = 0.0;
                    underflow = true;
                    break;
                }
                s = f / r;
                c = g / r;
                g = diag[i + 1] - p;
                r = (diag[i] - g) * s + 2.0 * c * b;
                p = s * r;
                diag[i + 1] = g + p;
                g = c * r - b;
            }
            if underflow {
                continue;
            }
            diag[l] -= p;
            off[l] = g;
            off[m] = 0.0;
        }
    }
}
