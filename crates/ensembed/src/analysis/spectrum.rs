//! Singular-value spectra of representation matrices (the paper's Figure 11: the learned
//! representations spread their variance over more directions than the average). The singular
//! values of X are the square roots of the eigenvalues of the Gram matrix XᵀX, a `[d, d]` GEMM;
//! its eigenvalues come from Householder tridiagonalisation and the implicit QL algorithm
//! (Numerical Recipes' tred2/tqli, values only), written out here because it is ~100 lines and
//! an eigensolver crate would more than double the build time for this one diagnostic.

use crate::kernels::{matmul, Layout};
use crate::matrix::Matrix;

/// Singular values of `x`, largest first.
///
/// # Shapes
/// `x`: `[n, d]`; returns `[d]`.
pub fn singular_values(x: &Matrix) -> Vec<f64> {
    let d = x.cols;
    let mut gram = vec![0.0f32; d * d];
    // [d, d] = xᵀ [d, n] · x [n, d]
    matmul(&mut gram, &x.data, Layout::T, &x.data, Layout::N, d, d, x.rows, false, rayon::current_num_threads());
    let mut ev = symmetric_eigenvalues(gram.iter().map(|&v| v as f64).collect(), d);
    ev.iter_mut().for_each(|v| *v = v.max(0.0).sqrt());
    ev
}

/// Eigenvalues of the symmetric matrix `a`, largest first.
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

/// Householder reduction of `a` to tridiagonal form: `diag` gets the diagonal, `off[i]` the
/// element below `diag[i - 1]` (off[0] = 0).
fn tridiagonalize(a: &mut [f64], n: usize, diag: &mut [f64], off: &mut [f64]) {
    for i in (1..n).rev() {
        let l = i - 1;
        let mut h = 0.0;
        if l > 0 {
            let scale: f64 = (0..=l).map(|k| a[i * n + k].abs()).sum();
            if scale == 0.0 {
                off[i] = a[i * n + l];
            } else {
                for k in 0..=l {
                    a[i * n + k] /= scale;
                    h += a[i * n + k] * a[i * n + k];
                }
                let f = a[i * n + l];
                let g = if f >= 0.0 { -h.sqrt() } else { h.sqrt() };
                off[i] = scale * g;
                h -= f * g;
                a[i * n + l] = f - g;
                let mut f = 0.0;
                for j in 0..=l {
                    let mut g = 0.0;
                    for k in 0..=j {
                        g += a[j * n + k] * a[i * n + k];
                    }
                    for k in j + 1..=l {
                        g += a[k * n + j] * a[i * n + k];
                    }
                    off[j] = g / h;
                    f += off[j] * a[i * n + j];
                }
                let hh = f / (h + h);
                for j in 0..=l {
                    let f = a[i * n + j];
                    let g = off[j] - hh * f;
                    off[j] = g;
                    for k in 0..=j {
                        a[j * n + k] -= f * off[k] + g * a[i * n + k];
                    }
                }
            }
        } else {
            off[i] = a[i * n + l];
        }
        diag[i] = h;
    }
    off[0] = 0.0;
    for i in 0..n {
        diag[i] = a[i * n + i];
    }
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
