//! k-NN classification accuracy, the number every table of the paper reports (METHOD.md):
//! cosine similarity, exact search, votes weighted by exp(s / T), several k from one search.
//! Exact search over tens of thousands of samples is one large GEMM, so it is blocked to bound
//! memory and the top-k selection is kept cheap beside it. Every GEMM runs single-threaded on
//! blocks fixed by the config and all ties are broken by index, so the results do not depend on
//! the thread count.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::matrix::Matrix;
use crate::progress::Progress;

/// How the neighbours of a query vote for its class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vote {
    /// Each neighbour adds exp(s / T) to its class (DINO's rule; the paper's default).
    Weighted,
    /// Each neighbour adds one.
    Majority,
}

/// Settings of the k-NN evaluation; the defaults are those of METHOD.md. Missing fields of a
/// serialised config take their defaults.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct KnnConfig {
    /// Neighbour counts to score, all answered by one search for the largest.
    pub ks: Vec<usize>,
    /// T in the vote weight exp(s / T).
    pub temperature: f32,
    pub vote: Vote,
    /// Number of classes; `None` means the largest train label + 1.
    pub num_classes: Option<usize>,
    /// Queries per block: the unit of parallel work.
    pub query_chunk: usize,
    /// Train rows per block; each thread holds `query_chunk * train_chunk` similarities.
    pub train_chunk: usize,
    /// Worker threads (results do not depend on it).
    pub threads: usize,
}

impl Default for KnnConfig {
    fn default() -> Self {
        KnnConfig {
            ks: vec![10, 20, 100, 200],
            temperature: 0.07,
            vote: Vote::Weighted,
            num_classes: None,
            // Measured with benches/knn.rs (AVX-512, d = 1024 and 2048): blocks of 64-256
            // queries x 1024-4096 train rows are within 2% of each other, at 0.88-0.90 of a
            // plain GEMM; 512 queries, or 8192 train rows (similarities spill out of L2), are
            // slower. 128 x 2048 holds 1 MiB of similarities per thread.
            query_chunk: 128,
            train_chunk: 2048,
            threads: rayon::current_num_threads(),
        }
    }
}

/// Accuracy at one k, as fractions in [0, 1] (as `scripts/knn_reference.py` writes them).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KnnScore {
    pub k: usize,
    pub top1: f64,
    pub top5: f64,
}

/// The result of [`evaluate_knn`]: one score per requested k, in the order requested.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KnnReport {
    pub scores: Vec<KnnScore>,
    pub n_train: usize,
    pub n_test: usize,
    pub num_classes: usize,
    pub vote: Vote,
    pub temperature: f32,
}

impl KnnReport {
    /// The score at `k`, if `k` was requested.
    pub fn at(&self, k: usize) -> Option<&KnnScore> {
        self.scores.iter().find(|s| s.k == k)
    }
}

/// The `kmax` most similar train rows of every test row, best first; equal similarities are
/// ordered by train index.
///
/// # Shapes
/// Rows must be L2-normalised already (cosine similarity = dot product).
/// `train` [nt, d], `test` [nq, d] -> (indices [nq * kmax], similarities [nq * kmax]), row-major
/// `[nq, kmax]`.
pub fn knn_neighbors(
    train: &Matrix,
    test: &Matrix,
    kmax: usize,
    cfg: &KnnConfig,
    progress: &dyn Progress,
) -> Result<(Vec<u32>, Vec<f32>)> {
    check_inputs(train, test, cfg)?;
    check_k(kmax, train.rows)?;
    Ok(search(train, test, kmax, cfg, &pool(cfg.threads)?, progress))
}

/// Top-1 and top-5 k-NN accuracy of `test` against `train` for every k of `cfg.ks`.
///
/// A class's vote total is the sum of its neighbours' weights; the prediction is the class of
/// highest total (lowest index on ties), and top-5 asks whether the true class is among the five
/// highest totals (among all classes when there are fewer than five). A test label with no
/// class (at or above the class count) is a miss.
///
/// # Shapes
/// Rows must be L2-normalised already. `train` [nt, d], `train_labels` [nt], `test` [nq, d],
/// `test_labels` [nq].
pub fn evaluate_knn(
    train: &Matrix,
    train_labels: &[u32],
    test: &Matrix,
    test_labels: &[u32],
    cfg: &KnnConfig,
    progress: &dyn Progress,
) -> Result<KnnReport> {
    check_inputs(train, test, cfg)?;
    for (what, labels, rows) in
        [("train", train_labels, train.rows), ("test", test_labels, test.rows)]
    {
        if labels.len() != rows {
            return Err(Error::shape(
                format!("k-NN {what} labels"),
                format!("{rows} (one per {what} row)"),
                labels.len(),
            ));
        }
    }
    if cfg.ks.is_empty() {
        return Err(Error::config("ks", "[]", "give at least one k"));
    }
    for &k in &cfg.ks {
        check_k(k, train.rows)?;
    }
    if !(cfg.temperature > 0.0 && cfg.temperature.is_finite()) {
        return Err(Error::config(
            "temperature",
            cfg.temperature,
            "must be a positive finite number",
        ));
    }
    let max_train = *train_labels.iter().max().unwrap() as usize;
    let num_classes = match cfg.num_classes {
        None => max_train + 1,
        Some(c) => {
            let max_test = test_labels.iter().max().map_or(0, |&m| m as usize);
            if max_train.max(max_test) >= c {
                let msg =
                    format!("the labels go up to {} (train) and {max_test} (test)", max_train);
                return Err(Error::config("num_classes", c, msg));
            }
            c
        }
    };

    let pool = pool(cfg.threads)?;
    let kmax = *cfg.ks.iter().max().unwrap();
    let (idx, sim) = search(train, test, kmax, cfg, &pool, progress); // [nq, kmax]

    // Votes accumulate over neighbours, so visiting the ks in increasing order scores every k
    // from one running total per query.
    let mut order: Vec<usize> = (0..cfg.ks.len()).collect();
    order.sort_by_key(|&i| cfg.ks[i]);
    let inv_t = 1.0 / cfg.temperature as f64;
    let zero = || vec![[0u64; 2]; cfg.ks.len()]; // [len(ks), (top-1 hits, top-5 hits)]
    let hits = pool.install(|| {
        (0..test.rows)
            .into_par_iter()
            .fold(
                || (vec![0f64; num_classes], zero()),
                |(mut votes, mut hits), q| {
                    votes.fill(0.0);
                    let (nb, s) = (&idx[q * kmax..(q + 1) * kmax], &sim[q * kmax..(q + 1) * kmax]);
                    let mut done = 0;
                    for &i in &order {
                        for n in done..cfg.ks[i] {
                            votes[train_labels[nb[n] as usize] as usize] += match cfg.vote {
                                Vote::Weighted => (s[n] as f64 * inv_t).exp(),
                                Vote::Majority => 1.0,
                            };
                        }
                        done = cfg.ks[i];
                        let r = rank(&votes, test_labels[q] as usize);
                        hits[i][0] += (r < 1) as u64;
                        hits[i][1] += (r < 5) as u64;
                    }
                    (votes, hits)
                },
            )
            .map(|(_, h)| h)
            .reduce(zero, |mut a, b| {
                a.iter_mut().flatten().zip(b.iter().flatten()).for_each(|(a, b)| *a += b);
                a
            })
    });

    let frac = |h: u64| h as f64 / test.rows as f64;
    Ok(KnnReport {
        scores: cfg
            .ks
            .iter()
            .zip(&hits)
            .map(|(&k, h)| KnnScore { k, top1: frac(h[0]), top5: frac(h[1]) })
            .collect(),
        n_train: train.rows,
        n_test: test.rows,
        num_classes,
        vote: cfg.vote,
        temperature: cfg.temperature,
    })
}

/// Position of class `y` when classes are sorted by vote total, highest first, lower index
/// first on ties (0 = predicted). Counting beats sorting: only "is it below 5" is asked.
fn rank(votes: &[f64], y: usize) -> usize {
    let Some(&v) = votes.get(y) else { return usize::MAX };
    votes[..y].iter().filter(|&&w| w >= v).count()
        + votes[y + 1..].iter().filter(|&&w| w > v).count()
}

fn check_inputs(train: &Matrix, test: &Matrix, cfg: &KnnConfig) -> Result<()> {
    for (what, m) in [("train", train), ("test", test)] {
        if m.rows == 0 || m.cols == 0 {
            return Err(Error::shape(
                format!("k-NN {what} features"),
                "at least one row and one column",
                format!("{} x {}", m.rows, m.cols),
            ));
        }
    }
    if test.cols != train.cols {
        return Err(Error::shape(
            "k-NN test features",
            format!("{} columns (as the train features)", train.cols),
            format!("{} columns", test.cols),
        ));
    }
    if train.rows > u32::MAX as usize {
        return Err(Error::shape(
            "k-NN train features",
            format!("at most {} rows", u32::MAX),
            train.rows,
        ));
    }
    for (field, v) in [
        ("query_chunk", cfg.query_chunk),
        ("train_chunk", cfg.train_chunk),
        ("threads", cfg.threads),
    ] {
        if v == 0 {
            return Err(Error::config(field, 0, "must be at least 1"));
        }
    }
    Ok(())
}

fn check_k(k: usize, nt: usize) -> Result<()> {
    match k {
        0 => Err(Error::config("k", 0, "must be at least 1")),
        k if k > nt => Err(Error::config("k", k, format!("larger than the {nt} training samples"))),
        _ => Ok(()),
    }
}

fn pool(threads: usize) -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|e| Error::config("threads", threads, e.to_string()))
}

/// Per-worker buffers, allocated once per worker rather than per block.
struct Scratch {
    qt: Vec<f32>,          // [d, query_chunk] the query block, transposed
    st: Vec<f32>,          // [train_chunk, query_chunk] similarities of one block, train-major
    cand: Vec<(f32, u32)>, // [query_chunk, 2 * kmax] (similarity, train index) candidates
    len: Vec<usize>,       // [query_chunk] candidates held per query
    thr: Vec<f32>,         // [query_chunk] similarity a candidate must beat; NaN at first
}

/// [`knn_neighbors`] after validation, in `pool`.
///
/// # Shapes
/// `train` [nt, d], `test` [nq, d] -> ([nq * kmax], [nq * kmax]).
fn search(
    train: &Matrix,
    test: &Matrix,
    kmax: usize,
    cfg: &KnnConfig,
    pool: &rayon::ThreadPool,
    progress: &dyn Progress,
) -> (Vec<u32>, Vec<f32>) {
    let (nq, d, qc, tc) = (test.rows, test.cols, cfg.query_chunk, cfg.train_chunk);
    let mut idx = vec![0u32; nq * kmax]; // [nq, kmax]
    let mut sim = vec![0f32; nq * kmax]; // [nq, kmax]
    progress.start("k-NN", nq as u64);
    pool.install(|| {
        idx.par_chunks_mut(qc * kmax).zip(sim.par_chunks_mut(qc * kmax)).enumerate().for_each_init(
            || Scratch {
                qt: vec![0.0; d * qc],
                st: vec![0.0; tc * qc],
                cand: vec![(0.0, 0); qc * 2 * kmax],
                len: vec![0; qc],
                thr: vec![0.0; qc],
            },
            |scr, (c, (idx, sim))| {
                let rows = idx.len() / kmax;
                let q = &test.data[c * qc * d..(c * qc + rows) * d]; // [rows, d]
                search_block(train, q, rows, tc, scr, kmax);
                for (r, (idx, sim)) in
                    idx.chunks_exact_mut(kmax).zip(sim.chunks_exact_mut(kmax)).enumerate()
                {
                    let cand = &mut scr.cand[r * 2 * kmax..][..scr.len[r]];
                    let best = keep_best(cand, kmax);
                    best.sort_unstable_by(order);
                    for ((i, s), &(v, j)) in idx.iter_mut().zip(sim.iter_mut()).zip(&*best) {
                        (*i, *s) = (j, v);
                    }
                }
                progress.advance(rows as u64);
            },
        )
    });
    progress.finish();
    (idx, sim)
}

/// Streams the train set in blocks of `tc` rows past one block of queries, collecting for each
/// query a superset of its `kmax` most similar train rows.
///
/// # Shapes
/// `train` [nt, d], `q` [rows, d]; leaves candidates `scr.cand[r * 2 * kmax..][..scr.len[r]]`.
fn search_block(train: &Matrix, q: &[f32], rows: usize, tc: usize, scr: &mut Scratch, kmax: usize) {
    let (nt, d) = (train.rows, train.cols);
    // S is computed column-major from a transposed query block: gemm then reads the queries as
    // they are, where with a row-major S it would pack the train block element by element on
    // every call (a third of the time with 128-query blocks). The GEMMs are single-threaded:
    // the parallelism is over query blocks, which keeps every similarity independent of the
    // thread count.
    let qt = &mut scr.qt[..d * rows]; // [d, rows]
    for (i, qrow) in q.chunks_exact(d).enumerate() {
        qrow.iter().enumerate().for_each(|(k, &v)| qt[k * rows + i] = v);
    }
    scr.len[..rows].fill(0);
    scr.thr[..rows].fill(f32::NAN);
    for t0 in (0..nt).step_by(tc) {
        let cols = tc.min(nt - t0);
        let t = &train.data[t0 * d..(t0 + cols) * d]; // [cols, d]
        let st = &mut scr.st[..cols * rows]; // [cols, rows] = S [rows, cols] column-major
        #[rustfmt::skip]
        unsafe {
            gemm::gemm(
                rows, cols, d,
                st.as_mut_ptr(), rows as isize, 1, false,
                qt.as_ptr(), rows as isize, 1,
                t.as_ptr(), d as isize, 1,
                0.0, 1.0, false, false, false,
                gemm::Parallelism::None,
            )
        };
        for (j, col) in st.chunks_exact(rows).enumerate() {
            offer(col, (t0 + j) as u32, &mut scr.thr[..rows], &mut scr.cand, &mut scr.len, kmax);
        }
    }
}

/// Offers train row `j`, with similarities `col` to the block's queries, to their candidate
/// lists. A list takes anything above its threshold by appending it; when it reaches `2 kmax`
/// it keeps its best `kmax` and the threshold rises to the worst of those. This costs O(1) per
/// candidate, where a sorted list or a heap would pay a search on each of the roughly
/// kmax (1 + ln(nt / kmax)) candidates a query sees.
///
/// # Shapes
/// `col` [rows], `thr` [rows], `cand` [rows, 2 kmax], `len` [rows].
#[inline]
#[allow(clippy::neg_cmp_op_on_partial_ord)] // on purpose: NaN thresholds must let all through
fn offer(
    col: &[f32],
    j: u32,
    thr: &mut [f32],
    cand: &mut [(f32, u32)],
    len: &mut [usize],
    kmax: usize,
) {
    // `!(v <= t)`: every value passes a NaN threshold. Train indices only grow, so a candidate
    // equal to the threshold loses the tie. Once the lists have warmed up few queries take a
    // given train row; a branch-free test of 16 queries at a time vectorises and keeps the scan
    // a small fraction of the GEMM.
    for (c, (vs, ts)) in col.chunks(16).zip(thr.chunks_mut(16)).enumerate() {
        if !vs.iter().zip(&*ts).fold(false, |hit, (&v, &t)| hit | !(v <= t)) {
            continue;
        }
        for (i, (&v, t)) in vs.iter().zip(ts).enumerate().map(|(i, x)| (c * 16 + i, x)) {
            if !(v <= *t) {
                let (cand, len) = (&mut cand[i * 2 * kmax..(i + 1) * 2 * kmax], &mut len[i]);
                // A NaN similarity (non-finite input) ranks last, so the list still fills;
                // `+ 0.0` turns -0 into +0, which `order` would otherwise rank below it.
                cand[*len] = (if v.is_nan() { f32::NEG_INFINITY } else { v + 0.0 }, j);
                *len += 1;
                if *len == 2 * kmax {
                    *t = keep_best(cand, kmax)[kmax - 1].0;
                    *len = kmax;
                }
            }
        }
    }
}

/// Best first: higher similarity, then lower train index.
fn order(a: &(f32, u32), b: &(f32, u32)) -> std::cmp::Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Moves the `kmax` best of `cand` to its front (unordered but for the worst of them, last)
/// and returns them.
fn keep_best(cand: &mut [(f32, u32)], kmax: usize) -> &mut [(f32, u32)] {
    if cand.len() > kmax {
        cand.select_nth_unstable_by(kmax - 1, order);
    }
    &mut cand[..kmax]
}
