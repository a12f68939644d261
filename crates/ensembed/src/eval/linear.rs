//! The linear probe of the paper's appendix A.2 (METHOD.md, "Evaluation"): multinomial
//! logistic regression on frozen representations, its L2 weight decay chosen from a sweep on a
//! held-out 10% of train, refitted on all of train, scored by test top-1/top-5 accuracy.
//!
//! The solver is full-batch L-BFGS on the exact convex objective
//! `f(W, b) = mean_i CE(x_i W + b, y_i) + wd/2 ||W||²` (bias unpenalised), not SGD: the
//! objective is smooth and convex, so a quasi-Newton method reaches the optimum itself, with no
//! learning rate or epoch count to tune per weight decay and an answer that a reference solver
//! (`scripts/linear_reference.py`) can check to many digits. With tens of classes the parameters
//! are small (`(d + 1) c`) and every cost is in two passes over the features per iteration, each
//! one GEMM: `u = X p` (the logits along the search direction) and `Rᵀ X` (the gradient, `R` =
//! softmax - one-hot). The logits are linear in the parameters, so the line search moves along
//! `z + α u` without touching `X` again, and the logits of the accepted point are tracked the same
//! way (in f64, so that hundreds of updates do not drift). Two more choices make it fast:
//! - The features are centred implicitly: the solver works in `(W, b' = b + μW)`, `μ` the mean
//!   train row, an exact reparametrisation (the bias is free) that removes the near-duplicate of
//!   the bias that non-negative features carry in their mean direction and so the worst of the
//!   ill-conditioning (measured on benches/linear.rs: half the iterations); it costs a rank-one
//!   correction of each GEMM, never a copy of `X`.
//! - The sweep runs from strong to weak decay, each fit warm-started from the previous optimum,
//!   and the refit on all of train starts from the chosen decay's optimum.
//!
//! All parallel work, the GEMMs included, is split into blocks of rows fixed by the data size
//! alone, and every partial sum is added in block order, so the results do not depend on the
//! thread count.
//!
//! Cost: per iteration two passes over `X` plus a few O(n c) softmax passes; memory: `X`, a copy
//! of its 90% fit part during the sweep, and O(n c + d c (history + 64)) besides.

use std::collections::VecDeque;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kernels::{matmul, Layout};
use crate::matrix::Matrix;
use crate::progress::Progress;

/// Settings of the linear probe; the defaults are those of METHOD.md. Missing fields of a
/// serialised config take their defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct LinearConfig {
    /// L2 weight decays to sweep; each must be positive and finite.
    pub weight_decays: Vec<f32>,
    /// Fraction of train held out to choose the weight decay, in (0, 1).
    pub holdout: f32,
    /// L-BFGS iterations per fit at most.
    pub max_iter: usize,
    /// A fit stops once no gradient entry exceeds `tol` times the largest entry of the gradient
    /// at W = 0 (the class-mean differences `(n_k / n)(μ_k - μ)`): relative, so that one value
    /// suits any feature scale and dimension.
    pub tol: f32,
    /// L-BFGS memory: the number of past (step, gradient change) pairs kept.
    pub history: usize,
    /// Seed of the held-out split.
    pub seed: u64,
    /// Worker threads (results do not depend on it).
    pub threads: usize,
}

impl Default for LinearConfig {
    fn default() -> Self {
        LinearConfig {
            weight_decays: vec![1e-6, 1e-5, 1e-4, 1e-3, 1e-2],
            holdout: 0.1,
            // Measured with benches/linear.rs (20,000 x 1,024, 10 classes): every held-out
            // accuracy of the sweep stops moving (to 5e-4) from tol = 1e-2 on, and 1e-3 costs 1.4x
            // the iterations of 1e-2 for a decade of margin. A loose 1e-1 is not safe: the weakest
            // decay then starts "converged" at the previous decay's optimum and is never fitted.
            max_iter: 500,
            tol: 1e-3,
            history: 10,
            seed: 0,
            threads: rayon::current_num_threads(),
        }
    }
}

/// The result of [`evaluate_linear`]. Accuracies are fractions in `[0, 1]`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinearReport {
    /// Test top-1 accuracy of the refitted classifier.
    pub top1: f64,
    /// Test top-5 accuracy (1 when there are at most five classes and the label is known).
    pub top5: f64,
    /// The decay with the best held-out top-1 (the largest such decay on ties).
    pub best_weight_decay: f32,
    /// (decay, held-out top-1) for every decay of the config, in the config's order.
    pub holdout_top1: Vec<(f32, f64)>,
    /// L-BFGS iterations over all fits: the sweep and the refit.
    pub iterations: usize,
    /// Distinct classes among the train labels (test labels outside them count as misses).
    pub num_classes: usize,
}

/// Rows per block of the parallel row passes; also the unit of the f64 partial sums, which fixes
/// their summation order whatever the thread count.
const CHUNK: usize = 1024;

/// Rows per block of the logits GEMM, and the fewest rows per group of the gradient GEMM
/// (measured on 50,000 x 2,048: blocks of 1,024 rows are as fast as one whole-matrix call or
/// faster; 256 or 512 are slower for the gradient).
const GEMM_ROWS: usize = 1024;

/// The most row groups the gradient GEMM is split into (each holds a `[c, d]` partial product).
const MAX_GROUPS: usize = 64;

/// A fit also stops when an iteration lowers the objective by less than this fraction of it: a
/// safeguard for a `tol` below what the f32 GEMMs resolve, where steps no longer gain anything.
const FTOL: f64 = 1e-12;

/// Linear-probe accuracy of `train`'s classes on `test` (appendix A.2): stratified held-out
/// split of `cfg.holdout` of train (per class, seeded by `cfg.seed`), one fit per weight decay on
/// the rest, the best held-out top-1 picks the decay, the refit on all of train is scored on test.
///
/// Each class keeps `round(holdout * count)` of its samples for the held-out part, but always at
/// least one for fitting, so every class is fitted and the held-out class mix is train's.
/// Memory: the split copies the train features once (about 1.9x train at peak).
///
/// # Shapes
/// Rows should be L2-normalised (as for k-NN). `train` `[n, d]`, `train_labels` `[n]`, `test` `[m, d]`,
/// `test_labels` `[m]`.
pub fn evaluate_linear(
    train: &Matrix,
    train_labels: &[u32],
    test: &Matrix,
    test_labels: &[u32],
    cfg: &LinearConfig,
    progress: &dyn Progress,
) -> Result<LinearReport> {
    check_cfg(cfg)?;
    if cfg.weight_decays.is_empty() {
        return Err(Error::config("weight_decays", "[]", "give at least one weight decay"));
    }
    for &wd in &cfg.weight_decays {
        check_weight_decay(wd)?;
    }
    if !(cfg.holdout > 0.0 && cfg.holdout < 1.0) {
        return Err(Error::config("holdout", cfg.holdout, "must lie strictly between 0 and 1"));
    }
    check_features("train", train)?;
    check_features("test", test)?;
    if test.cols != train.cols {
        let expected = format!("{} columns (as the train features)", train.cols);
        return Err(Error::shape("linear-probe test features", expected, format!("{} columns", test.cols)));
    }
    for (what, labels, rows) in [("train", train_labels, train.rows), ("test", test_labels, test.rows)] {
        if labels.len() != rows {
            return Err(Error::shape(format!("linear-probe {what} labels"), format!("{rows} (one per {what} row)"), labels.len()));
        }
    }
    check_finite("test features", test)?;

    // Dense class indices over the classes train has: a class with no sample would have no
    // optimum (its bias falls forever).
    let classes = dense_classes(train_labels)?;
    let num_classes = classes.len();
    let dense = |l: &u32| classes.binary_search(l).map_or(u32::MAX, |k| k as u32);
    let (ytrain, ytest): (Vec<u32>, Vec<u32>) = (train_labels.iter().map(dense).collect(), test_labels.iter().map(dense).collect());
    let (fit_idx, hold_idx) = split(&ytrain, num_classes, cfg.holdout, cfg.seed)?;

    // Strong to weak: the warm start of each fit is then already close, and the weakest
    // (slowest) fits start from the best available point.
    let mut sweep = cfg.weight_decays.clone();
    sweep.sort_by(|a, b| b.total_cmp(a));
    sweep.dedup();

    let pool = pool(cfg.threads)?;
    pool.install(|| {
        progress.start("linear probe", sweep.len() as u64 + 1);
        let x_fit = train.gather_rows(&fit_idx); // [n_fit, d]
        let y_fit: Vec<u32> = fit_idx.iter().map(|&i| ytrain[i]).collect();
        let x_hold = train.gather_rows(&hold_idx); // [n_hold, d]
        let y_hold: Vec<u32> = hold_idx.iter().map(|&i| ytrain[i]).collect();

        let mut iterations = 0;
        let mut accs = Vec::with_capacity(sweep.len()); // (decay, held-out top-1), sweep order
        let mut best: Option<(f32, f64, Vec<f32>, Vec<f32>)> = None; // (decay, top-1, W, b)
        let mut prev: Option<(Vec<f32>, Vec<f32>)> = None;
        for &wd in &sweep {
            let init = prev.as_ref().map(|(w, b)| (w.as_slice(), b.as_slice()));
            let (w, b, it) = fit_in_pool(&x_fit, &y_fit, num_classes, wd, cfg, init)?;
            iterations += it;
            let acc = score(&x_hold, &y_hold, &w, &b, num_classes).0 as f64 / y_hold.len() as f64;
            progress.message(&format!("weight decay {wd:e}: held-out top-1 {acc:.4} ({it} iterations)"));
            progress.advance(1);
            accs.push((wd, acc));
            // Strictly better only: on ties the earlier, stronger decay stays.
            if best.as_ref().map_or(true, |(_, a, _, _)| acc > *a) {
                best = Some((wd, acc, w.clone(), b.clone()));
            }
            prev = Some((w, b));
        }
        drop((x_fit, x_hold, prev));

        let (best_wd, _, w0, b0) = best.expect("the sweep has at least one decay");
        let (w, b, it) = fit_in_pool(train, &ytrain, num_classes, best_wd, cfg, Some((&w0, &b0)))?;
        iterations += it;
        let (top1, top5) = score(test, &ytest, &w, &b, num_classes);
        progress.message(&format!("refit at weight decay {best_wd:e}: test top-1 {:.4} ({it} iterations)", top1 as f64 / test.rows as f64));
        progress.advance(1);
        progress.finish();

        let acc_of = |wd: f32| accs.iter().find(|(v, _)| *v == wd).map(|&(_, a)| a).unwrap();
        Ok(LinearReport {
            top1: top1 as f64 / test.rows as f64,
            top5: top5 as f64 / test.rows as f64,
            best_weight_decay: best_wd,
            holdout_top1: cfg.weight_decays.iter().map(|&wd| (wd, acc_of(wd))).collect(),
            iterations,
            num_classes,
        })
    })
}

/// Minimises `mean_i CE(x_i W + b, y_i) + weight_decay/2 ||W||²` by L-BFGS from `init`
/// (`(W, b)`) or from zero, until no gradient entry exceeds `cfg.tol` times the largest one at
/// W = 0 (see [`LinearConfig::tol`]), an iteration gains less than 1e-12 of the objective, or
/// `cfg.max_iter` iterations. Returns `(W, b, iterations)`. `b` is only defined up to a common
/// constant (softmax ignores one): compare biases with their mean removed. Every class in
/// `0..num_classes` needs a sample, else its bias would decrease without end.
///
/// # Shapes
/// `x` `[n, d]`, `y` `[n]`, `init` = (W `[d, c]`, b `[c]`) -> (W `[d, c]`, b `[c]`, iterations), c =
/// `num_classes`.
pub fn fit_logistic(
    x: &Matrix,
    y: &[u32],
    num_classes: usize,
    weight_decay: f32,
    cfg: &LinearConfig,
    init: Option<(&[f32], &[f32])>,
) -> Result<(Vec<f32>, Vec<f32>, usize)> {
    check_cfg(cfg)?;
    check_weight_decay(weight_decay)?;
    check_problem(x, y, num_classes, init)?;
    pool(cfg.threads)?.install(|| fit_in_pool(x, y, num_classes, weight_decay, cfg, init))
}

/// The objective of [`fit_logistic`] at `(w, b)` (f64) and its gradient `(dW, db)`, computed by
/// the solver's own code path; exposed to check that path against finite differences.
///
/// # Shapes
/// `x` `[n, d]`, `y` `[n]`, `w` `[d, c]`, `b` `[c]` -> (objective, dW `[d, c]`, db `[c]`).
#[allow(clippy::too_many_arguments)]
pub fn logistic_objective(
    x: &Matrix,
    y: &[u32],
    num_classes: usize,
    weight_decay: f32,
    w: &[f32],
    b: &[f32],
    threads: usize,
) -> Result<(f64, Vec<f32>, Vec<f32>)> {
    check_weight_decay(weight_decay)?;
    check_problem(x, y, num_classes, Some((w, b)))?;
    if threads == 0 {
        return Err(Error::config("threads", 0, "must be at least 1"));
    }
    pool(threads)?.install(|| {
        let mut s = Solver::new(x, y, num_classes, weight_decay)?;
        let theta = s.centre(w, b);
        let (f, colsum) = s.start(&theta);
        let g = s.gradient(&theta, &colsum);
        // Back from (W, b') to (W, b): b' = b + μW, so d/dW gains μ · (d/db')ᵀ.
        let (d, c) = (x.cols, num_classes);
        let gw = (0..d * c).map(|i| (g[i] + s.mean[i / c] * g[d * c + i % c]) as f32).collect();
        Ok((f, gw, g[d * c..].iter().map(|&v| v as f32).collect()))
    })
}

/// [`fit_logistic`] after validation, inside the pool.
///
/// # Shapes
/// `x` `[n, d]`, `y` `[n]` -> (W `[d, c]`, b `[c]`, iterations).
fn fit_in_pool(
    x: &Matrix,
    y: &[u32],
    c: usize,
    weight_decay: f32,
    cfg: &LinearConfig,
    init: Option<(&[f32], &[f32])>,
) -> Result<(Vec<f32>, Vec<f32>, usize)> {
    let mut s = Solver::new(x, y, c, weight_decay)?;
    let mut theta = match init {
        Some((w, b)) => s.centre(w, b),
        None => vec![0.0; (x.cols + 1) * c],
    };
    let it = s.lbfgs(&mut theta, cfg)?;
    let (w, b) = s.uncentre(&theta);
    Ok((w, b, it))
}

/// One fit's problem and buffers. The parameters `theta` are `[W; b']`, W `[d, c]` row-major, b' `[c]`
/// (f64: the optimiser's arithmetic is tiny next to the GEMMs), with `b' = b + μW`.
struct Solver<'a> {
    x: &'a Matrix,   // [n, d]
    y: &'a [u32],    // [n]
    c: usize,
    lambda: f64,
    mean: Vec<f64>,  // [d] the mean row μ
    z: Vec<f64>,     // [n, c] logits at the current point
    u: Vec<f32>,     // [n, c] logits of the search direction
    r: Vec<f32>,     // [n, c] softmax - one-hot at the current point
    gt: Vec<f64>,    // [c, d] Rᵀ X
    parts: Vec<f32>, // [groups, c, d] Rᵀ X of each row group
    p32: Vec<f32>,   // [d, c] the W part of a direction, for the GEMM
}

impl<'a> Solver<'a> {
    /// Buffers for `x`, and its mean row (which also catches non-finite features).
    ///
    /// # Shapes
    /// `x` `[n, d]`, `y` `[n]`.
    fn new(x: &'a Matrix, y: &'a [u32], c: usize, weight_decay: f32) -> Result<Self> {
        let (n, d) = (x.rows, x.cols);
        // Partial sums over fixed row blocks, added in block order: thread-count independent.
        let parts: Vec<Vec<f64>> = x
            .data
            .par_chunks(CHUNK * d)
            .map(|blk| {
                let mut s = vec![0f64; d];
                blk.chunks_exact(d).for_each(|row| s.iter_mut().zip(row).for_each(|(s, &v)| *s += v as f64));
                s
            })
            .collect();
        let mut mean = vec![0f64; d];
        parts.iter().for_each(|p| mean.iter_mut().zip(p).for_each(|(m, v)| *m += v));
        mean.iter_mut().for_each(|m| *m /= n as f64);
        if mean.iter().any(|m| !m.is_finite()) {
            check_finite("features", x)?;
        }
        Ok(Solver {
            x,
            y,
            c,
            lambda: weight_decay as f64,
            mean,
            z: vec![0.0; n * c],
            u: vec![0.0; n * c],
            r: vec![0.0; n * c],
            gt: vec![0.0; c * d],
            parts: Vec::new(),
            p32: vec![0.0; d * c],
        })
    }

    /// `(W, b)` -> `theta` = `[W; b + μW]`.
    fn centre(&self, w: &[f32], b: &[f32]) -> Vec<f64> {
        let (d, c) = (self.x.cols, self.c);
        let mut t: Vec<f64> = w.iter().map(|&v| v as f64).collect();
        t.extend((0..c).map(|j| b[j] as f64 + (0..d).map(|k| self.mean[k] * w[k * c + j] as f64).sum::<f64>()));
        t
    }

    /// `theta` -> (W `[d, c]`, b `[c]`), `b = b' - μW`.
    fn uncentre(&self, t: &[f64]) -> (Vec<f32>, Vec<f32>) {
        let (d, c) = (self.x.cols, self.c);
        let b = (0..c).map(|j| (t[d * c + j] - (0..d).map(|k| self.mean[k] * t[k * c + j]).sum::<f64>()) as f32);
        (t[..d * c].iter().map(|&v| v as f32).collect(), b.collect())
    }

    /// `self.u` = the logits of the linear map `p` = `[P; q]` (P `[d, c]`, q `[c]`): `(X - 1μᵀ) P + 1qᵀ`.
    /// One GEMM; the centring is a per-class constant added after it.
    fn map_logits(&mut self, p: &[f64]) {
        let (d, c) = (self.x.cols, self.c);
        self.p32.iter_mut().zip(p).for_each(|(a, &v)| *a = v as f32);
        logits(&mut self.u, self.x, &self.p32, c); // [n, c]
        let off: Vec<f32> =
            (0..c).map(|j| (p[d * c + j] - (0..d).map(|k| self.mean[k] * p[k * c + j]).sum::<f64>()) as f32).collect(); // [c]
        self.u.par_chunks_mut(CHUNK * c).for_each(|blk| {
            blk.chunks_exact_mut(c).for_each(|row| row.iter_mut().zip(&off).for_each(|(v, o)| *v += o))
        });
    }

    /// Sets the current point to `theta` from scratch (z = its logits, r its residuals).
    /// Returns (objective, column sums of r `[c]`).
    fn start(&mut self, theta: &[f64]) -> (f64, Vec<f64>) {
        self.map_logits(theta);
        self.z.fill(0.0);
        let (loss, colsum) = self.step(1.0);
        (loss / self.x.rows as f64 + 0.5 * self.lambda * sq(&theta[..self.x.cols * self.c]), colsum)
    }

    /// Moves the logits to `z + α u` and sets `r` there. Returns (summed cross-entropy, column
    /// sums of r `[c]`), both in f64.
    fn step(&mut self, alpha: f64) -> (f64, Vec<f64>) {
        let c = self.c;
        let parts: Vec<(f64, Vec<f64>)> = (self.z.par_chunks_mut(CHUNK * c), self.r.par_chunks_mut(CHUNK * c))
            .into_par_iter()
            .zip(self.u.par_chunks(CHUNK * c).zip(self.y.par_chunks(CHUNK)))
            .map(|((z, r), (u, y))| {
                let (mut loss, mut colsum) = (0.0, vec![0f64; c]);
                for (((z, r), u), &y) in z.chunks_exact_mut(c).zip(r.chunks_exact_mut(c)).zip(u.chunks_exact(c)).zip(y) {
                    z.iter_mut().zip(u).for_each(|(z, &u)| *z += alpha * u as f64);
                    // Stable log-softmax: shift by the max so that every exponent is <= 0.
                    let m = z.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                    let s: f64 = z.iter().map(|&v| (v - m).exp()).sum();
                    loss += m + s.ln() - z[y as usize];
                    for (k, (r, cs)) in r.iter_mut().zip(colsum.iter_mut()).enumerate() {
                        let v = (z[k] - m).exp() / s - (k == y as usize) as u8 as f64;
                        *r = v as f32;
                        *cs += v;
                    }
                }
                (loss, colsum)
            })
            .collect();
        let mut colsum = vec![0f64; c];
        let loss = parts.iter().map(|(l, cs)| {
            colsum.iter_mut().zip(cs).for_each(|(a, b)| *a += b);
            l
        });
        (loss.sum(), colsum)
    }

    /// Summed cross-entropy at logits `z + α u` and its derivative in α, leaving the point as is.
    fn line_terms(&self, alpha: f64) -> (f64, f64) {
        let c = self.c;
        let parts: Vec<(f64, f64)> = (self.z.par_chunks(CHUNK * c), self.u.par_chunks(CHUNK * c))
            .into_par_iter()
            .zip(self.y.par_chunks(CHUNK))
            .map(|((z, u), y)| {
                let (mut loss, mut deriv, mut t) = (0.0, 0.0, vec![0f64; c]);
                for ((z, u), &y) in z.chunks_exact(c).zip(u.chunks_exact(c)).zip(y) {
                    t.iter_mut().zip(z.iter().zip(u)).for_each(|(t, (&z, &u))| *t = z + alpha * u as f64);
                    let m = t.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                    let (mut s, mut su) = (0.0, 0.0);
                    for (&t, &u) in t.iter().zip(u) {
                        let e = (t - m).exp();
                        s += e;
                        su += e * u as f64;
                    }
                    loss += m + s.ln() - t[y as usize];
                    deriv += su / s - u[y as usize] as f64;
                }
                (loss, deriv)
            })
            .collect();
        parts.iter().fold((0.0, 0.0), |(a, b), (l, d)| (a + l, b + d))
    }

    /// The gradient at the current point (`theta`, whose `r` and its column sums `colsum` `[c]`
    /// are set): dW = (X - 1μᵀ)ᵀ R / n + λW, db' = colsum / n. One GEMM.
    ///
    /// # Shapes
    /// `theta` `[(d + 1) c]` -> `[(d + 1) c]`.
    fn gradient(&mut self, theta: &[f64], colsum: &[f64]) -> Vec<f64> {
        let (n, d, c) = (self.x.rows, self.x.cols, self.c);
        residual_t_x(&mut self.gt, &mut self.parts, &self.r, self.x, c); // [c, d]
        let inv_n = 1.0 / n as f64;
        let mut g = vec![0f64; (d + 1) * c];
        for k in 0..d {
            for j in 0..c {
                g[k * c + j] = (self.gt[j * d + k] - self.mean[k] * colsum[j]) * inv_n + self.lambda * theta[k * c + j];
            }
        }
        g[d * c..].iter_mut().zip(colsum).for_each(|(g, &s)| *g = s * inv_n);
        g
    }

    /// The largest entry of the gradient at W = 0, the unit of `tol`. There every row has the
    /// same softmax whatever b, and the centred rows sum to zero, so dW = -(X - 1μᵀ)ᵀ Y / n:
    /// entry (j, k) is -(n_k / n)(μ_k - μ)_j, the class-mean differences. One GEMM (Yᵀ X).
    fn gradient_scale(&mut self) -> f64 {
        let (n, d, c) = (self.x.rows, self.x.cols, self.c);
        self.r.fill(0.0);
        let mut count = vec![0f64; c];
        for (i, &y) in self.y.iter().enumerate() {
            self.r[i * c + y as usize] = 1.0;
            count[y as usize] += 1.0;
        }
        residual_t_x(&mut self.gt, &mut self.parts, &self.r, self.x, c); // [c, d]
        let mut m = 0f64;
        for (k, row) in self.gt.chunks_exact(d).enumerate() {
            row.iter().zip(&self.mean).for_each(|(&s, &mu)| m = m.max((s - count[k] * mu).abs()));
        }
        m / n as f64
    }

    /// L-BFGS from `theta` (updated in place). Returns the iterations done.
    fn lbfgs(&mut self, theta: &mut [f64], cfg: &LinearConfig) -> Result<usize> {
        let (n, dc) = (self.x.rows as f64, self.x.cols * self.c);
        let stop = cfg.tol as f64 * self.gradient_scale();
        let (mut f, colsum) = self.start(theta);
        if !f.is_finite() {
            return Err(Error::config("init", format!("objective {f}"), "the start point gives a non-finite objective"));
        }
        let mut g = self.gradient(theta, &colsum);
        let mut hist: VecDeque<(Vec<f64>, Vec<f64>, f64)> = VecDeque::with_capacity(cfg.history); // (s, y, 1 / sᵀy)
        let mut it = 0;
        while it < cfg.max_iter && inf_norm(&g) > stop {
            let p = two_loop(&g, &hist);
            self.map_logits(&p);
            // φ(α) = f(theta + α p); the penalty is a quadratic in α, known in closed form.
            let (ww, wp, pp) = (sq(&theta[..dc]), dot(&theta[..dc], &p[..dc]), sq(&p[..dc]));
            let lambda = self.lambda;
            let phi = |s: &Self, a: f64| {
                let (l, dl) = s.line_terms(a);
                (l / n + 0.5 * lambda * (ww + 2.0 * a * wp + a * a * pp), dl / n + lambda * (wp + a * pp))
            };
            // φ'(0) from the same f64 pass as the line search rather than gᵀp (whose W part went
            // through the f32 GEMM), so that the Wolfe tests compare values of one function.
            let (f0, d0) = phi(self, 0.0);
            // A first step (no curvature known yet) of unit length in the largest coordinate.
            let a0 = if hist.is_empty() { (1.0 / inf_norm(&g)).min(1.0) } else { 1.0 };
            let found = if d0 < 0.0 { line_search(&mut |a| phi(self, a), f0, d0, a0) } else { None };
            let Some(alpha) = found else {
                // The quasi-Newton direction failed: retry along -g once; if even that finds no
                // decrease, round-off is all that is left.
                if hist.is_empty() {
                    break;
                }
                hist.clear();
                continue;
            };
            let (loss, colsum) = self.step(alpha);
            let s: Vec<f64> = p.iter().map(|&v| alpha * v).collect();
            theta.iter_mut().zip(&s).for_each(|(t, s)| *t += s);
            let f_new = loss / n + 0.5 * lambda * sq(&theta[..dc]);
            let g_new = self.gradient(theta, &colsum);
            let yv: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
            let sy = dot(&s, &yv);
            // The objective is convex, so sᵀy > 0 up to round-off; a pair without curvature
            // would make the inverse-Hessian estimate indefinite.
            if sy > 1e-10 * sq(&yv).sqrt() * sq(&s).sqrt() {
                if hist.len() == cfg.history {
                    hist.pop_front();
                }
                hist.push_back((s, yv, 1.0 / sy));
            }
            it += 1;
            let gain = f - f_new;
            (f, g) = (f_new, g_new);
            if gain <= FTOL * f.abs().max(1.0) {
                break;
            }
        }
        Ok(it)
    }
}

/// The L-BFGS direction `-H g` by the two-loop recursion, `H` scaled by the newest pair's
/// `sᵀy / yᵀy`; `-g` without history.
///
/// # Shapes
/// `g` `[len]`, each pair `[len]` -> `[len]`.
fn two_loop(g: &[f64], hist: &VecDeque<(Vec<f64>, Vec<f64>, f64)>) -> Vec<f64> {
    let mut q = g.to_vec();
    let mut coef = vec![0f64; hist.len()];
    for (i, (s, y, rho)) in hist.iter().enumerate().rev() {
        coef[i] = rho * dot(s, &q);
        q.iter_mut().zip(y).for_each(|(q, y)| *q -= coef[i] * y);
    }
    if let Some((s, y, _)) = hist.back() {
        let gamma = dot(s, y) / sq(y);
        q.iter_mut().for_each(|q| *q *= gamma);
    }
    for (i, (s, y, rho)) in hist.iter().enumerate() {
        let beta = rho * dot(y, &q);
        q.iter_mut().zip(s).for_each(|(q, s)| *q += (coef[i] - beta) * s);
    }
    q.iter_mut().for_each(|q| *q = -*q);
    q
}

/// A step length satisfying the strong Wolfe conditions (c1 = 1e-4, c2 = 0.9) for `phi`
/// (value and derivative along the direction), by bracketing then cubic-interpolation zoom
/// (Nocedal & Wright, algorithms 3.5 and 3.6). Strong Wolfe keeps sᵀy > 0, which L-BFGS needs.
/// When the evaluations run out a step with sufficient decrease is still taken; `None` when
/// there is none (the direction gains nothing above round-off). Non-finite values count as
/// too far.
fn line_search(phi: &mut dyn FnMut(f64) -> (f64, f64), f0: f64, d0: f64, a0: f64) -> Option<f64> {
    const C1: f64 = 1e-4;
    const C2: f64 = 0.9;
    const MAX_EVALS: usize = 30;
    // `!(f <= ..)`: NaN fails sufficient decrease.
    let armijo = |a: f64, f: f64| f <= f0 + C1 * a * d0;
    let curvature = |d: f64| d.abs() <= -C2 * d0;
    let (mut lo, mut hi) = ((0.0, f0, d0), None); // (α, φ, φ')
    let mut a = a0;
    for _ in 0..MAX_EVALS {
        if let Some(h) = hi {
            a = zoom_point(lo, h);
        }
        let (f, d) = phi(a);
        match hi {
            // Bracketing: grow the step until it overshoots.
            None => {
                if !armijo(a, f) || f >= lo.1 {
                    hi = Some((a, f, d));
                } else if curvature(d) {
                    return Some(a);
                } else if d >= 0.0 {
                    (hi, lo) = (Some(lo), (a, f, d));
                } else {
                    lo = (a, f, d);
                    a *= 4.0;
                }
            }
            // Zoom: shrink [lo, hi] around a point satisfying both conditions.
            Some(h) => {
                if !armijo(a, f) || f >= lo.1 {
                    hi = Some((a, f, d));
                } else if curvature(d) {
                    return Some(a);
                } else {
                    if d * (h.0 - lo.0) >= 0.0 {
                        hi = Some(lo);
                    }
                    lo = (a, f, d);
                }
                let h = hi.unwrap();
                if (h.0 - lo.0).abs() <= 1e-12 * lo.0.abs().max(h.0.abs()) {
                    break;
                }
            }
        }
    }
    // `lo` always satisfies sufficient decrease, so a positive one is a valid (if short) step.
    (lo.0 > 0.0).then_some(lo.0)
}

/// The minimiser of the cubic through `lo` and `hi` (values and derivatives), kept inside the
/// middle 80% of the bracket; the midpoint when the cubic has none there or is not finite.
fn zoom_point(lo: (f64, f64, f64), hi: (f64, f64, f64)) -> f64 {
    let ((a1, f1, d1), (a2, f2, d2)) = (lo, hi);
    let t1 = d1 + d2 - 3.0 * (f1 - f2) / (a1 - a2);
    let t2 = (a2 - a1).signum() * (t1 * t1 - d1 * d2).sqrt();
    let a = a2 - (a2 - a1) * (d2 + t2 - t1) / (d2 - d1 + 2.0 * t2);
    let (min, max) = (a1.min(a2), a1.max(a2));
    let margin = 0.1 * (max - min);
    if a.is_finite() && a >= min + margin && a <= max - margin {
        a
    } else {
        0.5 * (a1 + a2)
    }
}

/// (top-1 hits, top-5 hits) of the classifier `(w, b)` on `x`; a label `u32::MAX` (a class
/// train lacks) is a miss. Equal logits rank the lower class first.
///
/// # Shapes
/// `x` `[m, d]`, `y` `[m]`, `w` `[d, c]`, `b` `[c]`.
fn score(x: &Matrix, y: &[u32], w: &[f32], b: &[f32], c: usize) -> (usize, usize) {
    let mut logits = vec![0f32; x.rows * c]; // [m, c]
    self::logits(&mut logits, x, w, c);
    logits
        .par_chunks(c)
        .zip(y.par_iter())
        .map(|(l, &y)| {
            let y = y as usize;
            if y >= c {
                return (0, 0);
            }
            let v = l[y] + b[y];
            let r = (0..c).filter(|&k| l[k] + b[k] > v || (l[k] + b[k] == v && k < y)).count();
            ((r < 1) as usize, (r < 5) as usize)
        })
        .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

/// `out = x · p`, fixed blocks of rows in parallel, each one single-threaded GEMM. Row blocks
/// are independent, so every thread is busy whatever gemm's own threading would make of a
/// product only `c` columns wide, and the result does not depend on the thread count.
///
/// # Shapes
/// `x` `[n, d]`, `p` `[d, c]` -> `out` `[n, c]`.
fn logits(out: &mut [f32], x: &Matrix, p: &[f32], c: usize) {
    let d = x.cols;
    out.par_chunks_mut(GEMM_ROWS * c).zip(x.data.par_chunks(GEMM_ROWS * d)).for_each(|(o, xb)| {
        matmul(o, xb, Layout::N, p, Layout::N, xb.len() / d, c, d, false, 1); // [rows, c]
    });
}

/// `gt = rᵀ x`: one single-threaded GEMM per fixed group of rows (at most `MAX_GROUPS` groups,
/// so that the partial products stay small next to `x`), the groups in parallel, their partial
/// products added in group order in f64. The groups depend on `n` only, so the sum does not
/// depend on the thread count. `Rᵀ X` rather than `Xᵀ R`: gemm was faster on it in 3 of 4
/// runs (by 20-40% on 50,000 x 2,048), and `[c, d]` is cheap to read transposed.
///
/// # Shapes
/// `r` `[n, c]`, `x` `[n, d]`, `parts` scratch (resized to `[groups, c, d]`) -> `gt` `[c, d]`.
fn residual_t_x(gt: &mut [f64], parts: &mut Vec<f32>, r: &[f32], x: &Matrix, c: usize) {
    let (n, d) = (x.rows, x.cols);
    let rows = GEMM_ROWS.max(n.div_ceil(MAX_GROUPS));
    let groups = n.div_ceil(rows);
    parts.resize(groups * c * d, 0.0);
    parts.par_chunks_mut(c * d).zip(r.par_chunks(rows * c).zip(x.data.par_chunks(rows * d))).for_each(|(p, (rb, xb))| {
        matmul(p, rb, Layout::T, xb, Layout::N, c, d, xb.len() / d, false, 1); // [c, d]
    });
    gt.par_chunks_mut(CHUNK).enumerate().for_each(|(b, out)| {
        out.fill(0.0);
        for part in parts.chunks_exact(c * d) {
            out.iter_mut().zip(&part[b * CHUNK..]).for_each(|(o, &v)| *o += v as f64);
        }
    });
}

/// Stratified held-out split: each class's samples shuffled (one seeded stream, classes in
/// order), the first `round(holdout * count)` held out but at least one kept. Both parts come
/// back in ascending row order.
///
/// # Shapes
/// `y` `[n]` dense class indices -> (fit rows, held-out rows).
fn split(y: &[u32], c: usize, holdout: f32, seed: u64) -> Result<(Vec<usize>, Vec<usize>)> {
    let mut by_class = vec![Vec::new(); c];
    y.iter().enumerate().for_each(|(i, &l)| by_class[l as usize].push(i));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut fit, mut hold) = (Vec::with_capacity(y.len()), Vec::new());
    for rows in &mut by_class {
        rows.shuffle(&mut rng);
        let k = ((holdout as f64 * rows.len() as f64).round() as usize).min(rows.len() - 1);
        hold.extend_from_slice(&rows[..k]);
        fit.extend_from_slice(&rows[k..]);
    }
    if hold.is_empty() {
        let msg = format!("holds out no sample of the {} train samples (each class keeps at least one for fitting)", y.len());
        return Err(Error::config("holdout", holdout, msg));
    }
    fit.sort_unstable();
    hold.sort_unstable();
    Ok((fit, hold))
}

/// The distinct train labels, ascending: class `k` of the probe is label `classes[k]`. At least
/// two are required.
fn dense_classes(labels: &[u32]) -> Result<Vec<u32>> {
    let mut classes = labels.to_vec();
    classes.sort_unstable();
    classes.dedup();
    if classes.len() < 2 {
        return Err(Error::shape("linear-probe train labels", "at least 2 distinct classes", format!("only class {}", classes[0])));
    }
    Ok(classes)
}

fn check_cfg(cfg: &LinearConfig) -> Result<()> {
    for (field, v) in [("max_iter", cfg.max_iter), ("history", cfg.history), ("threads", cfg.threads)] {
        if v == 0 {
            return Err(Error::config(field, 0, "must be at least 1"));
        }
    }
    if !(cfg.tol >= 0.0 && cfg.tol.is_finite()) {
        return Err(Error::config("tol", cfg.tol, "must be a finite number >= 0"));
    }
    Ok(())
}

fn check_weight_decay(wd: f32) -> Result<()> {
    if !(wd > 0.0 && wd.is_finite()) {
        // Without a positive decay the optimum need not exist (separable data): W grows forever.
        return Err(Error::config("weight_decays", wd, "every weight decay must be a positive finite number"));
    }
    Ok(())
}

fn check_features(what: &str, m: &Matrix) -> Result<()> {
    if m.rows == 0 || m.cols == 0 {
        return Err(Error::shape(format!("linear-probe {what} features"), "at least one row and one column", format!("{} x {}", m.rows, m.cols)));
    }
    Ok(())
}

fn check_finite(what: &str, m: &Matrix) -> Result<()> {
    match m.data.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::config(what, m.data[i], format!("row {}, column {} is not finite", i / m.cols, i % m.cols))),
    }
}

/// Validation shared by [`fit_logistic`] and [`logistic_objective`].
fn check_problem(x: &Matrix, y: &[u32], c: usize, init: Option<(&[f32], &[f32])>) -> Result<()> {
    check_features("train", x)?;
    if y.len() != x.rows {
        return Err(Error::shape("logistic-regression labels", format!("{} (one per row)", x.rows), y.len()));
    }
    if c < 2 {
        return Err(Error::config("num_classes", c, "must be at least 2"));
    }
    let mut count = vec![0usize; c];
    for &l in y {
        match count.get_mut(l as usize) {
            Some(n) => *n += 1,
            None => return Err(Error::config("num_classes", c, format!("label {l} is not below it"))),
        }
    }
    if let Some(k) = count.iter().position(|&n| n == 0) {
        return Err(Error::config("num_classes", c, format!("class {k} has no sample (its bias would fall without end)")));
    }
    if let Some((w, b)) = init {
        if w.len() != x.cols * c {
            return Err(Error::shape("logistic-regression weights", format!("{} x {c} = {}", x.cols, x.cols * c), w.len()));
        }
        if b.len() != c {
            return Err(Error::shape("logistic-regression bias", c, b.len()));
        }
    }
    Ok(())
}

fn pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().map_err(|e| Error::config("threads", threads, e.to_string()))
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

fn sq(a: &[f64]) -> f64 {
    dot(a, a)
}

fn inf_norm(a: &[f64]) -> f64 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}
