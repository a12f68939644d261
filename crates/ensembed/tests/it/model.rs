//! The learning engine against known answers: hand-written gradients against finite differences
//! of an independent f64 forward, Adam against a reference script, the two bank semantics,
//! PCA against an exact eigensolver, save/load, determinism and inference independence.

use ensembed::config::{BankMode, BiasInit, EmbedConfig, FitConfig};
use ensembed::embed::embed;
use ensembed::fit::fit;
use ensembed::model::adam::{Adam, AdamParams};
use ensembed::model::bank::Bank;
use ensembed::model::init::init_mlp;
use ensembed::kernels::transpose;
use ensembed::model::loss::{cosine_loss_grad, cosine_loss_grad_cols};
use ensembed::model::mlp::Mlp;
use ensembed::model::EnsembleModel;
use ensembed::objective::Workspace;
use ensembed::pca::fit_pca;
use ensembed::{FeatureSet, InMemory, Matrix, NoProgress};

use crate::helpers::{jacobi_eigenvalues, max_abs_diff, random_features, random_matrix, rng};

/// An independent f64 forward of `mlp` plus the summed cosine loss against `z`.
fn loss_f64(mlp_w: &[Vec<f64>], mlp_b: &[Vec<f64>], dims: &[usize], final_relu: bool, x: &[f64], z: &[f64], b: usize) -> f64 {
    let mut total = 0.0;
    for i in 0..b {
        let mut h: Vec<f64> = x[i * dims[0]..(i + 1) * dims[0]].to_vec();
        for l in 0..mlp_w.len() {
            let (fi, fo) = (dims[l], dims[l + 1]);
            let mut y = vec![0.0; fo];
            for o in 0..fo {
                let mut s = mlp_b[l][o];
                for k in 0..fi {
                    s += mlp_w[l][o * fi + k] * h[k];
                }
                y[o] = if l + 1 < mlp_w.len() || final_relu { s.max(0.0) } else { s };
            }
            h = y;
        }
        let zi = &z[i * h.len()..(i + 1) * h.len()];
        let dot: f64 = h.iter().zip(zi).map(|(a, b)| a * b).sum();
        let nh = h.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-8);
        let nz = zi.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-8);
        total += 1.0 - dot / (nh * nz);
    }
    total
}

fn params_f64(mlp: &Mlp) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let w = mlp.layers.iter().map(|l| l.weight.iter().map(|&v| v as f64).collect()).collect();
    let b = mlp.layers.iter().map(|l| l.bias.iter().map(|&v| v as f64).collect()).collect();
    (w, b)
}

fn check_gradients(depth: usize, final_relu: bool, last_bias: BiasInit, seed: u64) {
    let mut r = rng(seed);
    let (d, hidden, dout, b) = (7, 9, 5, 6);
    let mut widths = vec![d];
    widths.extend(std::iter::repeat_n(hidden, depth - 1));
    widths.push(dout);
    let mlp = init_mlp(&widths, final_relu, last_bias, &mut r);
    let x = random_matrix(&mut r, b, d);
    let z = random_features(&mut r, b, dout);
    let scale = 0.37f32;

    // The MLP works feature-major: transpose the sample-major test data in and out.
    let (mut xt, mut zt, mut dxt) = (vec![0.0; b * d], vec![0.0; b * dout], vec![0.0; b * d]);
    transpose(&x.data, b, d, &mut xt);
    transpose(&z.data, b, dout, &mut zt);
    let mut tape = mlp.tape(b);
    let mut grads = mlp.zero_grads();
    mlp.forward(&xt, b, &mut tape, 1);
    let (out, g) = mlp.output_and_grad(&mut tape);
    cosine_loss_grad_cols(out, &zt, b, scale, g);
    mlp.backward(&xt, &mut tape, Some(&mut grads), Some(&mut dxt), false, 1);
    let mut dx = vec![0.0; b * d];
    transpose(&dxt, d, b, &mut dx);

    let (w, bb) = params_f64(&mlp);
    let x64: Vec<f64> = x.data.iter().map(|&v| v as f64).collect();
    let z64: Vec<f64> = z.data.iter().map(|&v| v as f64).collect();
    let h = 1e-6;
    let f = |w: &[Vec<f64>], bb: &[Vec<f64>], x: &[f64]| scale as f64 * loss_f64(w, bb, &widths, final_relu, x, &z64, b);
    let close = |an: f32, fd: f64, what: &str| {
        assert!(
            (an as f64 - fd).abs() <= 2e-4 + 2e-3 * fd.abs(),
            "depth {depth} final_relu {final_relu}: {what}: analytic {an} vs finite difference {fd}"
        );
    };
    for l in 0..depth {
        for k in (0..w[l].len()).step_by(3) {
            let (mut wp, mut wm) = (w.clone(), w.clone());
            wp[l][k] += h;
            wm[l][k] -= h;
            close(grads.weight[l][k], (f(&wp, &bb, &x64) - f(&wm, &bb, &x64)) / (2.0 * h), &format!("dW[{l}][{k}]"));
        }
        for k in 0..bb[l].len() {
            let (mut bp, mut bm) = (bb.clone(), bb.clone());
            bp[l][k] += h;
            bm[l][k] -= h;
            close(grads.bias[l][k], (f(&w, &bp, &x64) - f(&w, &bm, &x64)) / (2.0 * h), &format!("db[{l}][{k}]"));
        }
    }
    for k in 0..x64.len() {
        let (mut xp, mut xm) = (x64.clone(), x64.clone());
        xp[k] += h;
        xm[k] -= h;
        close(dx[k], (f(&w, &bb, &xp) - f(&w, &bb, &xm)) / (2.0 * h), &format!("dx[{k}]"));
    }
}

#[test]
fn mlp_and_cosine_loss_gradients_match_finite_differences() {
    for depth in 1..=4 {
        for final_relu in [true, false] {
            // Zero last bias keeps many outputs active; the PyTorch init exercises dead units.
            check_gradients(depth, final_relu, BiasInit::Zero, depth as u64);
            check_gradients(depth, final_relu, BiasInit::Torch, 10 + depth as u64);
        }
    }
}

#[test]
fn feature_major_cosine_loss_equals_the_sample_major_one() {
    let mut r = rng(9);
    let (b, d) = (13, 21);
    let o = random_matrix(&mut r, b, d);
    let mut z = random_features(&mut r, b, d);
    z.row_mut(3).fill(0.0); // a zero target exercises the clamp
    let mut g = vec![0.0; b * d];
    let want = cosine_loss_grad(&o.data, &z.data, d, 0.5, &mut g);
    let (mut ot, mut zt, mut gt, mut g2) = (vec![0.0; b * d], vec![0.0; b * d], vec![0.0; b * d], vec![0.0; b * d]);
    transpose(&o.data, b, d, &mut ot);
    transpose(&z.data, b, d, &mut zt);
    let got = cosine_loss_grad_cols(&ot, &zt, b, 0.5, &mut gt);
    transpose(&gt, d, b, &mut g2);
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");
    assert!(max_abs_diff(&g, &g2) < 1e-7);
}

#[test]
fn representation_gradient_sums_over_backbones() {
    // Two backbones of different widths: d loss / d psi must be the sum of both MLPs' input
    // gradients, which the workspace accumulates in place.
    let mut r = rng(5);
    let feats = InMemory::unnamed(vec![random_features(&mut r, 4, 6), random_features(&mut r, 4, 3)]).unwrap();
    let spec = ensembed::fit::model_spec(&feats.names(), &feats.dims(), &FitConfig { dim: Some(5), ..Default::default() });
    let model = EnsembleModel::init(spec, None, BiasInit::Zero, 3);
    let psi = random_matrix(&mut r, 4, 5);
    let idx = [0, 1, 2, 3];
    let mut ws = Workspace::new(&model, 4);
    ws.input[..20].copy_from_slice(&psi.data);
    let total = ws.run(&model, &feats, &idx, 1.0, None, true, 1);
    let analytic = ws.input_grad[..20].to_vec();
    // Finite differences of the independent f64 forward, summed over both MLPs.
    let params: Vec<_> = model.mlps.iter().map(params_f64).collect();
    let targets: Vec<Vec<f64>> = (0..2)
        .map(|j| {
            let mut z = vec![0.0f32; 4 * feats.dims()[j]];
            feats.gather_normalized(j, &idx, &mut z);
            z.iter().map(|&v| v as f64).collect()
        })
        .collect();
    let loss = |x: &[f64]| -> f64 {
        (0..2)
            .map(|j| loss_f64(&params[j].0, &params[j].1, &model.spec.widths(j), true, x, &targets[j], 4))
            .sum()
    };
    let x64: Vec<f64> = psi.data.iter().map(|&v| v as f64).collect();
    assert!((loss(&x64) - total).abs() < 1e-5, "f64 loss {} vs workspace loss {total}", loss(&x64));
    let h = 1e-6;
    for k in 0..20 {
        let (mut xp, mut xm) = (x64.clone(), x64.clone());
        xp[k] += h;
        xm[k] -= h;
        let fd = (loss(&xp) - loss(&xm)) / (2.0 * h);
        assert!((analytic[k] as f64 - fd).abs() < 2e-4 + 2e-3 * fd.abs(), "d psi[{k}]: analytic {} vs fd {fd}", analytic[k]);
    }
}

#[test]
fn adam_matches_pytorch_formula_reference() {
    // Reference (numpy, the update of torch.optim.Adam):
    //   p = np.array([0.5, -1.0, 2.0]); m = v = np.zeros(3)
    //   lr, b1, b2, eps, wd = 1e-2, 0.9, 0.999, 1e-8, 0.1
    //   for t, g in enumerate([[0.1,-0.2,0.3],[0.05,0.0,-0.4],[-0.3,0.2,0.1]], 1):
    //       g = np.array(g) + wd * p
    //       m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g
    //       p = p - lr/(1-b1**t) * m / (np.sqrt(v)/np.sqrt(1-b2**t) + eps)
    // prints after each step:
    //   [0.49, -0.99, 1.99]
    //   [0.48030803, -0.98130424, 1.98656015]
    //   [0.48116215, -0.97686955, 1.98113612]
    let hp = AdamParams { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1 };
    let mut p = vec![0.5f32, -1.0, 2.0];
    let mut adam = Adam::new(3);
    let expected = [[0.49, -0.99, 1.99], [0.48030803, -0.98130424, 1.98656015], [0.48116215, -0.97686955, 1.98113612]];
    for (g, want) in [[0.1, -0.2, 0.3], [0.05, 0.0, -0.4], [-0.3, 0.2, 0.1]].iter().zip(expected) {
        adam.step(&hp, &mut p, g);
        assert!(max_abs_diff(&p, &want) < 2e-6, "{p:?} vs {want:?}");
    }
    assert_eq!(adam.steps(), 3);
}

#[test]
fn dense_bank_moves_rows_outside_the_batch_and_lazy_does_not() {
    // Reference (numpy, torch.optim.Adam(lr=0.1) on the whole bank): a row with gradient
    // [0.2, -0.1] at step 1 and none at step 2 (outside the batch) still moves:
    //   step 1: [0.9, -0.90000001]   step 2: [0.83299418, -0.83299419]
    let hp = AdamParams { lr: 0.1, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let start = Matrix::from_vec(2, 2, vec![0.0, 0.0, 1.0, -1.0]).unwrap();
    for mode in [BankMode::Dense, BankMode::Lazy] {
        let mut bank = Bank::new(start.clone(), mode);
        bank.step(&hp, &[0, 1], &[0.3, 0.3, 0.2, -0.1]);
        bank.flush();
        assert!(max_abs_diff(bank.repr().row(1), &[0.9, -0.9]) < 1e-6);
        bank.step(&hp, &[0], &[0.3, 0.3]);
        bank.flush();
        let want: &[f32] = if mode == BankMode::Dense { &[0.83299418, -0.83299419] } else { &[0.9, -0.9] };
        assert!(max_abs_diff(bank.repr().row(1), want) < 1e-6, "{mode:?}: {:?}", bank.repr().row(1));
    }
}

/// Eager dense Adam over the whole bank, written out as `torch.optim.Adam` computes it (the
/// pre-deferral implementation): every row takes every step, zero gradient outside the batch.
pub(crate) fn eager_dense_step(hp: &AdamParams, t: u64, p: &mut [f32], m: &mut [f32], v: &mut [f32], d: usize, idx: &[usize], grad: &[f32]) {
    let bc1 = 1.0 - (hp.beta1 as f64).powf(t as f64);
    let bc2 = 1.0 - (hp.beta2 as f64).powf(t as f64);
    let (step_size, bc2_sqrt) = ((hp.lr as f64 / bc1) as f32, bc2.sqrt() as f32);
    let mut g = vec![0.0f32; p.len()];
    for (pos, &i) in idx.iter().enumerate() {
        g[i * d..(i + 1) * d].copy_from_slice(&grad[pos * d..(pos + 1) * d]);
    }
    for k in 0..p.len() {
        m[k] += (g[k] - m[k]) * (1.0 - hp.beta1);
        v[k] = hp.beta2 * v[k] + (1.0 - hp.beta2) * g[k] * g[k];
        p[k] -= step_size * m[k] / (v[k].sqrt() / bc2_sqrt + hp.eps);
    }
}

#[test]
fn dense_bank_with_deferred_steps_is_bit_identical_to_eager_adam() {
    // The dense bank replays rows' zero-gradient steps lazily (model/bank.rs); every bit of
    // the representations and both moments must equal eager stepping: across gathers, flushes,
    // a checkpoint round trip, a width that is not a multiple of the kernel's lanes, and rows
    // idle for a thousand steps (their first moments decay into subnormal numbers).
    use rand::seq::SliceRandom;
    use rand::Rng;
    let hp = AdamParams { lr: 3e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let (n, d, b) = (41, 70, 6);
    let mut r = rng(21);
    let start = random_matrix(&mut r, n, d);
    let (mut p, mut m, mut v) = (start.data.clone(), vec![0.0f32; n * d], vec![0.0f32; n * d]);
    let mut bank = Bank::new(start, BankMode::Dense);
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let mut order: Vec<usize> = (0..n).collect();
    let mut out = vec![0.0f32; b * d];
    let mut t = 0u64;
    let mut step = |bank: &mut Bank, p: &mut Vec<f32>, m: &mut Vec<f32>, v: &mut Vec<f32>, idx: &[usize], r: &mut rand_chacha::ChaCha8Rng| {
        let grad: Vec<f32> = (0..idx.len() * d).map(|_| r.random_range(-1e-3f32..1e-3)).collect();
        bank.gather(idx, &mut out[..idx.len() * d]);
        assert_eq!(bits(&out[..idx.len() * d]), bits(&idx.iter().flat_map(|&i| p[i * d..(i + 1) * d].to_vec()).collect::<Vec<_>>()));
        t += 1;
        eager_dense_step(&hp, t, p, m, v, d, idx, &grad);
        bank.step(&hp, idx, &grad);
    };
    for epoch in 0..4 {
        order.shuffle(&mut r);
        for idx in order.chunks(b) {
            step(&mut bank, &mut p, &mut m, &mut v, idx, &mut r);
        }
        if epoch == 1 {
            // Mid-way: flushed state, as a checkpoint sees it, and a restored bank continues.
            bank.flush();
            assert_eq!(bits(&bank.repr().data), bits(&p));
            let (bm, bv, bt, rows) = bank.parts();
            assert_eq!((bits(bm), bits(bv)), (bits(&m), bits(&v)));
            bank = Bank::from_parts(bank.repr().clone(), bm.to_vec(), bv.to_vec(), bt, rows.to_vec(), BankMode::Dense);
        }
    }
    // A step whose batch lists a row twice (the last gradient wins), then rows 0..3 alone for
    // a thousand steps while the rest idle.
    step(&mut bank, &mut p, &mut m, &mut v, &[5, 9, 5], &mut r);
    for _ in 0..1000 {
        step(&mut bank, &mut p, &mut m, &mut v, &[2, 0, 1], &mut r);
    }
    assert!(m.iter().any(|x| x.is_subnormal()), "the test should reach subnormal moments");
    let (bm, bv) = {
        bank.flush();
        let (bm, bv, _, _) = bank.parts();
        (bm.to_vec(), bv.to_vec())
    };
    assert_eq!((bits(&bm), bits(&bv)), (bits(&m), bits(&v)));
    assert_eq!(bits(&bank.into_repr().data), bits(&p));
}

#[test]
fn init_is_pytorch_linear_and_seeded() {
    let a = init_mlp(&[64, 32, 16], true, BiasInit::Torch, &mut rng(1));
    let b = init_mlp(&[64, 32, 16], true, BiasInit::Torch, &mut rng(1));
    assert_eq!(a, b);
    for l in &a.layers {
        let bound = 1.0 / (l.fan_in as f32).sqrt();
        assert!(l.weight.iter().chain(&l.bias).all(|v| v.abs() <= bound));
        // U(-c, c) has variance c^2/3.
        let var = l.weight.iter().map(|v| v * v).sum::<f32>() / l.weight.len() as f32;
        assert!((var / (bound * bound / 3.0) - 1.0).abs() < 0.1, "variance {var}");
    }
    let z = init_mlp(&[8, 4], true, BiasInit::Zero, &mut rng(1));
    assert!(z.layers[0].bias.iter().all(|&v| v == 0.0));
}

#[test]
fn pca_finds_the_top_principal_subspace() {
    // Data with a decaying spectrum: the variance captured by the fitted subspace must equal
    // the sum of the top-d exact eigenvalues of the covariance.
    let mut r = rng(11);
    let (n, dd, d) = (400, 12, 5);
    let mut x = random_matrix(&mut r, n, dd);
    for row in x.data.chunks_exact_mut(dd) {
        row.iter_mut().enumerate().for_each(|(k, v)| *v = *v * (0.7f32).powi(k as i32) + 0.3);
    }
    let mean: Vec<f64> = (0..dd).map(|k| (0..n).map(|i| x.data[i * dd + k] as f64).sum::<f64>() / n as f64).collect();
    let mut cov = vec![0.0f64; dd * dd];
    for i in 0..n {
        for a in 0..dd {
            for b in 0..dd {
                cov[a * dd + b] += (x.data[i * dd + a] as f64 - mean[a]) * (x.data[i * dd + b] as f64 - mean[b]);
            }
        }
    }
    let exact: f64 = jacobi_eigenvalues(cov.clone(), dd)[..d].iter().sum();
    let p = fit_pca(&x, d, &mut rng(0), 1).unwrap();
    let c = &p.components;
    // Orthonormal columns.
    for a in 0..d {
        for b in 0..d {
            let dot: f32 = (0..dd).map(|k| c.data[k * d + a] * c.data[k * d + b]).sum();
            assert!((dot - if a == b { 1.0 } else { 0.0 }).abs() < 1e-5);
        }
    }
    let captured: f64 = (0..d)
        .map(|a| {
            (0..dd).map(|i| (0..dd).map(|j| c.data[i * d + a] as f64 * cov[i * dd + j] * c.data[j * d + a] as f64).sum::<f64>()).sum::<f64>()
        })
        .sum();
    assert!((captured / exact - 1.0).abs() < 1e-3, "captured {captured} of exact {exact}");
}

fn small_fit_config() -> FitConfig {
    FitConfig { epochs: 6, batch: 32, lr: 1e-3, ..Default::default() }
}

#[test]
fn fit_is_deterministic_and_learns() {
    let mut r = rng(2);
    let feats = InMemory::unnamed(vec![random_features(&mut r, 100, 24), random_features(&mut r, 100, 24)]).unwrap();
    let cfg = small_fit_config();
    let a = fit(&feats, &cfg, &NoProgress).unwrap();
    let b = fit(&feats, &cfg, &NoProgress).unwrap();
    assert_eq!(a.model, b.model);
    assert_eq!(a.representations.data, b.representations.data, "same seed must give identical bytes");
    let c = fit(&feats, &FitConfig { seed: 1, ..cfg.clone() }, &NoProgress).unwrap();
    assert_ne!(a.representations.data, c.representations.data);
    let h = &a.history;
    assert!(h.last().unwrap().loss < h[0].loss, "loss should fall: {h:?}");
    assert!(!h[2].bank_learning && h[3].bank_learning, "warm-up is half the epochs");
    // During warm-up the representations stay at the average initialisation.
    let warm = fit(&feats, &FitConfig { warmup: Some(6), ..cfg }, &NoProgress).unwrap();
    let avg = ensembed::baseline::average(&feats).unwrap();
    assert_eq!(warm.representations.data, avg.data);
}

#[test]
fn lazy_embedding_of_a_row_does_not_depend_on_its_call() {
    let mut r = rng(3);
    let train = InMemory::unnamed(vec![random_features(&mut r, 80, 16), random_features(&mut r, 80, 16)]).unwrap();
    let test = vec![random_features(&mut r, 50, 16), random_features(&mut r, 50, 16)];
    let fitted = fit(&train, &FitConfig { bank: BankMode::Lazy, ..small_fit_config() }, &NoProgress).unwrap();
    let cfg = EmbedConfig { epochs: 5, batch: 16, bank: BankMode::Lazy, ..Default::default() };
    let all = embed(&fitted.model, &InMemory::unnamed(test.clone()).unwrap(), &cfg, &NoProgress).unwrap();
    let rows: Vec<usize> = (20..27).collect();
    let part = InMemory::unnamed(test.iter().map(|m| m.gather_rows(&rows)).collect()).unwrap();
    let some = embed(&fitted.model, &part, &cfg, &NoProgress).unwrap();
    for (o, &i) in rows.iter().enumerate() {
        assert!(max_abs_diff(some.representations.row(o), all.representations.row(i)) < 1e-6);
    }
    assert!(all.history.last().unwrap() < &all.history[0]);
}

#[test]
fn streamed_lazy_embedding_is_byte_identical_for_any_chunk_and_restart() {
    use ensembed::embed::{embed_lazy_rows, loss_history};
    let mut r = rng(31);
    let train = InMemory::unnamed(vec![random_features(&mut r, 60, 12), random_features(&mut r, 60, 12)]).unwrap();
    let test = InMemory::unnamed(vec![random_features(&mut r, 23, 12), random_features(&mut r, 23, 12)]).unwrap();
    let fitted = fit(&train, &FitConfig { bank: BankMode::Lazy, ..small_fit_config() }, &NoProgress).unwrap();
    let cfg = EmbedConfig { epochs: 4, batch: 5, bank: BankMode::Lazy, ..Default::default() };
    let whole = embed(&fitted.model, &test, &cfg, &NoProgress).unwrap();
    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    // Any chunk size (rounded up to whole batches of 5): the same bits and the same losses.
    for (chunk, firsts) in [(1, vec![0, 5, 10, 15, 20]), (7, vec![0, 10, 20]), (100, vec![0])] {
        let (mut out, mut sums, mut seen) = (vec![f32::NAN; 23 * 12], vec![0.0; 4], Vec::new());
        embed_lazy_rows(&fitted.model, &test, &cfg, 0, &mut sums, chunk, &NoProgress, &mut |first, rows, _| {
            seen.push(first);
            out[first * 12..first * 12 + rows.len()].copy_from_slice(rows);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, firsts, "chunk {chunk}");
        assert_eq!(bits(&out), bits(&whole.representations.data), "chunk {chunk}");
        assert_eq!(loss_history(&sums, 23, 2), whole.history, "chunk {chunk}");
    }
    // Interrupted after 10 rows, restarted there with the loss sums reached: the same result.
    let (mut out, mut sums, mut saved) = (vec![f32::NAN; 23 * 12], vec![0.0; 4], Vec::new());
    let stop = embed_lazy_rows(&fitted.model, &test, &cfg, 0, &mut sums, 5, &NoProgress, &mut |first, rows, s| {
        out[first * 12..first * 12 + rows.len()].copy_from_slice(rows);
        if first == 5 {
            saved = s.to_vec();
            return Err(ensembed::Error::config("test", "stop", "interrupted on purpose"));
        }
        Ok(())
    });
    assert!(stop.is_err());
    embed_lazy_rows(&fitted.model, &test, &cfg, 10, &mut saved, 5, &NoProgress, &mut |first, rows, _| {
        out[first * 12..first * 12 + rows.len()].copy_from_slice(rows);
        Ok(())
    })
    .unwrap();
    assert_eq!(bits(&out), bits(&whole.representations.data), "restarted at row 10");
    assert_eq!(loss_history(&saved, 23, 2), whole.history);
    // Restart points inside a batch, and the dense bank, are refused by name; the end is a no-op.
    let mut sink = |_: usize, _: &[f32], _: &[f64]| -> ensembed::Result<()> { panic!("nothing to write") };
    let e = embed_lazy_rows(&fitted.model, &test, &cfg, 7, &mut [0.0; 4], 5, &NoProgress, &mut sink).unwrap_err().to_string();
    assert!(e.contains("start row") && e.contains('7'), "{e}");
    let dense = EmbedConfig { bank: BankMode::Dense, ..cfg.clone() };
    let e = embed_lazy_rows(&fitted.model, &test, &dense, 0, &mut [0.0; 4], 5, &NoProgress, &mut sink).unwrap_err().to_string();
    assert!(e.contains("lazy"), "{e}");
    embed_lazy_rows(&fitted.model, &test, &cfg, 23, &mut [0.0; 4], 5, &NoProgress, &mut sink).unwrap();
}

#[test]
fn mixed_widths_and_single_model_run_the_same_path() {
    let mut r = rng(4);
    let mixed = InMemory::unnamed(vec![random_features(&mut r, 90, 8), random_features(&mut r, 90, 20)]).unwrap();
    let out = fit(&mixed, &small_fit_config(), &NoProgress).unwrap();
    assert_eq!(out.representations.cols, 20);
    assert!(out.model.projection.is_some());
    let emb = embed(&out.model, &mixed, &EmbedConfig { epochs: 2, ..Default::default() }, &NoProgress).unwrap();
    assert_eq!((emb.representations.rows, emb.representations.cols), (90, 20));

    let single = InMemory::unnamed(vec![random_features(&mut r, 90, 12)]).unwrap();
    let out = fit(&single, &small_fit_config(), &NoProgress).unwrap();
    assert!(out.model.projection.is_none());
    assert_eq!(out.model.mlps.len(), 1);
}

#[test]
fn model_round_trips_through_safetensors() {
    let mut r = rng(6);
    let mixed = InMemory::unnamed(vec![random_features(&mut r, 40, 6), random_features(&mut r, 40, 10)]).unwrap();
    let out = fit(&mixed, &FitConfig { epochs: 2, depth: 3, ..Default::default() }, &NoProgress).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    out.model.save(&path).unwrap();
    assert_eq!(EnsembleModel::load(&path).unwrap(), out.model);
    std::fs::write(&path, b"not a model").unwrap();
    let err = EnsembleModel::load(&path).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn embedding_checks_the_backbones_against_the_model() {
    let mut r = rng(7);
    let train = InMemory::unnamed(vec![random_features(&mut r, 30, 6), random_features(&mut r, 30, 6)]).unwrap();
    let out = fit(&train, &FitConfig { epochs: 1, ..Default::default() }, &NoProgress).unwrap();
    let wrong = InMemory::unnamed(vec![random_features(&mut r, 30, 6), random_features(&mut r, 30, 7)]).unwrap();
    let err = embed(&out.model, &wrong, &EmbedConfig::default(), &NoProgress).unwrap_err().to_string();
    assert!(err.contains("b1[6]") && err.contains("b1[7]"), "{err}");
}

#[test]
fn settings_out_of_range_are_named() {
    for (cfg, field) in [
        (FitConfig { depth: 9, ..Default::default() }, "depth"),
        (FitConfig { lr: -1.0, ..Default::default() }, "lr"),
        (FitConfig { batch: 0, ..Default::default() }, "batch"),
        (FitConfig { warmup: Some(60), ..Default::default() }, "warmup"),
        (FitConfig { beta2: 1.0, ..Default::default() }, "beta2"),
    ] {
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains(&format!("`{field}`")), "{err}");
    }
}

#[test]
fn a_fit_resumed_from_any_checkpoint_is_byte_identical() {
    use ensembed::checkpoint::{load_checkpoint, save_checkpoint};
    use ensembed::fit::{fit_from, FitState};
    let mut r = rng(8);
    let feats = InMemory::unnamed(vec![random_features(&mut r, 70, 12), random_features(&mut r, 70, 9)]).unwrap();
    for bank in [BankMode::Dense, BankMode::Lazy] {
        let cfg = FitConfig { epochs: 5, batch: 16, bank, lr: 1e-3, ..Default::default() };
        let straight = fit(&feats, &cfg, &NoProgress).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for stop in 0..cfg.epochs {
            let ckpt = dir.path().join(format!("ckpt{stop}"));
            // Run until `stop` epochs are done, checkpointing each, then "crash".
            let mut first = FitState::new(&feats, &cfg).unwrap();
            if stop > 0 {
                let mut done = 0;
                let err = fit_from(&feats, &cfg, first, &NoProgress, &mut |s| {
                    save_checkpoint(&ckpt, s, &cfg)?;
                    done += 1;
                    if done == stop {
                        Err(ensembed::Error::config("test", stop, "simulated crash"))
                    } else {
                        Ok(())
                    }
                });
                assert!(err.is_err());
                first = load_checkpoint(&ckpt, &cfg, &feats).unwrap();
                assert_eq!(first.epochs_done(), stop);
            }
            let resumed = fit_from(&feats, &cfg, first, &NoProgress, &mut |_| Ok(())).unwrap();
            assert_eq!(resumed.model, straight.model, "{bank:?} resumed after {stop} epochs");
            assert_eq!(resumed.representations.data, straight.representations.data);
            assert_eq!(resumed.history, straight.history);
        }
        // A checkpoint made with other settings is refused, naming the setting.
        let ckpt = dir.path().join("ckpt1");
        let err = load_checkpoint(&ckpt, &FitConfig { lr: 5e-4, ..cfg.clone() }, &feats).err().unwrap().to_string();
        assert!(err.contains("lr") && err.contains("state.json"), "{err}");
    }
}
