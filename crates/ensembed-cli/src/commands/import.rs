//! `ensembed import`: numpy files in, a validated feature store out.

use std::path::PathBuf;

use anyhow::{bail, Result};
use ensembed::store::import_numpy;

use crate::args::ImportArgs;

pub fn run(a: ImportArgs) -> Result<()> {
    let mut backbones = Vec::new();
    for spec in &a.backbones {
        let Some((name, file)) = spec.split_once('=') else {
            bail!("--backbone {spec:?}: expected NAME=FILE");
        };
        backbones.push((name.to_string(), PathBuf::from(file)));
    }
    let store = import_numpy(&a.out, &backbones, a.labels.as_deref(), a.ids.as_deref(), a.overwrite)?;
    eprintln!("wrote {} ({} samples, {} backbones)", a.out.display(), store.len(), store.backbones().len());
    Ok(())
}
