//! Principal component projection, for ensembles whose backbones have different widths: the
//! learned representation then has its own dimension d, and starts as the concatenation
//! baseline projected onto its top-d principal subspace (METHOD.md, "beyond the paper").
//!
//! Only the subspace matters here, not the basis inside it: the representation is compared by
//! cosine similarity and the MLP initialisation is rotation-invariant. So the subspace is found
//! by block power iteration on the covariance (Halko, Martinsson & Tropp 2011), which is all
//! GEMM, with CholeskyQR2 in f64 to re-orthonormalise, instead of a full eigensolver, whose
//! crates would more than double the build time for one call at start-up.

use rand::Rng;

use crate::error::{Error, Result};
use crate::kernels::{matmul, Layout};
use crate::matrix::{normalize, Matrix};

/// Power iterations. Each multiplies the gap between kept and dropped eigenvalues; 8 brings the
/// captured variance within 0.1% of the exact top-d subspace on real features (see the test).
const ITERATIONS: usize = 8;

/// A centred linear projection `[D] -> [d]` followed by L2 normalisation.
#[derive(Clone, Debug, PartialEq)]
pub struct Projection {
    /// `[D]`
    pub mean: Vec<f32>,
    /// Orthonormal columns. `[D, d]`
    pub components: Matrix,
}

impl Projection {
    /// Input dimension D.
    pub fn input_dim(&self) -> usize {
        self.components.rows
    }

    /// Output dimension d.
    pub fn output_dim(&self) -> usize {
        self.components.cols
    }

    /// `normalise((x - mean) · components)` row by row.
    ///
    /// # Shapes
    /// `x`: `[n, D]`; returns `[n, d]`.
    pub fn apply(&self, x: &Matrix, threads: usize) -> Matrix {
        let (dd, d) = (self.input_dim(), self.output_dim());
        let mut centred = x.clone();
        for r in centred.data.chunks_exact_mut(dd) {
            r.iter_mut().zip(&self.mean).for_each(|(v, m)| *v -= m);
        }
        let mut out = Matrix::zeros(x.rows, d);
        matmul(&mut out.data, &centred.data, Layout::N, &self.components.data, Layout::N, x.rows, d, dd, false, threads);
        out.data.chunks_exact_mut(d).for_each(|r| {
            normalize(r);
        });
        out
    }
}

/// The top-`d` principal subspace of the rows of `x`.
///
/// # Shapes
/// `x`: `[n, D]`, `d <= D`.
pub fn fit_pca(x: &Matrix, d: usize, rng: &mut impl Rng, threads: usize) -> Result<Projection> {
    let (n, dd) = (x.rows, x.cols);
    if d == 0 || d > dd {
        return Err(Error::config("dim", d, format!("must be between 1 and the concatenated width {dd}")));
    }
    if n == 0 {
        return Err(Error::config("samples", 0, "PCA needs at least one sample"));
    }
    let mut mean64 = vec![0.0f64; dd];
    for r in x.data.chunks_exact(dd) {
        mean64.iter_mut().zip(r).for_each(|(m, &v)| *m += v as f64);
    }
    let mean: Vec<f32> = mean64.iter().map(|m| (m / n as f64) as f32).collect();

    // Covariance (unscaled) in f32 GEMMs over row blocks of the centred data. [D, D]
    let block = 2048.min(n);
    let mut cov = vec![0.0f32; dd * dd];
    let mut centred = vec![0.0f32; block * dd];
    for (bi, rows) in x.data.chunks(block * dd).enumerate() {
        let b = rows.len() / dd;
        let c = &mut centred[..b * dd];
        c.copy_from_slice(rows);
        for r in c.chunks_exact_mut(dd) {
            r.iter_mut().zip(&mean).for_each(|(v, m)| *v -= m);
        }
        matmul(&mut cov, c, Layout::T, c, Layout::N, dd, dd, b, bi > 0, threads);
    }
    let cov: Vec<f64> = cov.iter().map(|&v| v as f64).collect();

    let mut q: Vec<f64> = (0..dd * d).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
    orthonormalize(&mut q, dd, d, threads)?;
    let mut y = vec![0.0f64; dd * d];
    for _ in 0..ITERATIONS {
        gemm64(&mut y, &cov, false, &q, false, dd, d, dd, threads);
        std::mem::swap(&mut q, &mut y);
        orthonormalize(&mut q, dd, d, threads)?;
    }
    let components = Matrix::from_vec(dd, d, q.iter().map(|&v| v as f32).collect())?;
    Ok(Projection { mean, components })
}

/// Makes the columns of `q` orthonormal in place (CholeskyQR2: two passes of
/// `q <- q · L⁻ᵀ` with `L Lᵀ = qᵀq`, the second removing the first's rounding).
///
/// # Shapes
/// `q`: `[rows, cols]`.
fn orthonormalize(q: &mut Vec<f64>, rows: usize, cols: usize, threads: usize) -> Result<()> {
    let mut g = vec![0.0f64; cols * cols];
    let mut out = vec![0.0f64; rows * cols];
    for _ in 0..2 {
        gemm64(&mut g, q, true, q, false, cols, cols, rows, threads);
        // A tiny shift keeps Cholesky defined when the block is numerically rank-deficient.
        let trace: f64 = (0..cols).map(|i| g[i * cols + i]).sum();
        let shift = trace / cols as f64 * 1e-12 + f64::MIN_POSITIVE;
        (0..cols).for_each(|i| g[i * cols + i] += shift);
        let linv = cholesky_inverse(&mut g, cols)?;
        // q · L⁻ᵀ: [rows, cols] · ([cols, cols] stored as L⁻¹, read transposed)
        gemm64(&mut out, q, false, &linv, true, rows, cols, cols, threads);
        std::mem::swap(q, &mut out);
    }
    Ok(())
}

/// The inverse of the lower Cholesky factor of the symmetric positive-definite `a`
/// (`a` is overwritten with the factor).
///
/// # Shapes
/// `a`: `[n, n]`; returns `[n, n]` lower-triangular.
fn cholesky_inverse(a: &mut [f64], n: usize) -> Result<Vec<f64>> {
    for j in 0..n {
        let (done, rest) = a.split_at_mut(j * n);
        let row_j = &mut rest[..n];
        let mut diag = row_j[j];
        for k in 0..j {
            diag -= row_j[k] * row_j[k];
        }
        if !(diag > 0.0) {
            return Err(Error::config("dim", n, "PCA failed: the features are rank-deficient at this dimension; choose a smaller `dim`"));
        }
        let ljj = diag.sqrt();
        row_j[j] = ljj;
        let _ = done;
        for i in j + 1..n {
            let (upper, lower) = a.split_at_mut(i * n);
            let rj = &upper[j * n..j * n + j];
            let ri = &mut lower[..n];
            let dot: f64 = ri[..j].iter().zip(rj).map(|(x, y)| x * y).sum();
            ri[j] = (ri[j] - dot) / ljj;
        }
    }
    // Forward substitution for each column of the identity.
    let mut inv = vec![0.0f64; n * n];
    for i in 0..n {
        inv[i * n + i] = 1.0 / a[i * n + i];
        for j in 0..i {
            let mut s = 0.0;
            for k in j..i {
                s += a[i * n + k] * inv[k * n + j];
            }
            inv[i * n + j] = -s / a[i * n + i];
        }
    }
    Ok(inv)
}

/// `c = op(a) · op(b)` in f64, row-major; `ta`/`tb` read the stored buffer transposed.
///
/// # Shapes
/// `c`: `[m, n]`; `op(a)`: `[m, k]`; `op(b)`: `[k, n]`.
#[allow(clippy::too_many_arguments)]
fn gemm64(c: &mut [f64], a: &[f64], ta: bool, b: &[f64], tb: bool, m: usize, n: usize, k: usize, threads: usize) {
    assert!(c.len() == m * n && a.len() == m * k && b.len() == k * n);
    let (a_rs, a_cs) = if ta { (1, m as isize) } else { (k as isize, 1) };
    let (b_rs, b_cs) = if tb { (1, k as isize) } else { (n as isize, 1) };
    let par = if threads > 1 { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
    // SAFETY: extents checked by the assert above.
    unsafe {
        gemm::gemm(m, n, k, c.as_mut_ptr(), 1, n as isize, false, a.as_ptr(), a_cs, a_rs, b.as_ptr(), b_cs, b_rs, 1.0, 1.0, false, false, false, par);
    }
}
