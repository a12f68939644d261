//! `ensembed fit`: a store in, a model directory out.

use anyhow::{Context, Result};
use ensembed::artifact::save_model_dir;
use ensembed::fit::fit;

use super::open_store;
use crate::args::FitCmdArgs;
use crate::progress::Bars;

pub fn run(a: FitCmdArgs, progress: &Bars) -> Result<()> {
    let cfg = a.fit.resolve()?;
    let store = open_store(&a.train, "--train")?;
    store.validate_values()?;
    let out = fit(&store, &cfg, progress)?;
    save_model_dir(&a.out, &out, &cfg, Some(&a.train.display().to_string()), a.overwrite)
        .with_context(|| format!("cannot write the model to {}", a.out.display()))?;
    let last = out.history.last().map(|h| h.loss).unwrap_or(f64::NAN);
    eprintln!(
        "wrote {} (dim {}, {} backbones, final loss {last:.5}, recovery cosine {:.4})",
        a.out.display(),
        out.model.spec.dim,
        out.model.mlps.len(),
        1.0 - last
    );
    Ok(())
}
