//! ResNet's bottleneck block with an identity shortcut, `relu(c3(relu(c2(relu(c1(x))))) + x)`
//! (1x1, 3x3 stride 1, 1x1), run in bands of output rows, as [`super::mbconv`] runs the
//! inverted-residual block: the first 1x1 convolution writes the rows a band's 3x3 convolution
//! reads straight into a zero-bordered buffer (keeping the two rows it shares with the next
//! band), the 3x3 convolution reads them in place ([`Conv2d::padded_band_uninit`]: no padded copy
//! of its input), and the last 1x1 convolution adds the input and writes the block's rows. The
//! two narrow maps between them never leave L2. Every float is the same sum in the same order as
//! layer by layer (tested bit for bit). Used by the torchvision ResNets and by ONNX graphs with
//! the same chain.

use std::mem::MaybeUninit;

use super::layers::{Act, Conv2d, Fmap, Padding, Workspace};
use crate::error::{Error, Result};

/// Bytes of the middle convolution's padded input a band aims at (as [`super::mbconv`]'s bands:
/// a quarter of a current core's L2).
const BAND_BYTES: usize = 256 << 10;

/// Whether these convolutions make a bottleneck that runs in bands: pointwise outer ones, a 3x3
/// stride-1 middle one padded by 1, chained channels, and packed weights (the AVX-512 path;
/// elsewhere the block runs layer by layer).
pub fn fits(c1: &Conv2d, c2: &Conv2d, c3: &Conv2d) -> bool {
    c1.is_pointwise()
        && c3.is_pointwise()
        && (c2.kh, c2.kw, c2.stride, c2.padding) == (3, 3, 1, Padding::Symmetric(1))
        && c2.ic == c1.oc
        && c3.ic == c2.oc
        && c3.oc == c1.ic
        && c2.packed()
}

/// The block in bands of rows whose buffers stay in L2.
///
/// # Shapes
/// `x`: `[h, w, c1.ic]`; returns `[h, w, c3.oc]` (the same).
///
/// # Panics
/// When the convolutions do not [`fits`].
pub fn forward(c1: &Conv2d, c2: &Conv2d, c3: &Conv2d, x: &Fmap, ws: &mut Workspace, threads: usize) -> Result<Fmap> {
    assert!(fits(c1, c2, c3), "bottleneck::forward on convolutions that do not make a banded bottleneck");
    if x.c != c1.ic {
        return Err(Error::shape("bottleneck input channels", c1.ic, x.c));
    }
    let prow = (x.w + 2) * c1.oc;
    let band = (BAND_BYTES / 4 / prow.max(1)).saturating_sub(2).clamp(1, x.h.max(1));
    Ok(forward_bands(c1, c2, c3, x, band, ws, threads))
}

/// [`forward`] in bands of `band` output rows.
///
/// # Shapes
/// As [`forward`].
fn forward_bands(c1: &Conv2d, c2: &Conv2d, c3: &Conv2d, x: &Fmap, band: usize, ws: &mut Workspace, threads: usize) -> Fmap {
    let (h, w, mid, oc) = (x.h, x.w, c1.oc, c3.oc);
    // The padded buffer: row r holds the first convolution's row oy0 + r - 1 of the band
    // starting at oy0, between one zero pixel on each side (never written, so zero).
    let prow = (w + 2) * mid;
    let mut p = ws.take((band + 2) * prow);
    p.fill(0.0);
    let mut t = ws.take_spare((band + 2) * w * mid);
    let mut d = ws.take_spare(band * w * mid);
    let mut out = ws.take_spare(h * w * oc);
    let (mut done, mut last_rows) = (0, 0);
    let mut oy0 = 0;
    while oy0 < h {
        let oy1 = (oy0 + band).min(h);
        let rows = oy1 - oy0;
        if oy0 > 0 {
            // Rows oy0 - 1 and oy0, the last band's bottom two.
            p.copy_within(last_rows * prow..(last_rows + 2) * prow, 0);
        }
        // The first convolution's rows not computed yet, into their place in `p`.
        let (g0, g1) = (done, (oy1 + 1).min(h));
        let t = &mut t.spare_capacity_mut()[..(g1 - g0) * w * mid];
        c1.pointwise_uninit(&x.data[g0 * w * x.c..g1 * w * x.c], None, Act::Relu, t, threads);
        // SAFETY: `pointwise_uninit` wrote every float of `t`.
        let t: &[f32] = unsafe { &*(t as *const [MaybeUninit<f32>] as *const [f32]) };
        for (g, row) in (g0..g1).zip(t.chunks_exact(w * mid)) {
            let r = g + 1 - oy0;
            p[r * prow + mid..r * prow + mid + w * mid].copy_from_slice(row);
        }
        done = g1;
        if oy1 == h {
            // Below the map: zeros (a row of an earlier band may be there).
            p[(rows + 1) * prow..(rows + 2) * prow].fill(0.0);
        }
        let dst = &mut d.spare_capacity_mut()[..rows * w * mid];
        c2.padded_band_uninit(&p[..(rows + 2) * prow], w, None, Act::Relu, dst, threads);
        // SAFETY: as above.
        let mid_rows: &[f32] = unsafe { &*(dst as *const [MaybeUninit<f32>] as *const [f32]) };
        let res = &x.data[oy0 * w * oc..oy1 * w * oc];
        let dst = &mut out.spare_capacity_mut()[oy0 * w * oc..oy1 * w * oc];
        c3.pointwise_uninit(mid_rows, Some(res), Act::Relu, dst, threads);
        last_rows = rows;
        oy0 = oy1;
    }
    // SAFETY: the bands cover rows 0..h, and `pointwise_uninit` wrote every float.
    unsafe { out.set_len(h * w * oc) };
    ws.give(p);
    ws.give(t);
    ws.give(d);
    Fmap { h, w, c: oc, data: out }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    /// The block layer by layer, each whole map at once.
    fn layer_by_layer(c: &[Conv2d; 3], x: &Fmap, ws: &mut Workspace) -> Fmap {
        let a = c[0].forward(x, None, Act::Relu, ws, 1).unwrap();
        let b = c[1].forward(&a, None, Act::Relu, ws, 1).unwrap();
        c[2].forward(&b, Some(x), Act::Relu, ws, 1).unwrap()
    }

    #[test]
    fn bands_give_the_same_bits_as_layer_by_layer() {
        if !crate::kernels::packed_available() {
            eprintln!("SKIP bands_give_the_same_bits_as_layer_by_layer: bands need the AVX-512 kernel");
            return;
        }
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| r.random_range(-0.5..0.5)).collect() };
        let mut ws = Workspace::default();
        // (h, w, outer channels, middle channels): ResNet-50's 7x7 stage in small, odd sizes, a
        // single row, middle channels that are not a multiple of 16.
        for (h, w, c4, c) in [(7, 7, 64, 16), (13, 9, 48, 24), (1, 5, 32, 16), (20, 3, 16, 40)] {
            let conv = |wt: Vec<f32>, b: Vec<f32>, o: usize, i: usize, k: usize| {
                Conv2d::from_oihw(&wt, b, [o, i, k, k], 1, Padding::Symmetric(k / 2))
            };
            let convs = [
                conv(random(c * c4), random(c), c, c4, 1),
                conv(random(c * c * 9), random(c), c, c, 3),
                conv(random(c4 * c), random(c4), c4, c, 1),
            ];
            assert!(fits(&convs[0], &convs[1], &convs[2]));
            let x = Fmap { h, w, c: c4, data: random(h * w * c4) };
            let want = layer_by_layer(&convs, &x, &mut ws);
            for band in 1..=h + 1 {
                let got = forward_bands(&convs[0], &convs[1], &convs[2], &x, band, &mut ws, 1);
                assert_eq!((got.h, got.w, got.c), (h, w, c4));
                let same = got.data.iter().zip(&want.data).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{h}x{w}x{c4} (middle {c}), bands of {band} rows: differs");
            }
            let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
            let got = pool.install(|| forward(&convs[0], &convs[1], &convs[2], &x, &mut ws, 2).unwrap());
            assert_eq!(got, want);
        }
    }

    #[test]
    fn convolutions_that_are_no_banded_bottleneck_are_refused() {
        let conv = |o: usize, i: usize, k: usize, s: usize| Conv2d::from_oihw(&vec![0.0; o * i * k * k], vec![0.0; o], [o, i, k, k], s, Padding::Symmetric(k / 2));
        let ok = fits(&conv(16, 64, 1, 1), &conv(16, 16, 3, 1), &conv(64, 16, 1, 1));
        assert_eq!(ok, crate::kernels::packed_available());
        // A stride, a 1x1 middle, an output of other channels than the input (no identity sum).
        assert!(!fits(&conv(16, 64, 1, 1), &conv(16, 16, 3, 2), &conv(64, 16, 1, 1)));
        assert!(!fits(&conv(16, 64, 1, 1), &conv(16, 16, 1, 1), &conv(64, 16, 1, 1)));
        assert!(!fits(&conv(16, 64, 1, 1), &conv(16, 16, 3, 1), &conv(32, 16, 1, 1)));
    }
}
