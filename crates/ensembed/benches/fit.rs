//! Fit and embed throughput against the machine's own matrix-multiply peak, measured in the
//! same run (the machines are shared and noisy, so only ratios within one run mean anything).
//!
//! `cargo bench -p ensembed --bench fit` — shape via ENSEMBED_BENCH_{N,D,M,B} (default: the
//! paper's d = 2048, m = 4, batch 256, with n = 2048 rows). When python3 with numpy is on the
//! PATH, the same training step written in numpy (`bench/reference_fit.py`) runs in the same
//! process tree and the ratio is printed, and likewise the step written in PyTorch
//! (`bench/reference_fit_torch.py`) when `import torch` works; ENSEMBED_BENCH_REFERENCE=0 skips
//! both. Every fit also
//! prints its peak RSS against the memory bound of `ensembed::memory`.
//!
//! Scale mode: ENSEMBED_BENCH_STORE=f16 (or f32) writes a store of synthetic features of that
//! shape to a temporary directory (under ENSEMBED_BENCH_DIR, default the system's), then fits
//! ENSEMBED_BENCH_EPOCHS (default 1) epochs from the memory-mapped store with the bank learning
//! from the first step, dense then lazy, timing initialisation and epochs apart, and removes
//! the store. The scale target is
//! `ENSEMBED_BENCH_STORE=f16 ENSEMBED_BENCH_N=200000 cargo bench -p ensembed --bench fit`
//! (a 3.3 GB store; no real dataset of that size ships with the repository, so the features
//! are random post-ReLU-like values: throughput and memory do not depend on them).

use std::time::Instant;

use ensembed::config::{BankMode, EmbedConfig, FitConfig};
use ensembed::embed::embed;
use ensembed::fit::{fit, fit_from, FitState};
use ensembed::kernels::{matmul, Layout};
use ensembed::memory::{self, fit_memory, process_memory, reset_peak_rss, store_feature_bytes};
use ensembed::store::{Store, StoreWriter};
use ensembed::{InMemory, Matrix, NoProgress};
use half::f16;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

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

/// Seconds per training step of ensembed (bank learning from the first step) on the given shape.
fn ensembed_step_seconds(feats: &InMemory, b: usize, bank: BankMode) -> f64 {
    let cfg = FitConfig { epochs: 1, batch: b, warmup: Some(0), bank, ..Default::default() };
    let t = Instant::now();
    fit(feats, &cfg, &NoProgress).unwrap();
    t.elapsed().as_secs_f64() / feats_len(feats).div_ceil(b) as f64
}

fn feats_len(f: &InMemory) -> usize {
    ensembed::FeatureSet::len(f)
}

/// Runs one reference script (`bench/NAME`) and returns its seconds per step, or says why not.
fn reference_step(name: &str, what: &str, args: &[String], threads: usize) -> Option<f64> {
    let script = format!("{}/../../bench/{name}", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args(args)
        .env_remove("OPENBLAS_CORETYPE")
        .env_remove("OPENBLAS_L2_SIZE")
        .env("OPENBLAS_NUM_THREADS", threads.to_string())
        .env("OMP_NUM_THREADS", threads.to_string())
        .output();
    let Some(out) = out.ok().filter(|o| o.status.success()) else {
        println!("reference: python3 with {what} not available, skipped");
        return None;
    };
    let line = String::from_utf8_lossy(&out.stdout);
    let secs = line.split("\"step_seconds\": ").nth(1).and_then(|s| s.split(',').next()).and_then(|s| s.trim().parse::<f64>().ok());
    if secs.is_none() {
        println!("reference: unreadable output of {name}: {line}");
    }
    secs
}

/// Runs the numpy and PyTorch references and prints their step times against ensembed's,
/// measured back to back: numpy (moves the batch's rows of the bank) against the `lazy` bank,
/// PyTorch (`Adam` over the whole bank, as the paper) against the `dense` bank.
fn reference(n: usize, d: usize, m: usize, b: usize, threads: usize) {
    let args: Vec<String> = ["--d", &d.to_string(), "--m", &m.to_string(), "--batch", &b.to_string(), "--n", &n.to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let feats = InMemory::unnamed((0..m).map(|_| features(&mut rng, n, d)).collect()).unwrap();
    if let Some(secs) = reference_step("reference_fit.py", "numpy", &args, threads) {
        let ours = ensembed_step_seconds(&feats, b, BankMode::Lazy);
        println!("numpy reference step   {secs:.3} s, ensembed (lazy) step  {ours:.3} s: ensembed is {:.2}x faster", secs / ours);
    }
    let mut targs = args.clone();
    targs.extend(["--threads".to_string(), threads.to_string()]);
    if let Some(secs) = reference_step("reference_fit_torch.py", "torch", &targs, threads) {
        let ours = ensembed_step_seconds(&feats, b, BankMode::Dense);
        println!("PyTorch reference step {secs:.3} s, ensembed (dense) step {ours:.3} s: ensembed is {:.2}x faster", secs / ours);
    }
}

/// Writes a store of `m` backbones of `[n, d]` synthetic post-ReLU-like features (`u^3`, u
/// uniform) in `dtype`, one backbone at a time, generated in parallel blocks.
fn write_store(dir: &std::path::Path, n: usize, d: usize, m: usize, dtype: &str) -> Store {
    let mut w = StoreWriter::create(dir, n, true).unwrap();
    const ROWS: usize = 1024;
    for j in 0..m {
        let mut h = vec![f16::ZERO; n * d];
        h.par_chunks_mut(ROWS * d).enumerate().for_each(|(blk, out)| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(((j as u64) << 32) | blk as u64);
            out.iter_mut().for_each(|v| *v = f16::from_f32(rng.random::<f32>().powi(3)));
        });
        let name = format!("b{j}");
        if dtype == "f32" {
            let data = h.iter().map(|v| v.to_f32()).collect();
            w.add_backbone_f32(&name, &Matrix::from_vec(n, d, data).unwrap(), ensembed::store::Dtype::F32).unwrap();
        } else {
            w.add_backbone_f16(&name, d, &h).unwrap();
        }
    }
    Store::open(&w.finish().unwrap()).unwrap()
}

/// Scale mode (ENSEMBED_BENCH_STORE): fits from a memory-mapped store on disk.
fn scale(n: usize, d: usize, m: usize, b: usize, dtype: &str, peak_square: f64) {
    let root = std::env::var_os("ENSEMBED_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let tmp = tempfile::tempdir_in(root).unwrap();
    let t = Instant::now();
    let path = write_store(&tmp.path().join("bench.store"), n, d, m, dtype).root().to_path_buf();
    let epochs = env("ENSEMBED_BENCH_EPOCHS", 1);
    let layer = 2.0 * (n * d * d) as f64;
    println!("store: {n} x {d} x {m} backbones, {dtype}, written in {:.0} s", t.elapsed().as_secs_f64());
    for bank in [BankMode::Dense, BankMode::Lazy] {
        // Opened afresh, so that the mapped pages of one run do not count in the next's RSS.
        let store = Store::open(&path).unwrap();
        let cfg = FitConfig { epochs, batch: b, bank, warmup: Some(0), ..Default::default() };
        reset_peak_rss();
        let before = process_memory().map_or(0, |m| m.rss);
        let t = Instant::now();
        let state = FitState::new(&store, &cfg).unwrap();
        let init = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let out = fit_from(&store, &cfg, state, &NoProgress, &mut |_| Ok(())).unwrap();
        let secs = t.elapsed().as_secs_f64() / epochs as f64;
        // Per MLP and epoch with the bank learning: forward, weight and input gradients of 2
        // layers each.
        let gf = m as f64 * layer * 6.0 / secs / 1e9;
        println!(
            "fit   {bank:?}: n {n}, d {d}, m {m}, batch {b}: init {init:.1} s, {secs:7.1} s/epoch, {:8.0} samples/s, {gf:6.1} GFLOP/s = {:.2} of sgemm peak (loss {:.4})",
            n as f64 / secs,
            gf / peak_square,
            out.history.last().unwrap().loss
        );
        drop(out);
        let bound = fit_memory(n, &vec![d; m], &cfg);
        let report = memory::report(&bound, store_feature_bytes(&store), "mapped store", process_memory());
        println!("      {report}; RSS before the fit {}", memory::Bytes(before));
    }
}

fn main() {
    let (n, d, m, b) = (env("ENSEMBED_BENCH_N", 2048), env("ENSEMBED_BENCH_D", 2048), env("ENSEMBED_BENCH_M", 4), env("ENSEMBED_BENCH_B", 256));
    let threads = rayon::current_num_threads();
    let peak_square = gemm_gflops(2048, 2048, 2048, threads, 3);
    let peak_layer = gemm_gflops(b, d, d, threads, 10);
    println!("machine: {threads} threads");
    println!("sgemm 2048^3                  {peak_square:8.1} GFLOP/s  (the peak the ratios below use)");
    println!("sgemm [{b},{d}]x[{d},{d}]ᵀ     {peak_layer:8.1} GFLOP/s  ({:.2} of peak)", peak_layer / peak_square);
    if let Ok(dtype) = std::env::var("ENSEMBED_BENCH_STORE") {
        assert!(dtype == "f16" || dtype == "f32", "ENSEMBED_BENCH_STORE={dtype}: expected f16 or f32");
        scale(n, d, m, b, &dtype, peak_square);
        return;
    }

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let feats = InMemory::unnamed((0..m).map(|_| features(&mut rng, n, d)).collect()).unwrap();
    // One layer pass over n rows: 2 n d^2 flops; a depth-2 MLP has two such layers.
    let layer = 2.0 * (n * d * d) as f64;
    for bank in [BankMode::Dense, BankMode::Lazy] {
        // 3 epochs, 1 of warm-up (which skips the first layer's input gradient). The first
        // epoch also pays the first touch of the Adam moments (page faults on 0.5 GB at this
        // shape); a real fit of 100 epochs does not notice it, so the steady state is the last
        // epoch, and the whole run is printed beside it.
        let cfg = FitConfig { epochs: 3, batch: b, bank, ..Default::default() };
        reset_peak_rss();
        let before = process_memory().map_or(0, |m| m.rss);
        let t = Instant::now();
        let state = FitState::new(&feats, &cfg).unwrap();
        let mut ends = vec![Instant::now()];
        fit_from(&feats, &cfg, state, &NoProgress, &mut |_| {
            ends.push(Instant::now());
            Ok(())
        })
        .unwrap();
        let whole = t.elapsed().as_secs_f64();
        let last = (ends[3] - ends[2]).as_secs_f64();
        let memory = memory::report(&fit_memory(n, &vec![d; m], &cfg), (m * n * d * 4) as u64, "features in memory", process_memory());
        // Per MLP and epoch: forward 2 layers, weight gradients 2 layers, input gradients 1
        // layer (warm-up) or 2 (bank learning).
        let (warm, learn) = (m as f64 * layer * 5.0, m as f64 * layer * 6.0);
        let gf_whole = (warm + 2.0 * learn) / whole / 1e9;
        let gf = learn / last / 1e9;
        println!(
            "fit   {bank:?}: n {n}, d {d}, m {m}, batch {b}: {last:6.2} s/epoch, {:8.0} samples/s, {gf:6.1} GFLOP/s = {:.2} of sgemm peak (steady epoch); whole run with init and first touch {gf_whole:6.1} GFLOP/s = {:.2}",
            n as f64 / last,
            gf / peak_square,
            gf_whole / peak_square
        );
        println!("      {memory}; RSS before the fit {}", memory::Bytes(before));
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
