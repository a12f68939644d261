//! `ensembed demo`: the whole comparison on real data that ships inside the binary — pooled
//! features of 1,000 train and 500 test CIFAR-10 images through three pretrained MobileNetV2s
//! (see `data/demo/README.md` for how they were made and `scripts/make_demo_features.py` to
//! regenerate them).

use std::path::Path;

use anyhow::{Context, Result};
use ensembed::compare::{compare, CompareConfig};
use ensembed::store::npy::read_npz_bytes;
use ensembed::{InMemory, Matrix};

use crate::args::DemoArgs;
use crate::progress::Bars;

const TRAIN: &[u8] = include_bytes!("../../../../data/demo/train.npz");
const TEST: &[u8] = include_bytes!("../../../../data/demo/test.npz");

/// Features and labels of one split of the embedded sample.
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

pub fn run(a: DemoArgs, progress: &Bars) -> Result<()> {
    let (train, ytr) = load(TRAIN, "data/demo/train.npz")?;
    let (test, yte) = load(TEST, "data/demo/test.npz")?;
    let cfg = CompareConfig { fit: a.fit.resolve()?, knn: a.knn.resolve()?, ..CompareConfig::default() };
    if !a.json {
        eprintln!(
            "ensembed demo: CIFAR-10, {} train / {} test images, backbones {} (pooled features, shipped in data/demo)",
            ytr.len(),
            yte.len(),
            ensembed::FeatureSet::names(&train).join(", ")
        );
    }
    let t0 = std::time::Instant::now();
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
