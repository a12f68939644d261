//! The objective both training and inference minimise, on one batch: the mean over rows i and
//! backbones j of 1 - cos(phi_j(psi_i), z_i^(j)), and its gradients with respect to the MLPs
//! (training only) and to the representations. Buffers are allocated once for the largest batch.

use crate::features::FeatureSet;
use crate::model::loss::cosine_loss_grad;
use crate::model::mlp::{MlpGrads, Tape};
use crate::model::EnsembleModel;

/// Scratch for one batch of up to `capacity` rows.
pub struct Workspace {
    tapes: Vec<Tape>,
    /// Normalised targets of each backbone. `[capacity, d_j]`
    targets: Vec<Vec<f32>>,
    /// The batch's representations. `[capacity, d]`
    pub input: Vec<f32>,
    /// d loss / d representation. `[capacity, d]`
    pub input_grad: Vec<f32>,
    dim: usize,
}

impl Workspace {
    /// Scratch sized for `model` and batches of up to `capacity` rows.
    pub fn new(model: &EnsembleModel, capacity: usize) -> Self {
        Workspace {
            tapes: model.mlps.iter().map(|m| m.tape(capacity)).collect(),
            targets: model.spec.backbones.iter().map(|b| vec![0.0; capacity * b.dim]).collect(),
            input: vec![0.0; capacity * model.spec.dim],
            input_grad: vec![0.0; capacity * model.spec.dim],
            dim: model.spec.dim,
        }
    }

    /// Forward and backward on the rows `idx` of `feats`, whose current representations the
    /// caller has put in `input[..idx.len() * d]`. Gradients of `scale * sum_ij (1 - cos_ij)`
    /// go to `grads` (one per MLP, when given) and to `input_grad` (when `want_input_grad`).
    /// Returns the unscaled sum of `1 - cos` over rows and backbones.
    pub fn run(
        &mut self,
        model: &EnsembleModel,
        feats: &dyn FeatureSet,
        idx: &[usize],
        scale: f32,
        mut grads: Option<&mut [MlpGrads]>,
        want_input_grad: bool,
        threads: usize,
    ) -> f64 {
        let b = idx.len();
        let x = &self.input[..b * self.dim];
        let mut total = 0.0;
        for (j, mlp) in model.mlps.iter().enumerate() {
            let dj = mlp.output_dim();
            let z = &mut self.targets[j][..b * dj];
            feats.gather_normalized(j, idx, z);
            let tape = &mut self.tapes[j];
            mlp.forward(x, b, tape, threads);
            let (out, grad) = mlp.output_and_grad(tape);
            total += cosine_loss_grad(out, z, dj, scale, grad);
            let dx = want_input_grad.then(|| &mut self.input_grad[..b * self.dim]);
            mlp.backward(x, tape, grads.as_deref_mut().map(|g| &mut g[j]), dx, j > 0, threads);
        }
        total
    }
}
