//! Training: fits the per-backbone MLPs and the training set's representations together, by
//! Adam on the cosine objective, with the paper's warm-up (only the MLPs learn during the first
//! half of the epochs) and the bank semantics chosen in the config.

use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
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
        nonneg: cfg.nonneg,
    }
}

/// Everything a fit carries from one epoch to the next: enough to continue bit for bit after
/// an interruption (see [`crate::checkpoint`]).
pub struct FitState {
    pub model: EnsembleModel,
    /// Adam state of each MLP's (weight, bias) per layer.
    pub adams: Vec<Vec<(Adam, Adam)>>,
    pub bank: Bank,
    /// The sample order of the last epoch (each epoch shuffles the previous one).
    pub order: Vec<usize>,
    pub shuffle: ChaCha8Rng,
    /// One entry per finished epoch.
    pub history: Vec<EpochStats>,
}

impl FitState {
    /// The state before the first epoch: initialised MLPs, representations at their baseline.
    pub fn new(feats: &dyn FeatureSet, cfg: &FitConfig) -> Result<Self> {
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
        let model = EnsembleModel::init(spec, projection, cfg.last_bias, cfg.seed);
        let bank = Bank::new(model.initial_representations(feats, &all, threads)?, cfg.bank).with_nonneg(model.spec.nonneg);
        let adams = model
            .mlps
            .iter()
            .map(|m| m.layers.iter().map(|l| (Adam::new(l.weight.len()), Adam::new(l.bias.len()))).collect())
            .collect();
        Ok(FitState { model, adams, bank, order: all, shuffle: stream(cfg.seed, Purpose::Shuffle), history: Vec::new() })
    }

    /// Epochs already done.
    pub fn epochs_done(&self) -> usize {
        self.history.len()
    }
}

/// Fits MLPs and representations on every sample of `feats`.
pub fn fit(feats: &dyn FeatureSet, cfg: &FitConfig, progress: &dyn Progress) -> Result<FitOutput> {
    let state = FitState::new(feats, cfg)?;
    fit_from(feats, cfg, state, progress, &mut |_| Ok(()))
}

/// Runs the epochs of `cfg` that `state` has not done yet, calling `after_epoch` with the state
/// after each one (the CLI writes a checkpoint there). Starting from [`FitState::new`] or from a
/// restored checkpoint gives byte-identical results.
pub fn fit_from(
    feats: &dyn FeatureSet,
    cfg: &FitConfig,
    mut state: FitState,
    progress: &dyn Progress,
    after_epoch: &mut dyn FnMut(&FitState) -> Result<()>,
) -> Result<FitOutput> {
    cfg.validate()?;
    let n = feats.len();
    if state.bank.rows() != n || state.order.len() != n {
        return Err(Error::shape("samples of the fit state", state.bank.rows(), n));
    }
    state.model.check_features(feats)?;
    let threads = rayon::current_num_threads();
    let mlp_hp = AdamParams { lr: cfg.lr, beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps, weight_decay: cfg.weight_decay };
    let bank_hp = AdamParams { lr: cfg.bank_lr(), weight_decay: 0.0, ..mlp_hp };
    let mut grads: Vec<MlpGrads> = state.model.mlps.iter().map(|m| m.zero_grads()).collect();
    let batch = cfg.batch.min(n);
    let mut ws = Workspace::new(&state.model, batch);
    let m = state.model.mlps.len();
    let d = state.model.spec.dim;
    let steps_per_epoch = n.div_ceil(batch);
    let warmup = cfg.warmup_epochs();
    progress.start("fit", (cfg.epochs * steps_per_epoch) as u64);
    progress.advance((state.epochs_done() * steps_per_epoch) as u64);
    for epoch in state.epochs_done()..cfg.epochs {
        let FitState { model, adams, bank, order, shuffle, history } = &mut state;
        order.shuffle(shuffle);
        let learn_bank = epoch >= warmup;
        let mut total = 0.0;
        for (step, idx) in order.chunks(batch).enumerate() {
            let b = idx.len();
            bank.gather(idx, &mut ws.input[..b * d]);
            let scale = 1.0 / (b * m) as f32;
            let loss = ws.run(model, feats, idx, scale, Some(&mut grads), learn_bank, threads);
            if !loss.is_finite() {
                return Err(Error::Diverged { epoch, step, value: loss as f32, lr: cfg.lr });
            }
            total += loss;
            for ((mlp, g), opt) in model.mlps.iter_mut().zip(&grads).zip(adams.iter_mut()) {
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
        // The dense bank defers the zero-gradient steps of rows outside each batch; the
        // checkpoint after the epoch needs every row current.
        bank.flush();
        let loss = total / (n * m) as f64;
        progress.message(&format!("epoch {}/{} loss {loss:.5}", epoch + 1, cfg.epochs));
        history.push(EpochStats { epoch, loss, bank_learning: learn_bank });
        after_epoch(&state)?;
    }
    progress.finish();
    Ok(FitOutput { model: state.model, representations: state.bank.into_repr(), history: state.history })
}
