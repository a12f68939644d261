//! The elementwise halves of a linear layer, fused: bias plus ReLU after the forward GEMM, and
//! the ReLU mask plus bias gradient before the backward GEMMs. Each is one pass over a
//! `[batch, out]` buffer that is still in cache from the GEMM that wrote it.

/// `y[i, :] = act(y[i, :] + bias)` in place, with `act` the ReLU when `relu`, else identity.
///
/// # Shapes
/// `y`: `[b, out]`; `bias`: `[out]`.
pub fn bias_act_forward(y: &mut [f32], bias: &[f32], relu: bool) {
    let out = bias.len();
    for row in y.chunks_exact_mut(out) {
        if relu {
            for (v, &b) in row.iter_mut().zip(bias) {
                *v = (*v + b).max(0.0);
            }
        } else {
            for (v, &b) in row.iter_mut().zip(bias) {
                *v += b;
            }
        }
    }
}

/// Turns the gradient with respect to a layer's output into the gradient with respect to its
/// pre-activation (zeroing it where the ReLU was inactive, judged from the post-activation
/// output `y`), and writes the bias gradient: `db = sum_i dz[i, :]`.
///
/// # Shapes
/// `dy`, `y`: `[b, out]`; `db`: `[out]`.
pub fn relu_backward_bias(dy: &mut [f32], y: &[f32], relu: bool, db: &mut [f32]) {
    let out = db.len();
    db.fill(0.0);
    for (drow, yrow) in dy.chunks_exact_mut(out).zip(y.chunks_exact(out)) {
        if relu {
            for ((d, &y), g) in drow.iter_mut().zip(yrow).zip(db.iter_mut()) {
                if y <= 0.0 {
                    *d = 0.0;
                }
                *g += *d;
            }
        } else {
            for (d, g) in drow.iter().zip(db.iter_mut()) {
                *g += *d;
            }
        }
    }
}
