//! A dense row-major `f32` matrix: the one tensor type the library passes around. Kept this
//! small on purpose: the hot loops work on slices, and anything richer (strides, views, dtypes)
//! would only be used by the GEMM call, which takes raw strides anyway.

use crate::error::{Error, Result};

/// Dense row-major matrix of `f32`.
///
/// # Shapes
/// `data.len() == rows * cols`; row `i` is `data[i * cols..(i + 1) * cols]`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    /// A zero matrix. `[rows, cols]`
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Matrix {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// Wraps `data` as a `[rows, cols]` matrix, checking the length.
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self> {
        if data.len() != rows * cols {
            return Err(Error::shape(
                "matrix data",
                format!("{rows} x {cols} = {} values", rows * cols),
                format!("{} values", data.len()),
            ));
        }
        Ok(Matrix { rows, cols, data })
    }

    /// Row `i`. `[cols]`
    #[inline]
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Mutable row `i`. `[cols]`
    #[inline]
    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// Rows `idx` gathered into a new matrix. `[idx.len(), cols]`
    pub fn gather_rows(&self, idx: &[usize]) -> Matrix {
        let mut out = Matrix::zeros(idx.len(), self.cols);
        for (o, &i) in idx.iter().enumerate() {
            out.row_mut(o).copy_from_slice(self.row(i));
        }
        out
    }

    /// Scales every row to unit L2 norm in place; rows of zero norm are left at zero.
    pub fn normalize_rows(&mut self) {
        if self.cols == 0 {
            return;
        }
        for r in self.data.chunks_exact_mut(self.cols) {
            normalize(r);
        }
    }
}

/// Scales `v` to unit L2 norm in place (accumulating in f64 so that the result does not depend
/// on the length); a zero vector stays zero. Returns the original norm.
#[inline]
pub fn normalize(v: &mut [f32]) -> f32 {
    let norm = v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
    if norm > 0.0 {
        let inv = (1.0 / norm) as f32;
        v.iter_mut().for_each(|x| *x *= inv);
    }
    norm as f32
}
