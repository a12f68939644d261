//! The packed-weight convolution GEMM (`kernels::matmul_packed`) against the `gemm` crate on
//! the GEMM shapes of ResNet-50's and EfficientNet-Lite0's convolutions, one thread, the two
//! alternating shape by shape so that the machine's drift reaches both
//! (`cargo bench -p ensembed --bench packed`). Each side includes what the layer needs after
//! the product: ours its fused bias + ReLU, the gemm crate's a separate pass (as the
//! convolutions ran before the packed kernel).

use std::time::Instant;

use ensembed::kernels::{matmul, matmul_packed, packed_available, Epilogue, Layout, PackedB};

fn best(mut f: impl FnMut(), reps: usize) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    if !packed_available() {
        println!("SKIP: this CPU has no AVX-512; the convolutions use the gemm crate");
        return;
    }
    // (name, m = output pixels of one tile or image, k = kh*kw*ic, n = oc)
    let shapes = [
        ("r50 3x3 64 @56 (tile)", 204, 576, 64),
        ("r50 1x1 64->256 @56", 3136, 64, 256),
        ("r50 1x1 256->64 @56", 3136, 256, 64),
        ("r50 3x3 128 @28", 784, 1152, 128),
        ("r50 1x1 512->128 @28", 784, 512, 128),
        ("r50 1x1 128->512 @28", 784, 128, 512),
        ("r50 3x3 256 @14", 196, 2304, 256),
        ("r50 1x1 1024->256 @14", 196, 1024, 256),
        ("r50 1x1 256->1024 @14", 196, 256, 1024),
        ("r50 3x3 512 @7", 49, 4608, 512),
        ("r50 1x1 2048->512 @7", 49, 2048, 512),
        ("r50 1x1 512->2048 @7", 49, 512, 2048),
        ("cifar 3x3 16 @32", 1024, 144, 16),
        ("cifar 3x3 32 @16", 256, 288, 32),
        ("cifar 3x3 64 @8", 64, 576, 64),
        ("lite0 1x1 32->16 @112", 12544, 32, 16),
        ("lite0 1x1 16->96 @112", 12544, 16, 96),
        ("lite0 1x1 24->144 @56", 3136, 24, 144),
        ("lite0 1x1 40->240 @28", 784, 40, 240),
        ("lite0 1x1 192->1152 @7", 49, 192, 1152),
        ("lite0 1x1 1152->320 @7", 49, 1152, 320),
        ("lite0 1x1 144->24 @56", 3136, 144, 24),
        ("lite0 1x1 240->40 @28", 784, 240, 40),
        ("lite0 1x1 480->80 @14", 196, 480, 80),
        ("lite0 1x1 672->112 @14", 196, 672, 112),
        ("lite0 1x1 1152->192 @7", 49, 1152, 192),
        ("lite0 1x1 320->1280 @7", 49, 320, 1280),
    ];
    println!(
        "{:26} {:>12} {:>12} {:>6}",
        "shape", "gemm GFLOP/s", "ours GFLOP/s", "ratio"
    );
    let (mut t_gemm, mut t_ours) = (0.0, 0.0);
    for (name, m, k, n) in shapes {
        let a: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let b: Vec<f32> = (0..k * n)
            .map(|i| ((i * 104729) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let bias = vec![0.1f32; n];
        let packed = PackedB::pack(&b, k, n);
        let mut c = vec![0.0f32; m * n];
        let reps = (2e8 / (m * n * k) as f64).clamp(3.0, 200.0) as usize;
        let (mut g, mut o) = (f64::MAX, f64::MAX);
        for _ in 0..3 {
            g = g.min(best(
                || {
                    matmul(&mut c, &a, Layout::N, &b, Layout::N, m, n, k, false, 1);
                    for row in c.chunks_exact_mut(n) {
                        for (v, &bb) in row.iter_mut().zip(&bias) {
                            *v = (*v + bb).max(0.0);
                        }
                    }
                },
                reps,
            ));
            let epi = Epilogue {
                bias: &bias,
                residual: None,
                lo: 0.0,
                hi: f32::INFINITY,
            };
            o = o.min(best(
                || matmul_packed(&mut c, &a, &packed, m, &epi, 1),
                reps,
            ));
        }
        let flop = 2.0 * (m * n * k) as f64;
        println!(
            "{name:26} {:12.1} {:12.1} {:6.2}",
            flop / g / 1e9,
            flop / o / 1e9,
            g / o
        );
        t_gemm += g;
        t_ours += o;
    }
    println!(
        "sum of best times: gemm {:.2} ms, ours {:.2} ms, ratio {:.2}",
        t_gemm * 1e3,
        t_ours * 1e3,
        t_gemm / t_ours
    );
}
