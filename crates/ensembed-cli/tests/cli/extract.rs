//! `extract` from every kind of image source, and killed: real CIFAR-10 test JPEGs through
//! the smallest coral MobileNet (`../shared`). SIGKILL at several points of the batch loop (read
//! off the partial record, so the points do not depend on the machine's speed) and at fixed
//! delays, then `--resume`, must give a store byte-identical to an uninterrupted run's; a
//! resume with other settings is refused by name; a list file with class names gives the same
//! rows as the folder it lists.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::*;

fn p(path: &Path) -> String {
    path.display().to_string()
}

/// `per_class` CIFAR-10 test images of each of the first `classes` classes, copied into
/// `dir/<class>/`.
fn cifar_folder(sh: &Path, dir: &Path, classes: usize, per_class: usize) -> Vec<String> {
    let src = sh.join("data/cifar10/test");
    let mut names: Vec<String> = std::fs::read_dir(&src).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let mut ids = Vec::new();
    for class in names.iter().take(classes) {
        let mut files: Vec<String> = std::fs::read_dir(src.join(class)).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        files.sort();
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for f in files.iter().take(per_class) {
            std::fs::copy(src.join(class).join(f), dir.join(class).join(f)).unwrap();
            ids.push(format!("{class}/{f}"));
        }
    }
    ids
}

fn store_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|f| (f.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&f).unwrap()))
        .collect();
    files.sort();
    files
}

fn partial_done(out: &Path) -> Option<u64> {
    let name = out.file_name().unwrap().to_string_lossy().into_owned();
    let record = out.with_file_name(format!(".{name}.extract-partial")).join("record.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(record).ok()?).ok()?;
    v["done"].as_u64()
}

#[test]
fn extract_killed_at_any_moment_and_resumed_is_byte_identical() {
    let Some(sh) = shared("extract_killed_at_any_moment_and_resumed_is_byte_identical") else { return };
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    cifar_folder(&sh, &images, 4, 12); // 48 images, 12 batches of 4
    let model = sh.join("data/models/coral/mobilenet_v1_0.25_128_quant.tflite");
    let args = |out: &Path, resume: bool| {
        let mut a: Vec<String> = ["--quiet", "extract", "--backbone"].map(String::from).to_vec();
        a.extend([format!("small={}", p(&model)), "--backbone".into(), format!("again={}", p(&model))]);
        a.extend(["--images".into(), p(&images), "--out".into(), p(out), "--batch".into(), "4".into()]);
        if resume {
            a.push("--resume".into());
        }
        a
    };
    let reference = dir.path().join("reference");
    ok(&args(&reference, false)[1..]);
    let want = store_files(&reference);
    assert_eq!(want.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["again.safetensors", "ids.txt", "labels.safetensors", "manifest.json", "small.safetensors"]);

    // Kill points: once the partial record says `done` images (0 = as soon as it exists), or
    // after a fixed delay (start-up, or wherever the machine has got to); two kills in a row
    // for the last.
    enum Kill {
        Done(u64),
        After(u64),
    }
    for (i, kills) in [vec![Kill::Done(0)], vec![Kill::Done(20)], vec![Kill::Done(44)], vec![Kill::After(30)], vec![Kill::Done(8), Kill::Done(28)]].into_iter().enumerate() {
        let out = dir.path().join(format!("s{i}"));
        for (k, kill) in kills.iter().enumerate() {
            let mut child = Command::new(env!("CARGO_BIN_EXE_ensembed")).args(args(&out, k > 0)).stderr(Stdio::null()).spawn().unwrap();
            let t0 = Instant::now();
            loop {
                let now = match kill {
                    Kill::Done(d) => partial_done(&out).is_some_and(|x| x >= *d),
                    Kill::After(ms) => t0.elapsed() >= Duration::from_millis(*ms),
                };
                if now || child.try_wait().unwrap().is_some() || t0.elapsed() > Duration::from_secs(120) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = child.kill(); // SIGKILL
            child.wait().unwrap();
        }
        ok(&args(&out, true)[1..]);
        assert!(store_files(&out) == want, "store differs after kill {i} and --resume");
        let left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!(".s{i}.")))
            .collect();
        assert!(left.is_empty(), "left beside s{i}: {left:?}");
    }
}

#[test]
fn extract_resume_with_other_settings_is_refused_by_name() {
    let Some(sh) = shared("extract_resume_with_other_settings_is_refused_by_name") else { return };
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    cifar_folder(&sh, &images, 2, 4);
    let small = sh.join("data/models/coral/mobilenet_v1_0.25_128_quant.tflite");
    let other = sh.join("data/models/coral/mobilenet_v1_0.5_160_quant.tflite");
    let args = |model: &Path, out: &Path, batch: &str, resume: bool| -> Vec<String> {
        let mut a: Vec<String> = ["extract", "--backbone"].map(String::from).to_vec();
        a.extend([format!("m={}", p(model)), "--images".into(), p(&images), "--out".into(), p(out), "--batch".into(), batch.into()]);
        if resume {
            a.push("--resume".into());
        }
        a
    };
    let reference = dir.path().join("reference");
    ok(&args(&small, &reference, "4", false));
    // A run killed as soon as its partial record exists.
    let out = dir.path().join("s");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ensembed")).arg("--quiet").args(args(&small, &out, "4", false)).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while partial_done(&out).is_none() && child.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = child.kill();
    child.wait().unwrap();
    if out.exists() {
        eprintln!("note: the extraction finished before it could be killed; the resume checks did not run");
        return;
    }
    let bad = run(&args(&small, &out, "2", true));
    assert_clean_failure(&bad, &["`batch` = 2", "had batch = 4", "without resume"]);
    let bad = run(&args(&other, &out, "4", true));
    assert_clean_failure(&bad, &["backbones", "m[256]", "m[512]"]);
    // The right settings finish it, identical to the uninterrupted run.
    ok(&args(&small, &out, "4", true));
    assert!(store_files(&out) == store_files(&reference));
}

#[test]
fn extract_reads_a_list_file_with_class_names_and_a_plain_folder() {
    let Some(sh) = shared("extract_reads_a_list_file_with_class_names_and_a_plain_folder") else { return };
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    let ids = cifar_folder(&sh, &images, 3, 3);
    let model = sh.join("data/models/coral/mobilenet_v1_0.25_128_quant.tflite");
    let extract = |src: &Path, out: &Path| ok(&["extract".to_string(), "--backbone".into(), format!("m={}", p(&model)), "--images".into(), p(src), "--out".into(), p(out)]);
    let from_folder = dir.path().join("folder-store");
    extract(&images, &from_folder);
    // The same images listed in reverse order with their class names as labels.
    let list = dir.path().join("list.csv");
    let lines: Vec<String> = ids.iter().rev().map(|id| format!("images/{id},{}", id.split('/').next().unwrap())).collect();
    std::fs::write(&list, lines.join("\n")).unwrap();
    let from_list = dir.path().join("list-store");
    let out = extract(&list, &from_list);
    assert!(out.stderr.contains("9 images (3 classes)"), "{}", out.stderr);
    let (a, b) = (ensembed::store::Store::open(&from_folder).unwrap(), ensembed::store::Store::open(&from_list).unwrap());
    assert_eq!(a.classes(), b.classes());
    let (mut ra, mut rb) = (vec![0f32; 256], vec![0f32; 256]);
    for i in 0..9 {
        a.read_row(0, i, &mut ra);
        b.read_row(0, 8 - i, &mut rb);
        assert_eq!(ra, rb, "{}", ids[i]);
        assert_eq!(a.labels().unwrap()[i], b.labels().unwrap()[8 - i]);
        assert_eq!(b.ids().unwrap()[8 - i], format!("images/{}", ids[i]));
    }
    // A plain folder of images: a store without labels.
    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    std::fs::copy(images.join(&ids[0]), plain.join("one.jpg")).unwrap();
    let store = dir.path().join("plain-store");
    extract(&plain, &store);
    let s = ensembed::store::Store::open(&store).unwrap();
    assert!(s.labels().is_none());
    assert_eq!(s.ids().unwrap(), ["one.jpg".to_string()]);
    let bad = run(&["extract".to_string(), "--backbone".into(), p(&model), "--images".into(), p(&dir.path().join("missing.txt")), "--out".into(), p(&dir.path().join("x"))]);
    assert_clean_failure(&bad, &["missing.txt"]);
}

/// The default demo extracts the shipped images (data/demo/images.zip) through the shipped
/// models itself; unpacked into folders and run through `extract` and `compare`, the same
/// images give the same table, to the last digit (the same f16 features, the same fit).
#[test]
fn the_demo_from_images_equals_extract_then_compare() {
    let dir = tempfile::tempdir().unwrap();
    let demo = repo_root().join("data/demo");
    let mut zip = zip::ZipArchive::new(std::fs::File::open(demo.join("images.zip")).unwrap()).unwrap();
    zip.extract(dir.path().join("images")).unwrap();
    let mut args: Vec<String> = vec!["extract".into()];
    for (name, file) in [("mnv1-025", "mobilenet_v1_0.25_128_quant.tflite"), ("mnv1-050", "mobilenet_v1_0.5_160_quant.tflite"), ("mnv1-075", "mobilenet_v1_0.75_192_quant.tflite")] {
        args.extend(["--backbone".into(), format!("{name}={}", p(&demo.join("models").join(file)))]);
    }
    for split in ["train", "test"] {
        let mut a = args.clone();
        a.extend(["--images".into(), p(&dir.path().join("images").join(split)), "--out".into(), p(&dir.path().join(split))]);
        ok(&a);
    }
    let want = json(&["compare", "--train", &p(&dir.path().join("train")), "--test", &p(&dir.path().join("test")), "--epochs", "2", "--json"]);
    let got = json(&["demo", "--epochs", "2", "--json"]);
    assert_eq!(got["methods"].as_array().unwrap().len(), 5, "three backbones, concat and ours (no average of mixed widths): {got}");
    assert_eq!(got["methods"], want["methods"]);
    assert_eq!(got["fit_history"], want["fit_history"]);
}
