//! How fast the pure-Rust TFLite backbones extract features, against the official interpreter
//! on the same machine in the same run. For each coral model: images per second of
//! `TfliteModel::features` on decoded CIFAR-10 test images (resize, quantise, run to the pooled
//! features; JPEG decoding excluded), with ENSEMBED_BENCH_THREADS rayon threads (default 2), then
//! tflite-runtime's `invoke()` rate on the same images through `scripts/tflite_bench.py`
//! (`--threads` the same), with its default delegates and with builtin kernels only (the
//! configuration whose arithmetic ensembed reproduces), and the ratios.
//!
//! ENSEMBED_BENCH_IMAGES sets the image count (default 64), ENSEMBED_BENCH_MODELS a
//! comma-separated subset of model files. Without `../shared` the models are absent: the bench
//! times the image pipeline (synthetic 32x32 images resized to 224x224) and says so.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use ensembed::backbone::{RgbImage, TfliteModel};
use rand::{Rng, SeedableRng};

const MODELS: [&str; 8] = [
    "mobilenet_v1_0.25_128_quant.tflite",
    "mobilenet_v1_0.5_160_quant.tflite",
    "mobilenet_v1_0.75_192_quant.tflite",
    "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite",
    "mobilenet_v2_1.0_224_quant.tflite",
    "tf2_mobilenet_v2_1.0_224_ptq.tflite",
    "mobilenet_v2_1.0_224_inat_bird_quant.tflite",
    "mobilenet_v2_1.0_224_inat_insect_quant.tflite",
];

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a count"))
    })
}

/// The first `n` test images (class folders in order, files sorted), decoded.
fn cifar_images(dir: &Path, n: usize) -> Vec<RgbImage> {
    let mut files = Vec::new();
    let mut classes: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    classes.sort();
    for c in classes {
        let mut f: Vec<PathBuf> = std::fs::read_dir(&c)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        f.sort();
        files.extend(f);
    }
    // Spread over the classes rather than the first class only.
    let step = (files.len() / n.max(1)).max(1);
    files
        .iter()
        .step_by(step)
        .take(n)
        .map(|p| RgbImage::open(p).unwrap())
        .collect()
}

/// Runs `scripts/tflite_bench.py` and returns (model, delegates, images/s) per line, or why not.
fn tflite_runtime(
    root: &Path,
    models: &[PathBuf],
    images: &Path,
    n: usize,
    threads: usize,
) -> Result<Vec<(String, String, f64)>, String> {
    let out = Command::new("python3")
        .arg(root.join("scripts/tflite_bench.py"))
        .arg("--models")
        .args(models)
        .args(["--images".as_ref(), images.as_os_str()])
        .args(["--count", &n.to_string(), "--threads", &threads.to_string()])
        .output()
        .map_err(|e| format!("python3 not runnable: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err.lines().last().unwrap_or("failed").to_string());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            (
                v["model"].as_str().unwrap_or("").to_string(),
                v["delegates"].as_str().unwrap_or("").to_string(),
                v["images_per_s"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect())
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap();
    let shared = root.join("../shared");
    let n = env("ENSEMBED_BENCH_IMAGES", 64);
    let threads = env("ENSEMBED_BENCH_THREADS", 2);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let coral = shared.join("data/models/coral");
    let cifar = shared.join("data/cifar10/test");

    if !coral.is_dir() || !cifar.is_dir() {
        println!(
            "../shared is absent: no models to time; timing the image pipeline on synthetic images"
        );
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let imgs: Vec<RgbImage> = (0..n)
            .map(|_| RgbImage::new(32, 32, (0..32 * 32 * 3).map(|_| r.random()).collect()).unwrap())
            .collect();
        let t = Instant::now();
        let total: usize = imgs
            .iter()
            .map(|im| im.resize_bilinear(224, 224).unwrap().pixels().len())
            .sum();
        println!(
            "resize 32x32 -> 224x224: {:.0} images/s ({total} bytes)",
            n as f64 / t.elapsed().as_secs_f64()
        );
        return;
    }

    let wanted: Vec<String> = std::env::var("ENSEMBED_BENCH_MODELS").map_or_else(
        |_| MODELS.iter().map(|s| s.to_string()).collect(),
        |v| v.split(',').map(|s| s.trim().to_string()).collect(),
    );
    let images = cifar_images(&cifar, n);
    println!("{} CIFAR-10 test images, {threads} threads", images.len());
    println!("{:<56} {:>12} {:>10}", "model", "ensembed/s", "ms/image");
    let mut ours = Vec::new();
    for file in &wanted {
        let model = TfliteModel::load(coral.join(file)).unwrap();
        pool.install(|| {
            model
                .features(&images[..threads.min(images.len())])
                .unwrap()
        }); // warm-up
        let t = Instant::now();
        let f = pool.install(|| model.features(&images).unwrap());
        let dt = t.elapsed().as_secs_f64();
        assert_eq!(f.rows, images.len());
        let ips = images.len() as f64 / dt;
        println!(
            "{file:<56} {ips:>12.1} {:>10.1}",
            1000.0 * dt * threads as f64 / images.len() as f64
        );
        ours.push((file.clone(), ips));
    }

    let paths: Vec<PathBuf> = wanted.iter().map(|f| coral.join(f)).collect();
    match tflite_runtime(&root, &paths, &cifar, n, threads) {
        Err(why) => println!("\ntflite-runtime not measured ({why})"),
        Ok(rows) => {
            println!("\ntflite-runtime 2.14 (scripts/tflite_bench.py, num_threads={threads}), same images");
            println!(
                "{:<56} {:>9} {:>12} {:>14}",
                "model", "delegates", "tflite/s", "ensembed/tflite"
            );
            for (model, delegates, tips) in rows {
                let ens = ours
                    .iter()
                    .find(|(f, _)| *f == model)
                    .map_or(f64::NAN, |(_, v)| *v);
                println!(
                    "{model:<56} {delegates:>9} {tips:>12.1} {:>14.2}",
                    ens / tips
                );
            }
        }
    }
}
