//! How close the k-NN evaluation comes to the machine's matrix-multiply speed. Exact search is
//! one big GEMM plus selection and voting, so the honest yardstick is a plain multi-threaded
//! GEMM of the same size run in the same process: the ratio says how much the blocking, the
//! top-k scan and the votes cost. Sizes come from ENSEMBED_BENCH_NT / _NQ / _D (default
//! 20,000 train x 2,000 queries x 1,024 dims; the paper's ImageNet-scale setting is far larger);
//! ENSEMBED_BENCH_QUERY_CHUNK / _TRAIN_CHUNK / _THREADS override the config.
//!
//! Then the tool a user would pick instead: faiss-cpu's exact inner-product search (IndexFlatIP)
//! plus the same weighted vote in numpy, `bench/reference_knn.py` on the same shape and threads
//! (ENSEMBED_BENCH_PYTHON names a Python with faiss-cpu; default python3; skipped with a note
//! when it is missing), and the ratio of the two times. Both sides are the best of
//! ENSEMBED_BENCH_ROUNDS runs (default 2): on a shared machine the best run is the one least
//! disturbed. The shape: ENSEMBED_BENCH_NT=50000 ENSEMBED_BENCH_NQ=10000 ENSEMBED_BENCH_D=2048.

use std::time::Instant;

use ensembed::eval::{evaluate_knn, knn_neighbors, KnnConfig};
use ensembed::{Matrix, NoProgress};
use rand::{Rng, SeedableRng};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a count")))
}

/// `[rows, cols]` of random unit rows.
fn unit_rows(rng: &mut rand_chacha::ChaCha8Rng, rows: usize, cols: usize) -> Matrix {
    let data = (0..rows * cols).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let mut m = Matrix::from_vec(rows, cols, data).unwrap();
    m.normalize_rows();
    m
}

fn main() {
    let (nt, nq, d) = (
        env("ENSEMBED_BENCH_NT", 20_000),
        env("ENSEMBED_BENCH_NQ", 2_000),
        env("ENSEMBED_BENCH_D", 1_024),
    );
    let defaults = KnnConfig::default();
    let cfg = KnnConfig {
        query_chunk: env("ENSEMBED_BENCH_QUERY_CHUNK", defaults.query_chunk),
        train_chunk: env("ENSEMBED_BENCH_TRAIN_CHUNK", defaults.train_chunk),
        threads: env("ENSEMBED_BENCH_THREADS", defaults.threads),
        ..defaults
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let (train, test) = (unit_rows(&mut rng, nt, d), unit_rows(&mut rng, nq, d));
    let train_labels: Vec<u32> = (0..nt).map(|_| rng.random_range(0..1000)).collect();
    let test_labels: Vec<u32> = (0..nq).map(|_| rng.random_range(0..1000)).collect();
    let gflop = 2.0 * nq as f64 * nt as f64 * d as f64 / 1e9;
    println!(
        "k-NN bench: {nt} train x {nq} queries x {d} dims, {} threads, blocks {} x {}, ks {:?}",
        cfg.threads, cfg.query_chunk, cfg.train_chunk, cfg.ks
    );

    // The yardstick: S = Q · Tᵀ in one call on all threads, in the best of two layouts (gemm
    // packs some operand orientations element by element); best of two runs, the first warms up.
    let mut s = vec![0f32; nq * nt]; // [nq, nt]
    let mut qt = vec![0f32; d * nq]; // [d, nq]
    for (i, row) in test.data.chunks_exact(d).enumerate() {
        row.iter().enumerate().for_each(|(k, &v)| qt[k * nq + i] = v);
    }
    let mut gemm_s = f64::INFINITY;
    for (what, (dst_cs, dst_rs), (lhs, lhs_cs, lhs_rs)) in [
        ("GEMM, S row-major", (1, nt as isize), (&test.data, 1, d as isize)),
        ("GEMM, S col-major", (nq as isize, 1), (&qt, nq as isize, 1)),
    ] {
        let secs = (0..2)
            .map(|_| {
                let t = Instant::now();
                #[rustfmt::skip]
                unsafe {
                    gemm::gemm(
                        nq, nt, d,
                        s.as_mut_ptr(), dst_cs, dst_rs, false,
                        lhs.as_ptr(), lhs_cs, lhs_rs,
                        train.data.as_ptr(), d as isize, 1,
                        0.0, 1.0, false, false, false,
                        gemm::Parallelism::Rayon(cfg.threads),
                    )
                };
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min);
        println!("{what:<22} {secs:8.3} s  {:8.1} GFLOP/s", gflop / secs);
        gemm_s = gemm_s.min(secs);
    }
    drop((s, qt));
    let gemm_rate = gflop / gemm_s;

    let report = |what: &str, secs: f64| {
        let rate = gflop / secs;
        println!(
            "{what:<22} {secs:8.3} s  {rate:8.1} GFLOP/s  {:.3} of the faster GEMM",
            rate / gemm_rate
        );
    };
    let kmax = *cfg.ks.iter().max().unwrap();
    let rounds = env("ENSEMBED_BENCH_ROUNDS", 2).max(1);
    let best = |f: &mut dyn FnMut()| {
        (0..rounds)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    report("knn_neighbors", best(&mut || drop(knn_neighbors(&train, &test, kmax, &cfg, &NoProgress).unwrap())));
    let mut r = None;
    let ours = best(&mut || r = Some(evaluate_knn(&train, &train_labels, &test, &test_labels, &cfg, &NoProgress).unwrap()));
    report("evaluate_knn", ours);
    // Random labels: accuracy near chance (1/1000); printed so the work cannot be optimised away.
    println!("top-1 at k = 20: {:.4}", r.unwrap().at(20).map_or(f64::NAN, |s| s.top1));

    // faiss-cpu on the same shape and threads.
    let python = std::env::var("ENSEMBED_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/reference_knn.py");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .args(["--nt", &nt.to_string(), "--nq", &nq.to_string(), "--d", &d.to_string()])
        .args(["--threads", &cfg.threads.to_string(), "--rounds", &rounds.to_string()])
        .output();
    let line = match &out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).lines().last().unwrap_or("").to_string(),
        Ok(o) => {
            println!("faiss: skipped ({python} {}: {})", script.display(), String::from_utf8_lossy(&o.stderr).lines().last().unwrap_or(""));
            return;
        }
        Err(e) => {
            println!("faiss: skipped ({python}: {e})");
            return;
        }
    };
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
    let (search, total) = (v["search_seconds"].as_f64().unwrap(), v["total_seconds"].as_f64().unwrap());
    println!("faiss {} IndexFlatIP      {search:8.3} s  {:8.1} GFLOP/s", v["faiss"], gflop / search);
    println!("faiss search + numpy vote {total:8.3} s");
    println!("ensembed / faiss (time of faiss over ours, search and vote): {:.2}x", total / ours);
}
