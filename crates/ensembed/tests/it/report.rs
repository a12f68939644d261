//! The report module on a tiny synthetic problem (three classes, two backbones): `evaluate`
//! gives exactly the numbers of `compare` and of the analysis functions, `write_report` writes
//! every file (well-formed SVGs with the expected titles and series names, PNGs of the right
//! size), replaces a report only with `overwrite` and leaves no temporaries; and the sweep's
//! parameter rules.

use std::path::Path;

use ensembed::analysis::{normalized_nn_similarity, singular_values};
use ensembed::compare::{compare, CompareConfig};
use ensembed::eval::knn::KnnConfig;
use ensembed::features::backbone_matrix;
use ensembed::fit::fit;
use ensembed::report::{apply_sweep_value, evaluate, evaluate_with, report_figures, sweep_figure, write_report, Report, Variant};
use ensembed::{FitConfig, InMemory, Matrix, NoProgress};
use rand::Rng;

use crate::helpers::rng;

/// Class-clustered non-negative features: `[n, d]` per backbone, labels in 0..3.
fn problem(n: usize, seed: u64) -> (InMemory, Vec<u32>) {
    let mut r = rng(seed);
    let labels: Vec<u32> = (0..n).map(|i| (i % 3) as u32).collect();
    let mut mats = Vec::new();
    for (b, d) in [(0u64, 8usize), (1, 8)] {
        let mut centres = rng(100 + b);
        let c: Vec<Vec<f32>> = (0..3).map(|_| (0..d).map(|_| centres.random_range(0.0f32..1.0)).collect()).collect();
        let data = labels.iter().flat_map(|&y| c[y as usize].iter().map(|&v| (v + r.random_range(0.0f32..0.6)).max(0.01)).collect::<Vec<_>>()).collect();
        mats.push(Matrix::from_vec(n, d, data).unwrap());
    }
    (InMemory::new(vec!["alpha".into(), "beta".into()], mats).unwrap(), labels)
}

fn config() -> CompareConfig {
    CompareConfig {
        fit: FitConfig { epochs: 3, batch: 16, ..FitConfig::default() },
        knn: KnnConfig { ks: vec![5, 20], ..KnnConfig::default() },
        ..CompareConfig::default()
    }
}

fn report() -> Report {
    let (tr, ytr) = problem(60, 1);
    let (te, yte) = problem(30, 2);
    evaluate(&tr, &ytr, &te, &yte, None, &config(), &NoProgress).unwrap()
}

/// Checks that `s` is well-formed XML as far as tags go: every element closed in order, one
/// root, attribute quotes balanced, no bare `&`.
pub fn assert_well_formed_xml(s: &str) {
    let mut stack: Vec<String> = Vec::new();
    let mut roots = 0;
    let mut rest = s;
    while let Some(i) = rest.find(['<', '&']) {
        let after = &rest[i..];
        if after.starts_with('&') {
            let end = after.find(';').unwrap_or_else(|| panic!("bare & at {:?}", &after[..after.len().min(30)]));
            let ent = &after[1..end];
            assert!(
                ["amp", "lt", "gt", "quot", "apos"].contains(&ent) || ent.starts_with('#'),
                "unknown entity &{ent};"
            );
            rest = &after[end + 1..];
            continue;
        }
        if after.starts_with("<?") {
            rest = &after[after.find("?>").expect("closed declaration") + 2..];
            continue;
        }
        if after.starts_with("<!--") {
            rest = &after[after.find("-->").expect("closed comment") + 3..];
            continue;
        }
        let end = after.find('>').expect("closed tag");
        let tag = &after[1..end];
        assert_eq!(tag.matches('"').count() % 2, 0, "unbalanced quotes in <{tag}>");
        if let Some(name) = tag.strip_prefix('/') {
            assert_eq!(stack.pop().as_deref(), Some(name.trim()), "mismatched </{name}>");
        } else {
            let name = tag.split(|c: char| c.is_whitespace() || c == '/').next().unwrap().to_string();
            if stack.is_empty() {
                roots += 1;
            }
            if !tag.ends_with('/') {
                stack.push(name);
            }
        }
        rest = &after[end + 1..];
    }
    assert!(stack.is_empty(), "unclosed elements {stack:?}");
    assert_eq!(roots, 1, "one root element");
}

/// Width and height from a PNG's IHDR, after checking the signature.
pub fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(bytes.len() > 33, "PNG too short");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR", "first chunk");
    let be = |o: usize| u32::from_be_bytes(bytes[o..o + 4].try_into().unwrap());
    (be(16), be(20))
}

#[test]
fn evaluate_gives_the_numbers_of_compare_and_of_the_analysis() {
    let (tr, ytr) = problem(60, 1);
    let (te, yte) = problem(30, 2);
    let cfg = config();
    let r = evaluate(&tr, &ytr, &te, &yte, None, &cfg, &NoProgress).unwrap();
    let c = compare(&tr, &ytr, &te, &yte, None, &cfg, &NoProgress).unwrap();
    assert_eq!(r.comparison.to_json(), c.to_json());

    let names: Vec<&str> = r.diagnostics.methods.iter().map(|m| m.method.as_str()).collect();
    assert_eq!(names, ["alpha", "beta", "average", "concat", "ours"]);
    let (a, b) = (backbone_matrix(&tr, 1), backbone_matrix(&te, 1));
    let beta = &r.diagnostics.methods[1];
    assert_eq!(beta.singular_values, singular_values(&a));
    assert_eq!(beta.nn_similarity, normalized_nn_similarity(&a, &b, &NoProgress).unwrap());
    assert_eq!(beta.nn_similarity.len(), 30);
    assert_eq!(r.diagnostics.methods[3].dim, 16);
    assert_eq!(r.diagnostics.recovery_cosine.len(), 2);
    for x in &r.diagnostics.recovery_cosine {
        assert!(x.train > 0.5 && x.train <= 1.0 + 1e-9 && x.test > 0.5 && x.test <= 1.0 + 1e-9, "{x:?}");
    }
    assert!(r.to_json()["diagnostics"]["methods"][4]["effective_rank"].as_f64().unwrap() > 1.0);
}

#[test]
fn variants_are_scored_and_diagnosed_like_ours() {
    // The non-negative fit and MLPs transferred from another problem get rows, diagnostics,
    // recovery and loss curves; each row equals what `compare` gives for that setting alone
    // (the transferred one: `compare` with that model, the nonneg one: `compare` with
    // `nonneg`).
    let (tr, ytr) = problem(60, 1);
    let (te, yte) = problem(30, 2);
    let (other, _) = problem(45, 7);
    let cfg = config();
    let donor = fit(&other, &cfg.fit, &NoProgress).unwrap().model;
    let nonneg = FitConfig { nonneg: true, ..cfg.fit.clone() };
    let variants = [
        Variant { name: "ours-nonneg".into(), fit: nonneg.clone(), model: None },
        Variant { name: "ours-transfer".into(), fit: cfg.fit.clone(), model: Some(&donor) },
    ];
    let r = evaluate_with(&tr, &ytr, &te, &yte, None, &cfg, &variants, &NoProgress).unwrap();
    let names: Vec<&str> = r.comparison.methods.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["alpha", "beta", "average", "concat", "ours", "ours-nonneg", "ours-transfer"]);
    let diag: Vec<&str> = r.diagnostics.methods.iter().map(|m| m.method.as_str()).collect();
    assert_eq!(diag, names);
    let alone = |fit: &FitConfig, model| {
        let c = compare(&tr, &ytr, &te, &yte, model, &CompareConfig { fit: fit.clone(), ..config() }, &NoProgress).unwrap();
        serde_json::to_value(c.method("ours").unwrap()).unwrap()
    };
    let row = |name: &str| {
        let mut v = serde_json::to_value(r.comparison.method(name).unwrap()).unwrap();
        v["name"] = "ours".into();
        v
    };
    assert_eq!(row("ours-nonneg"), alone(&nonneg, None));
    assert_eq!(row("ours-transfer"), alone(&cfg.fit, Some(&donor)));
    let rec: Vec<&str> = r.diagnostics.recovery_cosine.iter().map(|x| x.method.as_str()).collect();
    assert_eq!(rec, ["ours", "ours", "ours-nonneg", "ours-nonneg", "ours-transfer", "ours-transfer"]);
    assert!(r.variants[0].fit.nonneg && !r.variants[0].transferred && r.variants[0].fit_history.len() == 3);
    assert!(r.variants[1].transferred && r.variants[1].fit_history.is_empty() && r.variants[1].embed_history.len() == 3);
    assert_eq!(r.to_json()["variants"][1]["name"], "ours-transfer");
    // The table's gap lines: one per learned row, `ours` last (the page quotes the last line).
    let table = r.comparison.table();
    let gaps: Vec<&str> = table.lines().filter(|l| l.contains(" - best baseline")).map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(gaps, ["ours-nonneg", "ours-transfer", "ours"]);
    // The loss figure draws the variants' curves too.
    let figs = report_figures(&r).unwrap();
    let loss = figs.iter().find(|f| f.name == "loss").unwrap();
    assert!(loss.svg.contains("ours-nonneg: fit") && loss.svg.contains("ours-transfer: embed"));
    // A variant must be named as one.
    let bad = [Variant { name: "nonneg".into(), fit: nonneg, model: None }];
    let e = evaluate_with(&tr, &ytr, &te, &yte, None, &cfg, &bad, &NoProgress).unwrap_err().to_string();
    assert!(e.contains("nonneg") && e.contains("ours-"), "{e}");
}

#[test]
fn a_report_reads_back_from_its_json_and_redraws_the_same() {
    // report.json carries everything the figures and page need: read back, it gives the same
    // JSON and the same figures, so `ensembed redraw` needs no refit.
    let r = report();
    let back = Report::from_json(&r.to_json()).expect("a report's own JSON");
    assert_eq!(back.to_json(), r.to_json());
    let (a, b) = (report_figures(&r).unwrap(), report_figures(&back).unwrap());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!((&x.name, &x.svg, &x.png), (&y.name, &y.svg, &y.png));
    }
    assert!(Report::from_json(&serde_json::json!({"comparison": {}})).is_none());
}

#[test]
fn similarity_histograms_share_a_robust_range_and_flag_centred_methods() {
    // One panel with a median <= 0 (a centred representation: the ratio is meaningless) and
    // huge outliers must neither stretch the others' shared x range nor go unflagged.
    let mut r = report();
    let n = r.diagnostics.methods[0].nn_similarity.len();
    let ours = r.diagnostics.methods.last_mut().unwrap();
    ours.nn_similarity = (0..n).map(|i| if i % 2 == 0 { -200.0 } else { 5e4 }).collect();
    ours.nn_similarity_median = -200.0;
    let svg = ensembed::report::figures::nn_similarity_figure(&r).unwrap().svg;
    assert!(svg.contains("ours: median -200.000 (mean cos ~ 0)"), "the centred panel is flagged");
    assert_eq!(svg.matches("(mean cos ~ 0)").count(), 1);
    // The shared axis of the other panels stays within the data's own scale (no 50000 tick
    // in every panel, as a range over all values would give).
    assert!(svg.matches("50000.00").count() <= 1, "outliers stretched the shared range");
}

fn assert_no_temps(dir: &Path) {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let left: Vec<String> = std::fs::read_dir(dir.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with(&format!(".{name}")))
        .collect();
    assert!(left.is_empty(), "left beside {}: {left:?}", dir.display());
}

#[test]
fn write_report_writes_every_file_well_formed() {
    let r = report();
    let figures = report_figures(&r).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rep");
    let files = write_report(&dir, &r, &figures, false).unwrap();
    assert_eq!(files.len(), 1 + 2 * 4 + 1);
    for f in &files {
        assert!(f.is_file(), "{}", f.display());
    }
    assert_no_temps(&dir);

    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(json, serde_json::from_str::<serde_json::Value>(&serde_json::to_string(&r.to_json()).unwrap()).unwrap());

    let expect: [(&str, &[&str]); 4] = [
        ("knn_top1", &["k-NN top-1 accuracy per method", "k = 20", "k = 5", "alpha", "beta", "average", "concat", "ours"]),
        ("singular_values", &["Singular values", "alpha", "beta", "average", "concat", "ours"]),
        ("nn_similarity", &["nearest-neighbour similarity", "alpha: median", "ours: median"]),
        ("loss", &["Loss (mean 1 - cos) per epoch", "fit (train)", "embed (test)"]),
    ];
    for (name, needles) in expect {
        let svg = std::fs::read_to_string(dir.join(format!("fig/{name}.svg"))).unwrap();
        assert_well_formed_xml(&svg);
        assert!(svg.contains("<svg"), "{name}");
        for n in needles {
            assert!(svg.contains(n), "{name}.svg lacks {n:?}");
        }
        let fig = figures.iter().find(|f| f.name == name).unwrap();
        let png = std::fs::read(dir.join(format!("fig/{name}.png"))).unwrap();
        assert_eq!(png_size(&png), (fig.width, fig.height), "{name}.png");
        assert!(png.len() < 200_000, "{name}.png is {} bytes", png.len());
    }

    let html = std::fs::read_to_string(dir.join("index.html")).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert_eq!(html.matches("<svg").count(), 4, "every figure inlined");
    assert!(!html.contains("<?xml"), "no XML declarations inside the page");
    for needle in ["<h2>k-NN accuracy (%)</h2>", "top1@20", "top5@20", "top1@5", "Recovery cosine", "ours - best baseline"] {
        assert!(html.contains(needle), "index.html lacks {needle:?}");
    }
    let body = &html[html.find("<body>").unwrap()..html.rfind("</body>").unwrap() + 7];
    assert_well_formed_xml(&body.replace("<!DOCTYPE html>", ""));

    // An existing report is kept unless overwrite; with overwrite it is replaced whole.
    assert!(write_report(&dir, &r, &figures, false).is_err());
    std::fs::write(dir.join("stale.txt"), b"x").unwrap();
    write_report(&dir, &r, &figures, true).unwrap();
    assert!(!dir.join("stale.txt").exists() && dir.join("index.html").is_file());
    assert_no_temps(&dir);
}

#[test]
fn the_bundled_font_draws_text_into_the_png() {
    // The same chart with and without captions differs only if glyphs were rasterised.
    let with = sweep_figure("depth", &["1".into(), "2".into()], &[50.0, 60.0], 20, Some(("average", 55.0))).unwrap();
    let other = sweep_figure("dept", &["1".into(), "2".into()], &[50.0, 60.0], 20, Some(("average", 55.0))).unwrap();
    assert_ne!(with.png, other.png, "text changes the pixels");
    assert_well_formed_xml(&with.svg);
    assert!(with.svg.contains("best baseline (average)") && with.svg.contains("against depth"));
    assert_eq!(png_size(&with.png), (with.width, with.height));
}

#[test]
fn sweep_values_change_one_setting() {
    let base = FitConfig { lr: 1e-3, ..FitConfig::default() };
    let c = apply_sweep_value(&base, "batch", "512", true).unwrap();
    assert_eq!((c.batch, c.lr, c.lr_bank), (512, 2e-3, None));
    let c = apply_sweep_value(&base, "batch", "512", false).unwrap();
    assert_eq!((c.batch, c.lr), (512, 1e-3));
    let c = apply_sweep_value(&FitConfig { lr_bank: Some(1e-2), ..base.clone() }, "batch", "128", true).unwrap();
    assert_eq!((c.lr, c.lr_bank), (5e-4, Some(5e-3)));
    assert_eq!(apply_sweep_value(&base, "depth", "3", true).unwrap().depth, 3);
    assert_eq!(apply_sweep_value(&base, "lr-bank", "0.01", true).unwrap().lr_bank, Some(0.01));
    assert_eq!(apply_sweep_value(&base, "bank", "lazy", true).unwrap().bank, ensembed::BankMode::Lazy);
    assert!(!apply_sweep_value(&base, "final-relu", "false", true).unwrap().final_relu);
    assert_eq!(apply_sweep_value(&base, "seed", "7", true).unwrap().seed, 7);
    assert_eq!(apply_sweep_value(&base, "warmup", "0", true).unwrap().warmup, Some(0));
    for (p, v, needle) in [("depth", "9", "depth"), ("depth", "x", "integer"), ("colour", "1", "must be one of"), ("bank", "sparse", "dense or lazy"), ("warmup", "80", "warmup")] {
        let e = apply_sweep_value(&base, p, v, true).unwrap_err().to_string();
        assert!(e.contains(needle), "{p}={v}: {e}");
    }
}
