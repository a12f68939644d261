//! How long the linear probe takes on the paper's transfer-scale setting, and where the time
//! goes. Every L-BFGS iteration costs two passes over the features (the direction's logits and
//! the gradient, one GEMM each), so the yardstick is those two GEMMs timed alone in the same
//! process: seconds per iteration over that floor says what the line search, the softmax passes
//! and the optimiser's own vectors cost. Sizes come from ENSEMBED_BENCH_N / _D (default 20,000
//! train x 1,024 dims, 10 classes; test is a tenth of train); ENSEMBED_BENCH_CLASSES overrides
//! the class count, ENSEMBED_BENCH_TOL / _MAX_ITER / _HISTORY the solver. The data are
//! post-ReLU-like non-negative unit rows, each noise plus a faint class centre (weight
//! ENSEMBED_BENCH_SIGNAL, default 0.1: about 92% top-1), so that the held-out accuracies differ
//! across the sweep and the weak decays overfit, as on real features.

use std::sync::Mutex;
use std::time::Instant;

use ensembed::eval::linear::{evaluate_linear, LinearConfig};
use ensembed::kernels::{matmul, Layout};
use ensembed::{Matrix, Progress};
use rand::{Rng, SeedableRng};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name}={v} is not a count")))
}

/// `[rows, d]` unit rows `u³ + signal · c_y` (u uniform in [0, 1), `c_y` the row's class
/// centre), with their labels.
fn data(rng: &mut rand_chacha::ChaCha8Rng, rows: usize, centres: &Matrix, signal: f32) -> (Matrix, Vec<u32>) {
    let (classes, d) = (centres.rows, centres.cols);
    let labels: Vec<u32> = (0..rows).map(|_| rng.random_range(0..classes as u32)).collect();
    let mut x = Matrix::zeros(rows, d);
    for (i, &y) in labels.iter().enumerate() {
        x.row_mut(i).iter_mut().zip(centres.row(y as usize)).for_each(|(v, c)| *v = rng.random_range(0.0f32..1.0).powi(3) + signal * c);
    }
    x.normalize_rows();
    (x, labels)
}

/// Prints every progress message with the time since the start.
struct Timed(Instant, Mutex<()>);

impl Progress for Timed {
    fn start(&self, _label: &str, _total: u64) {}
    fn advance(&self, _n: u64) {}
    fn message(&self, msg: &str) {
        let _g = self.1.lock().unwrap();
        println!("  {:8.2} s  {msg}", self.0.elapsed().as_secs_f64());
    }
    fn finish(&self) {}
}

fn main() {
    let (n, d, classes) = (env("ENSEMBED_BENCH_N", 20_000), env("ENSEMBED_BENCH_D", 1_024), env("ENSEMBED_BENCH_CLASSES", 10));
    let defaults = LinearConfig::default();
    let cfg = LinearConfig {
        tol: std::env::var("ENSEMBED_BENCH_TOL").map_or(defaults.tol, |v| v.parse().unwrap()),
        max_iter: env("ENSEMBED_BENCH_MAX_ITER", defaults.max_iter),
        history: env("ENSEMBED_BENCH_HISTORY", defaults.history),
        ..defaults
    };
    let signal = std::env::var("ENSEMBED_BENCH_SIGNAL").map_or(0.1, |v| v.parse::<f32>().unwrap());
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let centres = Matrix::from_vec(classes, d, (0..classes * d).map(|_| rng.random_range(0.0f32..1.0).powi(3)).collect()).unwrap();
    let (train, train_labels) = data(&mut rng, n, &centres, signal);
    let (test, test_labels) = data(&mut rng, n / 10, &centres, signal);
    println!(
        "linear-probe bench: {n} train x {} test x {d} dims, {classes} classes, {} threads, decays {:?}, tol {}, max_iter {}",
        test.rows, cfg.threads, cfg.weight_decays, cfg.tol, cfg.max_iter
    );

    // The floor of one iteration: the two GEMMs, on all of train, best of three.
    let (w, r) = (vec![0.01f32; d * classes], vec![0.01f32; n * classes]);
    let (mut u, mut gt) = (vec![0f32; n * classes], vec![0f32; classes * d]);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(cfg.threads).build().unwrap();
    let gemm_s = pool.install(|| {
        (0..3)
            .map(|_| {
                let t = Instant::now();
                matmul(&mut u, &train.data, Layout::N, &w, Layout::N, n, classes, d, false, cfg.threads); // [n, c]
                matmul(&mut gt, &r, Layout::T, &train.data, Layout::N, classes, d, n, false, cfg.threads); // [c, d]
                t.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    });
    println!("two GEMMs (one iteration's floor on all of train): {:.1} ms", gemm_s * 1e3);

    let t = Instant::now();
    let rep = evaluate_linear(&train, &train_labels, &test, &test_labels, &cfg, &Timed(t, Mutex::new(()))).unwrap();
    let secs = t.elapsed().as_secs_f64();
    // The sweep fits 90% of train, the refit all of it: count iterations at the average size.
    let per_it = secs / rep.iterations.max(1) as f64;
    println!(
        "evaluate_linear: {secs:.2} s, {} iterations, {:.1} ms per iteration ({:.2}x the two GEMMs)",
        rep.iterations,
        per_it * 1e3,
        per_it / gemm_s
    );
    println!(
        "test top-1 {:.4}, top-5 {:.4}, best weight decay {:e}, held-out top-1 {:?}",
        rep.top1, rep.top5, rep.best_weight_decay, rep.holdout_top1
    );
}
