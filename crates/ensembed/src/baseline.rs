//! The representations the paper compares against, built from normalised backbone features:
//! the single backbone, the average (also the initialisation of the learned bank) and the
//! concatenation. Rows are produced in blocks so that only the output is the size of the data.

use crate::error::{Error, Result};
use crate::features::FeatureSet;
use crate::matrix::{normalize, Matrix};

/// Rows per block when building a baseline.
const BLOCK: usize = 4096;

/// `normalise(sum_j z_j)` for rows `rows`; every backbone must have the same dimension.
///
/// # Shapes
/// returns `[rows.len(), d]`.
pub fn average_rows(feats: &dyn FeatureSet, rows: &[usize]) -> Result<Matrix> {
    let dims = feats.dims();
    let d = dims[0];
    if let Some((j, &dj)) = dims.iter().enumerate().find(|(_, &dj)| dj != d) {
        let names = feats.names();
        return Err(Error::shape(
            format!(
                "the average baseline (backbone `{}` vs `{}`; average needs equal widths)",
                names[0], names[j]
            ),
            d,
            dj,
        ));
    }
    let mut out = Matrix::zeros(rows.len(), d);
    let mut buf = vec![0.0; BLOCK.min(rows.len().max(1)) * d];
    for (block, out_block) in rows.chunks(BLOCK).zip(out.data.chunks_mut(BLOCK * d)) {
        let buf = &mut buf[..block.len() * d];
        for j in 0..dims.len() {
            feats.gather_normalized(j, block, buf);
            out_block.iter_mut().zip(buf.iter()).for_each(|(o, &z)| *o += z);
        }
    }
    out.normalize_rows();
    Ok(out)
}

/// `normalise([z_1; ...; z_m])` for rows `rows`.
///
/// # Shapes
/// returns `[rows.len(), sum_j d_j]`.
pub fn concat_rows(feats: &dyn FeatureSet, rows: &[usize]) -> Matrix {
    let dims = feats.dims();
    let total: usize = dims.iter().sum();
    let mut out = Matrix::zeros(rows.len(), total);
    let max_d = dims.iter().copied().max().unwrap_or(0);
    let mut buf = vec![0.0; BLOCK.min(rows.len().max(1)) * max_d];
    for (block, out_block) in rows.chunks(BLOCK).zip(out.data.chunks_mut(BLOCK * total)) {
        let mut offset = 0;
        for (j, &dj) in dims.iter().enumerate() {
            let buf = &mut buf[..block.len() * dj];
            feats.gather_normalized(j, block, buf);
            for (orow, zrow) in out_block.chunks_exact_mut(total).zip(buf.chunks_exact(dj)) {
                orow[offset..offset + dj].copy_from_slice(zrow);
            }
            offset += dj;
        }
    }
    out.data.chunks_exact_mut(total.max(1)).for_each(|r| {
        normalize(r);
    });
    out
}

/// The average baseline of every sample. `[n, d]`
pub fn average(feats: &dyn FeatureSet) -> Result<Matrix> {
    average_rows(feats, &(0..feats.len()).collect::<Vec<_>>())
}

/// The concatenation baseline of every sample. `[n, sum_j d_j]`
pub fn concat(feats: &dyn FeatureSet) -> Matrix {
    concat_rows(feats, &(0..feats.len()).collect::<Vec<_>>())
}
