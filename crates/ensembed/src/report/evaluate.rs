//! One pass that yields both the paper's comparison and its diagnostics: `compare_observed`
//! shows every matrix it scores and the model it learns, and this computes, while they are in
//! memory, each method's singular values and normalised nearest-neighbour similarities plus the
//! recovery cosine, so `ensembed report` fits once (a test checks its numbers against
//! `compare --json`). [`evaluate_with`] adds learned variants beside `ours` (the non-negative
//! fit for the paper's like-for-like spectrum, MLPs transferred from another store), each
//! scored and diagnosed like every other method.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::analysis::{normalized_nn_similarity, recovery_cosine, singular_values};
use crate::compare::{compare_observed, score_learned, CompareConfig, CompareObserver, Comparison};
use crate::config::FitConfig;
use crate::fit::EpochStats;
use crate::error::Result;
use crate::features::FeatureSet;
use crate::matrix::Matrix;
use crate::model::EnsembleModel;
use crate::progress::Progress;

/// Diagnostics of one representation (the rows of `ensembed analyze`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MethodDiagnostics {
    pub method: String,
    pub dim: usize,
    /// exp(entropy) of the normalised squared singular values.
    pub effective_rank: f64,
    /// Singular values of the training matrix, largest first. `[dim]`
    pub singular_values: Vec<f64>,
    pub nn_similarity_median: f32,
    /// max/mean cosine similarity of every test point to the training set. `[n_test]`
    pub nn_similarity: Vec<f32>,
}

/// Recovery cosine of one backbone on train and test, for one learned method.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RecoveryRow {
    /// `ours` or a variant's name.
    pub method: String,
    pub backbone: String,
    pub train: f64,
    pub test: f64,
}

/// Everything `ensembed analyze` reports.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Diagnostics {
    pub recovery_cosine: Vec<RecoveryRow>,
    pub methods: Vec<MethodDiagnostics>,
}

/// A further learned method for the report, beside `ours`.
#[derive(Clone, Debug)]
pub struct Variant<'a> {
    /// Its row name; must start with `ours-` (tables and figures treat those as learned).
    pub name: String,
    /// Fit settings (unused with `model`, except through the embedding they mirror when the
    /// comparison gives no embed settings).
    pub fit: FitConfig,
    /// MLPs to use as they are (transfer: fitted on another store); `None` fits here.
    pub model: Option<&'a crate::model::EnsembleModel>,
}

/// What a variant ran: its settings and loss curves (the report's JSON and loss figure).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VariantRun {
    pub name: String,
    pub fit: FitConfig,
    /// True when the MLPs came from a given model (nothing was fitted here).
    pub transferred: bool,
    pub fit_history: Vec<EpochStats>,
    pub embed_history: Vec<f64>,
}

/// The comparison and the diagnostics of one run.
#[derive(Clone, Debug)]
pub struct Report {
    pub comparison: Comparison,
    pub diagnostics: Diagnostics,
    /// The variants whose rows follow `ours` in the comparison.
    pub variants: Vec<VariantRun>,
}

impl Report {
    /// `{"comparison": Comparison::to_json(), "diagnostics": {recovery_cosine, methods}}`, plus
    /// `"variants"` when there are any.
    pub fn to_json(&self) -> Value {
        let mut v = json!({ "comparison": self.comparison.to_json(), "diagnostics": self.diagnostics });
        if !self.variants.is_empty() {
            v["variants"] = json!(self.variants);
        }
        v
    }

    /// A report read back from [`Report::to_json`]'s output, to re-draw its figures and page
    /// without fitting again; `None` when `v` is not such an object.
    pub fn from_json(v: &Value) -> Option<Report> {
        Some(Report {
            comparison: Comparison::from_json(&v["comparison"])?,
            diagnostics: serde_json::from_value(v["diagnostics"].clone()).ok()?,
            variants: match v.get("variants") {
                Some(x) => serde_json::from_value(x.clone()).ok()?,
                None => Vec::new(),
            },
        })
    }
}

/// exp(entropy) of the normalised squared singular values: how many directions carry variance.
pub fn effective_rank(sv: &[f64]) -> f64 {
    let total: f64 = sv.iter().map(|s| s * s).sum();
    if total <= 0.0 {
        return 0.0;
    }
    let h: f64 = sv.iter().map(|s| s * s / total).filter(|&p| p > 0.0).map(|p| -p * p.ln()).sum();
    h.exp()
}

/// The upper median (element `len / 2` after sorting), as `analyze` reports it; NaN when empty.
pub fn median(v: &[f32]) -> f32 {
    let mut v = v.to_vec();
    v.sort_by(f32::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f32::NAN)
}

fn diagnose(name: &str, train: &Matrix, test: &Matrix, progress: &dyn Progress) -> Result<MethodDiagnostics> {
    let sv = singular_values(train);
    let nn = normalized_nn_similarity(train, test, progress)?;
    Ok(MethodDiagnostics {
        method: name.to_string(),
        dim: train.cols,
        effective_rank: effective_rank(&sv),
        singular_values: sv,
        nn_similarity_median: median(&nn),
        nn_similarity: nn,
    })
}

/// Collects the diagnostics while [`compare_observed`] runs.
struct Collector<'a> {
    train: &'a dyn FeatureSet,
    test: &'a dyn FeatureSet,
    progress: &'a dyn Progress,
    methods: Vec<MethodDiagnostics>,
    recovery: Vec<RecoveryRow>,
}

impl CompareObserver for Collector<'_> {
    fn method(&mut self, name: &str, train: &Matrix, test: &Matrix) -> Result<()> {
        self.methods.push(diagnose(name, train, test, self.progress)?);
        Ok(())
    }
    fn learned(&mut self, name: &str, model: &EnsembleModel, train: &Matrix, test: &Matrix) -> Result<()> {
        let rec_train = recovery_cosine(model, self.train, train)?;
        let rec_test = recovery_cosine(model, self.test, test)?;
        self.recovery.extend(
            self.train
                .names()
                .into_iter()
                .enumerate()
                .map(|(j, backbone)| RecoveryRow { method: name.to_string(), backbone, train: rec_train[j], test: rec_test[j] }),
        );
        Ok(())
    }
}

/// `compare()` plus the diagnostics of `analyze`, fitting (or embedding through `model`) once.
///
/// # Shapes
/// `train_labels`: `[train.len()]`; `test_labels`: `[test.len()]`.
pub fn evaluate(
    train: &dyn FeatureSet,
    train_labels: &[u32],
    test: &dyn FeatureSet,
    test_labels: &[u32],
    model: Option<&EnsembleModel>,
    cfg: &CompareConfig,
    progress: &dyn Progress,
) -> Result<Report> {
    evaluate_with(train, train_labels, test, test_labels, model, cfg, &[], progress)
}

/// [`evaluate`], then each variant learned, scored and diagnosed as `ours` is; their rows
/// follow `ours` in the comparison (and so in every table and figure).
///
/// # Shapes
/// `train_labels`: `[train.len()]`; `test_labels`: `[test.len()]`.
#[allow(clippy::too_many_arguments)]
pub fn evaluate_with(
    train: &dyn FeatureSet,
    train_labels: &[u32],
    test: &dyn FeatureSet,
    test_labels: &[u32],
    model: Option<&EnsembleModel>,
    cfg: &CompareConfig,
    variants: &[Variant],
    progress: &dyn Progress,
) -> Result<Report> {
    for v in variants {
        if !v.name.starts_with("ours-") || variants.iter().filter(|w| w.name == v.name).count() > 1 {
            return Err(crate::error::Error::config("variant", &v.name, "must start with `ours-` and be unique"));
        }
    }
    let mut c = Collector { train, test, progress, methods: Vec::new(), recovery: Vec::new() };
    let mut comparison = compare_observed(train, train_labels, test, test_labels, model, cfg, progress, &mut c)?;
    let mut runs = Vec::new();
    for v in variants {
        let l = score_learned(&v.name, train, train_labels, test, test_labels, &v.fit, v.model, cfg, progress, &mut c)?;
        comparison.methods.push(l.result);
        runs.push(VariantRun {
            name: v.name.clone(),
            fit: v.fit.clone(),
            transferred: v.model.is_some(),
            fit_history: l.fit_history,
            embed_history: l.embed_history,
        });
    }
    Ok(Report { comparison, diagnostics: Diagnostics { recovery_cosine: c.recovery, methods: c.methods }, variants: runs })
}
