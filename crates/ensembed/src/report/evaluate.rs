//! One pass that yields both the paper's comparison and its diagnostics. `compare()` drops the
//! fitted model and the representations it scored, and `analyze` needs exactly those; fitting
//! twice would double the cost of `ensembed report`. So this mirrors `compare()` step for step
//! (same calls, same order, same seeds, hence the same numbers — a test checks it against
//! `compare --json`) and computes, for every method's matrices while they are in memory, the
//! singular values and normalised nearest-neighbour similarities, plus the recovery cosine.

use serde::Serialize;
use serde_json::{json, Value};

use crate::analysis::{normalized_nn_similarity, recovery_cosine, singular_values};
use crate::baseline;
use crate::compare::{CompareConfig, Comparison, MethodResult};
use crate::config::EmbedConfig;
use crate::embed::embed;
use crate::error::{Error, Result};
use crate::eval::knn::evaluate_knn;
use crate::eval::linear::evaluate_linear;
use crate::features::{backbone_matrix, FeatureSet};
use crate::fit::fit;
use crate::matrix::Matrix;
use crate::model::EnsembleModel;
use crate::progress::Progress;

/// Diagnostics of one representation (the rows of `ensembed analyze`).
#[derive(Clone, Debug, Serialize)]
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

/// Recovery cosine of one backbone on train and test.
#[derive(Clone, Debug, Serialize)]
pub struct RecoveryRow {
    pub backbone: String,
    pub train: f64,
    pub test: f64,
}

/// Everything `ensembed analyze` reports.
#[derive(Clone, Debug, Serialize)]
pub struct Diagnostics {
    pub recovery_cosine: Vec<RecoveryRow>,
    pub methods: Vec<MethodDiagnostics>,
}

/// The comparison and the diagnostics of one run.
#[derive(Clone, Debug)]
pub struct Report {
    pub comparison: Comparison,
    pub diagnostics: Diagnostics,
}

impl Report {
    /// `{"comparison": Comparison::to_json(), "diagnostics": {recovery_cosine, methods}}`.
    pub fn to_json(&self) -> Value {
        json!({ "comparison": self.comparison.to_json(), "diagnostics": self.diagnostics })
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
    if train.names() != test.names() || train.dims() != test.dims() {
        return Err(Error::shape(
            "backbones of the test set against the train set",
            format!("{:?} {:?}", train.names(), train.dims()),
            format!("{:?} {:?}", test.names(), test.dims()),
        ));
    }
    let mut diag = Vec::new();
    let mut score = |name: String, a: &Matrix, b: &Matrix| -> Result<MethodResult> {
        let knn = evaluate_knn(a, train_labels, b, test_labels, &cfg.knn, progress)?;
        let linear = match &cfg.linear {
            Some(l) => Some(evaluate_linear(a, train_labels, b, test_labels, l, progress)?),
            None => None,
        };
        diag.push(diagnose(&name, a, b, progress)?);
        Ok(MethodResult { name, dim: a.cols, knn, linear })
    };
    let mut methods = Vec::new();
    let mut skipped = Vec::new();
    let names = train.names();
    for (j, name) in names.iter().enumerate() {
        let (a, b) = (backbone_matrix(train, j), backbone_matrix(test, j));
        methods.push(score(name.clone(), &a, &b)?);
    }
    match (baseline::average(train), baseline::average(test)) {
        (Ok(a), Ok(b)) => methods.push(score("average".into(), &a, &b)?),
        (Err(e), _) | (_, Err(e)) => skipped.push(("average".into(), e.to_string())),
    }
    let (a, b) = (baseline::concat(train), baseline::concat(test));
    methods.push(score("concat".into(), &a, &b)?);
    drop((a, b));

    let embed_cfg = cfg.embed.clone().unwrap_or_else(|| EmbedConfig::from_fit(&cfg.fit));
    let (train_repr, fit_history, model_owned);
    let model = match model {
        Some(m) => {
            train_repr = embed(m, train, &embed_cfg, progress)?.representations;
            fit_history = Vec::new();
            m
        }
        None => {
            let out = fit(train, &cfg.fit, progress)?;
            train_repr = out.representations;
            fit_history = out.history;
            model_owned = out.model;
            &model_owned
        }
    };
    let test_out = embed(model, test, &embed_cfg, progress)?;
    let rec_train = recovery_cosine(model, train, &train_repr)?;
    let rec_test = recovery_cosine(model, test, &test_out.representations)?;
    let (mut a, mut b) = (train_repr, test_out.representations);
    a.normalize_rows();
    b.normalize_rows();
    methods.push(score("ours".into(), &a, &b)?);
    let recovery = names
        .iter()
        .enumerate()
        .map(|(j, n)| RecoveryRow { backbone: n.clone(), train: rec_train[j], test: rec_test[j] })
        .collect();
    Ok(Report {
        comparison: Comparison { methods, skipped, fit_history, embed_history: test_out.history, config: cfg.clone() },
        diagnostics: Diagnostics { recovery_cosine: recovery, methods: diag },
    })
}
