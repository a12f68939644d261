//! k-NN evaluation against answers known independently: a plain brute force written here (f64,
//! full sort), a hand-computed 2-D case, numpy's accuracies on the shipped demo features
//! (`scripts/knn_reference.py`), and invariance to threads and block sizes, which the blocked
//! search must not leak into the results.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use ensembed::eval::{evaluate_knn, knn_neighbors, KnnConfig, KnnReport, Vote};
use ensembed::{Matrix, NoProgress, Progress};
use rand::Rng;

use crate::helpers::{random_matrix, repo_root, rng};

/// `n` unit rows around `classes` random centres (so that k-NN is neither hopeless nor
/// perfect), with their centre as label.
fn clustered(seed: u64, n: usize, d: usize, classes: usize) -> (Matrix, Vec<u32>) {
    let mut r = rng(seed);
    let centres = random_matrix(&mut rng(99), classes, d);
    let labels: Vec<u32> = (0..n).map(|_| r.random_range(0..classes as u32)).collect();
    let mut x = random_matrix(&mut r, n, d);
    for (i, &y) in labels.iter().enumerate() {
        x.row_mut(i).iter_mut().zip(centres.row(y as usize)).for_each(|(v, c)| *v = 3.0 * *v + c);
    }
    x.normalize_rows();
    (x, labels)
}

fn cfg(
    ks: &[usize],
    vote: Vote,
    query_chunk: usize,
    train_chunk: usize,
    threads: usize,
) -> KnnConfig {
    KnnConfig { ks: ks.to_vec(), vote, query_chunk, train_chunk, threads, ..KnnConfig::default() }
}

/// Brute force, written plainly: f64 similarities of one query to all of train, fully sorted
/// (descending, ties by index). `[nt]` of (similarity, train index).
fn brute_neighbours(train: &Matrix, q: &[f32]) -> Vec<(f64, usize)> {
    let mut all: Vec<(f64, usize)> = (0..train.rows)
        .map(|j| (train.row(j).iter().zip(q).map(|(&a, &b)| a as f64 * b as f64).sum(), j))
        .collect();
    all.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap().then(a.1.cmp(&b.1)));
    all
}

/// Brute-force (top-1, top-5) accuracy at `k`: sum the votes, sort the classes, look.
fn brute_accuracy(
    train: &Matrix,
    ty: &[u32],
    test: &Matrix,
    qy: &[u32],
    k: usize,
    vote: Vote,
    t: f32,
) -> (f64, f64) {
    let classes = *ty.iter().max().unwrap() as usize + 1;
    let (mut top1, mut top5) = (0, 0);
    for (q, &y) in qy.iter().enumerate() {
        let mut votes = vec![0f64; classes];
        for &(s, j) in &brute_neighbours(train, test.row(q))[..k] {
            votes[ty[j] as usize] +=
                if vote == Vote::Weighted { (s / t as f64).exp() } else { 1.0 };
        }
        let mut ranked: Vec<usize> = (0..classes).collect();
        ranked.sort_by(|&a, &b| votes[b].partial_cmp(&votes[a]).unwrap().then(a.cmp(&b)));
        top1 += (ranked[0] == y as usize) as usize;
        top5 += ranked[..5.min(classes)].contains(&(y as usize)) as usize;
    }
    (top1 as f64 / test.rows as f64, top5 as f64 / test.rows as f64)
}

#[test]
fn matches_brute_force() {
    let (train, ty) = clustered(1, 700, 37, 7);
    let (test, qy) = clustered(2, 130, 37, 7);
    // 130 = 4 * 32 + 2 queries and 700 = 7 * 96 + 28 train rows: several blocks, ragged ends.
    let c = cfg(&[1, 5, 20, 100], Vote::Weighted, 32, 96, 2);

    let (idx, sim) = knn_neighbors(&train, &test, 100, &c, &NoProgress).unwrap();
    for q in 0..test.rows {
        let want = &brute_neighbours(&train, test.row(q))[..100];
        let got: Vec<usize> = idx[q * 100..(q + 1) * 100].iter().map(|&i| i as usize).collect();
        assert_eq!(got, want.iter().map(|w| w.1).collect::<Vec<_>>(), "query {q}");
        for (s, w) in sim[q * 100..(q + 1) * 100].iter().zip(want) {
            assert!((*s as f64 - w.0).abs() < 1e-5, "query {q}: similarity {s} vs {}", w.0);
        }
    }

    for vote in [Vote::Weighted, Vote::Majority] {
        let r =
            evaluate_knn(&train, &ty, &test, &qy, &KnnConfig { vote, ..c.clone() }, &NoProgress)
                .unwrap();
        assert_eq!((r.n_train, r.n_test, r.num_classes), (700, 130, 7));
        for &k in &[1, 5, 20, 100] {
            let s = r.at(k).unwrap();
            let want = brute_accuracy(&train, &ty, &test, &qy, k, vote, c.temperature);
            assert_eq!((s.top1, s.top5), want, "{vote:?}, k = {k}");
            // Not a vacuous comparison: the clusters make k-NN informative but imperfect.
            assert!(s.top1 > 0.3 && s.top1 < 0.95, "{vote:?}, k = {k}: {s:?}");
        }
    }
}

#[test]
fn hand_computed_2d() {
    // Train: 0 = (-1, 0) class 2, 1 = (0.6, 0.8) class 1, 2 = (1, 0) class 0,
    //        3 = (0.6, -0.8) class 1.
    // Query A = (1, 0), label 0: similarities -1, 0.6, 1, 0.6 -> neighbours 2, 1, 3, 0 (1 before
    //   3: equal similarity, lower index first).
    // Query B = (0, 1), label 2: similarities 0, 0.8, 0, -0.8 -> neighbours 1, 0, 2, 3.
    // Weighted (T = 0.07), k = 1, 2, 3:
    //   A: class 0 gets e^(1/0.07) = 1.6e6 against class 1's at most 2 e^(0.6/0.07) = 1.1e4: right.
    //   B: class 1 gets e^(0.8/0.07) = 9.2e4 against e^0 = 1 for classes 2 and 0: wrong.
    //   -> top-1 = 1/2 at every k.
    // Majority: k = 1: A right, B wrong. k = 2: A ties class 0 and 1 at one vote -> class 0,
    //   right; B ties class 1 and 2 -> class 1, wrong. k = 3: A: class 1 has two votes, wrong;
    //   B: classes 1, 2, 0 one vote each -> class 0, wrong. -> 1/2, 1/2, 0.
    // Three classes < 5, so top-5 is always 1 (B at k = 1: class 2 has no vote and still counts).
    let train = Matrix::from_vec(4, 2, vec![-1.0, 0.0, 0.6, 0.8, 1.0, 0.0, 0.6, -0.8]).unwrap();
    let test = Matrix::from_vec(2, 2, vec![1.0, 0.0, 0.0, 1.0]).unwrap();
    let (ty, qy) = ([2, 1, 0, 1], [0, 2]);

    let (idx, sim) = knn_neighbors(&train, &test, 4, &KnnConfig::default(), &NoProgress).unwrap();
    assert_eq!(idx, [2, 1, 3, 0, 1, 0, 2, 3]);
    assert_eq!(sim, [1.0, 0.6, 0.6, -1.0, 0.8, 0.0, 0.0, -0.8]);

    let top = |r: &KnnReport| r.scores.iter().map(|s| (s.k, s.top1, s.top5)).collect::<Vec<_>>();
    let run = |vote| {
        evaluate_knn(&train, &ty, &test, &qy, &cfg(&[3, 1, 2], vote, 1, 1, 1), &NoProgress).unwrap()
    };
    // Scores come back in the order asked.
    assert_eq!(top(&run(Vote::Weighted)), [(3, 0.5, 1.0), (1, 0.5, 1.0), (2, 0.5, 1.0)]);
    assert_eq!(top(&run(Vote::Majority)), [(3, 0.0, 1.0), (1, 0.5, 1.0), (2, 0.5, 1.0)]);

    // A test label no train sample has (3) cannot be predicted: a miss even for top-5.
    let r =
        evaluate_knn(&train, &ty, &test, &[0, 3], &cfg(&[1], Vote::Weighted, 8, 8, 1), &NoProgress)
            .unwrap();
    assert_eq!((r.num_classes, r.scores[0].top1, r.scores[0].top5), (3, 0.5, 0.5));
    // With eight classes given, A at k = 1 ranks class 0 first; B's class 2 ties at zero votes
    // with 0, 3, ... and comes after class 1 (votes) and class 0 (lower index): rank 2 < 5.
    let c8 = KnnConfig { num_classes: Some(8), ..cfg(&[1], Vote::Weighted, 8, 8, 1) };
    let r = evaluate_knn(&train, &ty, &test, &qy, &c8, &NoProgress).unwrap();
    assert_eq!((r.num_classes, r.scores[0].top1, r.scores[0].top5), (8, 0.5, 1.0));
}

#[test]
fn equal_similarities_keep_train_order() {
    // Entries of ±0.5 make every dot product exact, so ties are real ties in any summation
    // order; small blocks make them meet the thresholded scan, not just the initial fill.
    let v = [
        [1., 1., 1., 1.],
        [1., 1., 1., -1.],
        [1., 1., -1., -1.],
        [1., -1., -1., -1.],
        [-1., -1., -1., -1.],
    ];
    let rows = |ids: &mut dyn Iterator<Item = usize>| {
        let data: Vec<f32> = ids.flat_map(|i| v[i].map(|x| 0.5 * x)).collect();
        Matrix::from_vec(data.len() / 4, 4, data).unwrap()
    };
    let train = rows(&mut (0..50).map(|i| (i * 3) % 5));
    let test = rows(&mut (0..5));
    let (idx, _) =
        knn_neighbors(&train, &test, 23, &cfg(&[1], Vote::Weighted, 2, 4, 2), &NoProgress).unwrap();
    for q in 0..5 {
        let want: Vec<u32> =
            brute_neighbours(&train, test.row(q))[..23].iter().map(|w| w.1 as u32).collect();
        assert_eq!(idx[q * 23..(q + 1) * 23], want, "query {q}");
    }
}

/// Counts what the search reports.
#[derive(Default)]
struct Count(AtomicU64, AtomicU64);
impl Progress for Count {
    fn start(&self, label: &str, total: u64) {
        assert_eq!(label, "k-NN");
        self.0.store(total, Relaxed);
    }
    fn advance(&self, n: u64) {
        self.1.fetch_add(n, Relaxed);
    }
    fn finish(&self) {}
}

#[test]
fn independent_of_threads_and_blocks() {
    let (train, ty) = clustered(3, 500, 20, 12);
    let (test, qy) = clustered(4, 97, 20, 12);
    let run = |qc, tc, threads| {
        let c = cfg(&[7, 50, 1], Vote::Weighted, qc, tc, threads);
        let p = Count::default();
        let (idx, sim) = knn_neighbors(&train, &test, 50, &c, &p).unwrap();
        assert_eq!((p.0.load(Relaxed), p.1.load(Relaxed)), (97, 97));
        let r = evaluate_knn(&train, &ty, &test, &qy, &c, &NoProgress).unwrap();
        (idx, sim, r.scores.iter().map(|s| (s.top1, s.top5)).collect::<Vec<_>>())
    };
    // Same blocks, different thread counts: bit for bit.
    let base = run(16, 64, 1);
    assert_eq!(base, run(16, 64, 2));
    // Other blocks (including a 1-query block, 97 = 6 * 16 + 1, a train block larger than
    // the train set, and blocks smaller than k) may round similarities differently in the
    // last bit, so these are compared to a tolerance.
    for (qc, tc) in [(7, 1000), (200, 33), (1, 13), (97, 500)] {
        let (idx, sim, scores) = run(qc, tc, 2);
        assert_eq!(idx, base.0, "blocks {qc} x {tc}");
        assert_eq!(scores, base.2, "blocks {qc} x {tc}");
        assert!(sim.iter().zip(&base.1).all(|(a, b)| (a - b).abs() < 1e-6), "blocks {qc} x {tc}");
    }
}

#[test]
fn validation_errors() {
    let (train, ty) = clustered(5, 10, 4, 3);
    let (test, qy) = clustered(6, 5, 4, 3);
    let ok = cfg(&[1, 10], Vote::Weighted, 4, 4, 1);
    let eval_err = |train: &Matrix, ty: &[u32], test: &Matrix, qy: &[u32], c: &KnnConfig| {
        evaluate_knn(train, ty, test, qy, c, &NoProgress).unwrap_err().to_string()
    };
    let has = |msg: String, parts: &[&str]| {
        assert!(parts.iter().all(|p| msg.contains(p)), "{msg:?} lacks one of {parts:?}");
    };
    assert!(evaluate_knn(&train, &ty, &test, &qy, &ok, &NoProgress).is_ok());

    let wide = Matrix::zeros(5, 6);
    has(eval_err(&train, &ty, &wide, &qy, &ok), &["test features", "4 columns", "6 columns"]);
    has(eval_err(&train, &ty[..9], &test, &qy, &ok), &["train labels", "10", "found 9"]);
    has(eval_err(&train, &ty, &test, &[0, 1], &ok), &["test labels", "5", "found 2"]);
    for k in [0, 11] {
        has(
            eval_err(&train, &ty, &test, &qy, &cfg(&[5, k], Vote::Weighted, 4, 4, 1)),
            &["`k`", &format!("= {k}")],
        );
    }
    has(
        eval_err(&train, &ty, &test, &qy, &cfg(&[11], Vote::Weighted, 4, 4, 1)),
        &["larger than the 10 training samples"],
    );
    has(
        eval_err(&train, &ty, &test, &qy, &cfg(&[], Vote::Weighted, 4, 4, 1)),
        &["`ks`", "at least one k"],
    );
    for t in [0.0, -0.1, f32::NAN, f32::INFINITY] {
        let c = KnnConfig { temperature: t, ..ok.clone() };
        has(eval_err(&train, &ty, &test, &qy, &c), &["`temperature`", &format!("= {t}")]);
    }
    let empty = Matrix::zeros(0, 4);
    has(eval_err(&empty, &[], &test, &qy, &ok), &["train features", "0 x 4"]);
    has(eval_err(&train, &ty, &empty, &[], &ok), &["test features", "0 x 4"]);
    for (field, c) in [
        ("query_chunk", KnnConfig { query_chunk: 0, ..ok.clone() }),
        ("train_chunk", KnnConfig { train_chunk: 0, ..ok.clone() }),
        ("threads", KnnConfig { threads: 0, ..ok.clone() }),
    ] {
        has(eval_err(&train, &ty, &test, &qy, &c), &[&format!("`{field}` = 0")]);
    }
    let c = KnnConfig { num_classes: Some(2), ..ok.clone() };
    has(eval_err(&train, &ty, &test, &qy, &c), &["`num_classes` = 2", "labels go up to 2"]);

    // The search alone checks the same things.
    let search_err = |train: &Matrix, test: &Matrix, k| {
        knn_neighbors(train, test, k, &ok, &NoProgress).unwrap_err().to_string()
    };
    has(search_err(&train, &test, 11), &["`k` = 11", "larger than the 10 training samples"]);
    has(search_err(&train, &test, 0), &["`k` = 0"]);
    has(search_err(&train, &wide, 1), &["4 columns", "6 columns"]);
    has(search_err(&empty, &test, 1), &["train features"]);
}

#[test]
fn config_json_round_trip() {
    // Configs are saved beside artefacts; a partial one takes the defaults for the rest.
    let c: KnnConfig = serde_json::from_str(r#"{"ks": [5], "vote": "majority"}"#).unwrap();
    assert_eq!((c.ks, c.vote, c.temperature), (vec![5], Vote::Majority, 0.07));
    let d = KnnConfig::default();
    assert_eq!(d.ks, [10, 20, 100, 200]);
    let back: KnnConfig = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
    assert_eq!(format!("{back:?}"), format!("{d:?}"));
}

/// One array of a `.npz` as f32 (`<f2` or `<i8`), with its shape.
fn npz_array(path: &std::path::Path, name: &str) -> (Vec<usize>, Vec<f32>) {
    let mut zip = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut bytes = Vec::new();
    zip.by_name(&format!("{name}.npy")).unwrap().read_to_end(&mut bytes).unwrap();
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    let shape_str = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let shape = shape_str
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let body = &bytes[10 + hlen..];
    let data = if header.contains("'<f2'") {
        body.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
    } else {
        assert!(header.contains("'<i8'"), "{header}");
        body.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32).collect()
    };
    (shape, data)
}

#[test]
fn matches_numpy_reference_on_demo_features() {
    let demo = repo_root().join("data/demo");
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(demo.join("knn_reference.json")).unwrap())
            .unwrap();
    let backbones = ["mnv2-imagenet", "mnv2-tf2-imagenet", "mnv2-inat-bird"];
    // The reference's methods: each backbone, the normalised sum of normalised backbones
    // (average) and the normalised concatenation of normalised backbones (concat).
    let methods = |split: &str| {
        let path = demo.join(format!("{split}.npz"));
        let mut out: Vec<(String, Matrix)> = backbones
            .iter()
            .map(|&b| {
                let (shape, data) = npz_array(&path, b);
                let mut m = Matrix::from_vec(shape[0], shape[1], data).unwrap();
                m.normalize_rows();
                (b.to_string(), m)
            })
            .collect();
        let (n, d) = (out[0].1.rows, out[0].1.cols);
        let mut avg = Matrix::zeros(n, d);
        let mut cat = Matrix::zeros(n, d * backbones.len());
        for (j, (_, m)) in out.iter().enumerate() {
            for i in 0..n {
                avg.row_mut(i).iter_mut().zip(m.row(i)).for_each(|(a, &b)| *a += b);
                cat.row_mut(i)[j * d..(j + 1) * d].copy_from_slice(m.row(i));
            }
        }
        avg.normalize_rows();
        cat.normalize_rows();
        out.extend([("average".to_string(), avg), ("concat".to_string(), cat)]);
        let labels: Vec<u32> = npz_array(&path, "labels").1.iter().map(|&y| y as u32).collect();
        (out, labels)
    };
    let ((train, ty), (test, qy)) = (methods("train"), methods("test"));

    for ((name, tr), (_, te)) in train.iter().zip(&test) {
        let weighted = evaluate_knn(tr, &ty, te, &qy, &KnnConfig::default(), &NoProgress).unwrap();
        let majority = KnnConfig { ks: vec![20], vote: Vote::Majority, ..KnnConfig::default() };
        let majority = evaluate_knn(tr, &ty, te, &qy, &majority, &NoProgress).unwrap();
        for (report, want) in
            [(&weighted, &reference[name]), (&majority, &reference["majority"][name])]
        {
            for s in &report.scores {
                let w = &want[s.k.to_string()];
                let close = |a: f64, b: &serde_json::Value| (a - b.as_f64().unwrap()).abs() < 1e-9;
                assert!(
                    close(s.top1, &w["top1"]) && close(s.top5, &w["top5"]),
                    "{name} {:?} k = {}: {s:?} vs {w}",
                    report.vote,
                    s.k
                );
            }
        }
    }
}

#[test]
fn nan_similarities_rank_last() {
    // Non-finite input is the caller's error, but must not leave holes in the neighbour lists.
    let train = Matrix::from_vec(4, 2, vec![1.0, 0.0, f32::NAN, 0.0, 0.0, 1.0, -1.0, 0.0]).unwrap();
    let test = Matrix::from_vec(1, 2, vec![1.0, 0.0]).unwrap();
    let (idx, sim) = knn_neighbors(&train, &test, 4, &KnnConfig::default(), &NoProgress).unwrap();
    assert_eq!(idx, [0, 2, 3, 1]);
    assert_eq!(sim, [1.0, 0.0, -1.0, f32::NEG_INFINITY]);
}
