//! `ensembed extract` and `ensembed classify`: from images and pretrained backbones to a feature
//! store, and a quick check that a backbone loaded correctly.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ensembed::backbone::{extract_folder, RgbImage, TfliteModel};

use crate::args::{ClassifyArgs, ExtractArgs};
use crate::progress::Bars;

pub fn extract(a: ExtractArgs, progress: &Bars) -> Result<()> {
    let mut models = Vec::new();
    for spec in &a.backbones {
        let (name, file) = match spec.split_once('=') {
            Some((n, f)) => (n.to_string(), PathBuf::from(f)),
            None => {
                let f = PathBuf::from(spec);
                let stem = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                (stem, f)
            }
        };
        let model = TfliteModel::load(&file).with_context(|| format!("--backbone {spec}"))?;
        models.push((name, model));
    }
    let refs: Vec<(String, &TfliteModel)> = models.iter().map(|(n, m)| (n.clone(), m)).collect();
    let out = extract_folder(&refs, &a.images, &a.out, a.batch, a.overwrite, progress)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

pub fn classify(a: ClassifyArgs) -> Result<()> {
    let model = TfliteModel::load(&a.backbone)?;
    let names: Option<Vec<String>> = match &a.labels {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("--labels {}", p.display()))?.lines().map(str::to_string).collect()),
        None => None,
    };
    for path in &a.images {
        let image = RgbImage::open(path)?;
        let top = model.classify(&image).with_context(|| format!("cannot classify {}", path.display()))?;
        println!("{}", path.display());
        for (class, p) in top {
            let name = names.as_ref().and_then(|n| n.get(class)).map(String::as_str).unwrap_or("");
            println!("  {p:6.3}  {class:>5}  {name}");
        }
    }
    Ok(())
}
