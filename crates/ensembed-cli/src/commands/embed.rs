//! `ensembed embed`: representations of new samples through a fitted model.

use anyhow::{Context, Result};
use ensembed::artifact::{load_model_dir, write_representations};
use ensembed::embed::embed;

use super::open_store;
use crate::args::EmbedArgs;
use crate::progress::Bars;

pub fn run(a: EmbedArgs, progress: &Bars) -> Result<()> {
    let (model, record) = load_model_dir(&a.model)?;
    let cfg = a.resolve(&record.config)?;
    let store = open_store(&a.features, "--features")?;
    store.validate_values()?;
    let out = embed(&model, &store, &cfg, progress).with_context(|| {
        format!("cannot embed the store {} with the model {}", a.features.display(), a.model.display())
    })?;
    write_representations(&a.out, &out.representations)?;
    let last = out.history.last().copied().unwrap_or(f64::NAN);
    eprintln!(
        "wrote {} ([{}, {}], final loss {last:.5})",
        a.out.display(),
        out.representations.rows,
        out.representations.cols
    );
    Ok(())
}
