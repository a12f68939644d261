//! The elementwise halves of a linear layer, fused: bias plus ReLU after the forward GEMM, and
//! the ReLU mask plus bias gradient before the backward GEMMs. Activations are feature-major
//! (`[features, batch]`, see `model/mlp.rs`), so a feature's bias and its gradient sum run along
//! one contiguous row. Each is one pass over a buffer still in cache from the GEMM that wrote it.

/// `y[o, :] = act(y[o, :] + bias[o])` in place, with `act` the ReLU when `relu`, else identity.
///
/// # Shapes
/// `y`: `[out, b]`; `bias`: `[out]`.
pub fn bias_act_forward(y: &mut [f32], bias: &[f32], relu: bool) {
    let b = y.len() / bias.len().max(1);
    for (row, &c) in y.chunks_exact_mut(b.max(1)).zip(bias) {
        if relu {
            row.iter_mut().for_each(|v| *v = (*v + c).max(0.0));
        } else {
            row.iter_mut().for_each(|v| *v += c);
        }
    }
}

/// Turns the gradient with respect to a layer's output into the gradient with respect to its
/// pre-activation (zeroing it where the ReLU was inactive, judged from the post-activation
/// output `y`), and writes the bias gradient `db[o] = sum_i dz[o, i]`.
///
/// # Shapes
/// `dy`, `y`: `[out, b]`; `db`: `[out]`.
pub fn relu_backward_bias(dy: &mut [f32], y: &[f32], relu: bool, db: &mut [f32]) {
    let b = dy.len() / db.len().max(1);
    for ((drow, yrow), g) in dy.chunks_exact_mut(b.max(1)).zip(y.chunks_exact(b.max(1))).zip(db.iter_mut()) {
        if relu {
            drow.iter_mut().zip(yrow).for_each(|(d, &y)| {
                if y <= 0.0 {
                    *d = 0.0
                }
            });
        }
        *g = drow.iter().sum();
    }
}

/// `dst = srcᵀ`, in cache-sized tiles.
///
/// # Shapes
/// `src`: `[rows, cols]`; `dst`: `[cols, rows]`.
pub fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    assert_eq!(src.len(), rows * cols);
    assert_eq!(dst.len(), rows * cols);
    const T: usize = 32;
    for r0 in (0..rows).step_by(T) {
        for c0 in (0..cols).step_by(T) {
            for r in r0..(r0 + T).min(rows) {
                for c in c0..(c0 + T).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
}
