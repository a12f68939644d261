//! The linear probe against answers known independently: scipy's optimum of the same objective
//! on a closed-form dataset (`scripts/linear_reference.py`), the gradient against finite
//! differences of an f64 objective written here, perfect accuracy on separable data, thread
//! invariance, warm starts, and one test per validation error.

use ensembed::eval::linear::{evaluate_linear, fit_logistic, logistic_objective, LinearConfig};
use ensembed::{Error, Matrix, NoProgress};
use rand::Rng;

use crate::helpers::{random_features, random_matrix, rng};

/// The objective written plainly in f64: mean cross-entropy + wd/2 ||W||² (bias free).
fn objective_f64(x: &[f64], y: &[u32], d: usize, c: usize, wd: f64, w: &[f64], b: &[f64]) -> f64 {
    let n = y.len();
    let mut total = 0.0;
    for i in 0..n {
        let z: Vec<f64> = (0..c).map(|k| b[k] + (0..d).map(|j| x[i * d + j] * w[j * c + k]).sum::<f64>()).collect();
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        total += m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln() - z[y[i] as usize];
    }
    total / n as f64 + 0.5 * wd * w.iter().map(|v| v * v).sum::<f64>()
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&a| a as f64).collect()
}

fn cfg(threads: usize) -> LinearConfig {
    LinearConfig { threads, ..LinearConfig::default() }
}

/// The dataset of `scripts/linear_reference.py`, built from the same formulas: n = 60, d = 5,
/// c = 3, a_ij = sin(1.7 i + 0.3 j) + 0.5 cos(0.9 i j + j), x_i = a_i / ||a_i|| (f64, then
/// f32), y_i = argmax_k x_ik + 0.3 sin(2.9 i + 1.3 k) (its smallest margin is 1.1e-3, far above
/// any last-digit difference between two libms).
fn reference_data() -> (Matrix, Vec<u32>) {
    let (n, d, c) = (60, 5, 3);
    let mut x = Vec::with_capacity(n * d);
    let mut y = Vec::with_capacity(n);
    for i in 0..n {
        let fi = i as f64;
        let a: Vec<f64> = (0..d).map(|j| (1.7 * fi + 0.3 * j as f64).sin() + 0.5 * (0.9 * fi * j as f64 + j as f64).cos()).collect();
        let norm = a.iter().map(|v| v * v).sum::<f64>().sqrt();
        let a: Vec<f64> = a.iter().map(|v| v / norm).collect();
        let s: Vec<f64> = (0..c).map(|k| a[k] + 0.3 * (2.9 * fi + 1.3 * k as f64).sin()).collect();
        y.push((0..c).fold(0, |best, k| if s[k] > s[best] { k } else { best }) as u32);
        x.extend(a.iter().map(|&v| v as f32));
    }
    (Matrix::from_vec(n, d, x).unwrap(), y)
}

// `python3 scripts/linear_reference.py` (scipy L-BFGS-B in f64 on the f32 data, from zero; the
// decays rounded to f32 as `LinearConfig` holds them; math.sin/cos = the C library's, as Rust's):
//
//     WEIGHT_DECAYS = tuple(float(np.float32(v)) for v in (1e-2, 1e-3))
//     f = mean(m + log(s) - z[arange(N), y]) + 0.5 * wd * sum(w * w)      # z = x @ w + b
//     res = minimize(objective, zeros, args=(x, y, wd), jac=True, method="L-BFGS-B",
//                    options={"maxiter": 100000, "gtol": 1e-14, "ftol": 1e-16, "maxcor": 30})
//
//   labels per class [31, 7, 22], smallest label margin 1.104e-03
//   wd 0.009999999776482582: objective 0.839721315227, max |gradient| 8.24e-12
//     W = [1.59531135, -0.87742065, -0.71789071, -0.73215128, 1.41713448, -0.68498320, -1.22463799, 0.32627898, 0.89835901, 0.20412780, -0.34960554, 0.14547774, -0.04765105, 0.17937335, -0.13172230]
//     b = [0.19372078, -0.68022468, 0.48650390]
//   wd 0.0010000000474974513: objective 0.739342928357, max |gradient| 3.08e-10
//     W = [4.08533606, -3.34546116, -0.73987490, -2.53426610, 4.04012087, -1.50585478, -2.27707785, 0.76740485, 1.50967300, 0.59168853, -1.22498914, 0.63330061, 0.43274484, 0.08651793, -0.51926277]
//     b = [-0.34674409, -0.33085487, 0.67759896]
//
// (Its plain gradient-descent fallback, run without scipy, prints the same digits.)
#[rustfmt::skip]
const REFERENCE: [(f32, f64, [f64; 15], [f64; 3]); 2] = [
    (1e-2, 0.839721315227,
     [1.59531135, -0.87742065, -0.71789071, -0.73215128, 1.41713448, -0.68498320, -1.22463799, 0.32627898, 0.89835901, 0.20412780, -0.34960554, 0.14547774, -0.04765105, 0.17937335, -0.13172230],
     [0.19372078, -0.68022468, 0.48650390]),
    (1e-3, 0.739342928357,
     [4.08533606, -3.34546116, -0.73987490, -2.53426610, 4.04012087, -1.50585478, -2.27707785, 0.76740485, 1.50967300, 0.59168853, -1.22498914, 0.63330061, 0.43274484, 0.08651793, -0.51926277],
     [-0.34674409, -0.33085487, 0.67759896]),
];

#[test]
fn matches_reference_script() {
    let (x, y) = reference_data();
    assert_eq!((0..3).map(|k| y.iter().filter(|&&l| l == k).count()).collect::<Vec<_>>(), [31, 7, 22]);
    let c = LinearConfig { tol: 1e-7, max_iter: 10_000, ..cfg(2) };
    for (wd, f_ref, w_ref, b_ref) in REFERENCE {
        let (w, b, it) = fit_logistic(&x, &y, 3, wd, &c, None).unwrap();
        let f = objective_f64(&f64s(&x.data), &y, 5, 3, wd as f64, &f64s(&w), &f64s(&b));
        // Measured: 1e-12 apart; the margin is for other CPUs' GEMM round-off.
        assert!(((f - f_ref) / f_ref).abs() < 1e-8, "wd {wd}: objective {f} vs scipy {f_ref} ({it} iterations)");
        for (k, (&a, &r)) in w.iter().zip(&w_ref).enumerate() {
            assert!((a as f64 - r).abs() < 1e-4, "wd {wd}: W[{k}] = {a} vs scipy {r}");
        }
        // Softmax ignores a common shift of the bias: compare with the mean removed.
        let mean = b.iter().map(|&v| v as f64).sum::<f64>() / 3.0;
        for (k, (&a, &r)) in b.iter().zip(&b_ref).enumerate() {
            assert!((a as f64 - mean - r).abs() < 1e-4, "wd {wd}: b[{k}] = {a} (mean {mean}) vs scipy {r}");
        }
    }
}

#[test]
fn gradient_matches_finite_differences() {
    // Non-negative unit rows, as post-ReLU features: a large mean row, so the solver's implicit
    // centring is exercised, not bypassed.
    let (n, d, c, wd) = (53, 7, 4, 3e-2);
    let mut r = rng(5);
    let x = random_features(&mut r, n, d);
    let y: Vec<u32> = (0..n).map(|i| (i % c) as u32).collect();
    let w: Vec<f32> = random_matrix(&mut r, d, c).data.iter().map(|v| 2.0 * v).collect();
    let b: Vec<f32> = (0..c).map(|_| r.random_range(-1.0f32..1.0)).collect();

    let (f, gw, gb) = logistic_objective(&x, &y, c, wd, &w, &b, 2).unwrap();
    let (xd, wd64) = (f64s(&x.data), wd as f64);
    let (w64, b64) = (f64s(&w), f64s(&b));
    let f_ref = objective_f64(&xd, &y, d, c, wd64, &w64, &b64);
    assert!(((f - f_ref) / f_ref).abs() < 1e-6, "objective {f} vs f64 {f_ref}");

    let h = 1e-5;
    let fd = |wp: &[f64], bp: &[f64]| objective_f64(&xd, &y, d, c, wd64, wp, bp);
    for k in 0..d * c {
        let (mut up, mut dn) = (w64.clone(), w64.clone());
        up[k] += h;
        dn[k] -= h;
        let num = (fd(&up, &b64) - fd(&dn, &b64)) / (2.0 * h);
        assert!((gw[k] as f64 - num).abs() < 1e-5, "dW[{k}] = {} vs finite difference {num}", gw[k]);
    }
    for k in 0..c {
        let (mut up, mut dn) = (b64.clone(), b64.clone());
        up[k] += h;
        dn[k] -= h;
        let num = (fd(&w64, &up) - fd(&w64, &dn)) / (2.0 * h);
        assert!((gb[k] as f64 - num).abs() < 1e-5, "db[{k}] = {} vs finite difference {num}", gb[k]);
    }
}

/// `n` unit rows near `centres` (well apart: linearly separable), labels `label_of(class)`.
fn separable(seed: u64, n: usize, centres: &Matrix, label_of: impl Fn(u32) -> u32) -> (Matrix, Vec<u32>) {
    let (classes, d) = (centres.rows as u32, centres.cols);
    let mut r = rng(seed);
    let cls: Vec<u32> = (0..n).map(|_| r.random_range(0..classes)).collect();
    let mut x = random_matrix(&mut r, n, d);
    for (i, &k) in cls.iter().enumerate() {
        x.row_mut(i).iter_mut().zip(centres.row(k as usize)).for_each(|(v, c)| *v = 0.1 * *v + c);
    }
    x.normalize_rows();
    (x, cls.into_iter().map(label_of).collect())
}

#[test]
fn separable_data_is_classified_perfectly() {
    let mut centres = Matrix::zeros(4, 16);
    (0..4).for_each(|k| centres.row_mut(k)[3 * k] = 1.0);
    // Sparse labels {1, 3, 5, 7}: the probe must map them to 4 dense classes.
    let (train, ty) = separable(1, 400, &centres, |k| 2 * k + 1);
    let (test, mut qy) = separable(2, 150, &centres, |k| 2 * k + 1);
    let c = cfg(2);
    let rep = evaluate_linear(&train, &ty, &test, &qy, &c, &NoProgress).unwrap();
    assert_eq!((rep.top1, rep.top5, rep.num_classes), (1.0, 1.0, 4), "{rep:?}");
    assert!(c.weight_decays.contains(&rep.best_weight_decay), "{rep:?}");
    let listed: Vec<f32> = rep.holdout_top1.iter().map(|&(wd, _)| wd).collect();
    assert_eq!(listed, c.weight_decays, "every decay, in the config's order");
    assert!(rep.holdout_top1.iter().all(|&(_, a)| (0.0..=1.0).contains(&a)));
    let best = rep.holdout_top1.iter().find(|&&(wd, _)| wd == rep.best_weight_decay).unwrap().1;
    assert!(rep.holdout_top1.iter().all(|&(_, a)| a <= best) && best == 1.0, "{rep:?}");
    assert!(rep.iterations > 0);

    // A test label train never had is a miss, top-1 and top-5 alike.
    qy[0] = 99;
    let rep = evaluate_linear(&train, &ty, &test, &qy, &c, &NoProgress).unwrap();
    assert_eq!((rep.top1, rep.top5), (149.0 / 150.0, 149.0 / 150.0));
}

#[test]
fn sweep_picks_the_decay_the_held_out_part_prefers() {
    // Few samples in many dimensions with noisy labels: weak decays overfit, so the held-out
    // accuracies differ and the winner must be the (largest) decay with the best of them.
    let (n, d) = (300, 64);
    let mut r = rng(8);
    let x = random_features(&mut r, n, d);
    let y: Vec<u32> = (0..n).map(|i| ((x.row(i)[0] > x.row(i)[1]) as u32 + (r.random_range(0..4) == 0) as u32) % 2).collect();
    let c = LinearConfig { weight_decays: vec![1e-4, 1e-1, 1e-2, 1e-3], holdout: 0.2, ..cfg(2) };
    let rep = evaluate_linear(&x, &y, &x, &y, &c, &NoProgress).unwrap();
    let best = rep.holdout_top1.iter().map(|&(_, a)| a).fold(0.0, f64::max);
    let winners: Vec<f32> = rep.holdout_top1.iter().filter(|&&(_, a)| a == best).map(|&(wd, _)| wd).collect();
    assert_eq!(rep.best_weight_decay, winners.iter().cloned().fold(0.0, f32::max), "{rep:?}");
    assert_eq!(rep.num_classes, 2);
}

#[test]
fn results_do_not_depend_on_threads_and_warm_starts_hold() {
    let (n, d, c) = (3000, 40, 6);
    let mut r = rng(3);
    let x = random_features(&mut r, n, d);
    let y: Vec<u32> = (0..n).map(|i| (x.row(i).iter().take(c).enumerate().fold((0, 0.0), |b, (k, &v)| if v > b.1 { (k, v) } else { b }).0) as u32).collect();
    let one = fit_logistic(&x, &y, c, 1e-4, &cfg(1), None).unwrap();
    let three = fit_logistic(&x, &y, c, 1e-4, &cfg(3), None).unwrap();
    assert_eq!(one, three, "bitwise equal whatever the thread count");

    // Restarted at its own optimum, a fit has (almost) nothing left to do.
    let (w, b, _) = &one;
    let (w2, b2, it) = fit_logistic(&x, &y, c, 1e-4, &cfg(2), Some((w, b))).unwrap();
    assert!(it <= 2, "{it} iterations from the optimum");
    let f = |w: &[f32], b: &[f32]| logistic_objective(&x, &y, c, 1e-4, w, b, 2).unwrap().0;
    assert!(f(&w2, &b2) <= f(w, b) + 1e-9);
}

fn assert_config(err: Error, want: &str, value: &str) {
    match &err {
        Error::Config { field, value: v, .. } => {
            assert_eq!((field.as_str(), v.as_str()), (want, value), "{err}");
        }
        other => panic!("expected a config error on `{want}`, got {other}"),
    }
}

fn assert_shape(err: Error, what: &str) {
    match &err {
        Error::Shape { what: w, .. } => assert!(w.contains(what), "{err}"),
        other => panic!("expected a shape error on {what}, got {other}"),
    }
}

#[test]
fn validation_errors() {
    let mut r = rng(4);
    let x = random_features(&mut r, 40, 6);
    let y: Vec<u32> = (0..40).map(|i| i % 2).collect();
    let (t, ty) = (random_features(&mut r, 10, 6), vec![0u32; 10]);
    let ev = |x: &Matrix, y: &[u32], t: &Matrix, ty: &[u32], c: &LinearConfig| evaluate_linear(x, y, t, ty, c, &NoProgress).unwrap_err();
    let base = cfg(1);

    assert_shape(ev(&x, &y[..39], &t, &ty, &base), "train labels");
    assert_shape(ev(&x, &y, &t, &ty[..9], &base), "test labels");
    assert_shape(ev(&x, &y, &random_features(&mut r, 10, 5), &ty, &base), "test features");
    assert_shape(ev(&x, &[3; 40], &t, &ty, &base), "train labels");
    assert_shape(ev(&Matrix::zeros(0, 6), &[], &t, &ty, &base), "train features");
    assert_shape(ev(&x, &y, &Matrix::zeros(0, 6), &[], &base), "test features");
    let err = ev(&x, &[3; 40], &t, &ty, &base);
    assert!(err.to_string().contains("at least 2 distinct classes") && err.to_string().contains("only class 3"), "{err}");

    for h in [0.0, 1.0, -0.5, f32::NAN] {
        assert_config(ev(&x, &y, &t, &ty, &LinearConfig { holdout: h, ..cfg(1) }), "holdout", &h.to_string());
    }
    // 2 + 2 samples: round(0.1 * 2) = 0 held out per class.
    assert_config(ev(&x.gather_rows(&[0, 1, 2, 3]), &y[..4], &t, &ty, &base), "holdout", "0.1");
    assert_config(ev(&x, &y, &t, &ty, &LinearConfig { weight_decays: vec![], ..cfg(1) }), "weight_decays", "[]");
    for wd in [0.0, -1e-3, f32::NAN, f32::INFINITY] {
        let c = LinearConfig { weight_decays: vec![1e-3, wd], ..cfg(1) };
        assert_config(ev(&x, &y, &t, &ty, &c), "weight_decays", &wd.to_string());
        assert_config(fit_logistic(&x, &y, 2, wd, &base, None).unwrap_err(), "weight_decays", &wd.to_string());
    }
    assert_config(ev(&x, &y, &t, &ty, &LinearConfig { max_iter: 0, ..cfg(1) }), "max_iter", "0");
    assert_config(ev(&x, &y, &t, &ty, &LinearConfig { history: 0, ..cfg(1) }), "history", "0");
    assert_config(ev(&x, &y, &t, &ty, &LinearConfig { threads: 0, ..cfg(1) }), "threads", "0");
    assert_config(ev(&x, &y, &t, &ty, &LinearConfig { tol: f32::NAN, ..cfg(1) }), "tol", "NaN");
    let mut bad = t.clone();
    bad.row_mut(3)[2] = f32::NAN;
    let err = ev(&x, &y, &bad, &ty, &base);
    assert!(err.to_string().contains("row 3, column 2"), "{err}");

    let fit = |y: &[u32], c: usize, init: Option<(&[f32], &[f32])>| fit_logistic(&x, y, c, 1e-3, &base, init).unwrap_err();
    assert_shape(fit(&y[..39], 2, None), "labels");
    assert_config(fit(&y, 1, None), "num_classes", "1");
    assert!(fit(&y, 3, None).to_string().contains("class 2 has no sample"));
    assert!(fit(&[0, 1, 5].repeat(14)[..40], 3, None).to_string().contains("label 5"));
    assert_shape(fit(&y, 2, Some((&[0.0; 11], &[0.0; 2]))), "weights");
    assert_shape(fit(&y, 2, Some((&[0.0; 12], &[0.0; 3]))), "bias");
}
