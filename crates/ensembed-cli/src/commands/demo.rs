//! `ensembed demo`: the whole job on real data that ships inside the binary, so that one
//! command on a fresh machine shows what ensembed does. By default it starts from images:
//! 1,000 train and 500 test CIFAR-10 JPEGs (`data/demo/images.zip`) go through three pretrained
//! coral MobileNetV1s of different widths (`data/demo/models/`, Apache-2.0), and the pooled
//! features are fitted, embedded and compared against every baseline. `--shipped-features`
//! runs the comparison on the features shipped in `data/demo/*.npz` instead (the same images
//! through three MobileNetV2s, made by tflite-runtime; the tests' reference numbers come from
//! them). `scripts/make_demo_images.py` and `scripts/make_demo_features.py` rebuild the data.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use ensembed::backbone::{FeatureExtractor, RgbImage, TfliteModel};
use ensembed::compare::{compare, CompareConfig};
use ensembed::store::npy::read_npz_bytes;
use ensembed::{InMemory, Matrix, Progress};
use half::f16;
use rayon::prelude::*;

use crate::args::DemoArgs;
use crate::progress::Bars;

const TRAIN: &[u8] = include_bytes!("../../../../data/demo/train.npz");
const TEST: &[u8] = include_bytes!("../../../../data/demo/test.npz");
const IMAGES: &[u8] = include_bytes!("../../../../data/demo/images.zip");
/// Backbone name, file name and bytes of each shipped model.
const MODELS: [(&str, &str, &[u8]); 3] = [
    ("mnv1-025", "mobilenet_v1_0.25_128_quant.tflite", include_bytes!("../../../../data/demo/models/mobilenet_v1_0.25_128_quant.tflite")),
    ("mnv1-050", "mobilenet_v1_0.5_160_quant.tflite", include_bytes!("../../../../data/demo/models/mobilenet_v1_0.5_160_quant.tflite")),
    ("mnv1-075", "mobilenet_v1_0.75_192_quant.tflite", include_bytes!("../../../../data/demo/models/mobilenet_v1_0.75_192_quant.tflite")),
];

/// Features and labels of one split of the shipped features.
fn load(bytes: &[u8], name: &str) -> Result<(InMemory, Vec<u32>)> {
    let arrays = read_npz_bytes(bytes, Path::new(name))?;
    let (mut names, mut mats, mut labels) = (Vec::new(), Vec::new(), None);
    for (key, arr) in &arrays {
        if key == "labels" {
            labels = Some(arr.to_i64(Path::new(name))?.iter().map(|&v| v as u32).collect());
        } else {
            names.push(key.clone());
            mats.push(arr.to_f32_matrix(Path::new(name))?);
        }
    }
    let labels: Vec<u32> = labels.with_context(|| format!("{name}: no `labels` array"))?;
    // Keep the backbone order stable whatever the archive order.
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.sort_by(|&a, &b| names[a].cmp(&names[b]));
    let names = order.iter().map(|&i| names[i].clone()).collect();
    let mats: Vec<Matrix> = order.iter().map(|&i| std::mem::take(&mut mats[i])).collect();
    Ok((InMemory::new(names, mats)?, labels))
}

/// The images of `split` in the shipped archive (entries `split/<class>/<file>`, in name
/// order) with their labels (class folders sorted by name, as `extract` gives them).
fn images(split: &str) -> Result<(Vec<RgbImage>, Vec<u32>)> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(IMAGES)).context("data/demo/images.zip")?;
    let mut entries = Vec::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).context("data/demo/images.zip")?;
        let name = f.name().to_string();
        if let Some((class, _)) = name.strip_prefix(&format!("{split}/")).and_then(|rest| rest.split_once('/')) {
            let mut bytes = Vec::with_capacity(f.size() as usize);
            f.read_to_end(&mut bytes).with_context(|| format!("data/demo/images.zip: {name}"))?;
            entries.push((name.clone(), class.to_string(), bytes));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut classes: Vec<&str> = entries.iter().map(|e| e.1.as_str()).collect();
    classes.dedup();
    let labels = entries.iter().map(|e| classes.iter().position(|c| *c == e.1).expect("listed") as u32).collect();
    let decoded = entries.par_iter().map(|(name, _, bytes)| RgbImage::decode(bytes, Path::new(name))).collect::<ensembed::Result<Vec<_>>>()?;
    Ok((decoded, labels))
}

/// Pooled features of `imgs` through every model, rounded to f16 as `extract` stores them (so
/// the demo's numbers are what `extract` + `compare` give on the same images).
fn extract(models: &[(String, TfliteModel)], imgs: &[RgbImage], progress: &Bars) -> Result<InMemory> {
    let mut mats = Vec::new();
    for (_, m) in models {
        let mut data = Vec::with_capacity(imgs.len() * m.pooled_dim());
        for chunk in imgs.chunks(64) {
            let f = FeatureExtractor::features(m, chunk)?; // [chunk, pooled_dim]
            data.extend(f.data.iter().map(|&v| f16::from_f32(v).to_f32()));
            progress.advance(chunk.len() as u64);
        }
        mats.push(Matrix::from_vec(imgs.len(), m.pooled_dim(), data)?);
    }
    Ok(InMemory::new(models.iter().map(|(n, _)| n.clone()).collect(), mats)?)
}

/// Train and test features extracted from the shipped images.
fn from_images(progress: &Bars) -> Result<((InMemory, Vec<u32>), (InMemory, Vec<u32>))> {
    let models: Vec<(String, TfliteModel)> = MODELS
        .iter()
        .map(|(name, file, bytes)| Ok((name.to_string(), TfliteModel::from_bytes(bytes, Path::new(file))?)))
        .collect::<Result<_>>()?;
    let (train_imgs, ytr) = images("train")?;
    let (test_imgs, yte) = images("test")?;
    if train_imgs.is_empty() || test_imgs.is_empty() {
        bail!("data/demo/images.zip holds no train or no test images");
    }
    progress.start("extract features", ((train_imgs.len() + test_imgs.len()) * models.len()) as u64);
    let train = extract(&models, &train_imgs, progress)?;
    let test = extract(&models, &test_imgs, progress)?;
    progress.finish();
    Ok(((train, ytr), (test, yte)))
}

pub fn run(a: DemoArgs, progress: &Bars) -> Result<()> {
    let t0 = std::time::Instant::now();
    let ((train, ytr), (test, yte)) = if a.shipped_features {
        (load(TRAIN, "data/demo/train.npz")?, load(TEST, "data/demo/test.npz")?)
    } else {
        if !a.json {
            eprintln!(
                "ensembed demo: extracting 1,500 CIFAR-10 images (data/demo/images.zip) through {} (data/demo/models)",
                MODELS.map(|m| m.0).join(", ")
            );
        }
        from_images(progress)?
    };
    let extracted = t0.elapsed().as_secs_f64();
    let cfg = CompareConfig { fit: a.fit.resolve()?, knn: a.knn.resolve()?, ..CompareConfig::default() };
    if !a.json {
        eprintln!(
            "ensembed demo: CIFAR-10, {} train / {} test images, backbones {} ({})",
            ytr.len(),
            yte.len(),
            ensembed::FeatureSet::names(&train).join(", "),
            if a.shipped_features { "pooled features shipped in data/demo".to_string() } else { format!("extracted in {extracted:.1} s") }
        );
    }
    let result = compare(&train, &ytr, &test, &yte, None, &cfg, progress)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&result.to_json())?);
    } else {
        println!("k-NN accuracy (%), weighted vote, T = {}:", cfg.knn.temperature);
        print!("{}", result.table());
        println!(
            "fit: {} epochs, bank {:?}, lr {}; ran in {:.1} s on {} threads",
            cfg.fit.epochs,
            cfg.fit.bank,
            cfg.fit.lr,
            t0.elapsed().as_secs_f64(),
            rayon::current_num_threads()
        );
    }
    Ok(())
}
