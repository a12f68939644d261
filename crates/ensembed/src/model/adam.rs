//! Adam exactly as PyTorch's `torch.optim.Adam` computes it (non-AMSGrad, L2 weight decay added
//! to the gradient), for the MLPs' dense parameters. The memory bank's two semantics build on
//! the same per-element rule in [`crate::model::bank`].

use rayon::prelude::*;

/// Adam's hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamParams {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

/// The step-dependent constants of one Adam step: `p -= step_size * m / (sqrt(v) / bc2_sqrt + eps)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StepConsts {
    pub step_size: f32,
    pub bc2_sqrt: f32,
}

impl AdamParams {
    /// The constants of step `t` (1-based), with the bias corrections in f64 as PyTorch does.
    pub(crate) fn consts(&self, t: u64) -> StepConsts {
        let bc1 = 1.0 - (self.beta1 as f64).powf(t as f64);
        let bc2 = 1.0 - (self.beta2 as f64).powf(t as f64);
        StepConsts {
            step_size: (self.lr as f64 / bc1) as f32,
            bc2_sqrt: bc2.sqrt() as f32,
        }
    }

    /// One Adam update of one element.
    #[inline(always)]
    pub(crate) fn update(&self, c: StepConsts, p: &mut f32, g: f32, m: &mut f32, v: &mut f32) {
        let g = if self.weight_decay != 0.0 { g + self.weight_decay * *p } else { g };
        *m += (g - *m) * (1.0 - self.beta1);
        *v = self.beta2 * *v + (1.0 - self.beta2) * g * g;
        *p -= c.step_size * *m / (v.sqrt() / c.bc2_sqrt + self.eps);
    }
}

/// Adam state of one dense parameter buffer.
#[derive(Clone, Debug)]
pub struct Adam {
    m: Vec<f32>,
    v: Vec<f32>,
    t: u64,
}

/// Elements per rayon task: large enough that scheduling is noise, small enough to use 2+ cores
/// on a 2048x2048 weight.
const CHUNK: usize = 1 << 16;

impl Adam {
    /// Zero state for a buffer of `len` parameters.
    pub fn new(len: usize) -> Self {
        Adam {
            m: vec![0.0; len],
            v: vec![0.0; len],
            t: 0,
        }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.t
    }

    /// The first and second moments and the step count (for checkpoints).
    pub fn parts(&self) -> (&[f32], &[f32], u64) {
        (&self.m, &self.v, self.t)
    }

    /// State restored from [`Adam::parts`].
    pub fn from_parts(m: Vec<f32>, v: Vec<f32>, t: u64) -> Self {
        assert_eq!(m.len(), v.len());
        Adam { m, v, t }
    }

    /// One step on `p` with gradient `g`.
    ///
    /// # Shapes
    /// `p`, `g`: `[len]`.
    pub fn step(&mut self, hp: &AdamParams, p: &mut [f32], g: &[f32]) {
        assert_eq!(p.len(), self.m.len());
        assert_eq!(g.len(), self.m.len());
        self.t += 1;
        let c = hp.consts(self.t);
        p.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .zip(self.m.par_chunks_mut(CHUNK))
            .zip(self.v.par_chunks_mut(CHUNK))
            .for_each(|(((p, g), m), v)| {
                for i in 0..p.len() {
                    hp.update(c, &mut p[i], g[i], &mut m[i], &mut v[i]);
                }
            });
    }
}
