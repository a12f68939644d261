//! The one interface through which fit, embed and the baselines read backbone features, so that
//! the same code runs on a memory-mapped [`crate::store::Store`] (the CLI), on matrices in memory
//! (tests, Python) and on anything else that can hand out normalised rows.

use crate::error::{Error, Result};
use crate::matrix::Matrix;

/// n samples seen through m backbones.
pub trait FeatureSet: Sync {
    /// Number of samples.
    fn len(&self) -> usize;
    /// True when there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Backbone names, in order.
    fn names(&self) -> Vec<String>;
    /// Feature dimension of each backbone.
    fn dims(&self) -> Vec<usize>;
    /// Copies rows `idx` of backbone `j`, each scaled to unit L2 norm, into `out`.
    ///
    /// # Shapes
    /// `out`: `[idx.len(), dims()[j]]`.
    fn gather_normalized(&self, j: usize, idx: &[usize], out: &mut [f32]);
}

/// Features held in memory, one matrix per backbone, rows normalised at construction.
#[derive(Clone, Debug)]
pub struct InMemory {
    names: Vec<String>,
    mats: Vec<Matrix>,
}

impl InMemory {
    /// Wraps `mats` (`[n, d_j]` each, same n), normalising every row.
    pub fn new(names: Vec<String>, mut mats: Vec<Matrix>) -> Result<Self> {
        if mats.is_empty() {
            return Err(Error::config("backbones", 0, "at least one backbone is needed"));
        }
        if names.len() != mats.len() {
            return Err(Error::shape("backbone names", mats.len(), names.len()));
        }
        let n = mats[0].rows;
        for (name, m) in names.iter().zip(&mats) {
            if m.rows != n {
                return Err(Error::shape(format!("rows of backbone `{name}`"), n, m.rows));
            }
        }
        mats.iter_mut().for_each(Matrix::normalize_rows);
        Ok(InMemory { names, mats })
    }

    /// Wraps `mats` with names `b0`, `b1`, ...
    pub fn unnamed(mats: Vec<Matrix>) -> Result<Self> {
        let names = (0..mats.len()).map(|j| format!("b{j}")).collect();
        Self::new(names, mats)
    }

    /// The normalised matrix of backbone `j`. `[n, d_j]`
    pub fn matrix(&self, j: usize) -> &Matrix {
        &self.mats[j]
    }
}

impl FeatureSet for InMemory {
    fn len(&self) -> usize {
        self.mats[0].rows
    }
    fn names(&self) -> Vec<String> {
        self.names.clone()
    }
    fn dims(&self) -> Vec<usize> {
        self.mats.iter().map(|m| m.cols).collect()
    }
    fn gather_normalized(&self, j: usize, idx: &[usize], out: &mut [f32]) {
        let m = &self.mats[j];
        for (o, &i) in out.chunks_exact_mut(m.cols).zip(idx) {
            o.copy_from_slice(m.row(i));
        }
    }
}

/// Whole backbone `j` as a normalised matrix. `[n, d_j]`
pub fn backbone_matrix(feats: &dyn FeatureSet, j: usize) -> Matrix {
    let n = feats.len();
    let d = feats.dims()[j];
    let mut m = Matrix::zeros(n, d);
    let idx: Vec<usize> = (0..n).collect();
    feats.gather_normalized(j, &idx, &mut m.data);
    m
}

impl FeatureSet for crate::store::Store {
    fn len(&self) -> usize {
        crate::store::Store::len(self)
    }
    fn names(&self) -> Vec<String> {
        self.backbones().iter().map(|b| b.name.clone()).collect()
    }
    fn dims(&self) -> Vec<usize> {
        self.backbones().iter().map(|b| b.dim).collect()
    }
    fn gather_normalized(&self, j: usize, idx: &[usize], out: &mut [f32]) {
        crate::store::Store::gather_normalized(self, j, idx, out)
    }
}
