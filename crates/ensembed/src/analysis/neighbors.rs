//! The paper's normalised nearest-neighbour similarity (appendix B): for each test point, its
//! largest cosine similarity to the training set divided by its mean similarity to the training
//! set. Higher means the nearest neighbour stands out more from the crowd, which the paper
//! argues is why the learned representations suit k-NN.

use crate::error::Result;
use crate::eval::knn::{knn_neighbors, KnnConfig};
use crate::matrix::Matrix;
use crate::progress::Progress;

/// max_i cos(q, x_i) / mean_i cos(q, x_i) for every test row q (rows must be unit-norm).
/// The mean is q · mean(train), one dot product per query.
///
/// # Shapes
/// `train`: `[nt, d]`; `test`: `[nq, d]`; returns `[nq]`.
pub fn normalized_nn_similarity(train: &Matrix, test: &Matrix, progress: &dyn Progress) -> Result<Vec<f32>> {
    let (_, best) = knn_neighbors(train, test, 1, &KnnConfig::default(), progress)?;
    let d = train.cols;
    let mut mean = vec![0.0f64; d];
    for r in train.data.chunks_exact(d) {
        mean.iter_mut().zip(r).for_each(|(m, &v)| *m += v as f64);
    }
    mean.iter_mut().for_each(|m| *m /= train.rows as f64);
    Ok(test
        .data
        .chunks_exact(d)
        .zip(best)
        .map(|(q, s)| {
            let avg: f64 = q.iter().zip(&mean).map(|(&a, &b)| a as f64 * b).sum();
            (s as f64 / avg) as f32
        })
        .collect())
}
