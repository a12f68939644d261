//! `ensembed analyze`: the paper's diagnostics on a fitted model and its stores — recovery
//! cosine of every backbone on train and test, the singular-value spectrum of each
//! representation (summarised by its effective rank), and the median normalised
//! nearest-neighbour similarity of each representation.

use anyhow::Result;
use ensembed::analysis::{normalized_nn_similarity, recovery_cosine, singular_values};
use ensembed::artifact::{load_model_dir, load_train_representations, read_representations};
use ensembed::config::EmbedConfig;
use ensembed::embed::embed;
use ensembed::features::backbone_matrix;
use ensembed::{baseline, FeatureSet, Matrix};
use serde_json::json;

use super::open_store;
use crate::args::AnalyzeArgs;
use crate::progress::Bars;

/// exp(entropy) of the normalised squared singular values: how many directions carry variance.
fn effective_rank(sv: &[f64]) -> f64 {
    let total: f64 = sv.iter().map(|s| s * s).sum();
    let h: f64 = sv.iter().map(|s| s * s / total).filter(|&p| p > 0.0).map(|p| -p * p.ln()).sum();
    h.exp()
}

fn median(mut v: Vec<f32>) -> f32 {
    v.sort_by(f32::total_cmp);
    v[v.len() / 2]
}

pub fn run(a: AnalyzeArgs, progress: &Bars) -> Result<()> {
    let (model, record) = load_model_dir(&a.model)?;
    let train = open_store(&a.train, "--train")?;
    let test = open_store(&a.test, "--test")?;
    let train_repr = load_train_representations(&a.model)?;
    let test_repr = match &a.test_repr {
        Some(p) => read_representations(p)?,
        None => embed(&model, &test, &EmbedConfig::from_fit(&record.config), progress)?.representations,
    };
    let names = train.names();
    let rec_train = recovery_cosine(&model, &train, &train_repr)?;
    let rec_test = recovery_cosine(&model, &test, &test_repr)?;

    let mut methods: Vec<(String, Matrix, Matrix)> = Vec::new();
    for (j, name) in names.iter().enumerate() {
        methods.push((name.clone(), backbone_matrix(&train, j), backbone_matrix(&test, j)));
    }
    if let (Ok(x), Ok(y)) = (baseline::average(&train), baseline::average(&test)) {
        methods.push(("average".into(), x, y));
    }
    methods.push(("concat".into(), baseline::concat(&train), baseline::concat(&test)));
    let (mut x, mut y) = (train_repr, test_repr);
    x.normalize_rows();
    y.normalize_rows();
    methods.push(("ours".into(), x, y));

    let mut rows = Vec::new();
    for (name, x, y) in &methods {
        let sv = singular_values(x);
        let nn = normalized_nn_similarity(x, y, progress)?;
        rows.push(json!({
            "method": name,
            "dim": x.cols,
            "effective_rank": effective_rank(&sv),
            "singular_values": sv,
            "nn_similarity_median": median(nn.clone()),
            "nn_similarity": nn,
        }));
    }
    let out = json!({
        "recovery_cosine": names.iter().enumerate().map(|(j, n)| json!({"backbone": n, "train": rec_train[j], "test": rec_test[j]})).collect::<Vec<_>>(),
        "methods": rows,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("recovery cosine of phi_j(psi) against z_j:");
    println!("  {:<24} {:>8} {:>8}", "backbone", "train", "test");
    for (j, n) in names.iter().enumerate() {
        println!("  {n:<24} {:>8.4} {:>8.4}", rec_train[j], rec_test[j]);
    }
    println!("representations:");
    println!("  {:<24} {:>6} {:>15} {:>22}", "method", "dim", "effective rank", "median max/mean sim");
    for r in &rows {
        println!(
            "  {:<24} {:>6} {:>15.1} {:>22.3}",
            r["method"].as_str().unwrap(),
            r["dim"],
            r["effective_rank"].as_f64().unwrap(),
            r["nn_similarity_median"].as_f64().unwrap()
        );
    }
    Ok(())
}
