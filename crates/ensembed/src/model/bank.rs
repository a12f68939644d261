//! The memory bank: one learned vector per sample and its Adam state, in the two semantics of
//! METHOD.md. `Dense` reproduces the paper's PyTorch code, where the whole bank is one
//! parameter: every step moves every row from its decaying moments, even rows outside the batch.
//! `Lazy` keeps a step count per row and moves only the rows in the batch, so a row's trajectory
//! depends on nothing but its own gradients.

use rayon::prelude::*;

use crate::config::BankMode;
use crate::matrix::Matrix;
use crate::model::adam::AdamParams;

/// Learned representations plus their optimiser state.
#[derive(Clone, Debug)]
pub struct Bank {
    pub repr: Matrix,
    m: Vec<f32>,
    v: Vec<f32>,
    mode: BankMode,
    /// Dense: the global step count. Lazy: unused.
    t: u64,
    /// Lazy: each row's step count.
    row_steps: Vec<u32>,
    /// Dense: the row's position in the current batch, or `u32::MAX`.
    slot: Vec<u32>,
}

/// Rows per rayon task in the dense update.
const ROWS_PER_TASK: usize = 64;

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
            slot: if mode == BankMode::Dense { vec![u32::MAX; n] } else { Vec::new() },
        }
    }

    /// Gathers the rows `idx` into `out`.
    ///
    /// # Shapes
    /// `out`: `[idx.len(), d]`.
    pub fn gather(&self, idx: &[usize], out: &mut [f32]) {
        let d = self.repr.cols;
        for (o, &i) in out.chunks_exact_mut(d).zip(idx) {
            o.copy_from_slice(self.repr.row(i));
        }
    }

    /// One optimiser step with gradient `grad` for the rows `idx` (all other rows have zero
    /// gradient).
    ///
    /// # Shapes
    /// `grad`: `[idx.len(), d]`.
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
                }
            }
            BankMode::Dense => {
                self.t += 1;
                let c = hp.consts(self.t);
                for (pos, &i) in idx.iter().enumerate() {
                    self.slot[i] = pos as u32;
                }
                let slot = &self.slot;
                let task = ROWS_PER_TASK * d;
                self.repr
                    .data
                    .par_chunks_mut(task)
                    .zip(self.m.par_chunks_mut(task))
                    .zip(self.v.par_chunks_mut(task))
                    .enumerate()
                    .for_each(|(t, ((p, m), v))| {
                        for r in 0..p.len() / d {
                            let s = slot[t * ROWS_PER_TASK + r];
                            let (p, m, v) = (&mut p[r * d..(r + 1) * d], &mut m[r * d..(r + 1) * d], &mut v[r * d..(r + 1) * d]);
                            if s == u32::MAX {
                                for k in 0..d {
                                    hp.update(c, &mut p[k], 0.0, &mut m[k], &mut v[k]);
                                }
                            } else {
                                let g = &grad[s as usize * d..(s as usize + 1) * d];
                                for k in 0..d {
                                    hp.update(c, &mut p[k], g[k], &mut m[k], &mut v[k]);
                                }
                            }
                        }
                    });
                for &i in idx {
                    self.slot[i] = u32::MAX;
                }
            }
        }
    }

    /// Optimiser state for checkpoints: moments, global step count (dense) and per-row step
    /// counts (lazy).
    pub fn parts(&self) -> (&[f32], &[f32], u64, &[u32]) {
        (&self.m, &self.v, self.t, &self.row_steps)
    }

    /// A bank restored from [`Bank::parts`].
    pub fn from_parts(repr: Matrix, m: Vec<f32>, v: Vec<f32>, t: u64, row_steps: Vec<u32>, mode: BankMode) -> Self {
        let mut bank = Bank::new(repr, mode);
        assert_eq!(m.len(), bank.m.len());
        assert_eq!(v.len(), bank.v.len());
        bank.m = m;
        bank.v = v;
        bank.t = t;
        if mode == BankMode::Lazy {
            assert_eq!(row_steps.len(), bank.row_steps.len());
            bank.row_steps = row_steps;
        }
        bank
    }

    /// The bank's semantics.
    pub fn mode(&self) -> BankMode {
        self.mode
    }

    /// The learned representations.
    pub fn into_repr(self) -> Matrix {
        self.repr
    }
}
