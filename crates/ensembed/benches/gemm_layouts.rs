//! Which operand layout the gemm crate runs fastest for each of a layer's three products
//! (a design measurement behind `model/mlp.rs`; `cargo bench -p ensembed --bench gemm_layouts`).

use std::time::Instant;

use ensembed::kernels::{matmul, Layout};

fn time(m: usize, n: usize, k: usize, ta: Layout, tb: Layout, threads: usize) -> f64 {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; n * k];
    let mut c = vec![0.0f32; m * n];
    let mut best = f64::MAX;
    for _ in 0..8 {
        let t = Instant::now();
        matmul(&mut c, &a, ta, &b, tb, m, n, k, false, threads);
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (m * n * k) as f64 / best / 1e9
}

fn main() {
    let threads = rayon::current_num_threads();
    let (b, d) = (256, 2048);
    println!("forward as Yᵀ = W·Xᵀ (col-major dst): {:.1} GFLOP/s", forward_as_transpose(threads));
    println!("square 2048^3: {:.1} GFLOP/s", time(2048, 2048, 2048, Layout::N, Layout::N, threads));
    for (name, m, n, k) in [("[b,d]x[d,d] (forward/dx)", b, d, d), ("[d,b]x[b,d] (weight grad)", d, d, b), ("[d,d]x[d,b] (transposed fwd)", d, b, d)] {
        for ta in [Layout::N, Layout::T] {
            for tb in [Layout::N, Layout::T] {
                println!(
                    "{name:30} a {ta:?} b {tb:?}: {:6.1} GFLOP/s ({threads} threads), {:6.1} (1 thread)",
                    time(m, n, k, ta, tb, threads),
                    time(m, n, k, ta, tb, 1)
                );
            }
        }
    }
}

/// The forward product written as `Yᵀ = W · Xᵀ` into a row-major `Y` (column-major view).
#[allow(dead_code)]
pub fn forward_as_transpose(threads: usize) -> f64 {
    let (b, d) = (256usize, 2048usize);
    let x = vec![0.5f32; b * d];
    let w = vec![0.25f32; d * d];
    let mut y = vec![0.0f32; b * d];
    let mut best = f64::MAX;
    for _ in 0..8 {
        let t = Instant::now();
        unsafe {
            gemm::gemm(d, b, d, y.as_mut_ptr(), d as isize, 1, false, w.as_ptr(), 1, d as isize, x.as_ptr(), d as isize, 1, 1.0, 1.0, false, false, false, gemm::Parallelism::Rayon(threads));
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (b * d * d) as f64 / best / 1e9
}
