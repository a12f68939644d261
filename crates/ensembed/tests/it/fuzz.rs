//! Robustness against hostile and damaged inputs (issue 7).
//!
//! * A deterministic mutation fuzzer (seeded ChaCha, no nightly, no extra crates): every parser
//!   that reads a file a user (or an attacker) can hand us gets mutants of valid seed files —
//!   byte flips, truncations, insertions, deletions, splices between seeds, overwrites of
//!   little- and big-endian length fields with huge values, of aligned words with small
//!   integers (flatbuffer indices and shapes), and edits of the numbers and words of text
//!   headers (`shape`, `dtype`, `data_offsets`, JSON fields). Each call must return `Ok` or `Err`:
//!   a panic is caught with `catch_unwind`, written to `target/fuzz-crashes/<parser>/` and fails
//!   the test; a call slower than [`SLOW`] fails it too (hangs, quadratic blow-ups), and so
//!   does one that makes a single allocation larger than [`MAX_ALLOC`] (the test binary's
//!   allocator records the largest request per thread, `helpers::largest_allocation`): parsers
//!   must check declared sizes against the bytes present before allocating.
//! * Seeds are generated here with the library (a store, models, a checkpoint) plus every file
//!   under `tests/corpus/<parser>/` (numpy-written seeds and the regression inputs of fixed
//!   crashes). CI runs a few hundred mutants per parser; `ENSEMBED_FUZZ_ITERS=N` runs N each.
//! * Path safety, numeric edge cases (divergence, one sample, empty k-NN classes).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ensembed::artifact::{load_model_dir, read_representations, write_representations};
use ensembed::checkpoint::{load_checkpoint, save_checkpoint};
use ensembed::config::{BankMode, FitConfig};
use ensembed::eval::knn::{evaluate_knn, KnnConfig};
use ensembed::fit::{fit, fit_from, FitState};
use ensembed::model::EnsembleModel;
use ensembed::store::npy::{read_npy_bytes, read_npz_bytes, NpyArray};
use ensembed::store::{Dtype, Store, StoreWriter};
use ensembed::{Error, InMemory, Matrix, NoProgress};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::helpers::{largest_allocation, random_features, rng};

/// One call slower than this is reported as a hang.
const SLOW: Duration = Duration::from_secs(5);
/// Mutants per parser in CI.
const CI_ITERS: usize = 300;
/// A single allocation larger than this while parsing a mutant of a few-KB seed means a size was
/// taken from the file before it was checked against the bytes present: reported as a crash.
/// (The largest legitimate ones are the output buffers of images, bounded by
/// `RgbImage::decode`'s budget for small files, 32 MiB.)
const MAX_ALLOC: usize = 64 << 20;

fn iters() -> usize {
    std::env::var("ENSEMBED_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CI_ITERS)
}

fn corpus_dir(parser: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(parser)
}

/// The files of `tests/corpus/<parser>/` (sorted, so runs are reproducible).
fn corpus(parser: &str) -> Vec<(String, Vec<u8>)> {
    let Ok(rd) = std::fs::read_dir(corpus_dir(parser)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = rd.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
        .into_iter()
        .filter(|p| p.extension().is_none_or(|e| e != "md"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Mutation

const INTERESTING_U64: [u64; 12] = [
    0,
    1,
    7,
    8,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 40,
    i64::MAX as u64,
    u64::MAX,
];
const INTERESTING_NUMBERS: [&str; 12] = [
    "0",
    "1",
    "-1",
    "2",
    "65536",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "99999999999999999999999999",
];
const INTERESTING_WORDS: [&str; 14] = [
    "F32", "F16", "I64", "U64", "BF16", "<f4", ">f4", "<i8", "|u1", "True", "False", "null", "[]", "{}",
];

/// Applies 1 to 4 random mutations to `input`; `others` are splice donors.
fn mutate(r: &mut ChaCha8Rng, input: &[u8], others: &[&[u8]]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..r.random_range(1..=4) {
        let len = v.len();
        match r.random_range(0..14) {
            // Edit a number or a word inside the header of a safetensors or .npy file and fix the
            // header's length field, so that the mutant gets past the length check and reaches
            // the shape, dtype and offset checks.
            10..=12 => {
                if let Some(m) = edit_header(r, &v) {
                    v = m;
                }
            }
            // Flip bits of one byte.
            0 if len > 0 => {
                let i = r.random_range(0..len);
                v[i] ^= 1 << r.random_range(0..8);
            }
            // A random byte.
            1 if len > 0 => {
                let i = r.random_range(0..len);
                v[i] = r.random();
            }
            // Truncate.
            2 => v.truncate(r.random_range(0..=len)),
            // Insert random bytes.
            3 => {
                let at = r.random_range(0..=len);
                let n = r.random_range(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| r.random()).collect();
                v.splice(at..at, bytes);
            }
            // Delete a range.
            4 if len > 0 => {
                let a = r.random_range(0..len);
                let b = (a + r.random_range(1..=32)).min(len);
                v.drain(a..b);
            }
            // Splice in a chunk of another seed.
            5 if !others.is_empty() => {
                let o = others[r.random_range(0..others.len())];
                if !o.is_empty() {
                    let a = r.random_range(0..o.len());
                    let b = (a + r.random_range(1..=64)).min(o.len());
                    let at = r.random_range(0..=len);
                    let end = (at + r.random_range(0..=(b - a))).min(len);
                    v.splice(at..end, o[a..b].iter().copied());
                }
            }
            // Overwrite an integer (a length field) with an interesting value.
            6 if len > 0 => {
                let width = [1, 2, 4, 8][r.random_range(0..4)];
                // Length fields sit at the start of safetensors and npy files: favour it.
                let at = if r.random_bool(0.5) { r.random_range(0..len.min(12)) } else { r.random_range(0..len) };
                let x = INTERESTING_U64[r.random_range(0..INTERESTING_U64.len())];
                // JPEG segment lengths and sizes, PNG chunk lengths and sizes are big-endian.
                let bytes = if r.random_bool(0.25) { x.to_be_bytes()[8 - width..].to_vec() } else { x.to_le_bytes()[..width].to_vec() };
                for (k, b) in bytes.iter().enumerate() {
                    if at + k < len {
                        v[at + k] = *b;
                    }
                }
            }
            // Replace a run of ASCII digits (a shape, an offset, a dim, n) with a number.
            7 => {
                if let Some((a, b)) = pick_run(r, &v, |c| c.is_ascii_digit()) {
                    let num = INTERESTING_NUMBERS[r.random_range(0..INTERESTING_NUMBERS.len())];
                    v.splice(a..b, num.bytes());
                }
            }
            // Replace a word (a dtype, a key, a bool) with another.
            8 => {
                if let Some((a, b)) = pick_run(r, &v, |c| c.is_ascii_alphanumeric() || c == b'<' || c == b'|') {
                    let w = INTERESTING_WORDS[r.random_range(0..INTERESTING_WORDS.len())];
                    v.splice(a..b, w.bytes());
                }
            }
            // Overwrite an aligned 32-bit word with a small integer or -1: the tensor indices,
            // shapes, strides and buffer numbers of a flatbuffer, where a value near the valid
            // ones gets past the range checks and reaches the planner's consistency checks.
            13 if len >= 4 => {
                let at = r.random_range(0..len / 4) * 4;
                let x: i32 = r.random_range(-1..=16);
                v[at..at + 4].copy_from_slice(&x.to_le_bytes());
            }
            // Duplicate a chunk of the input itself (repeated keys, extra tensors).
            _ if len > 0 => {
                let a = r.random_range(0..len);
                let b = (a + r.random_range(1..=64)).min(len);
                let chunk = v[a..b].to_vec();
                let at = r.random_range(0..=len);
                v.splice(at..at, chunk);
            }
            _ => {}
        }
    }
    v
}

/// `input` with one number or word of its header replaced and the header length fixed: the
/// JSON header of a safetensors file (u64 length at 0) or the dict of a `.npy` (u16 length at
/// 8, version 1). `None` when `input` is neither.
fn edit_header(r: &mut ChaCha8Rng, input: &[u8]) -> Option<Vec<u8>> {
    let (start, len_at, width): (usize, usize, usize) = if input.starts_with(b"\x93NUMPY\x01") {
        (10, 8, 2)
    } else {
        (8, 0, 8)
    };
    let mut len_bytes = [0u8; 8];
    len_bytes[..width].copy_from_slice(input.get(len_at..len_at + width)?);
    let hlen = usize::try_from(u64::from_le_bytes(len_bytes)).ok()?;
    let end = start.checked_add(hlen).filter(|&e| e <= input.len())?;
    let mut header = input[start..end].to_vec();
    let (a, b, with): (usize, usize, &str) = if r.random_bool(0.6) {
        let (a, b) = pick_run(r, &header, |c| c.is_ascii_digit())?;
        (a, b, INTERESTING_NUMBERS[r.random_range(0..INTERESTING_NUMBERS.len())])
    } else {
        let (a, b) = pick_run(r, &header, |c| c.is_ascii_alphanumeric() || c == b'<' || c == b'|')?;
        (a, b, INTERESTING_WORDS[r.random_range(0..INTERESTING_WORDS.len())])
    };
    header.splice(a..b, with.bytes());
    let new_len = header.len() as u64;
    if width == 2 && new_len > u16::MAX as u64 {
        return None;
    }
    let mut out = input[..start].to_vec();
    out[len_at..len_at + width].copy_from_slice(&new_len.to_le_bytes()[..width]);
    out.extend(header);
    out.extend(&input[end..]);
    Some(out)
}

/// A random maximal run of bytes satisfying `pred`, as a range.
fn pick_run(r: &mut ChaCha8Rng, v: &[u8], pred: impl Fn(u8) -> bool) -> Option<(usize, usize)> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < v.len() {
        if pred(v[i]) {
            let a = i;
            while i < v.len() && pred(v[i]) {
                i += 1;
            }
            runs.push((a, i));
        } else {
            i += 1;
        }
    }
    (!runs.is_empty()).then(|| runs[r.random_range(0..runs.len())])
}

// ---------------------------------------------------------------------------------------------
// Driver

/// Feeds the seeds and `n` mutants of them to `target`; returns (executions, crashes). Each
/// crash (panic or hang) is saved under `target/fuzz-crashes/<parser>/` and printed.
fn fuzz(parser: &str, seeds: &[(String, Vec<u8>)], n: usize, seed: u64, target: &mut dyn FnMut(&[u8]) -> bool) -> (usize, Vec<String>) {
    assert!(!seeds.is_empty(), "{parser}: no seeds");
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let donors: Vec<&[u8]> = seeds.iter().map(|(_, b)| b.as_slice()).collect();
    let crash_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-crashes").join(parser);
    let mut crashes = Vec::new();
    let mut accepted = 0;
    let mut largest = 0;
    let mut run = |input: &[u8], label: String, crashes: &mut Vec<String>| {
        let t = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| largest_allocation(|| target(input))));
        accepted += matches!(result, Ok((true, _))) as usize;
        let alloc = result.as_ref().map_or(0, |&(_, a)| a);
        largest = largest.max(alloc);
        let slow = t.elapsed() > SLOW;
        if result.is_err() || slow || alloc > MAX_ALLOC {
            std::fs::create_dir_all(&crash_dir).unwrap();
            let file = crash_dir.join(format!("{label}-{}", crashes.len()));
            std::fs::write(&file, input).unwrap();
            let what = if result.is_err() {
                "panicked".into()
            } else if slow {
                format!("took {:?}", t.elapsed())
            } else {
                format!("allocated {alloc} bytes at once ({} bytes of input)", input.len())
            };
            crashes.push(format!("{parser}: input {label} {what}; saved to {}", file.display()));
        }
    };
    for (name, bytes) in seeds {
        run(bytes, format!("seed-{name}"), &mut crashes);
    }
    for i in 0..n {
        let (_, base) = &seeds[r.random_range(0..seeds.len())];
        let m = mutate(&mut r, base, &donors);
        run(&m, format!("mutant-{i}"), &mut crashes);
    }
    let execs = seeds.len() + n;
    println!(
        "fuzz {parser}: {execs} executions, {} crashes ({accepted} inputs accepted, largest allocation {:.1} MiB)",
        crashes.len(),
        largest as f64 / (1 << 20) as f64
    );
    (execs, crashes)
}

/// Exercises everything that can be asked of a parsed array.
fn use_array(a: &NpyArray, p: &Path) {
    let _ = a.to_f32_matrix(p);
    let _ = a.to_i64(p);
    assert_eq!(a.shape.iter().product::<usize>(), a.data.len(), "shape vs data of {p:?}");
}

/// Exercises an opened store the way fit/embed/eval do: every row, normalised, and the scan.
fn use_store(s: &Store) {
    let _ = s.validate_values();
    for j in 0..s.backbones().len() {
        let m = s.features_normalized(j);
        assert_eq!((m.rows, m.cols), (s.len(), s.backbones()[j].dim));
        let mut row = vec![0.0; s.backbones()[j].dim];
        for i in 0..s.len() {
            s.read_row(j, i, &mut row);
        }
        let idx: Vec<usize> = (0..s.len()).rev().collect();
        let mut out = vec![0.0; idx.len() * s.backbones()[j].dim];
        s.gather_normalized(j, &idx, &mut out);
    }
    if let Some(l) = s.labels() {
        assert_eq!(l.len(), s.len());
        if let (Some(k), Some(&max)) = (s.num_classes(), l.iter().max()) {
            assert!((max as usize) < k);
        }
    }
    let _ = (s.ids(), s.classes());
}

/// Exercises a loaded model: embeds three samples shaped like its backbones.
fn use_model(m: &EnsembleModel) {
    assert_eq!(m.mlps.len(), m.spec.backbones.len());
    let total: usize = m.spec.backbones.iter().map(|b| b.dim).sum();
    if total > 100_000 {
        return;
    }
    let mut r = rng(73);
    let names = m.spec.backbones.iter().map(|b| b.name.clone()).collect();
    let mats = m.spec.backbones.iter().map(|b| random_features(&mut r, 3, b.dim)).collect();
    let feats = InMemory::new(names, mats).unwrap();
    let cfg = ensembed::EmbedConfig { epochs: 1, ..Default::default() };
    let _ = ensembed::embed::embed(m, &feats, &cfg, &NoProgress);
}

/// Seeds of a whole store: its directory's files by name.
fn seed_store(dir: &Path) -> PathBuf {
    let mut r = rng(70);
    let mut w = StoreWriter::create(&dir.join("seed-store"), 6, false).unwrap();
    w.add_backbone_f32("conv-a", &random_features(&mut r, 6, 5), Dtype::F32).unwrap();
    w.add_backbone_f32("vit.b", &random_features(&mut r, 6, 3), Dtype::F16).unwrap();
    w.set_labels(&[0, 1, 2, 0, 1, 2], Some(vec!["x".into(), "y".into(), "z".into()])).unwrap();
    w.set_ids((0..6).map(|i| format!("img/{i}.jpg")).collect()).unwrap();
    w.finish().unwrap()
}

fn fit_cfg() -> FitConfig {
    FitConfig { epochs: 2, batch: 4, dim: Some(4), hidden: Some(5), seed: 3, ..Default::default() }
}

fn feats() -> InMemory {
    let mut r = rng(71);
    InMemory::new(vec!["a".into(), "b".into()], vec![random_features(&mut r, 9, 4), random_features(&mut r, 9, 3)]).unwrap()
}

/// A checkpoint after one epoch of a fit with `bank`.
fn seed_checkpoint(dir: &Path, bank: BankMode) -> PathBuf {
    let cfg = FitConfig { bank, ..fit_cfg() };
    let f = feats();
    let ckpt = dir.join(format!("ckpt-{bank:?}"));
    let state = FitState::new(&f, &cfg).unwrap();
    let _ = fit_from(&f, &cfg, state, &NoProgress, &mut |s| {
        save_checkpoint(&ckpt, s, &cfg)?;
        Err(Error::config("test", 0, "stop after the first checkpoint"))
    });
    ckpt
}

fn read_dir_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect();
    v.sort();
    v
}

fn with_corpus(parser: &str, mut seeds: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    seeds.extend(corpus(parser));
    seeds
}

/// The whole harness for the file formats of the library proper, one parser after the other.
/// Run longer with
/// `ENSEMBED_FUZZ_ITERS=100000 cargo test --release -p ensembed --test it fuzz -- --nocapture`
/// (every `fuzz_*` test: the images, TFLite models and PyTorch checkpoints have their own).
#[test]
fn fuzz_all_parsers() {
    let n = iters();
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let mut report = Vec::new();
    let mut crashes = Vec::new();
    let mut record = |parser: &str, (execs, c): (usize, Vec<String>)| {
        report.push(format!("{parser}: {execs} executions, {} crashes", c.len()));
        crashes.extend(c);
    };

    // .npy
    let npy_seeds = corpus("npy");
    record("npy", fuzz("npy", &npy_seeds, n, 1, &mut |b| {
        let p = Path::new("fuzz.npy");
        read_npy_bytes(b, p).map(|a| use_array(&a, p)).is_ok()
    }));

    // .npz (numpy's seeds, plus npy seeds as splice donors)
    let mut npz_seeds = corpus("npz");
    npz_seeds.extend(npy_seeds.iter().take(2).cloned());
    record("npz", fuzz("npz", &npz_seeds, n, 2, &mut |b| {
        let p = Path::new("fuzz.npz");
        read_npz_bytes(b, p).map(|arrays| arrays.iter().for_each(|(_, a)| use_array(a, p))).is_ok()
    }));

    // Store::open: each file of a valid store in turn is the mutant.
    let store = seed_store(work);
    let store_files = read_dir_files(&store);
    for target_file in ["manifest.json", "conv-a.safetensors", "vit.b.safetensors", "labels.safetensors", "ids.txt"] {
        let seed = store_files.iter().find(|(n, _)| n == target_file).unwrap_or_else(|| panic!("{target_file} in {store_files:?}")).clone();
        let parser = format!("store-{}", target_file.split('.').next().unwrap());
        let dir = work.join(&parser);
        let seeds = with_corpus(&parser, vec![seed]);
        record(&parser, fuzz(&parser, &seeds, n, 3, &mut |b| {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, bytes) in &store_files {
                std::fs::write(dir.join(name), if name == target_file { b } else { bytes }).unwrap();
            }
            Store::open(&dir).map(|s| use_store(&s)).is_ok()
        }));
    }

    // EnsembleModel::load: a mixed-width model (with a PCA projection) and an equal-width one.
    let f = feats();
    let mixed = fit(&f, &fit_cfg(), &NoProgress).unwrap();
    let mut r = rng(72);
    let same = InMemory::unnamed(vec![random_features(&mut r, 8, 4), random_features(&mut r, 8, 4)]).unwrap();
    let same = fit(&same, &FitConfig { dim: None, depth: 1, ..fit_cfg() }, &NoProgress).unwrap();
    let model_dir = work.join("models");
    std::fs::create_dir_all(&model_dir).unwrap();
    mixed.model.save(&model_dir.join("mixed.safetensors")).unwrap();
    same.model.save(&model_dir.join("same.safetensors")).unwrap();
    let seeds = with_corpus("model", read_dir_files(&model_dir));
    let p = work.join("fuzz-model.safetensors");
    record("model", fuzz("model", &seeds, n, 4, &mut |b| {
        std::fs::write(&p, b).unwrap();
        EnsembleModel::load(&p).map(|m| use_model(&m)).is_ok()
    }));

    // load_model_dir: its fit.json.
    let md = work.join("model-dir");
    ensembed::artifact::save_model_dir(&md, &mixed, &fit_cfg(), Some("train.npz"), false).unwrap();
    let fit_json = std::fs::read(md.join("fit.json")).unwrap();
    let seeds = with_corpus("fit-json", vec![("fit.json".into(), fit_json)]);
    record("fit-json", fuzz("fit-json", &seeds, n, 5, &mut |b| {
        std::fs::write(md.join("fit.json"), b).unwrap();
        load_model_dir(&md).is_ok()
    }));

    // read_representations, .npy and .safetensors.
    for ext in ["npy", "safetensors"] {
        let seed_path = work.join(format!("seed-repr.{ext}"));
        write_representations(&seed_path, &mixed.representations).unwrap();
        let parser = format!("repr-{ext}");
        let mut seeds = with_corpus(&parser, vec![(format!("repr.{ext}"), std::fs::read(&seed_path).unwrap())]);
        if ext == "npy" {
            seeds.extend(npy_seeds.iter().cloned());
        }
        let p = work.join(format!("fuzz-repr.{ext}"));
        record(&parser, fuzz(&parser, &seeds, n, 6, &mut |b| {
            std::fs::write(&p, b).unwrap();
            read_representations(&p).map(|m| assert_eq!(m.data.len(), m.rows * m.cols)).is_ok()
        }));
    }

    // load_checkpoint: state.json, state.safetensors and the checkpoint's model, both bank modes.
    for bank in [BankMode::Dense, BankMode::Lazy] {
        let cfg = FitConfig { bank, ..fit_cfg() };
        let ckpt = seed_checkpoint(work, bank);
        let files = read_dir_files(&ckpt);
        assert!(load_checkpoint(&ckpt, &cfg, &f).is_ok());
        for target_file in ["state.json", "state.safetensors", "model.safetensors"] {
            let seed = files.iter().find(|(n, _)| n == target_file).unwrap().clone();
            let parser = format!("checkpoint-{bank:?}-{}", target_file.replace('.', "-")).to_lowercase();
            // Regression inputs are named `<anything>.<target file>`.
            let mut seeds = vec![seed];
            seeds.extend(corpus("checkpoint").into_iter().filter(|(n, _)| n.ends_with(&format!(".{target_file}"))));
            let dir = work.join(&parser);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, bytes) in &files {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
            let cfg = cfg.clone();
            record(&parser, fuzz(&parser, &seeds, n, 7, &mut |b| {
                std::fs::write(dir.join(target_file), b).unwrap();
                // A restored state must be usable: resuming must not panic either.
                load_checkpoint(&dir, &cfg, &f).map(|state| fit_from(&f, &cfg, state, &NoProgress, &mut |_| Ok(()))).is_ok()
            }));
        }
    }

    println!("{}", report.join("\n"));
    assert!(crashes.is_empty(), "{} crashes:\n{}", crashes.len(), crashes.join("\n"));
}

/// PyTorch checkpoints (`backbone::checkpoint`, a pickle machine and two container formats):
/// mutants of the fixtures in `tests/corpus/torch/` (real resnet20 weights in the legacy and
/// zip formats, every float dtype, strided views, and the hostile files of
/// `tests/it/checkpoint.rs`), twice the usual count since they are two parsers in one. A state
/// dict that loads must be consistent: each tensor holds as many values as its shape says.
#[test]
fn fuzz_torch_checkpoints() {
    use ensembed::backbone::checkpoint::{is_checkpoint, read_checkpoint_bytes};
    let seeds = corpus("torch");
    let p = Path::new("fuzz.pt");
    let (_, crashes) = fuzz("torch", &seeds, 2 * iters(), 8, &mut |b| {
        let _ = is_checkpoint(&b[..b.len().min(64)]);
        read_checkpoint_bytes(b, p)
            .map(|sd| {
                for (name, t) in &sd.tensors {
                    assert_eq!(t.shape.iter().product::<usize>(), t.data.len(), "{name}");
                }
            })
            .is_ok()
    });
    assert!(crashes.is_empty(), "{} crashes:\n{}", crashes.len(), crashes.join("\n"));
}

/// Images (`RgbImage::decode`, the entry point of `RgbImage::open` and of extraction): our
/// libjpeg-exact JPEG decoder, and the `image` crate behind our wrapper for progressive JPEGs,
/// PNG and BMP. JPEG seeds: the Pillow-written 9x5 files of `backbone.rs` (grey, 4:4:4, 4:2:2,
/// 4:2:0 with a restart marker after every MCU, progressive) and two CIFAR-10 files from
/// `tests/corpus/jpeg/`; PNG and BMP seeds: `tests/corpus/{png,bmp}/` (every colour type, 16-bit,
/// palette with transparency, Adam7 interlacing; 1-, 8-, 24- and 32-bit BMPs). Mutants also get
/// big-endian length fields (JPEG segments, PNG chunks). A decoded image must hold
/// width x height x 3 bytes and survive a resize.
#[test]
fn fuzz_images() {
    use ensembed::backbone::RgbImage;
    let mut jpeg: Vec<(String, Vec<u8>)> = crate::backbone::JPEGS.iter().map(|(name, hex, _)| (format!("{name}.jpg"), crate::backbone::unhex(hex))).collect();
    jpeg.extend(corpus("jpeg"));
    let mut crashes = Vec::new();
    for (parser, seeds, seed) in [("jpeg", jpeg, 10), ("png", corpus("png"), 11), ("bmp", corpus("bmp"), 12)] {
        let p = PathBuf::from(format!("fuzz.{parser}"));
        for (name, bytes) in &seeds {
            assert!(RgbImage::decode(bytes, &p).is_ok() || name.contains("regression"), "seed {name} does not decode");
        }
        let (_, c) = fuzz(parser, &seeds, iters(), seed, &mut |b| {
            RgbImage::decode(b, &p)
                .map(|img| {
                    let (w, h) = (img.width(), img.height());
                    assert_eq!(img.pixels().len(), w * h * 3);
                    if w * h <= 1 << 16 {
                        let r = img.resize_bilinear(2 * w + 1, h.div_ceil(2)).unwrap();
                        assert_eq!(r.pixels().len(), (2 * w + 1) * h.div_ceil(2) * 3);
                    }
                })
                .map_err(|e| assert!(e.to_string().contains(&format!("fuzz.{parser}")), "{e}"))
                .is_ok()
        });
        crashes.extend(c);
    }
    assert!(crashes.is_empty(), "{} crashes:\n{}", crashes.len(), crashes.join("\n"));
}

/// TFLite models (`TfliteModel::from_bytes`: the flatbuffer reader, then the planner, which
/// must accept or refuse whatever parses, never panic): mutants of the four variants of
/// `tflite_writer::tiny_model` (uint8 and int8, average pool and MEAN; every operator kind the
/// planner accepts, per-tensor and per-channel weights, an external buffer), of
/// `tests/corpus/tflite/`, and, when `../shared` is present, of the smallest coral model (too
/// big for the repository: 0.5 MB). A model that loads runs on a small image (when its input is
/// at most 64x64) and its features have `pooled_dim` values; errors name the file. Twice the
/// usual count: two parsers in one.
#[test]
fn fuzz_tflite_models() {
    use crate::tflite_writer::tiny_model;
    use ensembed::backbone::{RgbImage, TfliteModel};
    let p = Path::new("fuzz.tflite");
    let mut seeds = vec![];
    for (int8, mean) in [(false, false), (false, true), (true, false), (true, true)] {
        let name = format!("tiny-{}-{}.tflite", if int8 { "int8" } else { "uint8" }, if mean { "mean" } else { "avgpool" });
        let m = tiny_model(int8, mean);
        assert!(TfliteModel::from_bytes(&m, p).is_ok(), "{name}: {:?}", TfliteModel::from_bytes(&m, p).err());
        seeds.push((name, m));
    }
    seeds.push(("regression-huge-channels.tflite".into(), crate::tflite_writer::huge_channel_model()));
    seeds.extend(corpus("tflite"));
    if let Some(shared) = crate::helpers::shared_dir("fuzz_tflite_models (coral seed)") {
        let f = "mobilenet_v1_0.25_128_quant.tflite";
        seeds.push((f.into(), std::fs::read(shared.join("data/models/coral").join(f)).unwrap()));
    }
    let img = RgbImage::new(5, 4, (0..60).map(|v| (v * 13) as u8).collect()).unwrap();
    let (_, crashes) = fuzz("tflite", &seeds, 2 * iters(), 9, &mut |b| match TfliteModel::from_bytes(b, p) {
        Err(e) => {
            assert!(e.to_string().contains("fuzz.tflite"), "{e}");
            false
        }
        Ok(m) => {
            let (h, w) = m.input_size();
            if h * w <= 64 * 64 {
                let f = m.features_one(&img).unwrap();
                assert_eq!(f.len(), m.pooled_dim());
                if m.num_classes().is_some() {
                    assert!(m.classify(&img).unwrap().len() <= 5);
                }
            }
            true
        }
    });
    assert!(crashes.is_empty(), "{} crashes:\n{}", crashes.len(), crashes.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Regressions found by the fuzzer (each input is also in tests/corpus/<parser>/)

/// Declared sizes that the bytes present cannot fill are refused before anything of that size
/// is allocated (found by review, checked with the allocation tracker; each input is also a
/// fuzzer seed): a JPEG frame header of 65535x1024 on a 1 KB file (its sample planes, 96 MB,
/// used to be allocated at the frame header), a 68-byte PNG declaring 16384x8192 RGBA (512 MB,
/// which the `image` crate allocates before inflating; now the budget grows with the file
/// size), and a TFLite convolution declaring 2^26 output channels with 3 bytes of weights (two
/// 256 MB vectors of per-channel parameters used to be built before the buffer was checked).
#[test]
fn declared_sizes_larger_than_the_file_are_refused_before_allocating() {
    use ensembed::backbone::{RgbImage, TfliteModel};
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("regression-65535x1024-frame.jpg", std::fs::read(corpus_dir("jpeg").join("regression-65535x1024-frame.jpg")).unwrap(), "jpeg scan"),
        ("regression-16384x8192-header.png", std::fs::read(corpus_dir("png").join("regression-16384x8192-header.png")).unwrap(), "image size"),
        ("huge-channels.tflite", crate::tflite_writer::huge_channel_model(), "tensor `filter`.buffer"),
    ];
    let mut failures = Vec::new();
    for (name, bytes, want_field) in cases {
        let p = Path::new(name);
        let (result, largest) = largest_allocation(|| {
            if name.ends_with(".tflite") {
                TfliteModel::from_bytes(&bytes, p).map(|_| ())
            } else {
                RgbImage::decode(&bytes, p).map(|_| ())
            }
        });
        let e = result.unwrap_err();
        if field_of(&e) != want_field || !e.to_string().contains(name) {
            failures.push(format!("{name}: expected an error in field `{want_field}` naming the file, got {e}"));
        }
        if largest >= 1 << 20 {
            failures.push(format!("{name}: allocated {largest} bytes at once before refusing it"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Found by the fuzzer (mutant 327,980 of `fuzz_tflite_models`): a model whose ADD takes its
/// own output as its second input passed the planner (outputs are declared before the second
/// operand is checked for having been written) and panicked when run. Refused when planned.
#[test]
fn an_operator_reading_its_own_output_is_refused() {
    use ensembed::backbone::TfliteModel;
    let name = "regression-add-reads-its-own-output.tflite";
    let bytes = std::fs::read(corpus_dir("tflite").join(name)).unwrap();
    let e = TfliteModel::from_bytes(&bytes, Path::new(name)).unwrap_err();
    assert!(field_of(&e).starts_with("operators[") && field_of(&e).ends_with("(ADD)"), "{e}");
    assert!(e.to_string().contains("is both an input and the output"), "{e}");
}

/// A model whose spec declares a backbone of width 0 has zero-element tensors that match any
/// `dim`, so a tiny file could announce dim = 2^60 for `embed` to allocate. Refused on load.
#[test]
fn model_with_a_zero_width_backbone_is_refused() {
    let bytes = std::fs::read(corpus_dir("model").join("zero-width-backbone.safetensors")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("model.safetensors");
    std::fs::write(&p, bytes).unwrap();
    let e = EnsembleModel::load(&p).unwrap_err().to_string();
    assert!(e.contains("ensembed-model-spec") && e.contains("invalid spec"), "{e}");
}

/// `[2^60, 0]` representations hold no bytes; refused rather than handed on with 2^60 rows.
#[test]
fn representations_without_columns_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["zero-cols.npy", "zero-cols.safetensors"] {
        let p = dir.path().join(name);
        let ext = name.rsplit('.').next().unwrap();
        std::fs::copy(corpus_dir(&format!("repr-{ext}")).join(name), &p).unwrap();
        let e = read_representations(&p).unwrap_err();
        assert!(matches!(&e, Error::Format { field, .. } if field == "shape"), "{e}");
        assert!(e.to_string().contains("at least one column"), "{e}");
    }
}

/// A checkpoint whose step counts exceed the steps of the whole fit (found by the fuzzer:
/// `adam_steps` of u64::MAX in state.json made the next Adam step overflow on resume) is
/// refused on load, for the MLPs' Adam, the bank's Adam and the lazy bank's per-row counts.
#[test]
fn checkpoint_with_impossible_step_counts_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = feats();
    // The corpus file is a mutant of the dense checkpoint of `fit_cfg()` on `feats()`.
    let cfg = FitConfig { bank: BankMode::Dense, ..fit_cfg() };
    let ckpt = seed_checkpoint(dir.path(), BankMode::Dense);
    let good = std::fs::read(ckpt.join("state.json")).unwrap();
    std::fs::copy(corpus_dir("checkpoint").join("adam-steps-u64-max.state.json"), ckpt.join("state.json")).unwrap();
    let e = load_checkpoint(&ckpt, &cfg, &f).err().unwrap();
    assert_eq!(field_of(&e), "adam_steps", "{e}");
    assert!(e.to_string().contains("18446744073709551615"), "{e}");

    let text = String::from_utf8(good).unwrap();
    let bank_steps = text.replace("\"bank_steps\": ", "\"bank_steps\": 1000000");
    assert_ne!(bank_steps, text);
    std::fs::write(ckpt.join("state.json"), bank_steps).unwrap();
    assert_eq!(field_of(&load_checkpoint(&ckpt, &cfg, &f).err().unwrap()), "bank_steps");

    // Lazy bank: a row count of u32::MAX in state.safetensors.
    let cfg = FitConfig { bank: BankMode::Lazy, ..fit_cfg() };
    let ckpt = seed_checkpoint(dir.path(), BankMode::Lazy);
    let path = ckpt.join("state.safetensors");
    let mut bytes = std::fs::read(&path).unwrap();
    let hn = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + hn]).unwrap();
    let start = header["bank.row_steps"]["data_offsets"][0].as_u64().unwrap() as usize + 8 + hn;
    bytes[start..start + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&path, bytes).unwrap();
    let e = load_checkpoint(&ckpt, &cfg, &f).err().unwrap();
    assert_eq!(field_of(&e), "bank.row_steps", "{e}");
}

// ---------------------------------------------------------------------------------------------
// Path safety

fn field_of(e: &Error) -> &str {
    match e {
        Error::Format { field, .. } => field,
        other => panic!("expected a format error, got {other}"),
    }
}

/// No manifest entry or backbone name can make `Store::open` look outside the store, and no
/// backbone name can make `StoreWriter` create a file outside it.
#[test]
fn manifest_entries_and_backbone_names_never_leave_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = seed_store(dir.path());
    let manifest = store.join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let outside = dir.path().join("outside.safetensors");
    std::fs::copy(store.join("conv-a.safetensors"), &outside).unwrap();
    for bad in [
        "../outside.safetensors",
        "..",
        ".",
        "",
        "/etc/passwd",
        "sub/conv-a.safetensors",
        "sub\\\\conv-a.safetensors",
        "C:conv-a.safetensors",
        ".hidden",
        "conv-a.safetensors\\u0000",
    ] {
        std::fs::write(&manifest, text.replace("\"conv-a.safetensors\"", &format!("\"{bad}\""))).unwrap();
        let e = Store::open(&store).unwrap_err();
        assert_eq!(field_of(&e), "backbones[0].file", "{bad}: {e}");
    }
    for (from, field) in [("\"labels.safetensors\"", "labels"), ("\"ids.txt\"", "ids")] {
        std::fs::write(&manifest, text.replace(from, "\"../outside.safetensors\"")).unwrap();
        assert_eq!(field_of(&Store::open(&store).unwrap_err()), field);
    }
    for bad in ["../conv-a", "/tmp/x", "a/b", ".x", "labels", "LABELS", "a b", "é"] {
        std::fs::write(&manifest, text.replace("\"name\": \"conv-a\"", &format!("\"name\": \"{bad}\""))).unwrap();
        assert_eq!(field_of(&Store::open(&store).unwrap_err()), "backbones[0].name", "{bad}");
    }

    // The writer refuses the same names before writing anything.
    let names = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    };
    let before = names(dir.path());
    let m = random_features(&mut rng(1), 6, 2);
    for bad in ["../evil", "/tmp/evil", "a/b", "..", ".evil", "labels", "", "nul\0"] {
        let mut w = StoreWriter::create(&dir.path().join("new"), 6, false).unwrap();
        assert!(w.add_backbone_f32(bad, &m, Dtype::F32).is_err(), "{bad:?}");
    }
    assert_eq!(names(dir.path()), before, "a refused name left a file behind");
    assert!(!Path::new("/tmp/evil.safetensors").exists());
}

/// A store entry that is a symbolic link resolving outside the store is refused (backbone,
/// labels, ids, manifest); a link to another file of the same store is accepted; a FIFO is
/// refused instead of blocking; and replacing a store never writes through its links.
#[cfg(unix)]
#[test]
fn symlinks_out_of_the_store_are_refused_and_never_written_through() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let store = seed_store(dir.path());
    let secret = dir.path().join("secret.safetensors");
    let original = std::fs::read(store.join("conv-a.safetensors")).unwrap();

    for (entry, field) in [
        ("conv-a.safetensors", "backbones[0].file"),
        ("labels.safetensors", "labels"),
        ("ids.txt", "ids"),
        ("manifest.json", "manifest.json"),
    ] {
        let path = store.join(entry);
        std::fs::rename(&path, &secret).unwrap();
        symlink(&secret, &path).unwrap();
        let e = Store::open(&store).unwrap_err();
        assert_eq!(field_of(&e), field, "{e}");
        assert!(e.to_string().contains("symbolic link") && e.to_string().contains("outside the store"), "{e}");
        std::fs::remove_file(&path).unwrap();
        std::fs::rename(&secret, &path).unwrap();
    }

    // A link inside the store is fine (here: ids.txt -> a copy kept in the store).
    std::fs::rename(store.join("ids.txt"), store.join("ids-real.txt")).unwrap();
    symlink("ids-real.txt", store.join("ids.txt")).unwrap();
    assert_eq!(Store::open(&store).unwrap().ids().unwrap().len(), 6);
    std::fs::remove_file(store.join("ids.txt")).unwrap();
    std::fs::rename(store.join("ids-real.txt"), store.join("ids.txt")).unwrap();

    // A FIFO would block `open` forever: refused as not a regular file.
    let fifo = store.join("labels.safetensors");
    std::fs::rename(&fifo, dir.path().join("labels.bak")).unwrap();
    if std::process::Command::new("mkfifo").arg(&fifo).status().is_ok_and(|s| s.success()) {
        let e = Store::open(&store).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        std::fs::remove_file(&fifo).unwrap();
    }
    std::fs::rename(dir.path().join("labels.bak"), &fifo).unwrap();

    // Overwriting a store whose backbone links outside replaces the link, not its target.
    std::fs::write(&secret, b"keep me").unwrap();
    std::fs::remove_file(store.join("conv-a.safetensors")).unwrap();
    symlink(&secret, store.join("conv-a.safetensors")).unwrap();
    let mut w = StoreWriter::create(&store, 6, true).unwrap();
    w.add_backbone_f32("conv-a", &random_features(&mut rng(5), 6, 5), Dtype::F32).unwrap();
    w.finish().unwrap();
    assert_eq!(std::fs::read(&secret).unwrap(), b"keep me");
    assert!(!store.join("conv-a.safetensors").is_symlink());
    assert_ne!(std::fs::read(store.join("conv-a.safetensors")).unwrap(), original);
    // A store path that is itself a symlink is refused as a destination.
    let link = dir.path().join("link-store");
    symlink(&store, &link).unwrap();
    assert!(StoreWriter::create(&link, 6, true).is_err());
}

// ---------------------------------------------------------------------------------------------
// Numbers

/// A learning rate so large that the weights overflow after one step: the loss becomes NaN or
/// infinite and the fit stops with `Error::Diverged`, naming the epoch, step and lr.
#[test]
fn a_diverging_fit_names_epoch_step_and_lr() {
    let f = feats();
    let cfg = FitConfig { lr: 1e30, warmup: Some(0), ..fit_cfg() };
    match fit(&f, &cfg, &NoProgress) {
        Err(e @ Error::Diverged { epoch, step, lr, value }) => {
            // The first step overflows the weights; the second step's loss is NaN.
            assert_eq!((epoch, step), (0, 1));
            assert!(!value.is_finite());
            assert_eq!(lr, 1e30);
            let msg = e.to_string();
            assert!(msg.contains(&format!("epoch {epoch}")) && msg.contains(&format!("step {step}")) && msg.contains("lr"), "{msg}");
        }
        other => panic!("expected Diverged, got {:?}", other.map(|o| o.history)),
    }
}

/// A store of one sample fits (batch = 1, the PCA init of mixed widths included), its
/// representations are finite, and embedding that one sample works.
#[test]
fn a_one_sample_store_fits_and_embeds() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = rng(9);
    let mut w = StoreWriter::create(&dir.path().join("one"), 1, false).unwrap();
    w.add_backbone_f32("a", &random_features(&mut r, 1, 4), Dtype::F32).unwrap();
    w.add_backbone_f32("b", &random_features(&mut r, 1, 3), Dtype::F16).unwrap();
    let store = Store::open(&w.finish().unwrap()).unwrap();
    let out = fit(&store, &fit_cfg(), &NoProgress).unwrap();
    assert_eq!((out.representations.rows, out.representations.cols), (1, 4));
    assert!(out.representations.data.iter().all(|v| v.is_finite()));
    assert!(out.history.iter().all(|h| h.loss.is_finite()));
    let emb = ensembed::embed::embed(&out.model, &store, &ensembed::EmbedConfig { epochs: 2, ..Default::default() }, &NoProgress).unwrap();
    assert!(emb.representations.data.iter().all(|v| v.is_finite()));
}

/// A class with no training sample never wins a vote: its test samples are misses, the other
/// classes are unaffected, and nothing panics.
#[test]
fn knn_class_without_train_samples_is_a_miss() {
    let row = |x: f32, y: f32| {
        let n = (x * x + y * y).sqrt();
        [x / n, y / n]
    };
    let train = Matrix::from_vec(4, 2, [row(1.0, 0.0), row(1.0, 0.1), row(0.0, 1.0), row(0.1, 1.0)].concat()).unwrap();
    let test = Matrix::from_vec(3, 2, [row(1.0, 0.05), row(0.05, 1.0), row(1.0, 1.0)].concat()).unwrap();
    // Class 1 has no train samples; the third test sample belongs to it.
    let cfg = KnnConfig { ks: vec![1, 3], num_classes: Some(3), ..Default::default() };
    let r = evaluate_knn(&train, &[0, 0, 2, 2], &test, &[0, 2, 1], &cfg, &NoProgress).unwrap();
    assert_eq!(r.num_classes, 3);
    assert!((r.at(1).unwrap().top1 - 2.0 / 3.0).abs() < 1e-12, "{:?}", r.scores);
    // Top-5 over 3 classes holds every class, the empty one included (its vote total is 0).
    assert!((r.at(1).unwrap().top5 - 1.0).abs() < 1e-12, "{:?}", r.scores);
}

