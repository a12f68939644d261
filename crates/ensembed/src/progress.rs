//! Progress reporting without a terminal dependency. The library's long loops (fit, embed,
//! k-NN, import) report through this trait; the binary plugs in progress bars, tests and
//! scripts pass [`NoProgress`].

/// Receives progress of one long-running stage at a time.
pub trait Progress: Sync {
    /// A new stage named `label` with `total` units of work begins.
    fn start(&self, label: &str, total: u64);
    /// `n` more units are done.
    fn advance(&self, n: u64);
    /// A free-form status (for example the current loss) for the running stage.
    fn message(&self, _msg: &str) {}
    /// The running stage is complete.
    fn finish(&self);
}

/// Reports nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _label: &str, _total: u64) {}
    fn advance(&self, _n: u64) {}
    fn finish(&self) {}
}
