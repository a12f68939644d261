//! `ensembed._ensembed`: the compiled half of the Python package. The pure-Python half
//! (`ensembed/__init__.py`) turns whatever the user passes into C-contiguous float32 arrays and
//! int64 labels and calls the functions here, which
//!
//! - borrow the arrays' memory (no copy) as a [`FeatureSet`] that normalises rows as it reads
//!   them, exactly like the CLI's memory-mapped store, so results are bit-identical to the CLI
//!   for the same data, seed and thread count;
//! - run the library on a rayon pool of the requested size on a worker thread, with the GIL
//!   released, while the calling thread draws progress and polls for Ctrl-C ([`run`]);
//! - hand results back as numpy arrays that own the library's buffers (no copy).
//!
//! Nothing here panics across the FFI boundary: the library call is wrapped in `catch_unwind`,
//! and every library error becomes a Python exception carrying the library's message.

use std::any::Any;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Mutex, Once};
use std::time::Duration;

use ensembed::artifact::{load_model_dir, load_train_representations, save_model_dir};
use ensembed::compare::{compare as lib_compare, CompareConfig};
use ensembed::config::{BankMode, BiasInit, EmbedConfig, FitConfig, FitOverrides};
use ensembed::embed::embed as lib_embed;
use ensembed::eval::knn::{evaluate_knn, KnnConfig, Vote};
use ensembed::fit::{fit as lib_fit, FitOutput};
use ensembed::matrix::normalize;
use ensembed::store::check_backbone_name;
use ensembed::{baseline, Error, FeatureSet, Matrix, Progress};
use numpy::ndarray::{Array2, ArrayView2};
use numpy::{PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::{
    PyFileExistsError, PyFileNotFoundError, PyOSError, PyPermissionError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use rayon::prelude::*;

// ---------------------------------------------------------------------------------------------
// Errors

/// A library error as the Python exception a user expects: file problems are `OSError`
/// (`FileNotFoundError`, `FileExistsError`, `PermissionError` where they apply), everything
/// else (bad values, shapes, settings, divergence) is `ValueError`. The message is the library's.
fn py_err(e: Error) -> PyErr {
    let msg = e.to_string();
    match &e {
        Error::Io { source, .. } => match source.kind() {
            std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
            std::io::ErrorKind::AlreadyExists => PyFileExistsError::new_err(msg),
            std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(msg),
            _ => PyOSError::new_err(msg),
        },
        _ => PyValueError::new_err(msg),
    }
}

fn value_err(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}

// ---------------------------------------------------------------------------------------------
// Features borrowed from numpy

/// Backbone features borrowed from numpy arrays (`[n, d_j]` f32, C-contiguous), normalised row
/// by row as they are read. The same arithmetic as [`ensembed::store::Store::gather_normalized`]
/// (copy the row, then [`normalize`]), so fit and embed see the values the CLI sees.
struct Features<'a> {
    names: Vec<String>,
    /// `(data, d)`: `data` is `[n, d]` row-major.
    mats: Vec<(&'a [f32], usize)>,
    n: usize,
}

impl FeatureSet for Features<'_> {
    fn len(&self) -> usize {
        self.n
    }
    fn names(&self) -> Vec<String> {
        self.names.clone()
    }
    fn dims(&self) -> Vec<usize> {
        self.mats.iter().map(|m| m.1).collect()
    }
    fn gather_normalized(&self, j: usize, idx: &[usize], out: &mut [f32]) {
        let (data, d) = self.mats[j];
        assert_eq!(out.len(), idx.len() * d, "gather_normalized: output length vs idx.len() * dim");
        out.par_chunks_mut(d).zip(idx.par_iter()).with_min_len(64).for_each(|(o, &i)| {
            o.copy_from_slice(&data[i * d..(i + 1) * d]);
            normalize(o);
        });
    }
}

/// `[n, d]` f32 slice of one array, checked for layout.
fn matrix_slice<'a>(a: &'a PyReadonlyArray2<'_, f32>, what: &str) -> PyResult<(&'a [f32], usize, usize)> {
    let (n, d) = (a.shape()[0], a.shape()[1]);
    if n == 0 || d == 0 {
        return Err(value_err(format!("{what}: expected a non-empty [n, d] array, got shape ({n}, {d})")));
    }
    if !a.is_aligned() {
        return Err(value_err(format!("{what}: the array's memory is not aligned for float32")));
    }
    let s = a
        .as_slice()
        .map_err(|_| value_err(format!("{what}: expected a C-contiguous array (use np.ascontiguousarray)")))?;
    Ok((s, n, d))
}

/// The arrays `arrs` (argument `arg`) as one feature set named `names`: at least one backbone,
/// one name per backbone, valid unique names, the same number of rows everywhere.
fn borrow_features<'a>(arrs: &'a [PyReadonlyArray2<'_, f32>], names: Vec<String>, arg: &str) -> PyResult<Features<'a>> {
    if arrs.is_empty() {
        return Err(value_err(format!("{arg}: at least one backbone (one [n, d] array) is needed")));
    }
    if names.len() != arrs.len() {
        return Err(value_err(format!("{arg}: {} arrays but {} names", arrs.len(), names.len())));
    }
    for (j, name) in names.iter().enumerate() {
        check_backbone_name(name).map_err(|e| value_err(format!("{arg}[{j}]: {e}")))?;
        if names[..j].contains(name) {
            return Err(value_err(format!("{arg}: backbone name `{name}` appears twice")));
        }
    }
    let mut mats = Vec::with_capacity(arrs.len());
    let mut n = 0;
    for (j, a) in arrs.iter().enumerate() {
        let (s, rows, d) = matrix_slice(a, &format!("{arg}[{j}] (`{}`)", names[j]))?;
        if j == 0 {
            n = rows;
        } else if rows != n {
            return Err(value_err(format!(
                "{arg}: every backbone needs the same number of rows: {arg}[0] (`{}`) has {n}, {arg}[{j}] (`{}`) has {rows}",
                names[0], names[j]
            )));
        }
        mats.push((s, d));
    }
    Ok(Features { names, mats, n })
}

/// Scans every value, as `Store::validate_values` does before the CLI fits or embeds: a NaN or
/// infinity, or a row of zeros (no direction, so no cosine), is an error naming the argument,
/// the backbone, the row and the column.
fn check_values(f: &Features<'_>, arg: &str) -> ensembed::Result<()> {
    for (j, &(data, d)) in f.mats.iter().enumerate() {
        let bad = data
            .par_chunks(d)
            .with_min_len(256)
            .position_first(|r| r.iter().any(|v| !v.is_finite()) || r.iter().all(|&v| v == 0.0));
        if let Some(row) = bad {
            let r = &data[row * d..(row + 1) * d];
            let (path, what) = (PathBuf::from(format!("{arg}[{j}]")), format!("backbone `{}`", f.names[j]));
            return Err(match r.iter().position(|v| !v.is_finite()) {
                Some(col) => Error::NonFinite { path, what, row, col, value: r[col] },
                None => Error::ZeroRow { path, what, row },
            });
        }
    }
    Ok(())
}

/// A copy of `a` with unit rows (k-NN needs them; the caller's array is left alone).
fn normalized_copy(s: &[f32], n: usize, d: usize, what: &str) -> ensembed::Result<Matrix> {
    if let Some(k) = s.par_iter().position_first(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            path: what.into(),
            what: "features".into(),
            row: k / d,
            col: k % d,
            value: s[k],
        });
    }
    let mut m = Matrix::from_vec(n, d, s.to_vec())?;
    m.data.par_chunks_mut(d).with_min_len(64).for_each(|r| {
        normalize(r);
    });
    Ok(m)
}

/// Class labels (int64, `[n]`) as the library's `u32`, each checked to be a class index.
fn labels(a: &PyReadonlyArray1<'_, i64>, what: &str) -> PyResult<Vec<u32>> {
    let s = a.as_slice().map_err(|_| value_err(format!("{what}: expected a contiguous 1-D array")))?;
    s.iter()
        .enumerate()
        .map(|(i, &v)| {
            u32::try_from(v).map_err(|_| {
                value_err(format!("{what}: label {v} at index {i} is not a class index (0 <= label < 2**32)"))
            })
        })
        .collect()
}

/// An owned `[rows, cols]` matrix handed to numpy without a copy.
fn to_numpy(py: Python<'_>, m: Matrix) -> PyResult<Bound<'_, PyArray2<f32>>> {
    let a = Array2::from_shape_vec((m.rows, m.cols), m.data).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    Ok(PyArray2::from_owned_array(py, a))
}

// ---------------------------------------------------------------------------------------------
// Settings

fn parse_bank(s: &str) -> PyResult<BankMode> {
    match s.to_ascii_lowercase().as_str() {
        "dense" => Ok(BankMode::Dense),
        "lazy" => Ok(BankMode::Lazy),
        _ => Err(value_err(format!("bank: expected 'dense' or 'lazy', got {s:?}"))),
    }
}

fn parse_bias(s: &str) -> PyResult<BiasInit> {
    match s.to_ascii_lowercase().as_str() {
        "torch" => Ok(BiasInit::Torch),
        "zero" => Ok(BiasInit::Zero),
        _ => Err(value_err(format!("last_bias: expected 'torch' or 'zero', got {s:?}"))),
    }
}

fn parse_vote(s: &str) -> PyResult<Vote> {
    match s.to_ascii_lowercase().as_str() {
        "weighted" => Ok(Vote::Weighted),
        "majority" => Ok(Vote::Majority),
        _ => Err(value_err(format!("vote: expected 'weighted' or 'majority', got {s:?}"))),
    }
}

/// Training settings given from Python; `None` keeps the base (METHOD.md's default, or a
/// transferred model's setting), as the CLI's `FitArgs::resolve_from` does.
#[derive(Default)]
struct FitArgs {
    epochs: Option<usize>,
    batch: Option<usize>,
    lr: Option<f32>,
    lr_bank: Option<f32>,
    weight_decay: Option<f32>,
    depth: Option<usize>,
    hidden: Option<usize>,
    dim: Option<usize>,
    bank: Option<String>,
    warmup: Option<usize>,
    final_relu: Option<bool>,
    last_bias: Option<String>,
    seed: Option<u64>,
}

impl FitArgs {
    fn resolve(&self, base: &FitConfig) -> PyResult<FitConfig> {
        let overrides = FitOverrides {
            epochs: self.epochs,
            batch: self.batch,
            lr: self.lr,
            lr_bank: self.lr_bank,
            weight_decay: self.weight_decay,
            depth: self.depth,
            hidden: self.hidden,
            dim: self.dim,
            bank: self.bank.as_deref().map(parse_bank).transpose()?,
            warmup: self.warmup,
            final_relu: self.final_relu,
            last_bias: self.last_bias.as_deref().map(parse_bias).transpose()?,
            seed: self.seed,
            // Not a Python keyword yet: the non-negative variant is a diagnostic of the CLI's report.
            nonneg: None,
        };
        overrides.apply(base).map_err(py_err)
    }
}

fn knn_config(ks: Vec<usize>, t: f32, vote: &str) -> PyResult<KnnConfig> {
    if ks.is_empty() {
        return Err(value_err("k: give at least one k"));
    }
    // `threads` is filled in on the worker pool (the library's default reads the pool size).
    Ok(KnnConfig { ks, temperature: t, vote: parse_vote(vote)?, ..KnnConfig::default() })
}

// ---------------------------------------------------------------------------------------------
// Running a long call: GIL released, progress, Ctrl-C

/// The panic payload that unwinds a library call the user interrupted. The library has no
/// cancellation hook, so [`Reporter::advance`] panics with this once cancellation is requested;
/// [`run`] catches it (the call's buffers are all owned by the call and simply dropped) and
/// raises the `KeyboardInterrupt` (or the progress callback's exception) instead.
struct Cancelled;

/// Keeps the default panic hook from printing a message for [`Cancelled`].
fn install_panic_filter() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if !info.payload().is::<Cancelled>() {
                previous(info)
            }
        }));
    });
}

#[derive(Default)]
struct StageInfo {
    id: u64,
    label: String,
    total: u64,
    message: String,
    active: bool,
}

/// What the library reports, written by the worker threads and read by the waiting thread.
/// `advance` is lock-free (it runs once per optimiser step or k-NN block).
#[derive(Default)]
struct Reporter {
    done: AtomicU64,
    cancel: AtomicBool,
    stage: Mutex<StageInfo>,
    /// Stages finished since the waiting thread last looked: (label, total, last message).
    finished: Mutex<Vec<(String, u64, String)>>,
}

impl Reporter {
    fn check_cancel(&self) {
        if self.cancel.load(Ordering::Relaxed) {
            panic::panic_any(Cancelled);
        }
    }
}

impl Progress for Reporter {
    fn start(&self, label: &str, total: u64) {
        self.check_cancel();
        let mut s = self.stage.lock().unwrap();
        self.done.store(0, Ordering::Relaxed);
        *s = StageInfo { id: s.id + 1, label: label.to_string(), total, message: String::new(), active: true };
    }
    fn advance(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
        self.check_cancel();
    }
    fn message(&self, msg: &str) {
        self.stage.lock().unwrap().message = msg.to_string();
    }
    fn finish(&self) {
        let mut s = self.stage.lock().unwrap();
        if s.active {
            s.active = false;
            self.finished.lock().unwrap().push((s.label.clone(), s.total, s.message.clone()));
        }
    }
}

/// How progress is shown.
enum Display {
    Off,
    /// A one-line text bar on `sys.stderr` (works in terminals and notebooks).
    Bar,
    /// `callback(stage: str, done: int, total: int, message: str)`.
    Callback(Py<PyAny>),
}

impl Display {
    fn from_arg(p: &Bound<'_, PyAny>) -> PyResult<Display> {
        if p.is_none() {
            return Ok(Display::Off);
        }
        if let Ok(b) = p.cast::<pyo3::types::PyBool>() {
            return Ok(if b.is_true() { Display::Bar } else { Display::Off });
        }
        if p.is_callable() {
            return Ok(Display::Callback(p.clone().unbind()));
        }
        Err(PyTypeError::new_err(format!(
            "progress: expected True, False or a callable(stage, done, total, message), got {}",
            p.get_type().name()?
        )))
    }
}

/// Draws [`Reporter`]'s state on the waiting thread, only when it changed.
struct Painter {
    display: Display,
    /// (stage id, done, message) last drawn.
    last: Option<(u64, u64, String)>,
    /// Width of the bar line last drawn, to blank a longer one; 0 when no line is open.
    open: usize,
}

impl Painter {
    fn new(display: Display) -> Self {
        Painter { display, last: None, open: 0 }
    }

    fn draw(&mut self, py: Python<'_>, label: &str, done: u64, total: u64, msg: &str, end: bool) -> PyResult<()> {
        match &self.display {
            Display::Off => Ok(()),
            Display::Callback(cb) => cb.bind(py).call1((label, done, total, msg)).map(drop),
            Display::Bar => {
                const W: usize = 30;
                let fill =
                    if total == 0 { W } else { ((done.min(total) as u128 * W as u128) / total as u128) as usize };
                let bar: String = (0..W)
                    .map(|i| {
                        if i < fill {
                            '='
                        } else if i == fill {
                            '>'
                        } else {
                            ' '
                        }
                    })
                    .collect();
                let mut line = format!("{label:>8} [{bar}] {done}/{total} {msg}");
                let width = line.chars().count();
                line.extend(std::iter::repeat_n(' ', self.open.saturating_sub(width)));
                let text = format!("\r{line}{}", if end { "\n" } else { "" });
                self.open = if end { 0 } else { width };
                let err = py.import("sys")?.getattr("stderr")?;
                if !err.is_none() {
                    err.call_method1("write", (text,))?;
                    err.call_method0("flush")?;
                }
                Ok(())
            }
        }
    }

    /// Draws the stages finished since the last call, then the running one.
    fn tick(&mut self, py: Python<'_>, r: &Reporter) -> PyResult<()> {
        if matches!(self.display, Display::Off) {
            return Ok(());
        }
        let finished = std::mem::take(&mut *r.finished.lock().unwrap());
        for (label, total, msg) in finished {
            self.draw(py, &label, total, total, &msg, true)?;
        }
        let (id, label, total, msg, active) = {
            let s = r.stage.lock().unwrap();
            (s.id, s.label.clone(), s.total, s.message.clone(), s.active)
        };
        if active {
            let done = r.done.load(Ordering::Relaxed).min(total);
            let now = (id, done, msg);
            if self.last.as_ref() != Some(&now) {
                self.draw(py, &label, done, total, &now.2, false)?;
                self.last = Some(now);
            }
        }
        Ok(())
    }

    /// Ends an unfinished bar line (the call failed or was interrupted mid-stage).
    fn close(&mut self, py: Python<'_>) {
        if self.open > 0 {
            if let Ok(err) = py.import("sys").and_then(|s| s.getattr("stderr")) {
                let _ = err.call_method1("write", ("\n",));
            }
            self.open = 0;
        }
    }
}

fn panic_message(p: &(dyn Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs `work` on a rayon pool of `threads` workers (`None`: `RAYON_NUM_THREADS`, else every
/// core) with the GIL released. Meanwhile the calling thread wakes every 100 ms to draw progress
/// and to run Python's signal handlers: a `KeyboardInterrupt` (or an exception from the progress
/// callback) asks the worker to stop at its next progress report, and is raised once it has.
fn run<T: Send>(
    py: Python<'_>,
    threads: Option<usize>,
    progress: Display,
    work: impl FnOnce(&dyn Progress) -> ensembed::Result<T> + Send,
) -> PyResult<T> {
    install_panic_filter();
    if threads == Some(0) {
        return Err(value_err("threads: must be at least 1"));
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.unwrap_or(0))
        .thread_name(|i| format!("ensembed-{i}"))
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the worker threads: {e}")))?;
    let reporter = Reporter::default();
    let mut painter = Painter::new(progress);
    let (outcome, pending) = py.detach(|| {
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            let (reporter, pool) = (&reporter, &pool);
            s.spawn(move || {
                let r = pool.install(|| panic::catch_unwind(AssertUnwindSafe(|| work(reporter))));
                let _ = tx.send(r);
            });
            let mut pending: Option<PyErr> = None;
            loop {
                match rx.recv_timeout(Duration::from_millis(100)) {
                    Ok(r) => {
                        Python::attach(|py| {
                            if pending.is_none() {
                                if let Err(e) = painter.tick(py, reporter) {
                                    pending = Some(e);
                                }
                            }
                            painter.close(py);
                        });
                        return (Some(r), pending);
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if pending.is_some() {
                            continue;
                        }
                        Python::attach(|py| {
                            if let Err(e) = py.check_signals().and_then(|_| painter.tick(py, reporter)) {
                                pending = Some(e);
                                reporter.cancel.store(true, Ordering::Relaxed);
                            }
                        });
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => return (None, pending),
                }
            }
        })
    });
    if let Some(e) = pending {
        return Err(e);
    }
    match outcome {
        Some(Ok(Ok(v))) => Ok(v),
        Some(Ok(Err(e))) => Err(py_err(e)),
        Some(Err(p)) => Err(PyRuntimeError::new_err(format!(
            "internal error in ensembed (please report it): {}",
            panic_message(&*p)
        ))),
        None => Err(PyRuntimeError::new_err("internal error in ensembed: the worker thread stopped without a result")),
    }
}

// ---------------------------------------------------------------------------------------------
// The model

/// A fitted model: the MLPs, the training representations and how they were made. Holds what
/// `ensembed fit` writes to a model directory.
#[pyclass(frozen, module = "ensembed._ensembed", name = "RawModel")]
struct RawModel {
    out: FitOutput,
    cfg: FitConfig,
    /// Where the training features came from (for `fit.json`).
    train: Option<String>,
    /// Worker threads of the fit (recorded in `fit.json`).
    threads: usize,
}

#[pymethods]
impl RawModel {
    /// Learned training representations, a read-only float32 view `[n, dim]` of the model's
    /// own buffer (no copy; it keeps the model alive).
    fn train_representations<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let m = &slf.get().out.representations;
        let view =
            ArrayView2::from_shape((m.rows, m.cols), &m.data).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        // SAFETY: the buffer belongs to this frozen object, is never mutated or reallocated,
        // and the array holds a reference to the object (its base) for as long as it lives.
        let a = unsafe { PyArray2::borrow_from_array(&view, slf.clone().into_any()) };
        a.getattr("flags")?.setattr("writeable", false)?;
        Ok(a)
    }

    /// `fit.json`'s content as a JSON string: config, spec, history, n, threads, train.
    fn record_json(&self) -> String {
        // Each part is serialised from its own type (not through `serde_json::Value`), so f32
        // settings print as in `fit.json` (0.0003, not 0.0003000000142492354).
        use serde_json::to_string as s;
        format!(
            "{{\"config\":{},\"spec\":{},\"history\":{},\"n\":{},\"threads\":{},\"train\":{}}}",
            s(&self.cfg).expect("config serialises"),
            s(&self.out.model.spec).expect("spec serialises"),
            s(&self.out.history).expect("history serialises"),
            self.out.representations.rows,
            self.threads,
            s(&self.train).expect("a string serialises"),
        )
    }

    /// Backbone names in the model's order.
    fn names(&self) -> Vec<String> {
        self.out.model.spec.backbones.iter().map(|b| b.name.clone()).collect()
    }

    /// Representations of new samples through the frozen MLPs. `feats`: the model's backbones,
    /// in its order, `[n, d_j]` float32 C-contiguous. Returns `[n, dim]` float32.
    #[pyo3(signature = (feats, *, epochs=None, lr=None, bank=None, batch=None, threads=None, progress=None))]
    #[allow(clippy::too_many_arguments)]
    fn embed<'py>(
        &self,
        py: Python<'py>,
        feats: Vec<PyReadonlyArray2<'py, f32>>,
        epochs: Option<usize>,
        lr: Option<f32>,
        bank: Option<String>,
        batch: Option<usize>,
        threads: Option<usize>,
        progress: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let mut cfg = EmbedConfig::from_fit(&self.cfg);
        cfg.epochs = epochs.unwrap_or(cfg.epochs);
        cfg.lr = lr.unwrap_or(cfg.lr);
        cfg.batch = batch.unwrap_or(cfg.batch);
        if let Some(b) = bank {
            cfg.bank = parse_bank(&b)?;
        }
        cfg.validate().map_err(py_err)?;
        let f = borrow_features(&feats, self.names(), "feats")?;
        let model = &self.out.model;
        let display = display(progress)?;
        let out = run(py, threads, display, |p| {
            check_values(&f, "feats")?;
            lib_embed(model, &f, &cfg, p)
        })?;
        to_numpy(py, out.representations)
    }

    /// Writes the model directory `path` as `ensembed fit --out path` does.
    #[pyo3(signature = (path, overwrite=false))]
    fn save(&self, py: Python<'_>, path: PathBuf, overwrite: bool) -> PyResult<()> {
        // `fit.json` records the thread count of the running pool: save on one of the fit's size.
        run(py, Some(self.threads.max(1)), Display::Off, |_| {
            save_model_dir(&path, &self.out, &self.cfg, self.train.as_deref(), overwrite)
        })
    }

    /// Reads a model directory written by `ensembed fit` or `Model.save`.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<RawModel> {
        run(py, Some(1), Display::Off, |_| {
            let (model, record) = load_model_dir(&path)?;
            let repr = load_train_representations(&path)?;
            if repr.cols != model.spec.dim || repr.rows != record.n {
                return Err(Error::shape(
                    format!("training representations in {}", path.display()),
                    format!("[{}, {}]", record.n, model.spec.dim),
                    format!("[{}, {}]", repr.rows, repr.cols),
                ));
            }
            Ok(RawModel {
                out: FitOutput { model, representations: repr, history: record.history },
                cfg: record.config,
                train: record.train,
                threads: record.threads,
            })
        })
    }
}

fn display(progress: Option<Bound<'_, PyAny>>) -> PyResult<Display> {
    match progress {
        None => Ok(Display::Off),
        Some(p) => Display::from_arg(&p),
    }
}

// ---------------------------------------------------------------------------------------------
// Module functions

/// Fits the MLPs and the training representations (`ensembed fit`). `feats`: `[n, d_j]`
/// float32 C-contiguous arrays, one per backbone, named `names`. `None` settings take
/// METHOD.md's defaults.
#[pyfunction]
#[pyo3(signature = (feats, names, *, epochs=None, batch=None, lr=None, bank=None, depth=None, seed=None,
    warmup=None, lr_bank=None, weight_decay=None, dim=None, hidden=None, final_relu=None, last_bias=None,
    source=None, threads=None, progress=None))]
#[allow(clippy::too_many_arguments)]
fn fit<'py>(
    py: Python<'py>,
    feats: Vec<PyReadonlyArray2<'py, f32>>,
    names: Vec<String>,
    epochs: Option<usize>,
    batch: Option<usize>,
    lr: Option<f32>,
    bank: Option<String>,
    depth: Option<usize>,
    seed: Option<u64>,
    warmup: Option<usize>,
    lr_bank: Option<f32>,
    weight_decay: Option<f32>,
    dim: Option<usize>,
    hidden: Option<usize>,
    final_relu: Option<bool>,
    last_bias: Option<String>,
    source: Option<String>,
    threads: Option<usize>,
    progress: Option<Bound<'py, PyAny>>,
) -> PyResult<RawModel> {
    let args = FitArgs {
        epochs,
        batch,
        lr,
        lr_bank,
        weight_decay,
        depth,
        hidden,
        dim,
        bank,
        warmup,
        final_relu,
        last_bias,
        seed,
    };
    let cfg = args.resolve(&FitConfig::default())?;
    let f = borrow_features(&feats, names, "feats")?;
    let display = display(progress)?;
    let (out, used) = run(py, threads, display, |p| {
        check_values(&f, "feats")?;
        Ok((lib_fit(&f, &cfg, p)?, rayon::current_num_threads()))
    })?;
    Ok(RawModel { out, cfg, train: source, threads: used })
}

/// k-NN accuracy (`ensembed knn`); rows are L2-normalised here (on a copy). Returns the
/// library's report as a JSON string.
#[pyfunction]
#[pyo3(signature = (train, train_labels, test, test_labels, *, ks, t, vote, threads=None, progress=None))]
#[allow(clippy::too_many_arguments)]
fn knn<'py>(
    py: Python<'py>,
    train: PyReadonlyArray2<'py, f32>,
    train_labels: PyReadonlyArray1<'py, i64>,
    test: PyReadonlyArray2<'py, f32>,
    test_labels: PyReadonlyArray1<'py, i64>,
    ks: Vec<usize>,
    t: f32,
    vote: &str,
    threads: Option<usize>,
    progress: Option<Bound<'py, PyAny>>,
) -> PyResult<String> {
    let base = knn_config(ks, t, vote)?;
    let (tr, ntr, dtr) = matrix_slice(&train, "train")?;
    let (te, nte, dte) = matrix_slice(&test, "test")?;
    if dtr != dte {
        return Err(value_err(format!("test: {dte} columns, but train has {dtr}")));
    }
    let (ytr, yte) = (labels(&train_labels, "train_labels")?, labels(&test_labels, "test_labels")?);
    for (what, y, n, x) in [("train_labels", &ytr, ntr, "train"), ("test_labels", &yte, nte, "test")] {
        if y.len() != n {
            return Err(value_err(format!("{what}: {} labels, but {x} has {n} rows", y.len())));
        }
    }
    let display = display(progress)?;
    let report = run(py, threads, display, |p| {
        let cfg = KnnConfig { threads: rayon::current_num_threads(), ..base };
        let a = normalized_copy(tr, ntr, dtr, "train")?;
        let b = normalized_copy(te, nte, dte, "test")?;
        evaluate_knn(&a, &ytr, &b, &yte, &cfg, p)
    })?;
    Ok(serde_json::to_string(&report).expect("report serialises"))
}

/// The whole comparison (`ensembed compare --json`): every backbone, the average, the
/// concatenation and the learned representations, scored by k-NN. With `model`, its MLPs are
/// used as they are and its training settings are the base of the `None` ones. Returns
/// `Comparison::to_json` as a JSON string.
#[pyfunction]
#[pyo3(signature = (train_feats, train_labels, test_feats, test_labels, names, *, ks, t, vote, model=None,
    epochs=None, batch=None, lr=None, bank=None, depth=None, seed=None, warmup=None, lr_bank=None,
    weight_decay=None, dim=None, hidden=None, final_relu=None, last_bias=None, threads=None, progress=None))]
#[allow(clippy::too_many_arguments)]
fn compare<'py>(
    py: Python<'py>,
    train_feats: Vec<PyReadonlyArray2<'py, f32>>,
    train_labels: PyReadonlyArray1<'py, i64>,
    test_feats: Vec<PyReadonlyArray2<'py, f32>>,
    test_labels: PyReadonlyArray1<'py, i64>,
    names: Vec<String>,
    ks: Vec<usize>,
    t: f32,
    vote: &str,
    model: Option<Bound<'py, RawModel>>,
    epochs: Option<usize>,
    batch: Option<usize>,
    lr: Option<f32>,
    bank: Option<String>,
    depth: Option<usize>,
    seed: Option<u64>,
    warmup: Option<usize>,
    lr_bank: Option<f32>,
    weight_decay: Option<f32>,
    dim: Option<usize>,
    hidden: Option<usize>,
    final_relu: Option<bool>,
    last_bias: Option<String>,
    threads: Option<usize>,
    progress: Option<Bound<'py, PyAny>>,
) -> PyResult<String> {
    let knn = knn_config(ks, t, vote)?;
    let args = FitArgs {
        epochs,
        batch,
        lr,
        lr_bank,
        weight_decay,
        depth,
        hidden,
        dim,
        bank,
        warmup,
        final_relu,
        last_bias,
        seed,
    };
    let m = model.as_ref().map(|m| m.get());
    let fit_cfg = args.resolve(m.map_or(&FitConfig::default(), |m| &m.cfg))?;
    let train = borrow_features(&train_feats, names.clone(), "train_feats")?;
    let test = borrow_features(&test_feats, names, "test_feats")?;
    let (ytr, yte) = (labels(&train_labels, "train_labels")?, labels(&test_labels, "test_labels")?);
    for (what, y, n, x) in [("train_labels", &ytr, train.n, "train_feats"), ("test_labels", &yte, test.n, "test_feats")]
    {
        if y.len() != n {
            return Err(value_err(format!("{what}: {} labels, but {x} has {n} rows", y.len())));
        }
    }
    let lib_model = m.map(|m| &m.out.model);
    let display = display(progress)?;
    let result = run(py, threads, display, |p| {
        check_values(&train, "train_feats")?;
        check_values(&test, "test_feats")?;
        // Built on the pool, as the CLI builds it on its global pool: `knn.threads` is the
        // pool's size and is part of the JSON.
        let cfg = CompareConfig {
            fit: fit_cfg,
            knn: KnnConfig { threads: rayon::current_num_threads(), ..knn },
            ..CompareConfig::default()
        };
        lib_compare(&train, &ytr, &test, &yte, lib_model, &cfg, p)
    })?;
    Ok(serde_json::to_string(&result.to_json()).expect("comparison serialises"))
}

/// The average baseline `normalise(sum_j z_j)` (equal widths). `[n, d]` float32.
#[pyfunction]
#[pyo3(signature = (feats, names, *, threads=None))]
fn average<'py>(
    py: Python<'py>,
    feats: Vec<PyReadonlyArray2<'py, f32>>,
    names: Vec<String>,
    threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let f = borrow_features(&feats, names, "feats")?;
    let m = run(py, threads, Display::Off, |_| baseline::average(&f))?;
    to_numpy(py, m)
}

/// The concatenation baseline `normalise([z_1; ...; z_m])`. `[n, sum_j d_j]` float32.
#[pyfunction]
#[pyo3(signature = (feats, names, *, threads=None))]
fn concat<'py>(
    py: Python<'py>,
    feats: Vec<PyReadonlyArray2<'py, f32>>,
    names: Vec<String>,
    threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let f = borrow_features(&feats, names, "feats")?;
    let m = run(py, threads, Display::Off, |_| Ok(baseline::concat(&f)))?;
    to_numpy(py, m)
}

#[pymodule]
fn _ensembed(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<RawModel>()?;
    m.add_function(wrap_pyfunction!(fit, m)?)?;
    m.add_function(wrap_pyfunction!(knn, m)?)?;
    m.add_function(wrap_pyfunction!(compare, m)?)?;
    m.add_function(wrap_pyfunction!(average, m)?)?;
    m.add_function(wrap_pyfunction!(concat, m)?)?;
    Ok(())
}
