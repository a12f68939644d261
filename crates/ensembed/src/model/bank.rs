//! The memory bank: one learned vector per sample and its Adam state, in the two semantics of
//! METHOD.md. `Dense` reproduces the paper's PyTorch code, where the whole bank is one
//! parameter: every step moves every row from its decaying moments, even rows outside the batch.
//! `Lazy` keeps a step count per row and moves only the rows in the batch, so a row's trajectory
//! depends on nothing but its own gradients.
//!
//! The dense semantics cost O(n d) arithmetic per step by definition, but not O(n d) memory
//! traffic: a row outside the batch takes a zero-gradient step whose outcome depends only on its
//! own state and the step's constants. So those steps are deferred and replayed, in order and
//! with the same arithmetic, when the row is next read ([`Bank::gather`]), stepped or flushed
//! ([`Bank::flush`]): the row's three vectors are then loaded once and run through all its
//! pending steps in registers, instead of streaming the whole bank (12 bytes per element each
//! way) through memory at every step. The results are bit-identical to stepping every row
//! eagerly (tested against an eager reference), because every element sees exactly the same
//! sequence of IEEE operations; at n = 200,000 x d = 2048 the eager version spent seconds per
//! step moving 10 GB through memory.
//!
//! A non-negative bank ([`Bank::with_nonneg`]) is projected gradient descent: every element is
//! clamped at 0 after every update, the deferred ones included (a row outside the batch still
//! moves, and may cross 0, in the dense semantics).

use rayon::prelude::*;

use crate::config::BankMode;
use crate::matrix::Matrix;
use crate::model::adam::{AdamParams, StepConsts};

/// Learned representations plus their optimiser state.
#[derive(Clone, Debug)]
pub struct Bank {
    repr: Matrix,
    m: Vec<f32>,
    v: Vec<f32>,
    mode: BankMode,
    /// Dense: the global step count. Lazy: unused.
    t: u64,
    /// Lazy: each row's step count.
    row_steps: Vec<u32>,
    /// Dense: the step each row is current at; its later steps (all zero-gradient for it) are
    /// still to be replayed.
    synced: Vec<u64>,
    /// Dense: the constants of steps `base + 1 ..= t`, the only ones a row can still be missing.
    consts: Vec<StepConsts>,
    /// Dense: the step every row was current at when `consts` was last emptied.
    base: u64,
    /// Dense: the hyper-parameters of the steps taken, which the deferred steps replay.
    hp: Option<AdamParams>,
    /// Clamp every element at 0 after every update.
    nonneg: bool,
}

/// Elements one kernel iteration carries through all of a row's pending steps: independent
/// lanes enough to hide the latency of the per-step chain (sqrt, divide) behind the others.
const LANES: usize = 64;

/// Rows per rayon task when flushing the whole bank.
const ROWS_PER_TASK: usize = 16;

impl Bank {
    /// A bank starting at `repr` with zero optimiser state.
    pub fn new(repr: Matrix, mode: BankMode) -> Self {
        let n = repr.rows;
        let len = repr.data.len();
        Bank {
            repr,
            m: vec![0.0; len],
            v: vec![0.0; len],
            mode,
            t: 0,
            row_steps: if mode == BankMode::Lazy { vec![0; n] } else { Vec::new() },
            synced: if mode == BankMode::Dense { vec![0; n] } else { Vec::new() },
            consts: Vec::new(),
            base: 0,
            hp: None,
            nonneg: false,
        }
    }

    /// The same bank, kept non-negative from its next step on when `on` (the starting rows
    /// are the caller's to make non-negative: [`crate::model::project_nonneg_unit`]).
    pub fn with_nonneg(mut self, on: bool) -> Self {
        self.nonneg = on;
        self
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.repr.rows
    }

    /// Gathers the rows `idx` into `out`, first bringing them up to the current step.
    ///
    /// # Shapes
    /// `out`: `[idx.len(), d]`.
    pub fn gather(&mut self, idx: &[usize], out: &mut [f32]) {
        if self.mode == BankMode::Dense {
            self.advance(idx, None);
        }
        let d = self.repr.cols;
        for (o, &i) in out.chunks_exact_mut(d).zip(idx) {
            o.copy_from_slice(self.repr.row(i));
        }
    }

    /// One optimiser step with gradient `grad` for the rows `idx` (all other rows have zero
    /// gradient). In the dense semantics the zero-gradient steps of the other rows are deferred
    /// (see the module documentation), which requires the same `hp` at every step.
    ///
    /// # Shapes
    /// `grad`: `[idx.len(), d]`.
    ///
    /// # Panics
    /// Dense: when `hp` differs from the earlier steps'.
    pub fn step(&mut self, hp: &AdamParams, idx: &[usize], grad: &[f32]) {
        let d = self.repr.cols;
        match self.mode {
            BankMode::Lazy => {
                for (g, &i) in grad.chunks_exact(d).zip(idx) {
                    self.row_steps[i] += 1;
                    let c = hp.consts(self.row_steps[i] as u64);
                    let r = i * d..(i + 1) * d;
                    let (p, m, v) = (&mut self.repr.data[r.clone()], &mut self.m[r.clone()], &mut self.v[r]);
                    for k in 0..d {
                        hp.update(c, &mut p[k], g[k], &mut m[k], &mut v[k]);
                    }
                    if self.nonneg {
                        clamp(p);
                    }
                }
            }
            BankMode::Dense => {
                match &self.hp {
                    None => self.hp = Some(*hp),
                    Some(old) => assert_eq!(
                        old, hp,
                        "the dense bank replays deferred steps with one set of hyper-parameters; they changed at step {}",
                        self.t + 1
                    ),
                }
                self.t += 1;
                self.consts.push(hp.consts(self.t));
                self.advance(idx, Some(grad));
            }
        }
    }

    /// Dense: brings every row up to the current step, so that [`Bank::repr`] and
    /// [`Bank::parts`] see the state an eager optimiser would hold. Lazy: nothing to do.
    pub fn flush(&mut self) {
        if self.mode != BankMode::Dense || self.synced.iter().all(|&s| s == self.t) {
            self.consts.clear();
            self.base = self.t;
            return;
        }
        let Some(hp) = self.hp else { unreachable!("rows behind the step count imply a step was taken") };
        let d = self.repr.cols;
        let (consts, base, t, nonneg) = (&self.consts, self.base, self.t, self.nonneg);
        let task = ROWS_PER_TASK * d;
        self.repr
            .data
            .par_chunks_mut(task)
            .zip(self.m.par_chunks_mut(task))
            .zip(self.v.par_chunks_mut(task))
            .zip(self.synced.par_chunks_mut(ROWS_PER_TASK))
            .for_each(|(((p, m), v), synced)| {
                for (r, s) in synced.iter_mut().enumerate() {
                    let rows = r * d..(r + 1) * d;
                    let pending = &consts[(*s - base) as usize..];
                    replay(&hp, nonneg, pending, None, &mut p[rows.clone()], &mut m[rows.clone()], &mut v[rows]);
                    *s = t;
                }
            });
        self.consts.clear();
        self.base = t;
    }

    /// Dense: replays the pending steps of the rows `idx`, the last one with gradient `grad`
    /// when given (the current step), otherwise all with zero gradient; the rows are then
    /// current. A row listed twice takes its last gradient, as a scatter into a dense gradient
    /// would.
    ///
    /// # Shapes
    /// `grad`: `[idx.len(), d]`.
    fn advance(&mut self, idx: &[usize], grad: Option<&[f32]>) {
        let Some(hp) = self.hp else { return };
        let (d, t, base) = (self.repr.cols, self.t, self.base);
        // Rows in increasing order, each once (its last position), so that disjoint mutable
        // slices of the three arrays can be handed to parallel tasks.
        let mut order: Vec<(usize, usize)> = idx.iter().enumerate().map(|(pos, &i)| (i, pos)).collect();
        order.sort_unstable();
        order.reverse();
        order.dedup_by_key(|&mut (i, _)| i);
        order.reverse();
        let mut work = Vec::with_capacity(order.len());
        let (mut p, mut m, mut v) = (&mut self.repr.data[..], &mut self.m[..], &mut self.v[..]);
        let mut start = 0;
        for &(i, pos) in &order {
            let skip = (i - start) * d;
            let (pr, rest) = std::mem::take(&mut p)[skip..].split_at_mut(d);
            p = rest;
            let (mr, rest) = std::mem::take(&mut m)[skip..].split_at_mut(d);
            m = rest;
            let (vr, rest) = std::mem::take(&mut v)[skip..].split_at_mut(d);
            v = rest;
            start = i + 1;
            let s = self.synced[i];
            if s < t {
                self.synced[i] = t;
                work.push((pr, mr, vr, pos, s));
            }
        }
        // With a gradient this is the current step: every row is exactly one step or more behind.
        let (consts, nonneg) = (&self.consts, self.nonneg);
        work.into_par_iter().with_max_len(4).for_each(|(p, m, v, pos, s)| {
            let from = (s - base) as usize;
            match grad {
                Some(g) => {
                    let last = consts.len() - 1;
                    let g = &g[pos * d..(pos + 1) * d];
                    replay(&hp, nonneg, &consts[from..last], Some((consts[last], g)), p, m, v);
                }
                _ => replay(&hp, nonneg, &consts[from..], None, p, m, v),
            }
        });
    }

    /// The learned representations, current to the last step.
    ///
    /// # Panics
    /// Dense: when steps have been taken since the last [`Bank::flush`].
    pub fn repr(&self) -> &Matrix {
        self.assert_flushed("repr");
        &self.repr
    }

    /// Optimiser state for checkpoints: moments, global step count (dense) and per-row step
    /// counts (lazy).
    ///
    /// # Panics
    /// Dense: when steps have been taken since the last [`Bank::flush`].
    pub fn parts(&self) -> (&[f32], &[f32], u64, &[u32]) {
        self.assert_flushed("parts");
        (&self.m, &self.v, self.t, &self.row_steps)
    }

    fn assert_flushed(&self, what: &str) {
        assert!(
            self.mode != BankMode::Dense || self.consts.is_empty(),
            "Bank::{what} after {} dense steps without a flush: rows would be stale",
            self.consts.len()
        );
    }

    /// A bank restored from [`Bank::parts`].
    pub fn from_parts(repr: Matrix, m: Vec<f32>, v: Vec<f32>, t: u64, row_steps: Vec<u32>, mode: BankMode) -> Self {
        let mut bank = Bank::new(repr, mode);
        assert_eq!(m.len(), bank.m.len());
        assert_eq!(v.len(), bank.v.len());
        bank.m = m;
        bank.v = v;
        bank.t = t;
        match mode {
            BankMode::Lazy => {
                assert_eq!(row_steps.len(), bank.row_steps.len());
                bank.row_steps = row_steps;
            }
            BankMode::Dense => {
                bank.synced.fill(t);
                bank.base = t;
            }
        }
        bank
    }

    /// The bank's semantics.
    pub fn mode(&self) -> BankMode {
        self.mode
    }

    /// Whether every step is clamped at 0.
    pub fn is_nonneg(&self) -> bool {
        self.nonneg
    }

    /// The learned representations, current to the last step.
    pub fn into_repr(mut self) -> Matrix {
        self.flush();
        self.repr
    }
}

/// Runs one row through `zero` (steps with zero gradient, in order) and then, when given, one
/// step with gradient `g` and constants `c`, exactly as that many [`AdamParams::update`] calls
/// per element would. Dispatches to the widest vector unit the CPU has; the arithmetic is the
/// same IEEE operations in every version (no fused multiply-add), so the bits are too. With
/// `nonneg` every step is followed by a clamp at 0.
///
/// # Shapes
/// `p`, `m`, `v`, `g`: `[d]`.
fn replay(hp: &AdamParams, nonneg: bool, zero: &[StepConsts], last: Option<(StepConsts, &[f32])>, p: &mut [f32], m: &mut [f32], v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU supports AVX-512F (checked just above).
            return unsafe { replay_avx512(hp, nonneg, zero, last, p, m, v) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { replay_avx2(hp, nonneg, zero, last, p, m, v) };
        }
    }
    replay_generic(hp, nonneg, zero, last, p, m, v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn replay_avx512(hp: &AdamParams, nonneg: bool, zero: &[StepConsts], last: Option<(StepConsts, &[f32])>, p: &mut [f32], m: &mut [f32], v: &mut [f32]) {
    replay_generic(hp, nonneg, zero, last, p, m, v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn replay_avx2(hp: &AdamParams, nonneg: bool, zero: &[StepConsts], last: Option<(StepConsts, &[f32])>, p: &mut [f32], m: &mut [f32], v: &mut [f32]) {
    replay_generic(hp, nonneg, zero, last, p, m, v)
}

/// Sets every negative element to 0 (the projection of projected gradient descent).
#[inline(always)]
fn clamp(p: &mut [f32]) {
    p.iter_mut().for_each(|x| *x = x.max(0.0));
}

/// The body of [`replay`]: `LANES` elements at a time held in local arrays (registers) through
/// every step, then stored once. The clamp sits after each step's lane loop, not inside it, so
/// that the update loop the unconstrained bank runs is the same code as before it existed.
#[inline(always)]
fn replay_generic(hp: &AdamParams, nonneg: bool, zero: &[StepConsts], last: Option<(StepConsts, &[f32])>, p: &mut [f32], m: &mut [f32], v: &mut [f32]) {
    let d = p.len();
    let full = d - d % LANES;
    for k0 in (0..full).step_by(LANES) {
        let mut pb: [f32; LANES] = p[k0..k0 + LANES].try_into().unwrap();
        let mut mb: [f32; LANES] = m[k0..k0 + LANES].try_into().unwrap();
        let mut vb: [f32; LANES] = v[k0..k0 + LANES].try_into().unwrap();
        for &c in zero {
            for l in 0..LANES {
                hp.update(c, &mut pb[l], 0.0, &mut mb[l], &mut vb[l]);
            }
            if nonneg {
                clamp(&mut pb);
            }
        }
        if let Some((c, g)) = last {
            let gb: &[f32; LANES] = g[k0..k0 + LANES].try_into().unwrap();
            for l in 0..LANES {
                hp.update(c, &mut pb[l], gb[l], &mut mb[l], &mut vb[l]);
            }
            if nonneg {
                clamp(&mut pb);
            }
        }
        p[k0..k0 + LANES].copy_from_slice(&pb);
        m[k0..k0 + LANES].copy_from_slice(&mb);
        v[k0..k0 + LANES].copy_from_slice(&vb);
    }
    for k in full..d {
        for &c in zero {
            hp.update(c, &mut p[k], 0.0, &mut m[k], &mut v[k]);
            if nonneg {
                p[k] = p[k].max(0.0);
            }
        }
        if let Some((c, g)) = last {
            hp.update(c, &mut p[k], g[k], &mut m[k], &mut v[k]);
            if nonneg {
                p[k] = p[k].max(0.0);
            }
        }
    }
}
