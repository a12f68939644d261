//! The paper's diagnostics against known answers: eigenvalues against Jacobi rotations and
//! closed forms, singular values of matrices built from a known SVD, the neighbour statistic
//! on a hand-computed case, and the recovery cosine against the training objective.

use ensembed::analysis::{normalized_nn_similarity, recovery_cosine, singular_values, symmetric_eigenvalues};
use ensembed::config::FitConfig;
use ensembed::fit::fit;
use ensembed::objective::Workspace;
use ensembed::{InMemory, Matrix, NoProgress};

use crate::helpers::{jacobi_eigenvalues, random_features, random_matrix, rng};

#[test]
fn eigenvalues_match_closed_forms_and_jacobi() {
    // [[2, 1], [1, 2]] has eigenvalues 3 and 1.
    assert_close(&symmetric_eigenvalues(vec![2.0, 1.0, 1.0, 2.0], 2), &[3.0, 1.0], 1e-12);
    // A diagonal matrix: its diagonal, sorted.
    assert_close(&symmetric_eigenvalues(vec![1.0, 0.0, 0.0, 0.0, -4.0, 0.0, 0.0, 0.0, 2.5], 3), &[2.5, 1.0, -4.0], 1e-12);
    for n in [1, 5, 17, 40] {
        let x = random_matrix(&mut rng(n as u64), n, n);
        let sym: Vec<f64> = (0..n * n).map(|k| (x.data[k] + x.data[(k % n) * n + k / n]) as f64).collect();
        assert_close(&symmetric_eigenvalues(sym.clone(), n), &jacobi_eigenvalues(sym, n), 1e-9);
    }
}

#[test]
fn eigenvalues_of_larger_and_degenerate_matrices_match_jacobi() {
    // Large enough for the fused sweep to split its rows over several tasks, with rows and
    // columns of very different scales; then matrices whose rows need no reflection (a zero
    // row in the middle, an already tridiagonal matrix, a diagonal one).
    let n = 120;
    let x = random_matrix(&mut rng(99), n, n);
    let scale = |k: usize| 10f64.powi((k % 5) as i32 - 2);
    let sym: Vec<f64> = (0..n * n)
        .map(|k| {
            let (i, j) = (k / n, k % n);
            (x.data[k] + x.data[j * n + i]) as f64 * scale(i) * scale(j)
        })
        .collect();
    assert_close(&symmetric_eigenvalues(sym.clone(), n), &jacobi_eigenvalues(sym, n), 1e-9);
    let n = 9;
    let x = random_matrix(&mut rng(3), n, n);
    let mut sym: Vec<f64> = (0..n * n).map(|k| (x.data[k] + x.data[(k % n) * n + k / n]) as f64).collect();
    for k in 0..n {
        sym[4 * n + k] = 0.0;
        sym[k * n + 4] = 0.0;
    }
    assert_close(&symmetric_eigenvalues(sym.clone(), n), &jacobi_eigenvalues(sym, n), 1e-10);
    let tri: Vec<f64> = (0..n * n).map(|k| if (k / n).abs_diff(k % n) <= 1 { 1.0 + (k % 7) as f64 } else { 0.0 }).collect();
    let tri: Vec<f64> = (0..n * n).map(|k| if k / n >= k % n { tri[k] } else { tri[(k % n) * n + k / n] }).collect();
    assert_close(&symmetric_eigenvalues(tri.clone(), n), &jacobi_eigenvalues(tri, n), 1e-10);
}

#[test]
fn singular_values_of_a_wide_matrix_use_the_smaller_side() {
    // The transpose of the known-SVD matrix below: [3, 4], singular values 5, 3, 0.5 and a
    // fourth that is exactly 0 (XXᵀ [3, 3] carries all the non-zero ones).
    let s = [5.0f32, 3.0, 0.5];
    let (c, sn) = (30f32.to_radians().cos(), 30f32.to_radians().sin());
    let v = [[c, -sn, 0.0], [sn, c, 0.0], [0.0, 0.0, 1.0]];
    let mut x = Matrix::zeros(3, 4);
    for (row, (k, sign)) in [(2usize, 1.0f32), (0, -1.0), (3, 1.0)].into_iter().enumerate() {
        for (j, &vj) in v[row].iter().enumerate() {
            x.data[j * 4 + k] = sign * s[row] * vj;
        }
    }
    let got = singular_values(&x);
    assert_close(&got, &[5.0, 3.0, 0.5, 0.0], 1e-5);
    assert_eq!(got[3], 0.0);
    // A random wide matrix against its (tall) transpose.
    let w = random_matrix(&mut rng(4), 20, 50);
    let mut t = Matrix::zeros(50, 20);
    for i in 0..20 {
        for j in 0..50 {
            t.data[j * 20 + i] = w.data[i * 50 + j];
        }
    }
    let (a, b) = (singular_values(&w), singular_values(&t));
    assert_eq!(a.len(), 50);
    assert_close(&a[..20], &b, 1e-4);
    assert!(a[20..].iter().all(|&v| v == 0.0));
}

#[test]
fn singular_values_of_a_matrix_with_known_svd() {
    // x = U diag(s) Vᵀ with U the first columns of a permutation-with-signs and V a rotation
    // by 30 degrees in the first two coordinates: its singular values are s.
    let s = [5.0f32, 3.0, 0.5];
    let (c, sn) = (30f32.to_radians().cos(), 30f32.to_radians().sin());
    let v = [[c, -sn, 0.0], [sn, c, 0.0], [0.0, 0.0, 1.0]]; // rows of Vᵀ
    let mut x = Matrix::zeros(4, 3);
    for (row, (k, sign)) in [(2usize, 1.0f32), (0, -1.0), (3, 1.0)].into_iter().enumerate() {
        for j in 0..3 {
            x.data[k * 3 + j] = sign * s[row] * v[row][j];
        }
    }
    assert_close(&singular_values(&x), &[5.0, 3.0, 0.5], 1e-5);
}

#[test]
fn normalized_nn_similarity_hand_computed() {
    // Train rows e1, e2 and (e1+e2)/√2; query e1: max cos 1, mean cos (1 + 0 + 1/√2) / 3.
    let h = std::f32::consts::FRAC_1_SQRT_2;
    let train = Matrix::from_vec(3, 2, vec![1.0, 0.0, 0.0, 1.0, h, h]).unwrap();
    let test = Matrix::from_vec(1, 2, vec![1.0, 0.0]).unwrap();
    let got = normalized_nn_similarity(&train, &test, &NoProgress).unwrap();
    let want = 1.0 / ((1.0 + 0.0 + h) / 3.0);
    assert!((got[0] - want).abs() < 1e-6, "{} vs {want}", got[0]);
}

#[test]
fn recovery_cosine_equals_one_minus_the_objective() {
    let mut r = rng(12);
    let feats = InMemory::unnamed(vec![random_features(&mut r, 60, 10)]).unwrap();
    let out = fit(&feats, &FitConfig { epochs: 4, batch: 16, ..Default::default() }, &NoProgress).unwrap();
    let rec = recovery_cosine(&out.model, &feats, &out.representations).unwrap();
    // The objective over all rows at once, through the training code path.
    let mut ws = Workspace::new(&out.model, 60);
    ws.input[..60 * 10].copy_from_slice(&out.representations.data);
    let idx: Vec<usize> = (0..60).collect();
    let loss = ws.run(&out.model, &feats, &idx, 0.0, None, false, 1);
    assert!((rec[0] - (1.0 - loss / 60.0)).abs() < 1e-6, "{} vs {}", rec[0], 1.0 - loss / 60.0);
    assert!(rec[0] > 0.5 && rec[0] <= 1.0);
}

fn assert_close(got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{got:?} vs {want:?}");
    }
}
