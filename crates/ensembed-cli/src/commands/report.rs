//! `ensembed report`: the comparison of `compare` and the diagnostics of `analyze` from one fit,
//! written as a directory a person can open: `report.json` (every number), `fig/*.svg|png`
//! (k-NN bars, singular-value spectra, NN-similarity histograms, loss curves) and `index.html`
//! (one self-contained page with the tables and the SVGs inlined).

use anyhow::{Context, Result};
use ensembed::config::FitConfig;
use ensembed::report::{evaluate_with, report_figures, write_report, Report, Variant};

use super::{comparison_config, labels, open_store};
use ensembed::artifact::load_model_dir;
use crate::args::{RedrawArgs, ReportArgs};
use crate::progress::Bars;

pub fn run(a: ReportArgs, progress: &Bars) -> Result<()> {
    let (cfg, model) = comparison_config(&a.fit, &a.knn, a.linear, a.model.as_deref())?;
    if a.out.exists() && !a.overwrite {
        anyhow::bail!("{} already exists; pass --overwrite to replace it", a.out.display());
    }
    let train = open_store(&a.train, "--train")?;
    let test = open_store(&a.test, "--test")?;
    train.validate_values()?;
    test.validate_values()?;
    let (ytr, yte) = (labels(&train, "--train")?, labels(&test, "--test")?);
    let transfer = a.transfer_model.as_deref().map(load_model_dir).transpose()?;
    let mut variants = Vec::new();
    if a.nonneg_variant {
        variants.push(Variant { name: "ours-nonneg".into(), fit: FitConfig { nonneg: true, ..cfg.fit.clone() }, model: None });
    }
    if let Some((m, _)) = &transfer {
        // The report's own settings: the embedding mirrors them, so only the MLPs differ.
        variants.push(Variant { name: "ours-transfer".into(), fit: cfg.fit.clone(), model: Some(m) });
    }
    let report = evaluate_with(&train, ytr, &test, yte, model.as_ref().map(|(m, _)| m), &cfg, &variants, progress)?;
    let figures = report_figures(&report).context("drawing the report's figures")?;
    write_report(&a.out, &report, &figures, a.overwrite).with_context(|| format!("writing the report to {}", a.out.display()))?;
    print!("{}", report.comparison.table());
    println!("report written to {}", a.out.join("index.html").display());
    Ok(())
}

/// `ensembed redraw DIR`: the figures and page of DIR again from DIR/report.json.
pub fn redraw(a: RedrawArgs) -> Result<()> {
    let path = a.dir.join("report.json");
    let text = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let json: serde_json::Value = serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let report = Report::from_json(&json).with_context(|| format!("{} is not a report written by `ensembed report`", path.display()))?;
    let figures = report_figures(&report).context("drawing the report's figures")?;
    write_report(&a.dir, &report, &figures, true).with_context(|| format!("writing the report to {}", a.dir.display()))?;
    println!("report redrawn in {}", a.dir.join("index.html").display());
    Ok(())
}
