//! Inference: learns representations of new samples through frozen MLPs (the paper's
//! "gradient descent at inference time"). Only the model is needed from training.
//!
//! With the `lazy` bank every row is optimised independently of every other, so the rows are
//! processed one batch-sized chunk at a time, all epochs on a chunk before the next: the same
//! result as epoch-major order, a working set that stays in cache, and a stream over stores of
//! any size ([`embed_lazy_rows`] hands the rows out chunk by chunk, so that `ensembed embed`
//! writes them to disk as they come and holds one chunk, not the whole result, and can resume
//! where a killed run stopped). The loss is scaled by the configured batch size rather than the
//! chunk's, so a row's embedding does not depend on which rows share its call. The `dense` bank
//! couples all rows (every step moves every row), so it runs epoch-major over the whole set as
//! in training.

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
    let (m, d) = (model.mlps.len(), model.spec.dim);
    let mut losses = vec![0.0f64; cfg.epochs];
    if cfg.bank == BankMode::Lazy {
        let mut out = Matrix::zeros(n, d);
        // Chunks of one batch: the stream's buffer adds only a batch to `out`.
        embed_lazy_rows(model, feats, cfg, 0, &mut losses, 1, progress, &mut |first, rows, _| {
            out.data[first * d..first * d + rows.len()].copy_from_slice(rows);
            Ok(())
        })?;
        return Ok(EmbedOutput { representations: out, history: loss_history(&losses, n, m) });
    }
    let threads = rayon::current_num_threads();
    let hp = AdamParams { lr: cfg.lr, beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps, weight_decay: 0.0 };
    let batch = cfg.batch.min(n.max(1));
    let mut ws = Workspace::new(model, batch);
    progress.start("embed", (cfg.epochs * n.div_ceil(batch)) as u64);
    let mut order: Vec<usize> = (0..n).collect();
    let mut bank = Bank::new(model.initial_representations(feats, &order, threads)?, BankMode::Dense).with_nonneg(model.spec.nonneg);
    let mut shuffle = stream(cfg.seed, Purpose::Shuffle);
    for (epoch, total) in losses.iter_mut().enumerate() {
        order.shuffle(&mut shuffle);
        for (step, idx) in order.chunks(batch).enumerate() {
            let b = idx.len();
            bank.gather(idx, &mut ws.input[..b * d]);
            let loss = ws.run(model, feats, idx, 1.0 / (b * m) as f32, None, true, threads);
            if !loss.is_finite() {
                return Err(Error::Diverged { epoch, step, value: loss as f32, lr: cfg.lr });
            }
            *total += loss;
            bank.step(&hp, idx, &ws.input_grad[..b * d]);
            progress.advance(1);
        }
    }
    progress.finish();
    Ok(EmbedOutput { representations: bank.into_repr(), history: loss_history(&losses, n, m) })
}

/// The per-epoch mean loss from the per-epoch sums that [`embed_lazy_rows`] keeps, for `n`
/// rows and `m` backbones.
pub fn loss_history(sums: &[f64], n: usize, m: usize) -> Vec<f64> {
    sums.iter().map(|l| l / (n * m).max(1) as f64).collect()
}

/// Lazy-bank inference as a stream, for stores larger than memory: embeds rows `start..n` of
/// `feats` one batch at a time (all epochs on a batch before the next, as [`embed`] does) and
/// hands them to `sink` in chunks of about `chunk_rows` rows (rounded up to whole batches), with
/// the first row's index and the per-epoch loss sums of every row so far. `losses` holds those
/// sums on entry (zeros, or what an interrupted run had reached at `start`, which must be a
/// multiple of the batch) and on return. Only one chunk of results is held; the output is
/// byte-identical to [`embed`]'s for any chunk size and any restart point (tested).
///
/// # Shapes
/// `losses`: `[cfg.epochs]`; `sink` gets `[k, dim]` rows, k a multiple of the batch except at
/// the end.
#[allow(clippy::too_many_arguments)]
pub fn embed_lazy_rows(
    model: &EnsembleModel,
    feats: &dyn FeatureSet,
    cfg: &EmbedConfig,
    start: usize,
    losses: &mut [f64],
    chunk_rows: usize,
    progress: &dyn Progress,
    sink: &mut dyn FnMut(usize, &[f32], &[f64]) -> Result<()>,
) -> Result<()> {
    cfg.validate()?;
    model.check_features(feats)?;
    if cfg.bank != BankMode::Lazy {
        return Err(Error::config("bank", "dense", "streamed inference needs the lazy bank: the dense one couples every row"));
    }
    if losses.len() != cfg.epochs {
        return Err(Error::shape("loss sums of a streamed embedding (one per epoch)", cfg.epochs, losses.len()));
    }
    let n = feats.len();
    let threads = rayon::current_num_threads();
    let hp = AdamParams { lr: cfg.lr, beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps, weight_decay: 0.0 };
    let (m, d) = (model.mlps.len(), model.spec.dim);
    let batch = cfg.batch.min(n.max(1));
    if start > n || (start % batch != 0 && start != n) {
        return Err(Error::config("start row", start, format!("must be a multiple of the batch ({batch}) within the {n} rows, or {n}")));
    }
    let chunk = chunk_rows.max(1).div_ceil(batch) * batch;
    let mut ws = Workspace::new(model, batch);
    let scale = 1.0 / (cfg.batch * m) as f32;
    progress.start("embed", (cfg.epochs * n.div_ceil(batch)) as u64);
    progress.advance((cfg.epochs * (start / batch)) as u64);
    let mut out = vec![0.0f32; chunk.min(n - start) * d];
    let rows: Vec<usize> = (0..n).collect();
    for first in (start..n).step_by(chunk) {
        let end = (first + chunk).min(n);
        for idx in rows[first..end].chunks(batch) {
            let (b, c) = (idx.len(), idx[0] / batch);
            let mut bank = Bank::new(model.initial_representations(feats, idx, threads)?, BankMode::Lazy).with_nonneg(model.spec.nonneg);
            let local: Vec<usize> = (0..b).collect();
            for (epoch, total) in losses.iter_mut().enumerate() {
                bank.gather(&local, &mut ws.input[..b * d]);
                let loss = ws.run(model, feats, idx, scale, None, true, threads);
                if !loss.is_finite() {
                    return Err(Error::Diverged { epoch, step: c, value: loss as f32, lr: cfg.lr });
                }
                *total += loss;
                bank.step(&hp, &local, &ws.input_grad[..b * d]);
                progress.advance(1);
            }
            let at = (idx[0] - first) * d;
            out[at..at + b * d].copy_from_slice(&bank.repr().data);
        }
        sink(first, &out[..(end - first) * d], losses)?;
    }
    progress.finish();
    Ok(())
}
