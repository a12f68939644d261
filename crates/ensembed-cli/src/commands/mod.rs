//! One file per command; each takes its parsed flags and the progress sink.

mod analyze;
mod backbone;
mod compare;
mod demo;
mod embed;
mod export;
mod fit;
mod import;
mod info;
mod knn;
mod shard;
mod report;
mod sweep;

use std::path::Path;

use anyhow::{Context, Result};
use ensembed::artifact::{load_model_dir, FitRecord};
use ensembed::compare::CompareConfig;
use ensembed::model::EnsembleModel;
use ensembed::store::Store;

use crate::args::Command;
use crate::progress::Bars;

pub fn run(command: Command, progress: &Bars) -> Result<()> {
    match command {
        Command::Demo(a) => demo::run(a, progress),
        Command::Import(a) => import::run(a),
        Command::Export(a) => export::run(a),
        Command::Fit(a) => fit::run(a, progress),
        Command::Embed(a) => embed::run(a, progress),
        Command::Knn(a) => knn::run(a, progress),
        Command::Compare(a) => compare::run(a, progress),
        Command::Analyze(a) => analyze::run(a, progress),
        Command::Shard(a) => shard::shard(a),
        Command::Merge(a) => shard::merge(a),
        Command::Subset(a) => shard::subset(a),
        Command::Extract(a) => backbone::extract(a, progress),
        Command::Classify(a) => backbone::classify(a),
        Command::Backbones => backbone::list(),
        Command::Info(a) => info::run(a),
        Command::Report(a) => report::run(a, progress),
        Command::Redraw(a) => report::redraw(a),
        Command::Sweep(a) => sweep::run(a, progress),
    }
}

/// The settings of `compare` and `report`, and the transferred model when `--model` is given:
/// the flags over METHOD.md's defaults, or over that model's own training settings.
fn comparison_config(
    fit: &crate::args::FitArgs,
    knn: &crate::args::KnnArgs,
    linear: bool,
    model: Option<&Path>,
) -> Result<(CompareConfig, Option<(EnsembleModel, FitRecord)>)> {
    let knn = knn.resolve()?;
    let model = model.map(load_model_dir).transpose()?;
    let fit = match &model {
        Some((_, record)) => fit.resolve_from(&record.config)?,
        None => fit.resolve()?,
    };
    let linear = linear.then(ensembed::eval::LinearConfig::default);
    Ok((CompareConfig { fit, knn, linear, ..CompareConfig::default() }, model))
}

/// Opens a store, saying which flag named it.
fn open_store(path: &Path, flag: &str) -> Result<Store> {
    Store::open(path).with_context(|| format!("cannot open the store given by {flag} ({})", path.display()))
}

/// A store's labels, or an error naming the flag.
fn labels<'a>(store: &'a Store, flag: &str) -> Result<&'a [u32]> {
    store
        .labels()
        .with_context(|| format!("the store given by {flag} ({}) has no labels; import it with --labels", store.root().display()))
}
