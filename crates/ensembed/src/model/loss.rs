//! The cosine loss, 1 - cos(phi_j(psi_i), z_i^(j)), with its gradient fused into the same pass:
//! the forward needs the three dot products o·z, o·o and z·z of each row, and the gradient is a
//! combination of o and z with those same numbers, so a second pass would only re-read memory.

/// Norms below this are clamped, as in PyTorch's `cosine_similarity` (eps = 1e-8).
pub const COS_EPS: f64 = 1e-8;

/// Returns `sum_i (1 - cos(o_i, z_i))` and writes `scale * d/d o` of that sum into `grad`.
///
/// # Shapes
/// `o`, `z`, `grad`: `[b, d]`.
pub fn cosine_loss_grad(o: &[f32], z: &[f32], d: usize, scale: f32, grad: &mut [f32]) -> f64 {
    let mut total = 0.0f64;
    for ((orow, zrow), grow) in o.chunks_exact(d).zip(z.chunks_exact(d)).zip(grad.chunks_exact_mut(d)) {
        let (mut oz, mut oo, mut zz) = (0.0f64, 0.0f64, 0.0f64);
        for (&a, &b) in orow.iter().zip(zrow) {
            oz += a as f64 * b as f64;
            oo += a as f64 * a as f64;
            zz += b as f64 * b as f64;
        }
        let no = oo.sqrt().max(COS_EPS);
        let nz = zz.sqrt().max(COS_EPS);
        let cos = oz / (no * nz);
        total += 1.0 - cos;
        // d(1 - cos)/do = -z/(|o||z|) + cos * o/|o|^2 (the second term vanishes where |o| is
        // clamped, since the clamp is constant in o there).
        let cz = (-(scale as f64) / (no * nz)) as f32;
        let co = if oo.sqrt() > COS_EPS { (scale as f64 * cos / (no * no)) as f32 } else { 0.0 };
        for ((g, &a), &b) in grow.iter_mut().zip(orow).zip(zrow) {
            *g = cz * b + co * a;
        }
    }
    total
}

/// [`cosine_loss_grad`] for feature-major buffers: sample `i` is column `i`. The three dot
/// products accumulate row by row into per-column f64 sums, so the loops run along contiguous
/// memory and vectorise across the batch.
///
/// # Shapes
/// `o`, `z`, `grad`: `[d, b]`.
pub fn cosine_loss_grad_cols(o: &[f32], z: &[f32], b: usize, scale: f32, grad: &mut [f32]) -> f64 {
    let (mut oz, mut oo, mut zz) = (vec![0.0f64; b], vec![0.0f64; b], vec![0.0f64; b]);
    for (orow, zrow) in o.chunks_exact(b).zip(z.chunks_exact(b)) {
        for i in 0..b {
            let (a, c) = (orow[i] as f64, zrow[i] as f64);
            oz[i] += a * c;
            oo[i] += a * a;
            zz[i] += c * c;
        }
    }
    let mut total = 0.0;
    let (mut cz, mut co) = (vec![0.0f32; b], vec![0.0f32; b]);
    for i in 0..b {
        let no = oo[i].sqrt().max(COS_EPS);
        let nz = zz[i].sqrt().max(COS_EPS);
        let cos = oz[i] / (no * nz);
        total += 1.0 - cos;
        cz[i] = (-(scale as f64) / (no * nz)) as f32;
        co[i] = if oo[i].sqrt() > COS_EPS { (scale as f64 * cos / (no * no)) as f32 } else { 0.0 };
    }
    for ((grow, orow), zrow) in grad.chunks_exact_mut(b).zip(o.chunks_exact(b)).zip(z.chunks_exact(b)) {
        for i in 0..b {
            grow[i] = cz[i] * zrow[i] + co[i] * orow[i];
        }
    }
    total
}

/// Mean cosine similarity of paired rows (the paper's "recovery" diagnostic).
///
/// # Shapes
/// `o`, `z`: `[n, d]`.
pub fn mean_cosine(o: &[f32], z: &[f32], d: usize) -> f64 {
    let n = o.len() / d.max(1);
    if n == 0 {
        return 0.0;
    }
    let mut scratch = vec![0.0; d];
    let mut total = 0.0;
    for (orow, zrow) in o.chunks_exact(d).zip(z.chunks_exact(d)) {
        total += 1.0 - cosine_loss_grad(orow, zrow, d, 0.0, &mut scratch);
    }
    total / n as f64
}
