//! Recovery cosine: the mean cosine similarity between phi_j(psi_i) and z_i^(j), per backbone.
//! The paper reports about 0.97 at initialisation and 0.99+ after optimisation (single model);
//! it is the direct measure of how much of each backbone a representation keeps.

use crate::error::Result;
use crate::features::FeatureSet;
use crate::matrix::Matrix;
use crate::model::loss::mean_cosine;
use crate::model::EnsembleModel;

/// Rows per block, to bound memory on large sets.
const BLOCK: usize = 4096;

/// Mean cos(phi_j(psi_i), z_i^(j)) over the samples, one value per backbone.
///
/// # Shapes
/// `repr`: `[n, dim]` (the representations of `feats`' samples, in order).
pub fn recovery_cosine(model: &EnsembleModel, feats: &dyn FeatureSet, repr: &Matrix) -> Result<Vec<f64>> {
    model.check_features(feats)?;
    let n = feats.len();
    if repr.rows != n || repr.cols != model.spec.dim {
        return Err(crate::Error::shape("representations for the recovery cosine", format!("[{n}, {}]", model.spec.dim), format!("[{}, {}]", repr.rows, repr.cols)));
    }
    let threads = rayon::current_num_threads();
    let mut sums = vec![0.0f64; model.mlps.len()];
    let rows: Vec<usize> = (0..n).collect();
    for block in rows.chunks(BLOCK) {
        let x = repr.gather_rows(block);
        for (j, mlp) in model.mlps.iter().enumerate() {
            let out = mlp.apply(&x.data, block.len(), threads);
            let mut z = vec![0.0; block.len() * mlp.output_dim()];
            feats.gather_normalized(j, block, &mut z);
            sums[j] += mean_cosine(&out, &z, mlp.output_dim()) * block.len() as f64;
        }
    }
    Ok(sums.iter().map(|s| s / n.max(1) as f64).collect())
}
