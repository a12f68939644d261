//! The paper's comparison in one call: every single backbone, the average, the concatenation
//! and the learned representations ("ours"), each scored by k-NN on the same test set. This is
//! what `ensembed compare`, `ensembed demo` and the Python `compare` return.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::baseline;
use crate::config::{EmbedConfig, FitConfig};
use crate::embed::embed;
use crate::error::{Error, Result};
use crate::eval::knn::{evaluate_knn, KnnConfig, KnnReport};
use crate::eval::linear::{evaluate_linear, LinearConfig, LinearReport};
use crate::features::{backbone_matrix, FeatureSet};
use crate::fit::{fit, EpochStats};
use crate::model::EnsembleModel;
use crate::matrix::Matrix;
use crate::progress::Progress;

/// Settings of a comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompareConfig {
    pub fit: FitConfig,
    /// Inference settings; `None` mirrors `fit`.
    pub embed: Option<EmbedConfig>,
    pub knn: KnnConfig,
    /// The k of the headline column and of `knn_top1` in the JSON.
    pub headline_k: usize,
    /// Also score every method by a linear probe (appendix A.2) when set.
    pub linear: Option<LinearConfig>,
}

impl Default for CompareConfig {
    fn default() -> Self {
        CompareConfig { fit: FitConfig::default(), embed: None, knn: KnnConfig::default(), headline_k: 20, linear: None }
    }
}

/// One row of the comparison.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MethodResult {
    /// A backbone's name, `average`, `concat` or `ours`.
    pub name: String,
    pub dim: usize,
    pub knn: KnnReport,
    /// Linear-probe accuracy, when asked for.
    pub linear: Option<LinearReport>,
}

/// The whole comparison.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub methods: Vec<MethodResult>,
    /// Why a baseline is missing (the average needs equal widths).
    pub skipped: Vec<(String, String)>,
    /// Training curve, when the model was fitted here.
    pub fit_history: Vec<EpochStats>,
    pub embed_history: Vec<f64>,
    pub config: CompareConfig,
}

/// Sees what a comparison computes while it is in memory, so that callers wanting more than
/// the scores (the report's diagnostics) need not fit a second time.
pub trait CompareObserver {
    /// The train and test matrices a method was scored on (rows unit-norm).
    fn method(&mut self, _name: &str, _train: &Matrix, _test: &Matrix) -> Result<()> {
        Ok(())
    }
    /// The model and the learned representations (before normalisation) of train and test, for
    /// the learned method `name` (`ours`, or a variant of [`score_learned`]).
    fn learned(&mut self, _name: &str, _model: &EnsembleModel, _train: &Matrix, _test: &Matrix) -> Result<()> {
        Ok(())
    }
}

impl CompareObserver for () {}

/// Runs the comparison. With `model`, its MLPs are used as they are (the paper's transfer
/// setting) and the training representations are learned through them like the test ones.
pub fn compare(
    train: &dyn FeatureSet,
    train_labels: &[u32],
    test: &dyn FeatureSet,
    test_labels: &[u32],
    model: Option<&EnsembleModel>,
    cfg: &CompareConfig,
    progress: &dyn Progress,
) -> Result<Comparison> {
    compare_observed(train, train_labels, test, test_labels, model, cfg, progress, &mut ())
}

/// [`compare`], showing `observer` every matrix it scores and what it learns.
#[allow(clippy::too_many_arguments)]
pub fn compare_observed(
    train: &dyn FeatureSet,
    train_labels: &[u32],
    test: &dyn FeatureSet,
    test_labels: &[u32],
    model: Option<&EnsembleModel>,
    cfg: &CompareConfig,
    progress: &dyn Progress,
    observer: &mut dyn CompareObserver,
) -> Result<Comparison> {
    if train.names() != test.names() || train.dims() != test.dims() {
        return Err(Error::shape(
            "backbones of the test set against the train set",
            format!("{:?} {:?}", train.names(), train.dims()),
            format!("{:?} {:?}", test.names(), test.dims()),
        ));
    }
    let score = |name: String, a: &Matrix, b: &Matrix, observer: &mut dyn CompareObserver| {
        score_method(name, a, train_labels, b, test_labels, cfg, progress, observer)
    };
    let mut methods = Vec::new();
    let mut skipped = Vec::new();
    for (j, name) in train.names().into_iter().enumerate() {
        let (a, b) = (backbone_matrix(train, j), backbone_matrix(test, j));
        methods.push(score(name, &a, &b, observer)?);
    }
    match (baseline::average(train), baseline::average(test)) {
        (Ok(a), Ok(b)) => methods.push(score("average".into(), &a, &b, observer)?),
        (Err(e), _) | (_, Err(e)) => skipped.push(("average".into(), e.to_string())),
    }
    let (a, b) = (baseline::concat(train), baseline::concat(test));
    methods.push(score("concat".into(), &a, &b, observer)?);
    drop((a, b));

    let ours = score_learned("ours", train, train_labels, test, test_labels, &cfg.fit, model, cfg, progress, observer)?;
    methods.push(ours.result);
    Ok(Comparison { methods, skipped, fit_history: ours.fit_history, embed_history: ours.embed_history, config: cfg.clone() })
}

/// One representation scored by k-NN (and the linear probe when configured), shown to `observer`.
///
/// # Shapes
/// `a`: `[n_train, d]`, `b`: `[n_test, d]`, rows unit-norm; labels one per row.
#[allow(clippy::too_many_arguments)]
fn score_method(
    name: String,
    a: &Matrix,
    train_labels: &[u32],
    b: &Matrix,
    test_labels: &[u32],
    cfg: &CompareConfig,
    progress: &dyn Progress,
    observer: &mut dyn CompareObserver,
) -> Result<MethodResult> {
    let knn = evaluate_knn(a, train_labels, b, test_labels, &cfg.knn, progress)?;
    let linear = match &cfg.linear {
        Some(l) => Some(evaluate_linear(a, train_labels, b, test_labels, l, progress)?),
        None => None,
    };
    observer.method(&name, a, b)?;
    Ok(MethodResult { name, dim: a.cols, knn, linear })
}

/// A learned method's row and the loss curves behind it.
#[derive(Clone, Debug)]
pub struct Learned {
    pub result: MethodResult,
    /// Per epoch; empty when the MLPs were given rather than fitted.
    pub fit_history: Vec<EpochStats>,
    /// Mean loss per epoch of the test embedding.
    pub embed_history: Vec<f64>,
}

/// Learned representations scored like the baselines, under the row name `name`: the MLPs and
/// train representations fitted on `train` with `fit_cfg`, or, with `model`, that model's MLPs
/// used as they are (transfer) and the train representations embedded through them; the test
/// set is embedded with `cfg.embed` (default: mirroring `fit_cfg`). [`compare`] runs it once as
/// `ours`; the report runs it again for its variants (non-negative, transferred MLPs), so
/// every variant is scored exactly as `ours` is.
#[allow(clippy::too_many_arguments)]
pub fn score_learned(
    name: &str,
    train: &dyn FeatureSet,
    train_labels: &[u32],
    test: &dyn FeatureSet,
    test_labels: &[u32],
    fit_cfg: &FitConfig,
    model: Option<&EnsembleModel>,
    cfg: &CompareConfig,
    progress: &dyn Progress,
    observer: &mut dyn CompareObserver,
) -> Result<Learned> {
    let embed_cfg = cfg.embed.clone().unwrap_or_else(|| EmbedConfig::from_fit(fit_cfg));
    let (train_repr, fit_history, model_owned);
    let model = match model {
        Some(m) => {
            train_repr = embed(m, train, &embed_cfg, progress)?.representations;
            fit_history = Vec::new();
            m
        }
        None => {
            let out = fit(train, fit_cfg, progress)?;
            train_repr = out.representations;
            fit_history = out.history;
            model_owned = out.model;
            &model_owned
        }
    };
    let test_out = embed(model, test, &embed_cfg, progress)?;
    let (mut a, mut b) = (train_repr, test_out.representations);
    observer.learned(name, model, &a, &b)?;
    a.normalize_rows();
    b.normalize_rows();
    let result = score_method(name.to_string(), &a, train_labels, &b, test_labels, cfg, progress, observer)?;
    Ok(Learned { result, fit_history, embed_history: test_out.history })
}

impl Comparison {
    /// A comparison read back from [`Comparison::to_json`]'s output (the report re-draws its
    /// figures from it); `None` when `v` is not such an object.
    pub fn from_json(v: &Value) -> Option<Comparison> {
        let skipped = v["skipped"]
            .as_array()?
            .iter()
            .map(|s| Some((s["method"].as_str()?.to_string(), s["reason"].as_str()?.to_string())))
            .collect::<Option<Vec<_>>>()?;
        Some(Comparison {
            methods: serde_json::from_value(v["methods"].clone()).ok()?,
            skipped,
            fit_history: serde_json::from_value(v["fit_history"].clone()).ok()?,
            embed_history: serde_json::from_value(v["embed_history"].clone()).ok()?,
            config: serde_json::from_value(v["config"].clone()).ok()?,
        })
    }

    /// The result for `name`.
    pub fn method(&self, name: &str) -> Option<&MethodResult> {
        self.methods.iter().find(|m| m.name == name)
    }

    /// The JSON the CLI prints with `--json`: `knn_top1` maps every method to its weighted
    /// top-1 accuracy at the headline k (a fraction; `null` for a skipped baseline), beside the
    /// full per-k results and the resolved config. These key names are a stable interface.
    pub fn to_json(&self) -> Value {
        let k = self.config.headline_k;
        let at = |m: &MethodResult, f: fn(&crate::eval::knn::KnnScore) -> f64| m.knn.at(k).map(f);
        let mut top1 = serde_json::Map::new();
        let mut top5 = serde_json::Map::new();
        for m in &self.methods {
            top1.insert(m.name.clone(), json!(at(m, |s| s.top1)));
            top5.insert(m.name.clone(), json!(at(m, |s| s.top5)));
        }
        let mut linear = serde_json::Map::new();
        for m in &self.methods {
            if let Some(l) = &m.linear {
                linear.insert(m.name.clone(), json!(l.top1));
            }
        }
        for (name, _) in &self.skipped {
            top1.insert(name.clone(), Value::Null);
            top5.insert(name.clone(), Value::Null);
        }
        json!({
            "k": k,
            "knn_top1": top1,
            "knn_top5": top5,
            "linear_top1": if self.config.linear.is_some() { Value::Object(linear) } else { Value::Null },
            "methods": self.methods,
            "skipped": self.skipped.iter().map(|(n, why)| json!({"method": n, "reason": why})).collect::<Vec<_>>(),
            "fit_history": self.fit_history,
            "embed_history": self.embed_history,
            "config": self.config,
        })
    }

    /// A readable table: one row per method, top-1 and top-5 at the headline k, top-1 at every
    /// other k, and the gap of `ours` to the best baseline.
    pub fn table(&self) -> String {
        let k = self.config.headline_k;
        let ks: Vec<usize> = self.config.knn.ks.iter().copied().filter(|&x| x != k).collect();
        let width = self.methods.iter().map(|m| m.name.len()).max().unwrap_or(6).max(8);
        let mut s = format!("{:<width$}  {:>5}  {:>8}  {:>8}", "method", "dim", format!("top1@{k}"), format!("top5@{k}"));
        for x in &ks {
            s += &format!("  {:>9}", format!("top1@{x}"));
        }
        if self.config.linear.is_some() {
            s += &format!("  {:>8}", "linear");
        }
        s.push('\n');
        let pct = |v: Option<f64>| v.map(|v| format!("{:.2}", 100.0 * v)).unwrap_or_else(|| "-".into());
        for m in &self.methods {
            let sc = m.knn.at(k);
            s += &format!("{:<width$}  {:>5}  {:>8}  {:>8}", m.name, m.dim, pct(sc.map(|s| s.top1)), pct(sc.map(|s| s.top5)));
            for &x in &ks {
                s += &format!("  {:>9}", pct(m.knn.at(x).map(|s| s.top1)));
            }
            if self.config.linear.is_some() {
                s += &format!("  {:>8}", pct(m.linear.as_ref().map(|l| l.top1)));
            }
            s.push('\n');
        }
        for (name, why) in &self.skipped {
            s += &format!("{name:<width$}  (skipped: {why})\n");
        }
        let best = self
            .methods
            .iter()
            .filter(|m| !m.name.starts_with("ours"))
            .filter_map(|m| m.knn.at(k).map(|s| (s.top1, m.name.as_str())))
            .fold((f64::MIN, ""), |a, b| if b.0 > a.0 { b } else { a });
        // Variants first, so that the line about `ours` stays the table's last (the report's
        // page quotes it).
        let learned = self.methods.iter().filter(|m| m.name.starts_with("ours-")).chain(self.method("ours"));
        for m in learned {
            if let Some(sc) = m.knn.at(k) {
                s += &format!("{} - best baseline ({}): {:+.2} points top-1 at k={k}\n", m.name, best.1, 100.0 * (sc.top1 - best.0));
            }
        }
        s
    }
}
