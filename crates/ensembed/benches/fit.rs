//! Fit and embed throughput against the machine's own matrix-multiply peak, measured in the
//! same run (the machines are shared and noisy, so only ratios within one run mean anything).
//!
//! `cargo bench -p ensembed --bench fit` — shape via ENSEMBED_BENCH_{N,D,M,B} (default: the
//! paper's d = 2048, m = 4, batch 256, with n = 2048 rows). When python3 with numpy is on the
//! PATH, the same training step written in numpy (`bench/reference_fit.py`) runs in the same
//! process tree and the ratio is printed; ENSEMBED_BENCH_REFERENCE=0 skips it.

use std::time::Instant;

use ensembed::config::{BankMode, EmbedConfig, FitConfig};
use ensembed::embed::embed;
use ensembed::fit::fit;
use ensembed::kernels::{matmul, Layout};
use ensembed::{InMemory, Matrix, NoProgress};
use rand::{Rng, SeedableRng};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn features(rng: &mut impl Rng, n: usize, d: usize) -> Matrix {
    Matrix::from_vec(n, d, (0..n * d).map(|_| rng.random::<f32>().powi(3)).collect()).unwrap()
}

/// Best-of-`reps` GFLOP/s of `c[m, n] = a[m, k] · b[n, k]ᵀ`, the forward GEMM of a layer.
fn gemm_gflops(m: usize, n: usize, k: usize, threads: usize, reps: usize) -> f64 {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; n * k];
    let mut c = vec![0.0f32; m * n];
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        matmul(&mut c, &a, Layout::N, &b, Layout::T, m, n, k, false, threads);
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (m * n * k) as f64 / best / 1e9
}

/// Seconds per training step of ensembed (lazy bank, bank learning) on the given shape.
fn ensembed_step_seconds(feats: &InMemory, b: usize) -> f64 {
    let cfg = FitConfig { epochs: 1, batch: b, warmup: Some(0), bank: BankMode::Lazy, ..Default::default() };
    let t = Instant::now();
    fit(feats, &cfg, &NoProgress).unwrap();
    t.elapsed().as_secs_f64() / feats_len(feats).div_ceil(b) as f64
}

fn feats_len(f: &InMemory) -> usize {
    ensembed::FeatureSet::len(f)
}

/// Runs the numpy reference and prints its step time against ensembed's, measured back to back.
fn reference(n: usize, d: usize, m: usize, b: usize, threads: usize) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/reference_fit.py");
    let out = std::process::Command::new("python3")
        .args([script, "--d", &d.to_string(), "--m", &m.to_string(), "--batch", &b.to_string(), "--n", &n.to_string()])
        .env_remove("OPENBLAS_CORETYPE")
        .env_remove("OPENBLAS_L2_SIZE")
        .env("OPENBLAS_NUM_THREADS", threads.to_string())
        .output();
    let Some(out) = out.ok().filter(|o| o.status.success()) else {
        println!("reference: python3 with numpy not available, skipped");
        return;
    };
    let line = String::from_utf8_lossy(&out.stdout);
    let Some(secs) = line.split("\"step_seconds\": ").nth(1).and_then(|s| s.split(',').next()).and_then(|s| s.trim().parse::<f64>().ok()) else {
        println!("reference: unreadable output {line}");
        return;
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let feats = InMemory::unnamed((0..m).map(|_| features(&mut rng, n, d)).collect()).unwrap();
    let ours = ensembed_step_seconds(&feats, b);
    println!("numpy reference step {:.3} s, ensembed step {:.3} s: ensembed is {:.2}x faster", secs, ours, secs / ours);
}

fn main() {
    let (n, d, m, b) = (env("ENSEMBED_BENCH_N", 2048), env("ENSEMBED_BENCH_D", 2048), env("ENSEMBED_BENCH_M", 4), env("ENSEMBED_BENCH_B", 256));
    let threads = rayon::current_num_threads();
    let peak_square = gemm_gflops(2048, 2048, 2048, threads, 3);
    let peak_layer = gemm_gflops(b, d, d, threads, 10);
    println!("machine: {threads} threads");
    println!("sgemm 2048^3                  {peak_square:8.1} GFLOP/s  (the peak the ratios below use)");
    println!("sgemm [{b},{d}]x[{d},{d}]ᵀ     {peak_layer:8.1} GFLOP/s  ({:.2} of peak)", peak_layer / peak_square);

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let feats = InMemory::unnamed((0..m).map(|_| features(&mut rng, n, d)).collect()).unwrap();
    // One layer pass over n rows: 2 n d^2 flops; a depth-2 MLP has two such layers.
    let layer = 2.0 * (n * d * d) as f64;
    for bank in [BankMode::Dense, BankMode::Lazy] {
        // 2 epochs, 1 of warm-up: the warm-up epoch skips the first layer's input gradient.
        let cfg = FitConfig { epochs: 2, batch: b, bank, ..Default::default() };
        let t = Instant::now();
        fit(&feats, &cfg, &NoProgress).unwrap();
        let secs = t.elapsed().as_secs_f64();
        // Per MLP and epoch: forward 2 layers, weight gradients 2 layers, input gradients 1
        // layer (warm-up) or 2 (bank learning).
        let flops = m as f64 * layer * ((2.0 + 2.0 + 1.0) + (2.0 + 2.0 + 2.0));
        let gf = flops / secs / 1e9;
        println!(
            "fit   {bank:?}: n {n}, d {d}, m {m}, batch {b}: {:6.2} s/epoch, {:8.0} samples/s, {gf:6.1} GFLOP/s = {:.2} of sgemm peak",
            secs / 2.0,
            2.0 * n as f64 / secs,
            gf / peak_square
        );
    }
    if std::env::var("ENSEMBED_BENCH_REFERENCE").as_deref() != Ok("0") {
        reference(n, d, m, b, threads);
    }
    let model = fit(&feats, &FitConfig { epochs: 1, batch: b, ..Default::default() }, &NoProgress).unwrap().model;
    for bank in [BankMode::Dense, BankMode::Lazy] {
        let cfg = EmbedConfig { epochs: 2, batch: b, bank, ..Default::default() };
        let t = Instant::now();
        embed(&model, &feats, &cfg, &NoProgress).unwrap();
        let secs = t.elapsed().as_secs_f64();
        // Per MLP and epoch: forward 2 layers, input gradients 2 layers.
        let gf = m as f64 * layer * 4.0 * 2.0 / secs / 1e9;
        println!(
            "embed {bank:?}: {:6.2} s/epoch, {:8.0} samples/s, {gf:6.1} GFLOP/s = {:.2} of sgemm peak",
            secs / 2.0,
            2.0 * n as f64 / secs,
            gf / peak_square
        );
    }
}
