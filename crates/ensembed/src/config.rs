//! The settings of fit and embed, with the defaults of `METHOD.md`. A config is saved as JSON
//! beside every model so that `embed` and anyone reading the model later see exactly how it was
//! made; `validate` turns every out-of-range value into an error that names it.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How the memory bank (one learned vector per sample) is optimised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BankMode {
    /// The paper's PyTorch behaviour: the bank is one parameter in one Adam, so every step moves
    /// every row from its moments, also rows outside the batch. O(n d) per step.
    Dense,
    /// Per-row Adam state and step count; only rows in the batch move (like `SparseAdam`).
    Lazy,
}

/// Initialisation of the last layer's bias of every MLP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BiasInit {
    /// PyTorch `nn.Linear`: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    Torch,
    /// Zero, so that no output unit starts dead behind the final ReLU.
    Zero,
}

/// A named set of fit defaults. `Paper` is METHOD.md exactly (what [`FitConfig::default`]
/// returns); `Ensembed` changes the knobs that the full-scale CIFAR-10 measurements in the
/// README found to help. Flags given on top of a preset override it field by field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Paper,
    Ensembed,
}

impl Preset {
    /// The preset used when none is named.
    pub const DEFAULT: Preset = Preset::Paper;

    /// The fit settings of this preset.
    pub fn config(self) -> FitConfig {
        match self {
            Preset::Paper => FitConfig::default(),
            Preset::Ensembed => FitConfig {
                lr: 1e-3,
                bank: BankMode::Lazy,
                last_bias: BiasInit::Zero,
                ..FitConfig::default()
            },
        }
    }
}

/// Settings of `fit`. Defaults: METHOD.md.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FitConfig {
    /// Passes over the training set.
    pub epochs: usize,
    /// Samples per optimiser step.
    pub batch: usize,
    /// Adam learning rate of the MLPs.
    pub lr: f32,
    /// Adam learning rate of the memory bank; `None` means `lr`.
    pub lr_bank: Option<f32>,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// L2 penalty added to the MLPs' gradients (PyTorch `Adam(weight_decay=...)`).
    pub weight_decay: f32,
    /// Linear layers per MLP (1..=8).
    pub depth: usize,
    /// Width of the hidden layers; `None` means the representation dimension.
    pub hidden: Option<usize>,
    /// Representation dimension; `None` means the largest backbone dimension.
    pub dim: Option<usize>,
    pub bank: BankMode,
    /// Epochs at the start during which only the MLPs learn; `None` means `epochs / 2`.
    pub warmup: Option<usize>,
    /// ReLU after the last layer too (the targets are post-ReLU features).
    pub final_relu: bool,
    pub last_bias: BiasInit,
    pub seed: u64,
    /// Keep every representation entry >= 0 (projected gradient: the initial representations
    /// are projected onto the non-negative unit sphere, every bank step is clamped at 0), the
    /// paper's like-for-like variant for its singular-value figure (section 5, Figure 11).
    /// Left out of the JSON when off, so configs written before it existed read the same.
    #[serde(skip_serializing_if = "is_false")]
    pub nonneg: bool,
}

/// For `skip_serializing_if`: a flag that is off is not written.
pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            epochs: 50,
            batch: 256,
            lr: 3e-4,
            lr_bank: None,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            depth: 2,
            hidden: None,
            dim: None,
            bank: BankMode::Dense,
            warmup: None,
            final_relu: true,
            last_bias: BiasInit::Torch,
            seed: 0,
            nonneg: false,
        }
    }
}

impl FitConfig {
    /// The warm-up length in epochs.
    pub fn warmup_epochs(&self) -> usize {
        self.warmup.unwrap_or(self.epochs / 2)
    }

    /// The memory bank's learning rate.
    pub fn bank_lr(&self) -> f32 {
        self.lr_bank.unwrap_or(self.lr)
    }

    /// Checks every setting, naming the first one out of range.
    pub fn validate(&self) -> Result<()> {
        check_common(self.epochs, self.batch, self.lr, self.beta1, self.beta2, self.eps)?;
        if let Some(l) = self.lr_bank {
            positive("lr_bank", l)?;
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(Error::config("weight_decay", self.weight_decay, "must be finite and >= 0"));
        }
        if !(1..=8).contains(&self.depth) {
            return Err(Error::config("depth", self.depth, "must be between 1 and 8"));
        }
        if self.hidden == Some(0) {
            return Err(Error::config("hidden", 0, "must be at least 1"));
        }
        if self.dim == Some(0) {
            return Err(Error::config("dim", 0, "must be at least 1"));
        }
        if self.warmup_epochs() > self.epochs {
            return Err(Error::config(
                "warmup",
                self.warmup_epochs(),
                format!("must not exceed epochs ({})", self.epochs),
            ));
        }
        Ok(())
    }
}

/// Field-by-field changes to a [`FitConfig`]; `None` keeps the base value. The CLI's flags and
/// the Python keyword arguments both become one of these, so "flags over defaults" and "flags
/// over a transferred model's settings" mean the same thing everywhere.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FitOverrides {
    pub epochs: Option<usize>,
    pub batch: Option<usize>,
    pub lr: Option<f32>,
    pub lr_bank: Option<f32>,
    pub weight_decay: Option<f32>,
    pub depth: Option<usize>,
    pub hidden: Option<usize>,
    pub dim: Option<usize>,
    pub bank: Option<BankMode>,
    pub warmup: Option<usize>,
    pub final_relu: Option<bool>,
    pub last_bias: Option<BiasInit>,
    pub seed: Option<u64>,
    pub nonneg: Option<bool>,
}

impl FitOverrides {
    /// `base` with every given field replaced, validated.
    pub fn apply(&self, base: &FitConfig) -> Result<FitConfig> {
        let d = base.clone();
        let cfg = FitConfig {
            epochs: self.epochs.unwrap_or(d.epochs),
            batch: self.batch.unwrap_or(d.batch),
            lr: self.lr.unwrap_or(d.lr),
            lr_bank: self.lr_bank.or(d.lr_bank),
            weight_decay: self.weight_decay.unwrap_or(d.weight_decay),
            depth: self.depth.unwrap_or(d.depth),
            hidden: self.hidden.or(d.hidden),
            dim: self.dim.or(d.dim),
            bank: self.bank.unwrap_or(d.bank),
            warmup: self.warmup.or(d.warmup),
            final_relu: self.final_relu.unwrap_or(d.final_relu),
            last_bias: self.last_bias.unwrap_or(d.last_bias),
            seed: self.seed.unwrap_or(d.seed),
            nonneg: self.nonneg.unwrap_or(d.nonneg),
            ..d
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Settings of `embed` (inference through frozen MLPs). Defaults: the same optimiser and number
/// of epochs as training (METHOD.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedConfig {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub bank: BankMode,
    pub seed: u64,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        EmbedConfig::from_fit(&FitConfig::default())
    }
}

impl EmbedConfig {
    /// The inference settings that mirror a training run.
    pub fn from_fit(fit: &FitConfig) -> Self {
        EmbedConfig {
            epochs: fit.epochs,
            batch: fit.batch,
            lr: fit.bank_lr(),
            beta1: fit.beta1,
            beta2: fit.beta2,
            eps: fit.eps,
            bank: fit.bank,
            seed: fit.seed,
        }
    }

    /// Checks every setting, naming the first one out of range.
    pub fn validate(&self) -> Result<()> {
        check_common(self.epochs, self.batch, self.lr, self.beta1, self.beta2, self.eps)
    }
}

fn positive(field: &str, v: f32) -> Result<()> {
    if v > 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(Error::config(field, v, "must be finite and > 0"))
    }
}

fn check_common(epochs: usize, batch: usize, lr: f32, beta1: f32, beta2: f32, eps: f32) -> Result<()> {
    if epochs == 0 {
        return Err(Error::config("epochs", 0, "must be at least 1"));
    }
    if batch == 0 {
        return Err(Error::config("batch", 0, "must be at least 1"));
    }
    positive("lr", lr)?;
    positive("eps", eps)?;
    for (name, b) in [("beta1", beta1), ("beta2", beta2)] {
        if !(0.0..1.0).contains(&b) {
            return Err(Error::config(name, b, "must be in [0, 1)"));
        }
    }
    Ok(())
}
