//! Training: fits the per-backbone MLPs and the training set's representations together, by
//! Adam on the cosine objective, with the paper's warm-up (only the MLPs learn during the first
//! half of the epochs) and the bank semantics chosen in the config.

use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::config::FitConfig;
use crate::error::{Error, Result};
use crate::features::FeatureSet;
use crate::matrix::Matrix;
use crate::model::adam::{Adam, AdamParams};
use crate::model::bank::Bank;
use crate::model::mlp::MlpGrads;
use crate::model::{BackboneSpec, EnsembleModel, ModelSpec};
use crate::objective::Workspace;
use crate::pca::fit_pca;
use crate::progress::Progress;
use crate::rng::{stream, Purpose};

/// What one epoch did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    pub epoch: usize,
    /// Mean over rows and backbones of 1 - cos during the epoch.
    pub loss: f64,
    /// Whether the representations learned in this epoch (false during warm-up).
    pub bank_learning: bool,
}

/// The result of [`fit`].
#[derive(Clone, Debug)]
pub struct FitOutput {
    pub model: EnsembleModel,
    /// Learned training representations. `[n, dim]`
    pub representations: Matrix,
    pub history: Vec<EpochStats>,
}

/// The model shape `cfg` gives for backbones of widths `dims`.
pub fn model_spec(names: &[String], dims: &[usize], cfg: &FitConfig) -> ModelSpec {
    let dim = cfg.dim.unwrap_or_else(|| dims.iter().copied().max().unwrap_or(0));
    ModelSpec {
        backbones: names.iter().zip(dims).map(|(n, &d)| BackboneSpec { name: n.clone(), dim: d }).collect(),
        dim,
        hidden: cfg.hidden.unwrap_or(dim),
        depth: cfg.depth,
        final_relu: cfg.final_relu,
    }
}

/// Fits MLPs and representations on every sample of `feats`.
pub fn fit(feats: &dyn FeatureSet, cfg: &FitConfig, progress: &dyn Progress) -> Result<FitOutput> {
    cfg.validate()?;
    let n = feats.len();
    if n == 0 {
        return Err(Error::config("samples", 0, "fit needs at least one sample"));
    }
    let threads = rayon::current_num_threads();
    let spec = model_spec(&feats.names(), &feats.dims(), cfg);
    let all: Vec<usize> = (0..n).collect();
    let projection = if spec.uses_average_init() {
        None
    } else {
        let concat = crate::baseline::concat(feats);
        Some(fit_pca(&concat, spec.dim, &mut stream(cfg.seed, Purpose::Init(usize::MAX)), threads)?)
    };
    let mut model = EnsembleModel::init(spec, projection, cfg.last_bias, cfg.seed);
    let init = model.initial_representations(feats, &all, threads)?;
    let mut bank = Bank::new(init, cfg.bank);

    let mlp_hp = AdamParams { lr: cfg.lr, beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps, weight_decay: cfg.weight_decay };
    let bank_hp = AdamParams { lr: cfg.bank_lr(), weight_decay: 0.0, ..mlp_hp };
    let mut grads: Vec<MlpGrads> = model.mlps.iter().map(|m| m.zero_grads()).collect();
    let mut adams: Vec<Vec<(Adam, Adam)>> = model
        .mlps
        .iter()
        .map(|m| m.layers.iter().map(|l| (Adam::new(l.weight.len()), Adam::new(l.bias.len()))).collect())
        .collect();

    let batch = cfg.batch.min(n);
    let mut ws = Workspace::new(&model, batch);
    let m = model.mlps.len();
    let d = model.spec.dim;
    let mut order = all;
    let mut shuffle = stream(cfg.seed, Purpose::Shuffle);
    let steps_per_epoch = n.div_ceil(batch);
    let warmup = cfg.warmup_epochs();
    let mut history = Vec::with_capacity(cfg.epochs);
    progress.start("fit", (cfg.epochs * steps_per_epoch) as u64);
    for epoch in 0..cfg.epochs {
        order.shuffle(&mut shuffle);
        let learn_bank = epoch >= warmup;
        let mut total = 0.0;
        for (step, idx) in order.chunks(batch).enumerate() {
            let b = idx.len();
            bank.gather(idx, &mut ws.input[..b * d]);
            let scale = 1.0 / (b * m) as f32;
            let loss = ws.run(&model, feats, idx, scale, Some(&mut grads), learn_bank, threads);
            if !loss.is_finite() {
                return Err(Error::Diverged { epoch, step, value: loss as f32, lr: cfg.lr });
            }
            total += loss;
            for ((mlp, g), opt) in model.mlps.iter_mut().zip(&grads).zip(&mut adams) {
                for (l, layer) in mlp.layers.iter_mut().enumerate() {
                    opt[l].0.step(&mlp_hp, &mut layer.weight, &g.weight[l]);
                    opt[l].1.step(&mlp_hp, &mut layer.bias, &g.bias[l]);
                }
            }
            if learn_bank {
                bank.step(&bank_hp, idx, &ws.input_grad[..b * d]);
            }
            progress.advance(1);
        }
        let loss = total / (n * m) as f64;
        progress.message(&format!("epoch {}/{} loss {loss:.5}", epoch + 1, cfg.epochs));
        history.push(EpochStats { epoch, loss, bank_learning: learn_bank });
    }
    progress.finish();
    Ok(FitOutput { model, representations: bank.into_repr(), history })
}
