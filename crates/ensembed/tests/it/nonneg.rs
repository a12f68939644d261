//! The non-negative variant (the paper's like-for-like spectrum, section 5): the projection of
//! the initial representations against hand-computed cases, the constrained bank step against
//! the unconstrained one (identical where nothing is clamped) and against an eager projected
//! Adam, every learned entry >= 0 after fit and embed in both bank semantics, and the default
//! path's files unchanged by the option's existence.

use ensembed::config::{BankMode, EmbedConfig, FitConfig};
use ensembed::embed::embed;
use ensembed::fit::fit;
use ensembed::model::adam::AdamParams;
use ensembed::model::bank::Bank;
use ensembed::model::{project_nonneg_unit, EnsembleModel};
use ensembed::{InMemory, Matrix, NoProgress};

use crate::helpers::{random_features, random_matrix, rng};
use crate::model::eager_dense_step;

fn bits(x: &[f32]) -> Vec<u32> {
    x.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn projection_onto_the_non_negative_unit_sphere_hand_computed() {
    let mut x = Matrix::from_vec(4, 3, vec![
        3.0, -1.0, 4.0, // clamp -> [3, 0, 4], norm 5 -> [0.6, 0, 0.8]
        -2.0, -0.5, -1.0, // nothing positive: the basis vector of the largest entry
        0.6, 0.0, 0.8, // already feasible: untouched
        -0.0, 0.0, 0.0, // zero: feasible as it is (no entry < 0), left alone
    ])
    .unwrap();
    project_nonneg_unit(&mut x);
    assert_eq!(x.data, vec![0.6, 0.0, 0.8, 0.0, 1.0, 0.0, 0.6, 0.0, 0.8, -0.0, 0.0, 0.0]);
}

/// Three backbones of different widths: the PCA init, centred, so about half its entries < 0.
fn mixed() -> InMemory {
    let mut r = rng(31);
    InMemory::unnamed(vec![random_features(&mut r, 90, 6), random_features(&mut r, 90, 9), random_features(&mut r, 90, 4)]).unwrap()
}

#[test]
fn non_negative_init_is_the_projected_pca_init() {
    let feats = mixed();
    let rows: Vec<usize> = (0..90).collect();
    let free = ensembed::fit::FitState::new(&feats, &FitConfig { epochs: 1, ..Default::default() }).unwrap();
    let plain = free.model.initial_representations(&feats, &rows, 1).unwrap();
    assert!(plain.data.iter().filter(|&&v| v < 0.0).count() > plain.data.len() / 4, "the PCA init should be centred");
    let mut model: EnsembleModel = free.model.clone();
    model.spec.nonneg = true;
    let got = model.initial_representations(&feats, &rows, 1).unwrap();
    for (g, p) in got.data.chunks(9).zip(plain.data.chunks(9)) {
        let clamped: Vec<f64> = p.iter().map(|&v| v.max(0.0) as f64).collect();
        let norm = clamped.iter().map(|v| v * v).sum::<f64>().sqrt();
        for (a, b) in g.iter().zip(&clamped) {
            assert!((*a as f64 - b / norm).abs() < 1e-6, "{g:?} from {p:?}");
        }
    }
    // The nonneg state starts there.
    let state = ensembed::fit::FitState::new(&feats, &FitConfig { epochs: 1, nonneg: true, ..Default::default() }).unwrap();
    assert_eq!(bits(&state.bank.repr().data), bits(&got.data));
}

#[test]
fn constrained_bank_step_is_the_clamped_adam_step() {
    // One lazy step from the same state with and without the constraint: identical bits where
    // the free step stays >= 0, exactly 0 where it goes below; the moments do not see the clamp.
    let hp = AdamParams { lr: 0.05, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let (n, d) = (7, 70);
    let mut r = rng(5);
    let mut start = random_matrix(&mut r, n, d);
    start.data.iter_mut().for_each(|v| *v = v.abs() * 0.05);
    let grad = random_matrix(&mut r, 3, d).data;
    let idx = [4, 0, 6];
    let mut free = Bank::new(start.clone(), BankMode::Lazy);
    let mut cons = Bank::new(start, BankMode::Lazy).with_nonneg(true);
    for _ in 0..3 {
        free.step(&hp, &idx, &grad);
        cons.step(&hp, &idx, &grad);
        let (f, c) = (free.repr().data.clone(), cons.repr().data.clone());
        let clamped = f.iter().zip(&c).filter(|(f, c)| {
            assert!(**c >= 0.0);
            if **f >= 0.0 {
                assert_eq!(f.to_bits(), c.to_bits());
            } else {
                assert_eq!(**c, 0.0);
            }
            **f < 0.0
        });
        assert!(clamped.count() > 0, "the test should clamp something");
        // Re-sync the free bank to the constrained state, so each step is compared from the same point.
        let (m, v, _, rows) = cons.parts();
        free = Bank::from_parts(cons.repr().clone(), m.to_vec(), v.to_vec(), 0, rows.to_vec(), BankMode::Lazy);
        assert_eq!(bits(free.parts().0), bits(cons.parts().0));
    }
}

#[test]
fn constrained_dense_bank_equals_eager_projected_adam() {
    // The deferred zero-gradient steps of rows outside the batch are clamped too: every bit
    // against eager Adam over the whole bank followed by max(., 0) after each step.
    let hp = AdamParams { lr: 2e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
    let (n, d, b) = (23, 67, 5);
    let mut r = rng(8);
    let mut start = random_matrix(&mut r, n, d);
    start.data.iter_mut().for_each(|v| *v = v.abs() * 0.1);
    let (mut p, mut m, mut v) = (start.data.clone(), vec![0.0f32; n * d], vec![0.0f32; n * d]);
    let mut bank = Bank::new(start, BankMode::Dense).with_nonneg(true);
    let mut out = vec![0.0f32; b * d];
    let mut zeros = 0;
    for t in 1..=60u64 {
        let idx: Vec<usize> = (0..b).map(|k| ((t as usize) * 7 + k * 3) % n).collect();
        let grad = random_matrix(&mut r, b, d).data;
        bank.gather(&idx, &mut out);
        assert_eq!(bits(&out), bits(&idx.iter().flat_map(|&i| p[i * d..(i + 1) * d].to_vec()).collect::<Vec<_>>()));
        eager_dense_step(&hp, t, &mut p, &mut m, &mut v, d, &idx, &grad);
        p.iter_mut().for_each(|x| *x = x.max(0.0));
        zeros = p.iter().filter(|&&x| x == 0.0).count();
        bank.step(&hp, &idx, &grad);
    }
    assert!(zeros > n * d / 10, "the test should clamp many entries ({zeros})");
    bank.flush();
    assert_eq!(bits(bank.parts().0), bits(&m));
    assert_eq!(bits(&bank.into_repr().data), bits(&p));
}

#[test]
fn fit_and_embed_stay_non_negative_in_both_semantics() {
    let feats = mixed();
    let test = {
        let mut r = rng(77);
        InMemory::unnamed(vec![random_features(&mut r, 30, 6), random_features(&mut r, 30, 9), random_features(&mut r, 30, 4)]).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    for bank in [BankMode::Dense, BankMode::Lazy] {
        let cfg = FitConfig { epochs: 6, batch: 16, lr: 1e-2, bank, nonneg: true, ..Default::default() };
        let out = fit(&feats, &cfg, &NoProgress).unwrap();
        assert!(out.representations.data.iter().all(|&x| x >= 0.0), "{bank:?}");
        let zeros = out.representations.data.iter().filter(|&&x| x == 0.0).count();
        assert!(zeros > 0 && zeros < out.representations.data.len(), "{bank:?}: {zeros} zeros");
        // The model remembers the constraint, so embed keeps it without being told.
        let path = dir.path().join(format!("{bank:?}.safetensors"));
        out.model.save(&path).unwrap();
        let model = EnsembleModel::load(&path).unwrap();
        assert!(model.spec.nonneg);
        let emb = embed(&model, &test, &EmbedConfig::from_fit(&cfg), &NoProgress).unwrap();
        assert!(emb.representations.data.iter().all(|&x| x >= 0.0), "{bank:?} embed");
        // Without the constraint the same fit goes negative: the test exercises the clamp.
        let free = fit(&feats, &FitConfig { nonneg: false, ..cfg }, &NoProgress).unwrap();
        assert!(free.representations.data.iter().any(|&x| x < 0.0));
    }
}

#[test]
fn default_files_do_not_mention_the_option() {
    // Configs and model specs written before the option existed read the same, and the default
    // writes exactly what it wrote then (no "nonneg" key), so default model files and JSON are
    // byte-identical to before.
    let json = serde_json::to_string(&FitConfig::default()).unwrap();
    assert!(!json.contains("nonneg"), "{json}");
    let old = r#"{"epochs":50,"batch":256,"lr":0.0003,"lr_bank":null,"beta1":0.9,"beta2":0.999,"eps":1e-8,"weight_decay":0.0,"depth":2,"hidden":null,"dim":null,"bank":"dense","warmup":null,"final_relu":true,"last_bias":"torch","seed":0}"#;
    assert_eq!(serde_json::from_str::<FitConfig>(old).unwrap(), FitConfig::default());
    let on = serde_json::to_string(&FitConfig { nonneg: true, ..Default::default() }).unwrap();
    assert!(on.ends_with(r#""seed":0,"nonneg":true}"#), "{on}");
    let spec = ensembed::fit::model_spec(&["a".into(), "b".into()], &[3, 5], &FitConfig::default());
    assert_eq!(
        serde_json::to_string(&spec).unwrap(),
        r#"{"backbones":[{"name":"a","dim":3},{"name":"b","dim":5}],"dim":5,"hidden":5,"depth":2,"final_relu":true}"#
    );
    let old_spec: ensembed::model::ModelSpec = serde_json::from_str(r#"{"backbones":[{"name":"a","dim":3}],"dim":3,"hidden":3,"depth":1,"final_relu":false}"#).unwrap();
    assert!(!old_spec.nonneg);
}
