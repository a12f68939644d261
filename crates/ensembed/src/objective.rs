//! The objective both training and inference minimise, on one batch: the mean over rows i and
//! backbones j of 1 - cos(phi_j(psi_i), z_i^(j)), and its gradients with respect to the MLPs
//! (training only) and to the representations. The MLPs work feature-major (`model/mlp.rs`), so
//! the batch is transposed on the way in and its gradient on the way out; buffers are allocated
//! once for the largest batch.

use crate::features::FeatureSet;
use crate::kernels::transpose;
use crate::model::loss::cosine_loss_grad_cols;
use crate::model::mlp::{MlpGrads, Tape};
use crate::model::EnsembleModel;

/// Scratch for one batch of up to `capacity` rows.
pub struct Workspace {
    tapes: Vec<Tape>,
    /// Normalised targets, sample-major as gathered. `[capacity, max d_j]`
    gathered: Vec<f32>,
    /// Normalised targets of each backbone, feature-major. `[d_j, capacity]`
    targets: Vec<Vec<f32>>,
    /// The batch's representations, sample-major: the caller fills it. `[capacity, d]`
    pub input: Vec<f32>,
    /// d loss / d representation, sample-major. `[capacity, d]`
    pub input_grad: Vec<f32>,
    /// `input` and `input_grad` feature-major. `[d, capacity]`
    input_t: Vec<f32>,
    input_grad_t: Vec<f32>,
    dim: usize,
}

impl Workspace {
    /// Scratch sized for `model` and batches of up to `capacity` rows.
    pub fn new(model: &EnsembleModel, capacity: usize) -> Self {
        let max_d = model.spec.backbones.iter().map(|b| b.dim).max().unwrap_or(0);
        let d = model.spec.dim;
        Workspace {
            tapes: model.mlps.iter().map(|m| m.tape(capacity)).collect(),
            gathered: vec![0.0; capacity * max_d],
            targets: model.spec.backbones.iter().map(|b| vec![0.0; capacity * b.dim]).collect(),
            input: vec![0.0; capacity * d],
            input_grad: vec![0.0; capacity * d],
            input_t: vec![0.0; capacity * d],
            input_grad_t: vec![0.0; capacity * d],
            dim: d,
        }
    }

    /// Forward and backward on the rows `idx` of `feats`, whose current representations the
    /// caller has put in `input[..idx.len() * d]`. Gradients of `scale * sum_ij (1 - cos_ij)`
    /// go to `grads` (one per MLP, when given) and to `input_grad` (when `want_input_grad`).
    /// Returns the unscaled sum of `1 - cos` over rows and backbones.
    #[allow(clippy::too_many_arguments)]
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
        let (b, d) = (idx.len(), self.dim);
        transpose(&self.input[..b * d], b, d, &mut self.input_t[..b * d]);
        let xt = &self.input_t[..b * d];
        let mut total = 0.0;
        for (j, mlp) in model.mlps.iter().enumerate() {
            let dj = mlp.output_dim();
            let gathered = &mut self.gathered[..b * dj];
            feats.gather_normalized(j, idx, gathered);
            let zt = &mut self.targets[j][..b * dj];
            transpose(gathered, b, dj, zt);
            let tape = &mut self.tapes[j];
            mlp.forward(xt, b, tape, threads);
            let (out, grad) = mlp.output_and_grad(tape);
            total += cosine_loss_grad_cols(out, zt, b, scale, grad);
            let dxt = want_input_grad.then(|| &mut self.input_grad_t[..b * d]);
            mlp.backward(xt, tape, grads.as_deref_mut().map(|g| &mut g[j]), dxt, j > 0, threads);
        }
        if want_input_grad {
            transpose(&self.input_grad_t[..b * d], d, b, &mut self.input_grad[..b * d]);
        }
        total
    }
}
