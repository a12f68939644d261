//! `ensembed extract`, `ensembed classify` and `ensembed backbones`: from images and pretrained
//! backbones (TFLite models or PyTorch checkpoints) to a feature store, a quick check that a
//! backbone loaded correctly, and the list of what can be loaded.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ensembed::backbone::{extract_images, extract_partial_path, file_fingerprint, list_images, supported, Backbone, ExtractOptions, RgbImage};

use crate::args::{ClassifyArgs, ExtractArgs};
use crate::progress::Bars;

pub fn extract(a: ExtractArgs, progress: &Bars) -> Result<()> {
    let over = a.preprocess.resolve();
    let mut models = Vec::new();
    let mut fingerprints = Vec::new();
    for spec in &a.backbones {
        let (name, file) = match spec.split_once('=') {
            Some((n, f)) => (n.to_string(), PathBuf::from(f)),
            None => {
                let f = PathBuf::from(spec);
                let stem = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                (stem, f)
            }
        };
        let model = Backbone::load_with(&file, &over).with_context(|| format!("--backbone {spec}"))?;
        eprintln!("{name}: {}", model.describe());
        // A resumed run must find the same weights and the same input pipeline.
        let mut fingerprint = file_fingerprint(&file)?;
        match &model {
            Backbone::Cnn(m) => fingerprint += &format!("; {}", m.describe()),
            Backbone::Onnx(m) => fingerprint += &format!("; {}", m.describe()),
            Backbone::Tflite(_) => {} // its input pipeline is fixed by the file
        }
        fingerprints.push(fingerprint);
        models.push((name, model));
    }
    let images = list_images(&a.images).with_context(|| format!("--images {}", a.images.display()))?;
    let labels = match (&images.labels, &images.classes) {
        (Some(_), Some(c)) => format!("{} classes", c.len()),
        (Some(_), None) => "integer labels".into(),
        _ => "no labels".into(),
    };
    eprintln!("{} images ({labels}) from {}", images.len(), a.images.display());
    let partial = extract_partial_path(&a.out);
    if partial.exists() {
        if a.resume {
            eprintln!("resuming the interrupted extraction in {}", partial.display());
        } else {
            eprintln!("note: discarding the partial work of an earlier interrupted extraction ({}); pass --resume to continue it", partial.display());
        }
    }
    let refs: Vec<(String, &Backbone)> = models.iter().map(|(n, m)| (n.clone(), m)).collect();
    let opts = ExtractOptions { batch: a.batch, overwrite: a.overwrite, resume: a.resume, fingerprints };
    let out = extract_images(&refs, &images, &a.out, &opts, progress)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

pub fn classify(a: ClassifyArgs) -> Result<()> {
    let model = Backbone::load_with(&a.backbone, &a.preprocess.resolve())?;
    let mut names: Option<Vec<String>> = match &a.labels {
        Some(p) => Some(std::fs::read_to_string(p).with_context(|| format!("--labels {}", p.display()))?.lines().map(str::to_string).collect()),
        None => None,
    };
    // imagenet_labels.txt has 1,001 lines (0 = background) for the TFLite heads; PyTorch
    // ImageNet heads have the 1,000 classes without it.
    if let (Some(n), Some(classes)) = (names.as_mut(), model.num_classes()) {
        if n.len() == classes + 1 {
            eprintln!("--labels has {} lines for {classes} classes: skipping its first line ({:?})", n.len(), n[0]);
            n.remove(0);
        }
    }
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

pub fn list() -> Result<()> {
    print!("{}", supported());
    Ok(())
}
