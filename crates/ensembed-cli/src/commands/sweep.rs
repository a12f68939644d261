//! `ensembed sweep`: the comparison for each value of one fit parameter. Every finished run is
//! saved at once as `runs/<param>=<value>.json` (atomically), and a rerun reuses the runs whose
//! file exists (after checking they were made with the same settings and stores), so a sweep
//! that was interrupted continues where it stopped. At the end: `sweep.json`, the plot
//! `sweep.svg`/`sweep.png` (ours' top-1 against the value, best baseline as a line) and a table.

use std::path::Path;

use anyhow::{bail, Context, Result};
use ensembed::compare::{compare, CompareConfig};
use ensembed::fsio::write_atomic;
use ensembed::report::{apply_sweep_value, sweep_figure};
use serde_json::{json, Value};

use super::{labels, open_store};
use crate::args::SweepArgs;
use crate::progress::Bars;

/// What a sweep needs of one run's JSON.
struct RunSummary {
    value: String,
    ours: (f64, f64),
    /// (method, top-1) of the best method other than ours.
    best: Option<(String, f64)>,
}

fn summarize(value: &str, comparison: &Value) -> Result<RunSummary> {
    let top1 = comparison["knn_top1"].as_object().context("no knn_top1 in the run's comparison")?;
    let ours1 = top1.get("ours").and_then(Value::as_f64).context("no top-1 of ours in the run's comparison")?;
    let ours5 = comparison["knn_top5"]["ours"].as_f64().unwrap_or(f64::NAN);
    let best = top1
        .iter()
        .filter(|(n, _)| n.as_str() != "ours")
        .filter_map(|(n, v)| v.as_f64().map(|v| (n.clone(), v)))
        .fold(None::<(String, f64)>, |a, b| match a {
            Some(a) if a.1 >= b.1 => Some(a),
            _ => Some(b),
        });
    Ok(RunSummary { value: value.to_string(), ours: (ours1, ours5), best })
}

/// The settings a run file must have been made with to be reused.
fn identity(a: &SweepArgs, value: &str, cfg: &CompareConfig) -> Result<Value> {
    let id = json!({
        "param": a.param,
        "value": value,
        "train": a.train.canonicalize().unwrap_or(a.train.clone()),
        "test": a.test.canonicalize().unwrap_or(a.test.clone()),
        "config": serde_json::to_value(cfg)?,
    });
    // Through text and back, so that floats compare equal to those read from a run file
    // (serde_json's parser can be one ulp off the printed shortest form).
    Ok(serde_json::from_str(&serde_json::to_string(&id)?)?)
}

fn reuse(path: &Path, id: &Value) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let run: Value = serde_json::from_str(&text).with_context(|| format!("{} is not JSON; delete it to recompute", path.display()))?;
    for key in ["param", "value", "train", "test", "config"] {
        if run[key] != id[key] {
            bail!(
                "{} was made with a different {key} ({} here, {} in the file); delete it or use another --out",
                path.display(),
                id[key],
                run[key]
            );
        }
    }
    Ok(run["comparison"].clone())
}

pub fn run(a: SweepArgs, progress: &Bars) -> Result<()> {
    let knn = a.knn.resolve()?;
    let base = a.fit.resolve()?;
    let values: Vec<String> = a.values.iter().map(|v| v.trim().to_string()).collect();
    // Validate every value before the first (long) run.
    let mut cfgs = Vec::new();
    for v in &values {
        if v.is_empty() || v.contains(['/', '\\']) || v.starts_with('.') {
            bail!("--values: {v:?} cannot name a run file");
        }
        let fit = apply_sweep_value(&base, &a.param, v, !a.no_lr_scaling).with_context(|| format!("--param {} with value {v}", a.param))?;
        cfgs.push(CompareConfig { fit, knn: knn.clone(), ..CompareConfig::default() });
    }
    let train = open_store(&a.train, "--train")?;
    let test = open_store(&a.test, "--test")?;
    train.validate_values()?;
    test.validate_values()?;
    let (ytr, yte) = (labels(&train, "--train")?, labels(&test, "--test")?);
    let runs_dir = a.out.join("runs");
    let mut runs = Vec::new();
    for (i, (v, cfg)) in values.iter().zip(&cfgs).enumerate() {
        let file = runs_dir.join(format!("{}={v}.json", a.param));
        let id = identity(&a, v, cfg)?;
        let comparison = if file.exists() {
            eprintln!("sweep: {}={v} reused ({}/{})", a.param, i + 1, values.len());
            reuse(&file, &id)?
        } else {
            eprintln!("sweep: {}={v} computing ({}/{})", a.param, i + 1, values.len());
            let result = compare(&train, ytr, &test, yte, None, cfg, progress).with_context(|| format!("run {}={v}", a.param))?;
            let comparison = result.to_json();
            let mut out = id.clone();
            out["comparison"] = comparison.clone();
            write_atomic(&file, serde_json::to_string_pretty(&out)?.as_bytes())?;
            comparison
        };
        runs.push((file, summarize(v, &comparison)?));
    }
    let k = cfgs[0].headline_k;
    let best = runs.iter().filter_map(|r| r.1.best.clone()).fold(None::<(String, f64)>, |a, b| match a {
        Some(a) if a.1 >= b.1 => Some(a),
        _ => Some(b),
    });
    let ours: Vec<f64> = runs.iter().map(|r| 100.0 * r.1.ours.0).collect();
    let fig = sweep_figure(&a.param, &values, &ours, k, best.as_ref().map(|(n, v)| (n.as_str(), 100.0 * v)))?;
    write_atomic(&a.out.join("sweep.svg"), fig.svg.as_bytes())?;
    write_atomic(&a.out.join("sweep.png"), &fig.png)?;
    let summary = json!({
        "param": a.param,
        "k": k,
        "values": values,
        "runs": runs.iter().map(|(file, r)| json!({
            "value": r.value,
            "file": file.strip_prefix(&a.out).unwrap_or(file),
            "ours_top1": r.ours.0,
            "ours_top5": r.ours.1,
        })).collect::<Vec<_>>(),
        "best_baseline": best.as_ref().map(|(n, v)| json!({"method": n, "top1": v})),
    });
    write_atomic(&a.out.join("sweep.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;

    let w = a.param.len().max(values.iter().map(String::len).max().unwrap_or(0)).max(5);
    println!("{:<w$}  {:>9}  {:>9}  {:>14}", a.param, format!("top1@{k}"), format!("top5@{k}"), "ours - best");
    for (_, r) in &runs {
        let gap = best.as_ref().map(|b| format!("{:+.2}", 100.0 * (r.ours.0 - b.1))).unwrap_or_else(|| "-".into());
        println!("{:<w$}  {:>9.2}  {:>9.2}  {:>14}", r.value, 100.0 * r.ours.0, 100.0 * r.ours.1, gap);
    }
    if let Some((n, v)) = &best {
        println!("best baseline: {n} {:.2}", 100.0 * v);
    }
    println!("sweep written to {}", a.out.display());
    Ok(())
}
