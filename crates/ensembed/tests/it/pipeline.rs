//! The whole pipeline on the shipped real CIFAR-10 features (`data/demo`, 1,000 train / 500 test
//! images through three MobileNetV2 backbones): the baselines against the accuracies of the
//! independent numpy script `scripts/knn_reference.py` (kept in `data/demo/knn_reference.json`),
//! `compare` end to end in both bank modes, the transfer setting, and a fit on a memory-mapped
//! store against the same fit in memory.
//!
//! Reference tolerances (from the script's author): top-1 cells have no near-ties, so they must
//! match exactly (a count over 500 test images); top-5 may differ by up to 2 images (0.004) in
//! f32 because of near-ties at rank 5/6.

use std::path::PathBuf;

use ensembed::compare::{compare, CompareConfig, Comparison};
use ensembed::embed::embed;
use ensembed::eval::knn::{evaluate_knn, KnnConfig, KnnReport, Vote};
use ensembed::features::backbone_matrix;
use ensembed::fit::{fit, FitOutput};
use ensembed::store::npy::{read_npz, write_npy_f32, write_npy_i64};
use ensembed::store::{import_numpy, Dtype, Store};
use ensembed::{baseline, BankMode, EmbedConfig, FeatureSet, FitConfig, InMemory, Matrix, NoProgress};
use serde_json::Value;

use crate::helpers::repo_root;

const BACKBONES: [&str; 3] = ["mnv2-imagenet", "mnv2-tf2-imagenet", "mnv2-inat-bird"];
const TOP1_TOL: f64 = 1e-9;
const TOP5_TOL: f64 = 0.0041;

/// One split of the demo sample: raw (unnormalised) features per backbone, in the archive's
/// order, and the labels.
struct Split {
    path: PathBuf,
    names: Vec<String>,
    mats: Vec<Matrix>,
    labels: Vec<u32>,
}

fn load_split(split: &str) -> Split {
    let path = repo_root().join(format!("data/demo/{split}.npz"));
    let arrays = read_npz(&path).unwrap();
    let (mut names, mut mats, mut labels) = (Vec::new(), Vec::new(), None);
    for (name, a) in &arrays {
        if name == "labels" {
            labels = Some(a.to_i64(&path).unwrap().iter().map(|&y| u32::try_from(y).unwrap()).collect());
        } else {
            names.push(name.clone());
            mats.push(a.to_f32_matrix(&path).unwrap());
        }
    }
    assert_eq!(names, BACKBONES, "array order of {}", path.display());
    Split { path, names, mats, labels: labels.expect("a `labels` array") }
}

fn in_memory(s: &Split) -> InMemory {
    InMemory::new(s.names.clone(), s.mats.clone()).unwrap()
}

fn reference() -> Value {
    let path = repo_root().join("data/demo/knn_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every k of `report` against the reference cell `want[k]` (`{"top1", "top5"}` per k).
fn assert_matches_reference(method: &str, report: &KnnReport, want: &Value) {
    assert!(!report.scores.is_empty());
    for s in &report.scores {
        let w = &want[s.k.to_string()];
        let (t1, t5) = (w["top1"].as_f64().unwrap(), w["top5"].as_f64().unwrap());
        assert!((s.top1 - t1).abs() < TOP1_TOL, "{method} {:?} k = {}: top-1 {} vs numpy {t1}", report.vote, s.k, s.top1);
        assert!((s.top5 - t5).abs() < TOP5_TOL, "{method} {:?} k = {}: top-5 {} vs numpy {t5}", report.vote, s.k, s.top5);
    }
}

/// The baselines of a comparison (every method but `ours`) against the reference, at every k.
fn assert_baselines_match_reference(c: &Comparison, reference: &Value) {
    let names: Vec<&str> = c.methods.iter().map(|m| m.name.as_str()).collect();
    let mut want: Vec<&str> = BACKBONES.to_vec();
    want.extend(["average", "concat", "ours"]);
    assert_eq!(names, want);
    assert!(c.skipped.is_empty(), "{:?}", c.skipped);
    for m in c.methods.iter().filter(|m| m.name != "ours") {
        let dim = if m.name == "concat" { 3 * 1280 } else { 1280 };
        assert_eq!(m.dim, dim, "{}", m.name);
        assert_eq!(m.knn.scores.iter().map(|s| s.k).collect::<Vec<_>>(), [10, 20, 100, 200]);
        assert_matches_reference(&m.name, &m.knn, &reference[&m.name]);
    }
}

#[test]
fn baselines_on_real_cifar10_features_match_the_numpy_reference() {
    let (train, test) = (load_split("train"), load_split("test"));
    assert_eq!((train.mats[0].rows, test.mats[0].rows), (1000, 500));
    let (tr, te) = (in_memory(&train), in_memory(&test));
    let reference = reference();

    let mut methods: Vec<(String, Matrix, Matrix)> =
        (0..3).map(|j| (train.names[j].clone(), backbone_matrix(&tr, j), backbone_matrix(&te, j))).collect();
    methods.push(("average".into(), baseline::average(&tr).unwrap(), baseline::average(&te).unwrap()));
    methods.push(("concat".into(), baseline::concat(&tr), baseline::concat(&te)));

    let weighted = KnnConfig { ks: vec![10, 20, 100, 200], vote: Vote::Weighted, ..KnnConfig::default() };
    let majority = KnnConfig { ks: vec![20], vote: Vote::Majority, ..KnnConfig::default() };
    for (name, a, b) in &methods {
        let w = evaluate_knn(a, &train.labels, b, &test.labels, &weighted, &NoProgress).unwrap();
        assert_eq!((w.n_train, w.n_test, w.num_classes), (1000, 500, 10));
        assert_matches_reference(name, &w, &reference[name]);
        let m = evaluate_knn(a, &train.labels, b, &test.labels, &majority, &NoProgress).unwrap();
        assert_eq!(m.scores.len(), 1);
        assert_matches_reference(name, &m, &reference["majority"][name]);
    }
}

fn short_compare_config(bank: BankMode) -> CompareConfig {
    CompareConfig { fit: FitConfig { epochs: 4, bank, ..FitConfig::default() }, ..CompareConfig::default() }
}

#[test]
fn compare_end_to_end_on_real_features() {
    let (train, test) = (load_split("train"), load_split("test"));
    let (tr, te) = (in_memory(&train), in_memory(&test));
    let reference = reference();
    for bank in [BankMode::Dense, BankMode::Lazy] {
        let cfg = short_compare_config(bank);
        let run = || compare(&tr, &train.labels, &te, &test.labels, None, &cfg, &NoProgress).unwrap();
        let c = run();
        assert_baselines_match_reference(&c, &reference);

        let json = c.to_json();
        assert_eq!(json["k"], 20);
        let top1 = json["knn_top1"].as_object().unwrap();
        let mut keys: Vec<&str> = top1.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(keys, ["average", "concat", "mnv2-imagenet", "mnv2-inat-bird", "mnv2-tf2-imagenet", "ours"]);
        for (name, v) in top1 {
            let v = v.as_f64().unwrap_or_else(|| panic!("{bank:?} {name}: {v}"));
            assert!((0.0..=1.0).contains(&v), "{bank:?} {name}: {v}");
            if name != "ours" {
                assert!((v - reference[name]["20"]["top1"].as_f64().unwrap()).abs() < TOP1_TOL, "{bank:?} {name}: {v}");
            }
        }

        let ours = c.method("ours").unwrap();
        assert_eq!(ours.dim, 1280);
        // Ten balanced classes: chance is 0.1, the weakest backbone alone scores 0.372.
        let ours_top1 = ours.knn.at(20).unwrap().top1;
        assert!(ours_top1 > 0.3, "{bank:?}: ours top-1 {ours_top1}");
        assert_eq!(top1["ours"].as_f64().unwrap(), ours_top1);

        let h = &c.fit_history;
        assert_eq!(h.iter().map(|e| e.epoch).collect::<Vec<_>>(), [0, 1, 2, 3], "{bank:?}");
        assert_eq!(h.iter().map(|e| e.bank_learning).collect::<Vec<_>>(), [false, false, true, true], "warm-up is half the epochs");
        assert!(h.iter().all(|e| e.loss.is_finite() && e.loss > 0.0 && e.loss < 2.0), "{h:?}");
        assert!(h[3].loss < h[0].loss, "{bank:?}: the loss should fall: {h:?}");
        assert_eq!(c.embed_history.len(), 4);

        // Determinism, checked on the default (dense) bank only to keep the suite short; lazy
        // embedding's independence of its call is tested in `model.rs`.
        if bank == BankMode::Dense {
            assert_eq!(run().to_json(), json, "the same inputs and config must give the same result");
        }
    }
}

#[test]
fn transfer_with_a_fitted_model() {
    let (train, test) = (load_split("train"), load_split("test"));
    let (tr, te) = (in_memory(&train), in_memory(&test));
    let cfg = short_compare_config(BankMode::Dense);
    let model = fit(&tr, &cfg.fit, &NoProgress).unwrap().model;
    let c = compare(&tr, &train.labels, &te, &test.labels, Some(&model), &cfg, &NoProgress).unwrap();
    assert_baselines_match_reference(&c, &reference());
    assert!(c.fit_history.is_empty(), "a given model is not refitted");
    assert_eq!(c.embed_history.len(), 4);

    // `ours` is exactly: both splits embedded through the given model, then k-NN.
    let ecfg = EmbedConfig::from_fit(&cfg.fit);
    let mut a = embed(&model, &tr, &ecfg, &NoProgress).unwrap().representations;
    let mut b = embed(&model, &te, &ecfg, &NoProgress).unwrap().representations;
    a.normalize_rows();
    b.normalize_rows();
    let want = evaluate_knn(&a, &train.labels, &b, &test.labels, &cfg.knn, &NoProgress).unwrap();
    let ours = c.method("ours").unwrap();
    assert_eq!(ours.dim, 1280);
    assert_eq!(serde_json::to_value(&ours.knn).unwrap(), serde_json::to_value(&want).unwrap());

    // The model fixes the backbones: a test set with other names is refused, naming both.
    let renamed = InMemory::new(vec!["x".into(), "y".into(), "z".into()], test.mats.clone()).unwrap();
    let err = compare(&renamed, &test.labels, &renamed, &test.labels, Some(&model), &cfg, &NoProgress).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("mnv2-imagenet") && msg.contains("x[1280]"), "{msg}");
}

fn assert_same_fit(a: &FitOutput, b: &FitOutput, what: &str) {
    assert_eq!(a.history, b.history, "{what}: loss curve");
    assert!(a.model == b.model, "{what}: the weights differ");
    assert!(a.representations.data == b.representations.data, "{what}: the representations differ");
}

#[test]
fn memory_bound_counts_every_buffer_of_a_fit_and_status_parses() {
    use ensembed::memory::{fit_memory, parse_status, ProcessMemory, RUNTIME_ALLOWANCE};
    // Two backbones of width 64, n = 1000, batch 100, depth 2 (64 -> 64 -> 64), dense bank:
    let b = fit_memory(1000, &[64, 64], &FitConfig { batch: 100, ..Default::default() });
    assert_eq!(b.bank, 1000 * 64 * 4);
    assert_eq!(b.bank_state, 2 * 1000 * 64 * 4 + 1000 * 8, "two moments, a u64 step per row");
    assert_eq!(b.order, 2 * 1000 * 8);
    // (64*64 + 64) * 2 layers * 2 MLPs parameters, each with a gradient and two moments.
    assert_eq!(b.mlps, 2 * 2 * (64 * 64 + 64) * 4 * 4);
    // Per MLP: two layer outputs and two gradient buffers of 100 x 64; then the gathered rows
    // (100 x 64), the targets (100 x 128) and the input and its gradient in two layouts.
    assert_eq!(b.step, (2 * (100 * 128 + 2 * 100 * 64) + 100 * 64 + 100 * 128 + 4 * 100 * 64) * 4);
    assert_eq!(b.init, 1000 * 64 * 4, "the average is built in blocks of up to 4096 rows");
    assert_eq!(b.total(), b.bank + b.bank_state + b.order + b.mlps + b.step + RUNTIME_ALLOWANCE);
    let lazy = fit_memory(1000, &[64, 64], &FitConfig { batch: 100, bank: BankMode::Lazy, ..Default::default() });
    assert_eq!(lazy.bank_state, 2 * 1000 * 64 * 4 + 1000 * 4);
    // Linux's /proc/self/status (values in kB).
    let text = "Name:\tensembed\nVmPeak:\t  9999 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\nRssAnon:\t     512 kB\nRssFile:\t     500 kB\nRssShmem:\t      12 kB\n";
    assert_eq!(parse_status(text), Some(ProcessMemory { peak_rss: 2048 << 10, rss: 1024 << 10, rss_anon: 512 << 10, rss_file: 500 << 10 }));
    assert_eq!(parse_status("Name:\tx\n"), None);
    if cfg!(target_os = "linux") {
        let m = ensembed::memory::process_memory().expect("/proc/self/status on Linux");
        assert!(m.peak_rss >= m.rss && m.rss >= m.rss_anon && m.rss_anon > 0, "{m:?}");
    }
}

#[test]
fn fit_on_a_store_equals_fit_in_memory() {
    let train = load_split("train");
    let mem = in_memory(&train);
    let dir = tempfile::tempdir().unwrap();

    // A store of f32 `.npy` files (the f16 values widened exactly), and one imported straight
    // from the archive, which keeps f16.
    let mut from_npy = Vec::new();
    for (name, m) in train.names.iter().zip(&train.mats) {
        let p = dir.path().join(format!("{name}.npy"));
        write_npy_f32(&p, m).unwrap();
        from_npy.push((name.clone(), p));
    }
    let labels = dir.path().join("labels.npy");
    write_npy_i64(&labels, &train.labels.iter().map(|&y| y as i64).collect::<Vec<_>>()).unwrap();
    let s32 = import_numpy(&dir.path().join("s32"), &from_npy, Some(&labels), None, false).unwrap();

    let npz = train.path.display().to_string();
    let from_npz: Vec<(String, PathBuf)> =
        train.names.iter().map(|n| (n.clone(), PathBuf::from(format!("{npz}:{n}")))).collect();
    let npz_labels = PathBuf::from(format!("{npz}:labels"));
    let s16 = import_numpy(&dir.path().join("s16"), &from_npz, Some(&npz_labels), None, false).unwrap();
    drop((s32, s16));

    let s32 = Store::open(&dir.path().join("s32")).unwrap();
    let s16 = Store::open(&dir.path().join("s16")).unwrap();
    for (s, dtype) in [(&s32, Dtype::F32), (&s16, Dtype::F16)] {
        assert_eq!(FeatureSet::names(s), train.names);
        assert_eq!(FeatureSet::dims(s), [1280; 3]);
        assert!(s.backbones().iter().all(|b| b.dtype == dtype), "{:?}", s.backbones());
        assert_eq!(s.labels().unwrap(), train.labels.as_slice());
        s.validate_values().unwrap();
        for j in 0..3 {
            assert!(backbone_matrix(s, j) == *mem.matrix(j), "{dtype}: normalised backbone {j} differs from memory");
        }
    }

    let cfg = FitConfig { epochs: 2, warmup: Some(1), ..FitConfig::default() };
    let want = fit(&mem, &cfg, &NoProgress).unwrap();
    assert_eq!(want.representations.rows, 1000);
    assert_same_fit(&fit(&s32, &cfg, &NoProgress).unwrap(), &want, "f32 store vs memory");
    assert_same_fit(&fit(&s16, &cfg, &NoProgress).unwrap(), &want, "f16 store vs memory");
}
