//! `ensembed embed`: representations of new samples through a fitted model.
//!
//! With the lazy bank every row is embedded independently, so the rows are embedded and written
//! a chunk at a time (`--chunk-rows`): a store larger than memory streams through holding one
//! chunk of results. They go to `.OUT.partial` beside the output, and after each chunk
//! `.OUT.partial.json` records how far the file is complete (and the loss sums so far), so a
//! killed run continues with `--resume` and ends byte-identical to an uninterrupted one; the
//! file is renamed to OUT at the end. The dense bank couples all rows and runs in memory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ensembed::artifact::{load_model_dir, weights_path, write_representations, RepresentationWriter};
use ensembed::config::{BankMode, EmbedConfig};
use ensembed::embed::{embed, embed_lazy_rows, loss_history};
use ensembed::fsio::{fnv1a, FNV1A_OFFSET};
use ensembed::memory::{process_memory, store_feature_bytes, Bytes};
use ensembed::model::EnsembleModel;
use ensembed::store::Store;
use serde::{Deserialize, Serialize};

use super::open_store;
use crate::args::EmbedArgs;
use crate::progress::Bars;

/// `.NAME.SUFFIX` beside `out`.
fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "repr".into());
    out.with_file_name(format!(".{name}.{suffix}"))
}

/// `.OUT.partial.json`: what a partial output was made from, and how far it is complete.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct PartialRecord {
    format: String,
    version: u32,
    config: EmbedConfig,
    /// Size and FNV-1a hash of the model's weights file.
    model_bytes: u64,
    model_hash: String,
    /// The store's canonical path, rows and backbones.
    store: String,
    n: usize,
    backbones: Vec<String>,
    /// Rows written and synced to the partial file.
    rows_done: usize,
    /// Per-epoch sums of 1 - cos over those rows, as f64 bit patterns (exact).
    loss_sums: Vec<u64>,
}

/// The record of a run that has written nothing yet.
fn fresh_record(a: &EmbedArgs, cfg: &EmbedConfig, store: &Store) -> Result<PartialRecord> {
    let weights = weights_path(&a.model);
    let bytes = std::fs::read(&weights).with_context(|| format!("cannot read {}", weights.display()))?;
    let root = store.root().canonicalize().with_context(|| format!("cannot resolve {}", store.root().display()))?;
    Ok(PartialRecord {
        format: "ensembed-embed-partial".into(),
        version: 1,
        config: cfg.clone(),
        model_bytes: bytes.len() as u64,
        model_hash: format!("{:016x}", fnv1a(FNV1A_OFFSET, &bytes)),
        store: root.display().to_string(),
        n: store.len(),
        backbones: store.backbones().iter().map(|b| format!("{}[{}]", b.name, b.dim)).collect(),
        rows_done: 0,
        loss_sums: vec![0f64.to_bits(); cfg.epochs],
    })
}

/// The record of an interrupted run, when it was made by the same model, store and settings;
/// an error naming the first difference otherwise.
fn resumable_record(path: &Path, fresh: &PartialRecord) -> Result<PartialRecord> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let old: PartialRecord = serde_json::from_slice(&text).with_context(|| format!("{} is not a partial-embedding record", path.display()))?;
    // Every field but the progress must match; settings are named one by one.
    let (a, b) = (serde_json::to_value(&old)?, serde_json::to_value(fresh)?);
    let fields = |v: &serde_json::Value| -> Vec<(String, serde_json::Value)> {
        let mut out = Vec::new();
        for (k, x) in v.as_object().into_iter().flatten() {
            match x.as_object() {
                Some(o) => out.extend(o.iter().map(|(kk, xx)| (format!("{k}.{kk}"), xx.clone()))),
                None => out.push((k.clone(), x.clone())),
            }
        }
        out
    };
    let now = fields(&b);
    for (k, v) in fields(&a) {
        let this = now.iter().find(|(kk, _)| *kk == k).map(|(_, x)| x.clone()).unwrap_or(serde_json::Value::Null);
        if !matches!(k.as_str(), "rows_done" | "loss_sums") && this != v {
            bail!("{}: the interrupted run had {k} = {v}, this one has {this}; rerun without --resume to start over", path.display());
        }
    }
    if old.rows_done > old.n || old.loss_sums.len() != fresh.loss_sums.len() {
        bail!("{}: {} rows done of {}, {} loss sums for {} epochs: damaged", path.display(), old.rows_done, old.n, old.loss_sums.len(), fresh.loss_sums.len());
    }
    Ok(old)
}

pub fn run(a: EmbedArgs, progress: &Bars) -> Result<()> {
    let (model, record) = load_model_dir(&a.model)?;
    let cfg = a.resolve(&record.config)?;
    let store = open_store(&a.features, "--features")?;
    store.validate_values()?;
    let context = || format!("cannot embed the store {} with the model {}", a.features.display(), a.model.display());
    model.check_features(&store).with_context(context)?;
    let (n, dim) = (store.len(), model.spec.dim);
    let history = match cfg.bank {
        BankMode::Dense => {
            if a.resume {
                eprintln!("note: --resume applies to the lazy bank only; the dense bank's rows are coupled and embed in one piece");
            }
            let out = embed(&model, &store, &cfg, progress).with_context(context)?;
            write_representations(&a.out, &out.representations)?;
            out.history
        }
        BankMode::Lazy => stream(&a, &model, &cfg, &store, progress).with_context(context)?,
    };
    let last = history.last().copied().unwrap_or(f64::NAN);
    let memory = match process_memory() {
        Some(m) => format!(", peak RSS {} with {} of features mapped", Bytes(m.peak_rss), Bytes(store_feature_bytes(&store))),
        None => String::new(),
    };
    eprintln!("wrote {} ([{n}, {dim}], final loss {last:.5}{memory})", a.out.display());
    Ok(())
}

/// Lazy embedding written chunk by chunk through `.OUT.partial`, resumable; returns the loss
/// history.
fn stream(a: &EmbedArgs, model: &EnsembleModel, cfg: &EmbedConfig, store: &Store, progress: &Bars) -> Result<Vec<f64>> {
    let (partial, record_path) = (sibling(&a.out, "partial"), sibling(&a.out, "partial.json"));
    let fresh = fresh_record(a, cfg, store)?;
    let mut state = if a.resume && record_path.exists() && partial.exists() {
        let old = resumable_record(&record_path, &fresh)?;
        eprintln!("resuming {} after {} of {} rows", partial.display(), old.rows_done, old.n);
        old
    } else {
        if partial.exists() {
            eprintln!("note: replacing the partial output of an earlier interrupted embed ({}); pass --resume to continue it", partial.display());
        }
        // A record left by an earlier run must not describe the file this run starts over.
        let _ = std::fs::remove_file(&record_path);
        fresh
    };
    let (n, dim) = (store.len(), model.spec.dim);
    let mut writer = RepresentationWriter::resumable(&a.out, &partial, n, dim, state.rows_done)?;
    let mut sums: Vec<f64> = state.loss_sums.iter().map(|&b| f64::from_bits(b)).collect();
    embed_lazy_rows(model, store, cfg, state.rows_done, &mut sums, a.chunk_rows, progress, &mut |first, rows, sums| {
        writer.write_rows(rows)?;
        // The rows reach the disk before the record says they did.
        writer.sync()?;
        state.rows_done = first + rows.len() / dim.max(1);
        state.loss_sums = sums.iter().map(|s| s.to_bits()).collect();
        ensembed::fsio::write_atomic(&record_path, &serde_json::to_vec_pretty(&state).expect("record serialises"))
    })?;
    writer.finish()?;
    std::fs::remove_file(&record_path).with_context(|| format!("cannot remove {}", record_path.display()))?;
    Ok(loss_history(&sums, n, model.mlps.len()))
}
