//! Listing images (ImageFolder, plain folder, list file) and resumable extraction, without
//! `../shared`: small PNGs written here and a stand-in backbone whose features are known (each
//! image's mean colour and size), so that every row of the store can be checked exactly. An
//! extraction interrupted after any batch (the backbone fails on its k-th call) and resumed
//! gives a store byte-identical to an uninterrupted run's.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use ensembed::backbone::{
    extract_images, extract_partial_path, list_image_file, list_images, ExtractOptions, FeatureExtractor, ImageSet, RgbImage,
};
use ensembed::store::Store;
use ensembed::{Error, Matrix, NoProgress, Result};

/// Features `[mean R, mean G, mean B, width]` per image; fails on call `fail_at` (counting from
/// 0) to stand in for a killed run.
struct MeanColour {
    calls: AtomicUsize,
    fail_at: usize,
}

impl MeanColour {
    fn new() -> Self {
        MeanColour { calls: AtomicUsize::new(0), fail_at: usize::MAX }
    }
    fn failing_at(k: usize) -> Self {
        MeanColour { calls: AtomicUsize::new(0), fail_at: k }
    }
}

impl FeatureExtractor for MeanColour {
    fn pooled_dim(&self) -> usize {
        4
    }
    fn features(&self, images: &[RgbImage]) -> Result<Matrix> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == self.fail_at {
            return Err(Error::config("test", "kill", "the stand-in backbone was told to fail here"));
        }
        let mut data = Vec::new();
        for im in images {
            let px = im.pixels();
            let n = (px.len() / 3) as f32;
            for c in 0..3 {
                data.push(px.iter().skip(c).step_by(3).map(|&v| v as f32).sum::<f32>() / n);
            }
            data.push(im.width() as f32);
        }
        Matrix::from_vec(images.len(), 4, data)
    }
}

/// Writes a `w x w` PNG of one colour.
fn png(path: &Path, w: u32, rgb: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_pixel(w, w, image::Rgb(rgb)).save(path).unwrap();
}

/// Ten images in two class folders, `cls/NN.png`, each of its own colour and size.
fn image_folder(root: &Path) -> Vec<(String, [u8; 3], u32)> {
    let mut made = Vec::new();
    for i in 0..10u8 {
        let class = if i % 3 == 0 { "b-circle" } else { "a-square" };
        let id = format!("{class}/{i:02}.png");
        let (rgb, w) = ([i * 20, 255 - i * 10, 7], 4 + i as u32);
        png(&root.join(&id), w, rgb);
        made.push((id, rgb, w));
    }
    made.sort();
    made
}

fn store_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    files.sort();
    files
}

/// Nothing is left beside `out` (no temporary or partial folders).
fn only_store_left(out: &Path) {
    let name = out.file_name().unwrap().to_string_lossy().into_owned();
    let left: Vec<String> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!(".{name}")))
        .collect();
    assert!(left.is_empty(), "left beside {}: {left:?}", out.display());
}

#[test]
fn list_images_reads_image_folders_plain_folders_and_list_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("folder");
    let made = image_folder(&root);
    std::fs::write(root.join("stray.png"), "a file beside the class folders is skipped").unwrap();
    let set = list_images(&root).unwrap();
    assert_eq!(set.ids, made.iter().map(|m| m.0.clone()).collect::<Vec<_>>());
    assert_eq!(set.classes.as_deref(), Some(&["a-square".to_string(), "b-circle".to_string()][..]));
    let want: Vec<i64> = made.iter().map(|m| i64::from(m.0.starts_with('b'))).collect();
    assert_eq!(set.labels.as_deref(), Some(&want[..]));

    // A plain folder: its images, sorted, unlabelled; other files and hidden ones skipped.
    let plain = dir.path().join("plain");
    png(&plain.join("b.PNG"), 3, [1, 2, 3]);
    png(&plain.join("a.png"), 3, [1, 2, 3]);
    png(&plain.join(".hidden.png"), 3, [1, 2, 3]);
    std::fs::write(plain.join("notes.txt"), "x").unwrap();
    let set = list_images(&plain).unwrap();
    assert_eq!(set, ImageSet { root: plain.clone(), ids: vec!["a.png".into(), "b.PNG".into()], labels: None, classes: None });

    // A list file: paths relative to it (or absolute), labels as names or as integers.
    let abs = plain.join("a.png").display().to_string();
    let list = dir.path().join("list.txt");
    std::fs::write(&list, format!("# comment\nfolder/a-square/01.png, dog\n\n{abs},cat\nplain/b.PNG,dog\n")).unwrap();
    let set = list_images(&list).unwrap();
    assert_eq!(set.root, dir.path());
    assert_eq!(set.ids, ["folder/a-square/01.png", abs.as_str(), "plain/b.PNG"]);
    assert_eq!(set.classes.as_deref(), Some(&["cat".to_string(), "dog".to_string()][..]));
    assert_eq!(set.labels.as_deref(), Some(&[1, 0, 1][..]));
    assert!(set.path(1).is_file() && set.path(0).is_file());
    std::fs::write(&list, "plain/a.png,3\nplain/b.PNG,0\n").unwrap();
    let set = list_image_file(&list).unwrap();
    assert_eq!((set.labels.as_deref(), set.classes), (Some(&[3, 0][..]), None));
    std::fs::write(&list, "plain/a.png\nplain/b.PNG\n").unwrap();
    assert_eq!(list_image_file(&list).unwrap().labels, None);
}

#[test]
fn bad_list_files_name_the_file_the_line_and_the_value() {
    let dir = tempfile::tempdir().unwrap();
    png(&dir.path().join("a.png"), 3, [0, 0, 0]);
    let list = dir.path().join("list.txt");
    for (text, line, says) in [
        ("a.png,1\nmissing.png,0\n", "line 2", "\"missing.png\" does not exist"),
        ("a.png,1\na.png\n", "line 2", "either every line has a label or none has"),
        ("a.png\na.png,1\n", "line 2", "either every line has a label or none has"),
        ("a.png,-2\n", "line 1", "label -2 is negative"),
        ("a.png,\n", "line 1", "expected `path` or `path,label`"),
        ("# nothing\n\n", "lines", "lists no images"),
    ] {
        std::fs::write(&list, text).unwrap();
        let err = list_image_file(&list).unwrap_err().to_string();
        assert!(err.contains("list.txt") && err.contains(line) && err.contains(says), "{text:?}: {err}");
    }
    let err = list_images(&dir.path().join("nope")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }) && err.to_string().contains("nope"), "{err}");
}

#[test]
fn extraction_writes_every_row_labels_and_ids() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    let made = image_folder(&root);
    let set = list_images(&root).unwrap();
    let (a, b) = (MeanColour::new(), MeanColour::new());
    let out = dir.path().join("store");
    extract_images(&[("a".to_string(), &a), ("b".to_string(), &b)], &set, &out, &ExtractOptions { batch: 3, ..Default::default() }, &NoProgress).unwrap();
    let store = Store::open(&out).unwrap();
    assert_eq!(store.len(), 10);
    assert_eq!(store.ids().unwrap(), &set.ids[..]);
    let want: Vec<u32> = set.labels.as_ref().unwrap().iter().map(|&l| l as u32).collect();
    assert_eq!(store.labels().unwrap(), &want[..]);
    let mut row = [0f32; 4];
    for (i, (_, rgb, w)) in made.iter().enumerate() {
        for j in 0..2 {
            store.read_row(j, i, &mut row);
            // Each value is an integer below 2048: exact in f16.
            assert_eq!(row, [rgb[0] as f32, rgb[1] as f32, rgb[2] as f32, *w as f32], "row {i}");
        }
    }
    only_store_left(&out);
    // A plain folder gives a store without labels.
    let plain = dir.path().join("plain");
    png(&plain.join("x.png"), 2, [9, 9, 9]);
    let out = dir.path().join("plain-store");
    extract_images(&[("a".to_string(), &a)], &list_images(&plain).unwrap(), &out, &ExtractOptions::default(), &NoProgress).unwrap();
    let store = Store::open(&out).unwrap();
    assert!(store.labels().is_none());
    assert_eq!(store.ids().unwrap(), ["x.png".to_string()]);
}

#[test]
fn an_extraction_stopped_after_any_batch_resumes_byte_identically() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    image_folder(&root);
    let set = list_images(&root).unwrap();
    let opts = ExtractOptions { batch: 3, fingerprints: vec!["a-v1".into(), "b-v1".into()], ..Default::default() };
    let run = |out: &Path, a: &MeanColour, opts: &ExtractOptions| {
        let b = MeanColour::new();
        extract_images(&[("a".to_string(), a), ("b".to_string(), &b)], &set, out, opts, &NoProgress)
    };
    let reference = dir.path().join("reference");
    run(&reference, &MeanColour::new(), &opts).unwrap();
    let want = store_bytes(&reference);
    // Backbone `a` fails on its k-th batch (4 batches of 3, 3, 3, 1 images), then a resumed
    // run continues from the batches that were complete.
    for k in 0..4 {
        let out = dir.path().join(format!("s{k}"));
        let err = run(&out, &MeanColour::failing_at(k), &opts).unwrap_err();
        assert!(err.to_string().contains("told to fail"), "{err}");
        assert!(!out.exists(), "no store after a failed run");
        let record: serde_json::Value = serde_json::from_slice(&std::fs::read(extract_partial_path(&out).join("record.json")).unwrap()).unwrap();
        assert_eq!(record["done"], 3 * k, "batch {k}");
        // The resumed run computes only the missing batches.
        let a = MeanColour::new();
        run(&out, &a, &ExtractOptions { resume: true, ..opts.clone() }).unwrap();
        assert_eq!(a.calls.load(Ordering::SeqCst), 4 - k, "batch {k}");
        assert!(store_bytes(&out) == want, "resumed after batch {k}: store differs");
        only_store_left(&out);
    }
}

#[test]
fn a_resumed_extraction_refuses_other_settings_and_starts_over_without_resume() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("images");
    image_folder(&root);
    let set = list_images(&root).unwrap();
    let out = dir.path().join("store");
    let opts = ExtractOptions { batch: 4, fingerprints: vec!["weights-1".into()], ..Default::default() };
    let stop = || {
        let a = MeanColour::failing_at(1);
        extract_images(&[("a".to_string(), &a)], &set, &out, &opts, &NoProgress).unwrap_err();
    };
    stop();
    let resume = |set: &ImageSet, name: &str, opts: ExtractOptions| {
        let a = MeanColour::new();
        extract_images(&[(name.to_string(), &a)], set, &out, &ExtractOptions { resume: true, ..opts }, &NoProgress)
    };
    let mut fewer = set.clone();
    fewer.ids.pop();
    fewer.labels.as_mut().unwrap().pop();
    let mut relabelled = set.clone();
    relabelled.labels.as_mut().unwrap()[0] = 1;
    for (err, field) in [
        (resume(&set, "a", ExtractOptions { batch: 5, ..opts.clone() }), "batch"),
        (resume(&set, "a", ExtractOptions { fingerprints: vec!["weights-2".into()], ..opts.clone() }), "backbones"),
        (resume(&set, "other", opts.clone()), "backbones"),
        (resume(&fewer, "a", opts.clone()), "images"),
        (resume(&relabelled, "a", opts.clone()), "images"),
    ] {
        let err = err.unwrap_err().to_string();
        assert!(err.contains(&format!("had {field} = ")) && err.contains("rerun without resume"), "{field}: {err}");
    }
    // A damaged partial file (shorter than its record says) is named.
    let partial = extract_partial_path(&out);
    std::fs::write(partial.join("a.f16"), [0u8; 6]).unwrap();
    let err = resume(&set, "a", opts.clone()).unwrap_err().to_string();
    assert!(err.contains("a.f16") && err.contains("6 bytes"), "{err}");
    // Without resume, the partial work is discarded and the run starts over.
    let a = MeanColour::new();
    extract_images(&[("a".to_string(), &a)], &set, &out, &opts, &NoProgress).unwrap();
    assert_eq!(a.calls.load(Ordering::SeqCst), 3, "all three batches of 4, 4, 2 images");
    assert!(Store::open(&out).is_ok());
    only_store_left(&out);
}
