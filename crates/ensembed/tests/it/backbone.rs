//! The TFLite backbones against the official interpreter: the known ImageNet answers on the
//! coral photos, the shipped demo features (made by tflite-runtime 2.14 through
//! `scripts/make_demo_features.py`) to the last bit, a table of pooled-feature numbers for every
//! coral model from `scripts/tflite_reference.py`, an image folder extracted into a store, small
//! JPEG and PNG files against Pillow's pixels, and hostile files (truncated, offsets flipped,
//! random bytes) that must give errors, never panics. Everything that needs the models or
//! CIFAR-10 skips with a visible SKIP line when `../shared` is absent.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use ensembed::backbone::{extract_folder, list_image_folder, Backbone, RgbImage, TfliteModel};
use ensembed::store::npy::read_npz;
use ensembed::store::Store;
use ensembed::{Error, NoProgress};
use half::f16;
use rand::Rng;

use crate::helpers::{repo_root, rng, shared_dir};

fn coral(shared: &Path, file: &str) -> PathBuf {
    shared.join("data/models/coral").join(file)
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

#[test]
fn imagenet_mobilenet_v2_gives_the_known_answers() {
    let Some(shared) = shared_dir("imagenet_mobilenet_v2_gives_the_known_answers") else {
        return;
    };
    let model = TfliteModel::load(coral(&shared, "mobilenet_v2_1.0_224_quant.tflite")).unwrap();
    assert_eq!(model.input_size(), (224, 224));
    assert_eq!(model.pooled_dim(), 1280);
    assert_eq!(model.num_classes(), Some(1001));
    let labels = std::fs::read_to_string(coral(&shared, "imagenet_labels.txt")).unwrap();
    let labels: Vec<&str> = labels
        .lines()
        .map(|l| l.split(',').next().unwrap().trim())
        .collect();
    assert_eq!(labels[0], "background");
    for (file, expected) in [
        ("cat.bmp", "Egyptian cat"),
        ("bird.bmp", "chickadee"),
        ("parrot.jpg", "macaw"),
        ("dragonfly.bmp", "dragonfly"),
        ("hot_dog.jpg", "hotdog"),
    ] {
        let image = RgbImage::open(&coral(&shared, file)).unwrap();
        let top = model.classify(&image).unwrap();
        assert_eq!(top.len(), 5);
        assert!(
            top.windows(2).all(|w| w[0].1 >= w[1].1),
            "{file}: not sorted: {top:?}"
        );
        assert_eq!(labels[top[0].0], expected, "{file}: top-5 {top:?}");
        assert!(
            top[0].1 > 0.3 && top[0].1 <= 1.0,
            "{file}: p = {}",
            top[0].1
        );
    }
}

#[test]
fn demo_features_match_tflite_runtime_bit_for_bit() {
    // data/demo/train.npz was made by tflite-runtime 2.14 (scripts/make_demo_features.py):
    // Pillow/libjpeg-turbo decoding, Pillow bilinear resize, TFLite's integer kernels. Our
    // decoder, resize and kernels reproduce each step exactly, so the f16 features are identical;
    // the bar is a cosine above 0.999 per image.
    let Some(shared) = shared_dir("demo_features_match_tflite_runtime_bit_for_bit") else {
        return;
    };
    let root = repo_root();
    let ids = std::fs::read_to_string(root.join("data/demo/train_ids.txt")).unwrap();
    let ids: Vec<&str> = ids.lines().collect();
    // The first three images of every class (rows are ordered by class, 100 per class).
    let rows: Vec<usize> = (0..10)
        .flat_map(|c| (0..3).map(move |i| c * 100 + i))
        .collect();
    let images: Vec<RgbImage> = rows
        .iter()
        .map(|&r| RgbImage::open(&shared.join("data/cifar10").join(ids[r])).unwrap())
        .collect();
    let npz_path = root.join("data/demo/train.npz");
    let arrays = read_npz(&npz_path).unwrap();
    for (name, file) in [
        ("mnv2-imagenet", "mobilenet_v2_1.0_224_quant.tflite"),
        ("mnv2-tf2-imagenet", "tf2_mobilenet_v2_1.0_224_ptq.tflite"),
        (
            "mnv2-inat-bird",
            "mobilenet_v2_1.0_224_inat_bird_quant.tflite",
        ),
    ] {
        let reference = arrays
            .iter()
            .find(|(k, _)| k == name)
            .unwrap()
            .1
            .to_f32_matrix(&npz_path)
            .unwrap();
        let model = TfliteModel::load(coral(&shared, file)).unwrap();
        let ours = model.features(&images).unwrap();
        assert_eq!((ours.rows, ours.cols), (rows.len(), 1280));
        for (i, &r) in rows.iter().enumerate() {
            let (a, b) = (ours.row(i), reference.row(r));
            let c = cosine(a, b);
            assert!(c > 0.999, "{name} {}: cosine {c}", ids[r]);
            let rounded: Vec<f32> = a.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
            assert_eq!(rounded, b, "{name} {}: not identical (cosine {c})", ids[r]);
        }
    }
}

/// (model, image under ../shared/data, Σ pooled, first four pooled values, top-1 or -1), printed
/// by `python3 scripts/tflite_reference.py` (tflite-runtime 2.14.0, numpy 1.26.4, Pillow 13.0).
#[rustfmt::skip]
const REFERENCE: [(&str, &str, f64, [f32; 4], i64); 24] = [
    ("mobilenet_v1_0.25_128_quant.tflite", "models/coral/cat.bmp", 255.5663, [0.588212, 1.035253, 1.152895, 0.0], 286),
    ("mobilenet_v1_0.25_128_quant.tflite", "models/coral/parrot.jpg", 237.4729, [1.129367, 1.270538, 1.058782, 2.964588], 89),
    ("mobilenet_v1_0.25_128_quant.tflite", "cifar10/test/ship/0007.jpg", 214.7209, [0.6587974, 3.082231, 0.02352848, 0.7529113], 915),
    ("mobilenet_v1_0.5_160_quant.tflite", "models/coral/cat.bmp", 439.8884, [0.3764556, 1.176424, 0.2588133, 0.4470411], 286),
    ("mobilenet_v1_0.5_160_quant.tflite", "models/coral/parrot.jpg", 406.7133, [1.646993, 0.0, 1.646993, 1.247009], 89),
    ("mobilenet_v1_0.5_160_quant.tflite", "cifar10/test/ship/0007.jpg", 312.1994, [0.0, 0.0, 0.0, 0.0], 915),
    ("mobilenet_v1_0.75_192_quant.tflite", "models/coral/cat.bmp", 471.4166, [0.7764397, 0.2117563, 1.223481, 2.282262], 282),
    ("mobilenet_v1_0.75_192_quant.tflite", "models/coral/parrot.jpg", 603.5054, [0.6587974, 0.04705695, 0.3529271, 0.09411391], 89),
    ("mobilenet_v1_0.75_192_quant.tflite", "cifar10/test/ship/0007.jpg", 426.2184, [0.0, 0.04705695, 0.1882278, 0.0], 915),
    ("mobilenet_v1_1.0_224_quant_embedding_extractor.tflite", "models/coral/cat.bmp", 759.6169, [1.317595, 0.2352848, 0.4705696, 0.02352848], -1),
    ("mobilenet_v1_1.0_224_quant_embedding_extractor.tflite", "models/coral/parrot.jpg", 763.7579, [1.152895, 0.9411391, 0.9176106, 0.0], -1),
    ("mobilenet_v1_1.0_224_quant_embedding_extractor.tflite", "cifar10/test/ship/0007.jpg", 477.6046, [1.69405, 0.0, 0.7529113, 1.247009], -1),
    ("mobilenet_v2_1.0_224_quant.tflite", "models/coral/cat.bmp", 485.3690, [0.02352848, 0.07058543, 0.0, 0.2823417], 286),
    ("mobilenet_v2_1.0_224_quant.tflite", "models/coral/parrot.jpg", 535.0611, [0.1176424, 0.0, 0.494098, 0.02352848], 89),
    ("mobilenet_v2_1.0_224_quant.tflite", "cifar10/test/ship/0007.jpg", 511.3209, [0.04705695, 1.129367, 0.0, 0.0], 915),
    ("tf2_mobilenet_v2_1.0_224_ptq.tflite", "models/coral/cat.bmp", 334.9495, [0.0, 0.7058798, 0.01907783, 0.2098562], 286),
    ("tf2_mobilenet_v2_1.0_224_ptq.tflite", "models/coral/parrot.jpg", 352.1959, [0.0, 0.03815566, 0.7058798, 0.01907783], 89),
    ("tf2_mobilenet_v2_1.0_224_ptq.tflite", "cifar10/test/ship/0007.jpg", 491.5976, [1.163748, 0.1335448, 0.0, 0.0], 781),
    ("mobilenet_v2_1.0_224_inat_bird_quant.tflite", "models/coral/cat.bmp", 133.1241, [0.04705695, 0.02352848, 0.0, 0.0], 964),
    ("mobilenet_v2_1.0_224_inat_bird_quant.tflite", "models/coral/parrot.jpg", 195.8981, [0.0, 0.0, 0.1411709, 0.0], 923),
    ("mobilenet_v2_1.0_224_inat_bird_quant.tflite", "cifar10/test/ship/0007.jpg", 73.5735, [0.0, 1.482294, 0.0, 0.0], 964),
    ("mobilenet_v2_1.0_224_inat_insect_quant.tflite", "models/coral/cat.bmp", 210.3681, [0.02352848, 0.02352848, 0.1411709, 0.04705695], 553),
    ("mobilenet_v2_1.0_224_inat_insect_quant.tflite", "models/coral/parrot.jpg", 325.2341, [0.4470411, 0.1176424, 0.04705695, 0.0], 40),
    ("mobilenet_v2_1.0_224_inat_insect_quant.tflite", "cifar10/test/ship/0007.jpg", 108.1134, [0.0, 0.0, 0.0, 0.0], 1021),
];

#[test]
fn every_coral_model_matches_the_reference_table() {
    let Some(shared) = shared_dir("every_coral_model_matches_the_reference_table") else {
        return;
    };
    let mut last: Option<(&str, TfliteModel)> = None;
    for (file, image, sum, first, top) in REFERENCE {
        if last.as_ref().map(|(f, _)| *f) != Some(file) {
            last = Some((file, TfliteModel::load(coral(&shared, file)).unwrap()));
        }
        let model = &last.as_ref().unwrap().1;
        let img = RgbImage::open(&shared.join("data").join(image)).unwrap();
        let f = model.features_one(&img).unwrap();
        assert_eq!(f.len(), model.pooled_dim());
        let s: f64 = f.iter().map(|&v| v as f64).sum();
        assert!(
            (s - sum).abs() < 1e-3 * sum.max(1.0),
            "{file} on {image}: Σ = {s}, reference {sum}"
        );
        for (a, b) in f.iter().zip(first) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{file} on {image}: {:?} vs {first:?}",
                &f[..4]
            );
        }
        match model.classify(&img) {
            Ok(t) => assert_eq!(t[0].0 as i64, top, "{file} on {image}: {t:?}"),
            Err(e) => {
                assert_eq!(top, -1, "{file}: {e}");
                assert!(e.to_string().contains("no classifier head"), "{e}");
            }
        }
    }
}

#[test]
fn an_image_folder_becomes_a_store() {
    let Some(shared) = shared_dir("an_image_folder_becomes_a_store") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    let cifar = shared.join("data/cifar10/test");
    for (class, files) in [
        ("cat", ["0000.jpg", "0001.jpg"]),
        ("ship", ["0003.jpg", "0002.jpg"]),
    ] {
        std::fs::create_dir_all(images.join(class)).unwrap();
        for f in files {
            std::fs::copy(cifar.join(class).join(f), images.join(class).join(f)).unwrap();
        }
    }
    std::fs::write(images.join("cat/notes.txt"), "not an image").unwrap();
    std::fs::write(images.join("stray.jpg"), "outside any class folder").unwrap();
    let folder = list_image_folder(&images).unwrap();
    assert_eq!(folder.classes.as_deref(), Some(&["cat".to_string(), "ship".to_string()][..]));
    let ids: Vec<&str> = folder.ids.iter().map(String::as_str).collect();
    assert_eq!(
        ids,
        [
            "cat/0000.jpg",
            "cat/0001.jpg",
            "ship/0002.jpg",
            "ship/0003.jpg"
        ]
    );

    let small = TfliteModel::load(coral(&shared, "mobilenet_v1_0.25_128_quant.tflite")).unwrap();
    let half = TfliteModel::load(coral(&shared, "mobilenet_v1_0.5_160_quant.tflite")).unwrap();
    let models = [
        ("v1-025".to_string(), &small),
        ("v1-050".to_string(), &half),
    ];
    let out = dir.path().join("store");
    let path = extract_folder(&models, &images, &out, 3, false, &NoProgress).unwrap();
    assert_eq!(path, out);
    let store = Store::open(&out).unwrap();
    assert_eq!(store.len(), 4);
    assert_eq!(store.labels().unwrap(), &[0, 0, 1, 1]);
    assert_eq!(
        store.classes().unwrap(),
        &["cat".to_string(), "ship".to_string()]
    );
    assert_eq!(
        store.ids().unwrap(),
        &ids.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..]
    );
    for (j, model) in [&small, &half].into_iter().enumerate() {
        assert_eq!(store.backbones()[j].dim, model.pooled_dim());
        for (i, id) in ids.iter().enumerate() {
            let want: Vec<f32> = model
                .features_one(&RgbImage::open(&images.join(id)).unwrap())
                .unwrap()
                .iter()
                .map(|&v| f16::from_f32(v).to_f32())
                .collect();
            let mut row = vec![0f32; model.pooled_dim()];
            store.read_row(j, i, &mut row);
            assert_eq!(row, want, "backbone {j}, {id}");
        }
    }
    // An existing store is only replaced on request.
    let err = extract_folder(&models, &images, &out, 3, false, &NoProgress).unwrap_err();
    assert!(err.to_string().contains("overwrite"), "{err}");
    extract_folder(&models[..1], &images, &out, 2, true, &NoProgress).unwrap();
    assert_eq!(Store::open(&out).unwrap().backbones().len(), 1);
}

#[test]
fn extract_folder_rejects_bad_settings_before_working() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("store");
    let err = extract_folder::<Backbone>(&[], dir.path(), &out, 8, false, &NoProgress).unwrap_err();
    assert!(matches!(err, Error::Config { .. }), "{err}");
    let err = list_image_folder(dir.path()).unwrap_err();
    assert!(err.to_string().contains("no class folders"), "{err}");
    std::fs::create_dir(dir.path().join("empty_class")).unwrap();
    let err = list_image_folder(dir.path()).unwrap_err();
    assert!(err.to_string().contains("has no images"), "{err}");
    let err = list_image_folder(&dir.path().join("missing")).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(!out.exists());
}

/// Loads `bytes` as a model and, when that succeeds, runs it on a small image: either may fail,
/// neither may panic. Returns whether loading failed.
fn load_and_run(bytes: &[u8], what: &str) -> bool {
    let path = Path::new("hostile.tflite");
    let result = catch_unwind(AssertUnwindSafe(|| {
        match TfliteModel::from_bytes(bytes, path) {
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("hostile.tflite"),
                    "{what}: the error does not name the file: {msg}"
                );
                true
            }
            Ok(m) => {
                let img = RgbImage::new(4, 3, (0..36).map(|v| (v * 7) as u8).collect()).unwrap();
                let _ = m.features_one(&img);
                let _ = m.classify(&img);
                false
            }
        }
    }));
    result.unwrap_or_else(|_| panic!("{what}: panicked"))
}

#[test]
fn hostile_model_files_give_errors_not_panics() {
    // Without the models: bytes that are not a TFLite file at all.
    assert!(load_and_run(b"", "empty file"));
    assert!(load_and_run(b"\x08\x00\x00\x00TFL3", "header only"));
    assert!(load_and_run(
        b"\xff\xff\xff\x7fTFL3\x00\x00\x00\x00",
        "root offset past the end"
    ));
    assert!(load_and_run(
        b"\x0c\x00\x00\x00TFL3\x00\x00\x00\x00\xf0\xff\xff\x7f",
        "vtable outside the file"
    ));
    let mut r = rng(5);
    for i in 0..200 {
        let mut junk: Vec<u8> = (0..r.random_range(8..400)).map(|_| r.random()).collect();
        junk[4..8].copy_from_slice(b"TFL3");
        if i % 2 == 0 {
            junk[..4].copy_from_slice(&(r.random_range(8..64u32)).to_le_bytes());
        }
        assert!(load_and_run(&junk, &format!("random bytes #{i}")));
    }

    let Some(shared) = shared_dir("hostile_model_files_give_errors_not_panics") else {
        return;
    };
    let good = std::fs::read(coral(&shared, "mobilenet_v1_0.25_128_quant.tflite")).unwrap();
    assert!(!load_and_run(&good, "the intact model"));
    // Every truncation of the flatbuffer is an error: some table, vector or buffer then lies
    // past the end. (The coral files append a zip of metadata, here the label file, after the
    // flatbuffer; the model does not need it, so cutting it away is not an error.)
    let end = good
        .windows(4)
        .rposition(|w| w == b"PK\x03\x04")
        .unwrap_or(good.len());
    let step = end / 151;
    for cut in (0..64).chain((64..end).step_by(step)).chain([end - 1]) {
        assert!(
            load_and_run(&good[..cut], &format!("cut at {cut}")),
            "cut at {cut} of {end} loaded"
        );
    }
    // A model that declares more data than it holds: a buffer length far past the file.
    let err = TfliteModel::from_bytes(&good[..end - 100], Path::new("short.tflite")).unwrap_err();
    assert!(matches!(err, Error::Format { .. }), "{err}");
    // Flipped offsets and lengths: 4-byte words replaced with random values, mostly in the
    // flatbuffer's tables (written after the weight buffers, in the last 24 KiB before the zip)
    // and its first bytes (root offset, model table), but also anywhere.
    let mut r = rng(11);
    let tables = end.saturating_sub(24 << 10);
    let mut errors = 0;
    for i in 0..400 {
        let mut bad = good.clone();
        let pos = match i % 4 {
            0 => r.random_range(0..1024),
            1 | 2 => r.random_range(tables..end - 4),
            _ => r.random_range(0..good.len() - 4),
        } & !3;
        let word: u32 = match i % 3 {
            0 => r.random(),
            1 => {
                u32::from_le_bytes(bad[pos..pos + 4].try_into().unwrap())
                    ^ (1 << r.random_range(0..32))
            }
            _ => r.random_range(0..4096),
        };
        bad[pos..pos + 4].copy_from_slice(&word.to_le_bytes());
        errors += load_and_run(&bad, &format!("word {word:#x} at {pos}")) as usize;
    }
    assert!(
        errors > 50,
        "only {errors} of 400 corrupted files were refused"
    );
}

#[test]
fn hostile_images_give_errors_not_panics() {
    let p = Path::new("bad.jpg");
    for bytes in [
        &b""[..],
        b"\xff\xd8\xff",
        b"\xff\xd8\xff\xd9",
        b"GIF89a",
        b"\x89PNG\r\n\x1a\n",
        b"BM\x00\x00",
    ] {
        assert!(RgbImage::decode(bytes, p).is_err(), "{bytes:?}");
    }
    let Some(shared) = shared_dir("hostile_images_give_errors_not_panics") else {
        return;
    };
    let good = std::fs::read(shared.join("data/cifar10/train/cat/0000.jpg")).unwrap();
    RgbImage::decode(&good, p).unwrap();
    let eoi = good.len() - 2;
    for cut in 0..eoi {
        let r = catch_unwind(|| RgbImage::decode(&good[..cut], p));
        assert!(
            r.expect("panicked").is_err(),
            "a JPEG cut at {cut} of {} decoded",
            good.len()
        );
    }
    let mut r = rng(3);
    for i in 0..2000 {
        let mut bad = good.clone();
        for _ in 0..1 + i % 3 {
            let pos = r.random_range(0..bad.len());
            bad[pos] = r.random();
        }
        let _ = catch_unwind(|| RgbImage::decode(&bad, p))
            .unwrap_or_else(|_| panic!("corrupted JPEG #{i} panicked"));
    }
}

/// Small JPEGs written by Pillow 13.0 (libjpeg-turbo) from one 9x5 image, with the pixels
/// Pillow decodes them to: `im.save(buf, "JPEG", quality=90, subsampling=S)` for grey, 4:4:4 and
/// 4:2:2, `quality=75, subsampling=2, restart_marker_blocks=1` for 4:2:0 with a restart marker
/// after every MCU, `progressive=True` for a progressive file (decoded by the fallback decoder,
/// so only approximately); then `np.asarray(Image.open(buf).convert("RGB")).tobytes().hex()`.
#[rustfmt::skip]
pub(crate) const JPEGS: [(&str, &str, &str); 5] = [
    ("gray", "ffd8ffe000104a46494600010100000100010000ffdb0043000302020302020303030304030304050805050404050a070706080c0a0c0c0b0a0b0b0d0e12100d0e110e0b0b1016101113141515150c0f171816141812141514ffc0000b080005000901011100ffc4001f0000010501010101010100000000000000000102030405060708090a0bffc400b5100002010303020403050504040000017d01020300041105122131410613516107227114328191a1082342b1c11552d1f02433627282090a161718191a25262728292a3435363738393a434445464748494a535455565758595a636465666768696a737475767778797a838485868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9faffda0008010100003f00e57f6549d6d74d799dae6e45a40de4bcd3033ae6ecc0d8936f1f2af040c8071938047e947fc2ba93fe82d2fe527ff1caffd9", "3939396262625d5d5d7e7e7e636363717171b3b3b3c5c5c5dadada1212121f1f1f6a6a6a6666667b7b7ba3a3a3b9b9b98c8c8cbcbcbc1a1a1a0f0f0f4a4a4a7b7b7b6c6c6cadadad8e8e8ea9a9a9d2d2d24a4a4a5e5e5e606060494949848484b0b0b0acacaccacacac7c7c7444444171717727272505050797979bcbcbc828282979797f3f3f3"),
    ("s444", "ffd8ffe000104a46494600010100000100010000ffdb0043000302020302020303030304030304050805050404050a070706080c0a0c0c0b0a0b0b0d0e12100d0e110e0b0b1016101113141515150c0f171816141812141514ffdb00430103040405040509050509140d0b0d1414141414141414141414141414141414141414141414141414141414141414141414141414141414141414141414141414ffc00011080005000903011100021101031101ffc4001f0000010501010101010100000000000000000102030405060708090a0bffc400b5100002010303020403050504040000017d01020300041105122131410613516107227114328191a1082342b1c11552d1f02433627282090a161718191a25262728292a3435363738393a434445464748494a535455565758595a636465666768696a737475767778797a838485868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9faffc4001f0100030101010101010101010000000000000102030405060708090a0bffc400b51100020102040403040705040400010277000102031104052131061241510761711322328108144291a1b1c109233352f0156272d10a162434e125f11718191a262728292a35363738393a434445464748494a535455565758595a636465666768696a737475767778797a82838485868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae2e3e4e5e6e7e8e9eaf2f3f4f5f6f7f8f9faffda000c03010002110311003f00e3ff0063ed5984da6ca549320460323a991226dc71920e49c0da07b9008e18c2ea104959b4bae9a271fb5af2ede7afa2d2bd28c28556db7c89d9b7ef2f79ad1f476564ecda5a5cfba772ff00cfb59ffe02a7f85747f68d2ff9f4ff00f02ff807d6ff0062cbfe7fcbff000297ff00247fffd9", "3b40006a2b5651503b7e6853636b8067b58eb4be8ad3b6bad6a1bd1650061a4f355e3c3d6e7a627ca98a9c6b71bec28585dcbabeeadb17172f14644952554e765d9e724f49be74af869dabade8d4cfc1da421c2b6b5d124d302842593d909364b6ab8da3a49ec6b98fcbb3e3430b001a2842695848666b7f735958b88d6a85908899cad1efb4b0"),
    ("s422", "ffd8ffe000104a46494600010100000100010000ffdb0043000302020302020303030304030304050805050404050a070706080c0a0c0c0b0a0b0b0d0e12100d0e110e0b0b1016101113141515150c0f171816141812141514ffdb00430103040405040509050509140d0b0d1414141414141414141414141414141414141414141414141414141414141414141414141414141414141414141414141414ffc00011080005000903012100021101031101ffc4001f0000010501010101010100000000000000000102030405060708090a0bffc400b5100002010303020403050504040000017d01020300041105122131410613516107227114328191a1082342b1c11552d1f02433627282090a161718191a25262728292a3435363738393a434445464748494a535455565758595a636465666768696a737475767778797a838485868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9faffc4001f0100030101010101010101010000000000000102030405060708090a0bffc400b51100020102040403040705040400010277000102031104052131061241510761711322328108144291a1b1c109233352f0156272d10a162434e125f11718191a262728292a35363738393a434445464748494a535455565758595a636465666768696a737475767778797a82838485868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae2e3e4e5e6e7e8e9eaf2f3f4f5f6f7f8f9faffda000c03010002110311003f00e3ff0063ed5984da6ca549320460323a991226dc71920e49c0da07b9008fba772ffcfb59ff00e02a7f8572c2bc30df142f7d346d6deb7eff00f0e7b782cbfeb32928d4946ca3b37aeb25ad9abbd37fe9ff00ffd9", "3f37204b4330544e406d6d6365706291a08db1bc9cc9beacd6a3b4144d16274c214a4736836f68a2968a797f65a5cb989fd3a3b9edd608202c3e4c5953506177647a6a4d6b9b89a18b9ca3c5daddc7c6d64124046e5439473423594d3f908f7daaae9da0a795bcb7b4d2b4d02217152e251e615c48766b59765951a5908b869087bdbdb3e9b7b0"),
    ("s420_restart", "ffd8ffe000104a46494600010100000100010000ffdb004300080606070605080707070909080a0c140d0c0b0b0c1912130f141d1a1f1e1d1a1c1c20242e2720222c231c1c2837292c30313434341f27393d38323c2e333432ffdb0043010909090c0b0c180d0d1832211c213232323232323232323232323232323232323232323232323232323232323232323232323232323232323232323232323232ffc00011080005000903012200021101031101ffc4001f0000010501010101010100000000000000000102030405060708090a0bffc400b5100002010303020403050504040000017d01020300041105122131410613516107227114328191a1082342b1c11552d1f02433627282090a161718191a25262728292a3435363738393a434445464748494a535455565758595a636465666768696a737475767778797a838485868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9eaf1f2f3f4f5f6f7f8f9faffc4001f0100030101010101010101010000000000000102030405060708090a0bffc400b51100020102040403040705040400010277000102031104052131061241510761711322328108144291a1b1c109233352f0156272d10a162434e125f11718191a262728292a35363738393a434445464748494a535455565758595a636465666768696a737475767778797a82838485868788898a92939495969798999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae2e3e4e5e6e7e8e9eaf2f3f4f5f6f7f8f9faffdd00040001ffda000c03010002110311003f00cdf87f39dd0360fcd83dbbb0539e3fc2bd6323fe79c5ff007ec514564e4e1f09db87a5093775d17ea7ffd9", "2a45222f422244483179766375726388968598c8b09cc9b5b5b6b82f47273c4c2f52513c807967827c6e949f8f9cc8b1abd2c0dad8d90e1e03363e275a51407666596e60577a7e7081a490b1d0c0d4c8ca38402b45463456453b715a5499817db6afa790ab98b2c7b8ceb8ba1414083c352b69514d70514f7f5f60988984798a7ac0cbbdddbdc0"),
    ("progressive", "ffd8ffe000104a46494600010100000100010000ffdb0043000302020302020303030304030304050805050404050a070706080c0a0c0c0b0a0b0b0d0e12100d0e110e0b0b1016101113141515150c0f171816141812141514ffdb00430103040405040509050509140d0b0d1414141414141414141414141414141414141414141414141414141414141414141414141414141414141414141414141414ffc20011080005000903012200021101031101ffc400160001010100000000000000000000000000000507ffc4001501010100000000000000000000000000000405ffda000c030100021003100000018fba07a7ffc40017100003010000000000000000000000000000030621ffda00080101000105028f6e9fffc4001b110002010500000000000000000000000001020003041251c1ffda0008010301013f01b6a48e4e435d9fffc40017110003010000000000000000000000000000010232ffda0008010201013f0174e327ffc4001c10000103050000000000000000000000000001020311325192d1ffda0008010100063f028d73da16b353ffc4001b10000201050000000000000000000000000001112141a1e1f0ffda0008010100013f216d358f069e44ad13ffda000c0301000200030000001073ffc400181101010003000000000000000000000000011100b1c1ffda0008010301013f103fa4361c33ffc4001a110002020300000000000000000000000001110041516171ffda0008010201013f101f47a14b3d9fffc4001a10010100020300000000000000000000000111003161c1f0ffda0008010100013f1022528229b6b2546ac20e504f13d67fffd9", "2f401e40492c584c3c766a5a6870588fa284aabfa0b5c6b3b0b5b82f3e213b40295044387e7266989b88738168b0c2a8b6c4b5dbdae2141f0e494b3e5d4f4e7668675c59528e9488909e8fd0d6d2cfc2d6262c225a59544233365a4a4d948a88acaca49da79cb7b9b6ceb7c9191c152a26236556597966686e5c5a9d948b889180bdbdb1dbbbc0"),
];

pub(crate) fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn jpegs_decode_to_pillows_pixels() {
    for (name, jpeg, pixels) in JPEGS {
        let img = RgbImage::decode(&unhex(jpeg), Path::new(name)).unwrap();
        assert_eq!((img.width(), img.height()), (9, 5), "{name}");
        let want = unhex(pixels);
        if name == "progressive" {
            let worst = img
                .pixels()
                .iter()
                .zip(&want)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            assert!(worst <= 8, "{name}: differs by {worst}");
        } else {
            assert_eq!(img.pixels(), &want[..], "{name}");
        }
    }
}

#[test]
fn pngs_convert_to_rgb_as_pillow_does() {
    // Image.fromarray(np.array([[[10,20,30,40],[50,60,70,80]],[[90,100,110,0],[200,210,220,255]]],
    // np.uint8), "RGBA") and Image.fromarray(np.array([[0,128],[255,7]], np.uint8), "L"), saved
    // as PNG by Pillow 13.0; `convert("RGB")` drops alpha and repeats grey.
    let rgba = "89504e470d0a1a0a0000000d494844520000000200000002080600000072b60d240000001a49444154789c63e41291d3d0d0d0d060884ac9633871e9ce7f001d9d05a74984e4500000000049454e44ae426082";
    let grey = "89504e470d0a1a0a0000000d494844520000000200000002080000000057dd52f80000000e49444154789c63606860f8cf0e00040b01878ca3a7fd0000000049454e44ae426082";
    let img = RgbImage::decode(&unhex(rgba), Path::new("rgba.png")).unwrap();
    assert_eq!(
        img.pixels(),
        &[10, 20, 30, 50, 60, 70, 90, 100, 110, 200, 210, 220]
    );
    let img = RgbImage::decode(&unhex(grey), Path::new("grey.png")).unwrap();
    assert_eq!(
        img.pixels(),
        &[0, 0, 0, 128, 128, 128, 255, 255, 255, 7, 7, 7]
    );
}
