//! Inference: learns representations of new samples through frozen MLPs (the paper's
//! "gradient descent at inference time"). Only the model is needed from training.
//!
//! With the `lazy` bank every row is optimised independently of every other, so the rows are
//! processed one batch-sized chunk at a time, all epochs on a chunk before the next: the same
//! result as epoch-major order, a working set that stays in cache, and a stream over stores of
//! any size. The loss is scaled by the configured batch size rather than the chunk's, so a
//! row's embedding does not depend on which rows share its call. The `dense` bank couples all
//! rows (every step moves every row), so it runs epoch-major over the whole set as in training.

use rand::seq::SliceRandom;

use crate::config::{BankMode, EmbedConfig};
use crate::error::{Error, Result};
use crate::features::FeatureSet;
use crate::matrix::Matrix;
use crate::model::adam::AdamParams;
use crate::model::bank::Bank;
use crate::model::EnsembleModel;
use crate::objective::Workspace;
use crate::progress::Progress;
use crate::rng::{stream, Purpose};

/// The result of [`embed`].
#[derive(Clone, Debug)]
pub struct EmbedOutput {
    /// Learned representations. `[n, dim]`
    pub representations: Matrix,
    /// Mean 1 - cos over rows and backbones, per epoch.
    pub history: Vec<f64>,
}

/// Learns a representation for every sample of `feats` through the frozen MLPs of `model`.
pub fn embed(model: &EnsembleModel, feats: &dyn FeatureSet, cfg: &EmbedConfig, progress: &dyn Progress) -> Result<EmbedOutput> {
    cfg.validate()?;
    model.check_features(feats)?;
    let n = feats.len();
    let threads = rayon::current_num_threads();
    let hp = AdamParams { lr: cfg.lr, beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps, weight_decay: 0.0 };
    let (m, d) = (model.mlps.len(), model.spec.dim);
    let batch = cfg.batch.min(n.max(1));
    let mut ws = Workspace::new(model, batch);
    let mut losses = vec![0.0f64; cfg.epochs];
    let steps = cfg.epochs * n.div_ceil(batch);
    progress.start("embed", steps as u64);
    let check = |loss: f64, epoch: usize, step: usize| {
        if loss.is_finite() {
            Ok(())
        } else {
            Err(Error::Diverged { epoch, step, value: loss as f32, lr: cfg.lr })
        }
    };
    let representations = match cfg.bank {
        BankMode::Lazy => {
            let mut out = Matrix::zeros(n, d);
            let scale = 1.0 / (cfg.batch * m) as f32;
            let rows: Vec<usize> = (0..n).collect();
            for (c, idx) in rows.chunks(batch).enumerate() {
                let b = idx.len();
                let mut bank = Bank::new(model.initial_representations(feats, idx, threads)?, BankMode::Lazy);
                let local: Vec<usize> = (0..b).collect();
                for (epoch, total) in losses.iter_mut().enumerate() {
                    bank.gather(&local, &mut ws.input[..b * d]);
                    let loss = ws.run(model, feats, idx, scale, None, true, threads);
                    check(loss, epoch, c)?;
                    *total += loss;
                    bank.step(&hp, &local, &ws.input_grad[..b * d]);
                    progress.advance(1);
                }
                out.data[idx[0] * d..(idx[0] + b) * d].copy_from_slice(&bank.repr.data);
            }
            out
        }
        BankMode::Dense => {
            let mut order: Vec<usize> = (0..n).collect();
            let mut bank = Bank::new(model.initial_representations(feats, &order, threads)?, BankMode::Dense);
            let mut shuffle = stream(cfg.seed, Purpose::Shuffle);
            for (epoch, total) in losses.iter_mut().enumerate() {
                order.shuffle(&mut shuffle);
                for (step, idx) in order.chunks(batch).enumerate() {
                    let b = idx.len();
                    bank.gather(idx, &mut ws.input[..b * d]);
                    let loss = ws.run(model, feats, idx, 1.0 / (b * m) as f32, None, true, threads);
                    check(loss, epoch, step)?;
                    *total += loss;
                    bank.step(&hp, idx, &ws.input_grad[..b * d]);
                    progress.advance(1);
                }
            }
            bank.into_repr()
        }
    };
    progress.finish();
    let history = losses.iter().map(|l| l / (n * m).max(1) as f64).collect();
    Ok(EmbedOutput { representations, history })
}
