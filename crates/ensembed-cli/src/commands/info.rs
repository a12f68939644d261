//! `ensembed info`: what is in a store or a model directory.

use anyhow::{bail, Result};
use ensembed::artifact::{load_model_dir, CONFIG_FILE};
use ensembed::store::{Store, MANIFEST_FILE};

use crate::args::InfoArgs;

pub fn run(a: InfoArgs) -> Result<()> {
    if a.path.join(MANIFEST_FILE).exists() {
        let s = Store::open(&a.path)?;
        println!("store {}: {} samples", a.path.display(), s.len());
        for b in s.backbones() {
            println!("  backbone {:<24} dim {:>5}  {:?}", b.name, b.dim, b.dtype);
        }
        match (s.labels(), s.num_classes()) {
            (Some(_), Some(c)) => println!("  labels: {c} classes"),
            _ => println!("  labels: none"),
        }
        println!("  ids: {}", if s.ids().is_some() { "yes" } else { "none" });
    } else if a.path.join(CONFIG_FILE).exists() {
        let (m, r) = load_model_dir(&a.path)?;
        println!("model {}: dim {}, depth {}, hidden {}, {} training samples", a.path.display(), m.spec.dim, m.spec.depth, m.spec.hidden, r.n);
        for b in &m.spec.backbones {
            println!("  backbone {:<24} dim {:>5}", b.name, b.dim);
        }
        println!("  config: {}", serde_json::to_string(&r.config)?);
        if let Some(last) = r.history.last() {
            println!("  final loss {:.5} (recovery cosine {:.4})", last.loss, 1.0 - last.loss);
        }
    } else {
        bail!("{}: neither a store ({MANIFEST_FILE}) nor a model directory ({CONFIG_FILE})", a.path.display());
    }
    Ok(())
}
