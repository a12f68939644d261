//! How much memory a fit needs, and how much the process actually used. A fit keeps only the
//! representations, their optimiser state, the MLPs and a per-step workspace the size of one
//! batch; the features stay in the memory-mapped store and are read a batch of rows at a time.
//! [`fit_memory`] computes that bound from the config and the store's shape, and
//! [`process_memory`] reads the peak resident set size from Linux's `/proc/self/status`, so
//! that `ensembed fit` and the benchmarks can print the two side by side.
//!
//! Pages of the mapped store that a fit has touched count in the resident set too (as
//! file-backed pages the kernel may drop and re-read at will), so the honest comparison is peak
//! RSS against the bound plus the mapped store's size; `RssFile` says how much of the resident
//! set is file-backed at the time of reading.

use std::fmt;

use crate::config::FitConfig;
use crate::fit::model_spec;
use crate::store::Store;

/// Rows per block when the average initialisation is computed (`baseline::average_rows`).
const INIT_BLOCK: usize = 4096;

/// Allowance for what every process holds whatever the data: the program and its libraries,
/// thread stacks, the `gemm` crate's packing buffers, allocator slack.
pub const RUNTIME_ALLOWANCE: u64 = 64 << 20;

/// The memory a fit needs beyond the memory-mapped features, in bytes, by part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FitMemory {
    /// The learned representations: n x dim f32.
    pub bank: u64,
    /// Their Adam moments (2 n dim f32) and per-row step bookkeeping.
    pub bank_state: u64,
    /// The shuffled sample order, and its copy while a checkpoint is written.
    pub order: u64,
    /// Every MLP's parameters, gradients and two Adam moments (4 f32 per parameter).
    pub mlps: u64,
    /// Scratch of one step: activations, gathered targets and transposes, O(batch x widths).
    pub step: u64,
    /// Scratch of the initialisation, before the first step: one block of the average, or for
    /// backbones of different widths the concatenation and its projection (an estimate).
    pub init: u64,
    /// [`RUNTIME_ALLOWANCE`].
    pub runtime: u64,
}

impl FitMemory {
    /// The bound: everything held for the whole fit plus the larger of the two scratches (the
    /// initialisation's is freed before the first step).
    pub fn total(&self) -> u64 {
        self.bank + self.bank_state + self.order + self.mlps + self.step.max(self.init) + self.runtime
    }
}

impl fmt::Display for FitMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = bank {} + its Adam state {} + MLPs with gradients and Adam state {} + per-step {} + order {} + runtime {}",
            Bytes(self.total()),
            Bytes(self.bank),
            Bytes(self.bank_state),
            Bytes(self.mlps),
            Bytes(self.step.max(self.init)),
            Bytes(self.order),
            Bytes(self.runtime)
        )
    }
}

/// The memory [`crate::fit::fit`] needs for `n` samples of backbones of widths `dims` under
/// `cfg`, beyond the features themselves.
pub fn fit_memory(n: usize, dims: &[usize], cfg: &FitConfig) -> FitMemory {
    let names = vec![String::new(); dims.len()];
    let spec = model_spec(&names, dims, cfg);
    let f = 4u64;
    let (n64, d) = (n as u64, spec.dim as u64);
    let cap = cfg.batch.min(n.max(1)) as u64;
    let mut params = 0u64;
    let mut step = 0u64;
    for j in 0..dims.len() {
        let w: Vec<u64> = spec.widths(j).iter().map(|&x| x as u64).collect();
        params += w.windows(2).map(|p| p[0] * p[1] + p[1]).sum::<u64>();
        // The tape: every layer's output, two ping-pong gradient buffers of the widest layer.
        step += cap * w[1..].iter().sum::<u64>() + 2 * cap * w.iter().max().copied().unwrap_or(0);
    }
    let widest = dims.iter().copied().max().unwrap_or(0) as u64;
    let total_width: u64 = dims.iter().map(|&x| x as u64).sum();
    // Gathered rows, their transposes per backbone, and the batch's input and input gradient
    // in both layouts.
    step += cap * widest + cap * total_width + 4 * cap * d;
    let init = if spec.uses_average_init() {
        INIT_BLOCK.min(n.max(1)) as u64 * d
    } else {
        // The concatenation, its centred copy in the projection, and the PCA's D x D products.
        2 * n64 * total_width + 4 * total_width * total_width.max(d)
    };
    // Lazy: a u32 step count per row; dense: the u64 step each row is current at.
    let per_row = match cfg.bank {
        crate::config::BankMode::Lazy => 4,
        crate::config::BankMode::Dense => 8,
    };
    FitMemory {
        bank: n64 * d * f,
        bank_state: 2 * n64 * d * f + n64 * per_row,
        order: 2 * n64 * 8,
        mlps: 4 * params * f,
        step: step * f,
        init: init * f,
        runtime: RUNTIME_ALLOWANCE,
    }
}

/// Bytes of the feature tensors a store maps (what its touched pages can add to RSS).
pub fn store_feature_bytes(store: &Store) -> u64 {
    store.backbones().iter().map(|b| store.len() as u64 * b.dim as u64 * b.dtype.size() as u64).sum()
}

/// The process's memory as the kernel counts it, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessMemory {
    /// Peak resident set size since start or the last [`reset_peak_rss`] (`VmHWM`).
    pub peak_rss: u64,
    /// Resident set size now (`VmRSS`).
    pub rss: u64,
    /// Of it, anonymous memory: the heap (`RssAnon`).
    pub rss_anon: u64,
    /// Of it, file-backed pages: mapped stores, the program's code (`RssFile`).
    pub rss_file: u64,
}

/// This process's memory, from `/proc/self/status`; `None` where that does not exist (not
/// Linux) or cannot be read.
pub fn process_memory() -> Option<ProcessMemory> {
    parse_status(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// Parses the memory lines of a Linux `/proc/PID/status` text (values in kB).
pub fn parse_status(text: &str) -> Option<ProcessMemory> {
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name) && l[name.len()..].starts_with(':'))?;
        let kb: u64 = line[name.len() + 1..].trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kb * 1024)
    };
    Some(ProcessMemory {
        peak_rss: field("VmHWM")?,
        rss: field("VmRSS")?,
        rss_anon: field("RssAnon")?,
        rss_file: field("RssFile")?,
    })
}

/// Resets the peak RSS to the current RSS (Linux 4.0+, `/proc/self/clear_refs`), so that a
/// measurement covers only what follows. Returns whether it worked.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", b"5").is_ok()
}

/// One line for people: peak RSS against the bound plus the mapped features, or a note that
/// this platform does not say.
pub fn report(bound: &FitMemory, mapped: u64, mapped_what: &str, now: Option<ProcessMemory>) -> String {
    let limit = bound.total() + mapped;
    match now {
        None => format!("memory: bound {bound}, plus {} of {mapped_what} (peak RSS not available on this platform)", Bytes(mapped)),
        Some(m) => format!(
            "memory: peak RSS {} = {:.2} x (the bound {} + {} of {mapped_what} = {}), {} (RSS now {}: {} anonymous, {} file-backed); bound {bound}",
            Bytes(m.peak_rss),
            m.peak_rss as f64 / limit as f64,
            Bytes(bound.total()),
            Bytes(mapped),
            Bytes(limit),
            if m.peak_rss <= limit { "within it" } else { "above it" },
            Bytes(m.rss),
            Bytes(m.rss_anon),
            Bytes(m.rss_file),
        ),
    }
}

/// A byte count in the largest binary unit that keeps it above 1.
#[derive(Clone, Copy, Debug)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        match self.0 {
            x if x >= 1 << 30 => write!(f, "{:.2} GiB", b / (1u64 << 30) as f64),
            x if x >= 1 << 20 => write!(f, "{:.1} MiB", b / (1u64 << 20) as f64),
            x if x >= 1 << 10 => write!(f, "{:.1} KiB", b / 1024.0),
            x => write!(f, "{x} B"),
        }
    }
}
