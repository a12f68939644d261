//! What the CLI tests share: running the built binary, the shipped demo features written out as
//! `.npy` files, the numpy reference accuracies, and the checks every failing command must pass.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use ensembed::store::npy::{read_npz, write_npy_f32, write_npy_i64};
use ensembed::Matrix;
use serde_json::Value;

/// The backbones of the demo sample, in archive order (the reference JSON's names).
pub const BACKBONES: [&str; 3] = ["mnv2-imagenet", "mnv2-tf2-imagenet", "mnv2-inat-bird"];
/// Top-1 cells of the reference have no near-ties: they must match exactly (a count over 500).
pub const TOP1_TOL: f64 = 1e-9;
/// Top-5 may differ by up to 2 test images in f32 (near-ties at rank 5/6).
pub const TOP5_TOL: f64 = 0.0041;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

/// What a run of the binary left.
#[derive(Debug)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `ensembed ARGS` (quiet: no progress bars) and collects its exit code and output.
pub fn run<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_ensembed"))
        .arg("--quiet")
        .args(args)
        .output()
        .expect("the ensembed binary runs");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `ensembed ARGS` and asserts that it succeeded.
pub fn ok<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Out {
    let out = run(args);
    let shown: Vec<String> = args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect();
    assert_eq!(out.code, Some(0), "ensembed {} failed:\nstdout: {}\nstderr: {}", shown.join(" "), out.stdout, out.stderr);
    out
}

/// The stdout of a successful `--json` run, parsed.
pub fn json<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Value {
    let out = ok(args);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout))
}

/// One split of the demo sample: raw f32 features per backbone (archive order) and labels.
pub struct Split {
    pub mats: Vec<Matrix>,
    pub labels: Vec<i64>,
}

fn load_split(split: &str) -> Split {
    let path = repo_root().join(format!("data/demo/{split}.npz"));
    let arrays = read_npz(&path).unwrap();
    let mut mats = Vec::new();
    let mut labels = None;
    for (name, a) in &arrays {
        if name == "labels" {
            labels = Some(a.to_i64(&path).unwrap());
        } else {
            assert_eq!(name, BACKBONES[mats.len()], "array order of {}", path.display());
            mats.push(a.to_f32_matrix(&path).unwrap());
        }
    }
    Split { mats, labels: labels.unwrap() }
}

/// The demo train split (1,000 rows), loaded once.
pub fn train() -> &'static Split {
    static S: OnceLock<Split> = OnceLock::new();
    S.get_or_init(|| load_split("train"))
}

/// The demo test split (500 rows), loaded once.
pub fn test() -> &'static Split {
    static S: OnceLock<Split> = OnceLock::new();
    S.get_or_init(|| load_split("test"))
}

/// numpy's accuracies on the demo sample (`data/demo/knn_reference.json`).
pub fn reference() -> &'static Value {
    static R: OnceLock<Value> = OnceLock::new();
    R.get_or_init(|| {
        let text = std::fs::read_to_string(repo_root().join("data/demo/knn_reference.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    })
}

/// Writes `split` as `DIR/PREFIX-<backbone>.npy` and `DIR/PREFIX-labels.npy`; returns the
/// `--backbone NAME=FILE` values and the labels path.
pub fn write_split(dir: &Path, prefix: &str, split: &Split) -> (Vec<String>, PathBuf) {
    let specs = BACKBONES
        .iter()
        .zip(&split.mats)
        .map(|(name, m)| {
            let p = dir.join(format!("{prefix}-{name}.npy"));
            write_npy_f32(&p, m).unwrap();
            format!("{name}={}", p.display())
        })
        .collect();
    let labels = dir.join(format!("{prefix}-labels.npy"));
    write_npy_i64(&labels, &split.labels).unwrap();
    (specs, labels)
}

/// `ensembed import` arguments for the given backbone specs and labels.
pub fn import_args(out: &Path, specs: &[String], labels: &Path) -> Vec<String> {
    let mut args = vec!["import".to_string(), "--out".into(), out.display().to_string()];
    for s in specs {
        args.extend(["--backbone".into(), s.clone()]);
    }
    args.extend(["--labels".into(), labels.display().to_string()]);
    args
}

/// Imports `split` into the store `DIR/NAME` (through `.npy` files) and returns its path.
pub fn import_split(dir: &Path, name: &str, split: &Split) -> PathBuf {
    let (specs, labels) = write_split(dir, name, split);
    let store = dir.join(name);
    ok(&import_args(&store, &specs, &labels));
    store
}

/// One k-NN report as the CLI prints it (`{"scores": [{"k", "top1", "top5"}], ...}`) against the
/// reference cells `want` (`{"<k>": {"top1", "top5"}}`).
pub fn assert_report_matches(method: &str, report: &Value, want: &Value) {
    let scores = report["scores"].as_array().unwrap_or_else(|| panic!("{method}: {report}"));
    assert_eq!(scores.len(), 4, "{method}: {report}");
    for s in scores {
        let k = s["k"].as_u64().unwrap().to_string();
        let (got1, got5) = (s["top1"].as_f64().unwrap(), s["top5"].as_f64().unwrap());
        let (want1, want5) = (want[&k]["top1"].as_f64().unwrap(), want[&k]["top5"].as_f64().unwrap());
        assert!((got1 - want1).abs() < TOP1_TOL, "{method} k = {k}: top-1 {got1} vs numpy {want1}");
        assert!((got5 - want5).abs() < TOP5_TOL, "{method} k = {k}: top-5 {got5} vs numpy {want5}");
    }
}

/// A failed run: a non-zero exit, no panic, and a message with every string of `needles`.
pub fn assert_clean_failure(out: &Out, needles: &[&str]) {
    assert!(matches!(out.code, Some(c) if c != 0), "expected failure, got {:?}\nstdout: {}\nstderr: {}", out.code, out.stdout, out.stderr);
    assert!(!out.stderr.contains("panicked"), "panicked:\n{}", out.stderr);
    assert!(!out.stderr.contains("RUST_BACKTRACE"), "panicked:\n{}", out.stderr);
    for n in needles {
        assert!(out.stderr.contains(n), "stderr should mention {n:?}:\n{}", out.stderr);
    }
}

/// Nothing at `out`, nor any `.NAME.tmp-*` beside it.
pub fn assert_no_output(out: &Path) {
    assert!(!out.exists(), "{} was left behind", out.display());
    let name = out.file_name().unwrap().to_string_lossy();
    let prefix = format!(".{name}.tmp-");
    let left: Vec<String> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "temporary files left beside {}: {left:?}", out.display());
}

/// `[rows, cols]` of deterministic positive values (every row non-zero).
pub fn synthetic(rows: usize, cols: usize, seed: u32) -> Matrix {
    let data = (0..rows * cols)
        .map(|i| {
            let x = (i as u32).wrapping_mul(2654435761).wrapping_add(seed.wrapping_mul(40503));
            0.01 + (x >> 8) as f32 / (1u32 << 24) as f32
        })
        .collect();
    Matrix::from_vec(rows, cols, data).unwrap()
}

/// `../shared` beside the repository, or a visible SKIP (a user's clone has none; CI has it).
pub fn shared(test: &str) -> Option<PathBuf> {
    let p = repo_root().join("../shared");
    if p.is_dir() {
        Some(p)
    } else {
        eprintln!("SKIP {test}: ../shared is not present beside the repository (it is in CI)");
        None
    }
}
