//! The inverted-residual block of MobileNetV2 and EfficientNet (MBConv): a pointwise expansion to
//! several times the channels, a depthwise convolution, a pointwise projection back, and a skip
//! connection where the shapes allow. Run layer by layer, an early block's expanded map
//! (112x112x96 floats in EfficientNet-Lite0's second block, 4.8 MB) is written out to memory by
//! the expansion and read back by the depthwise convolution; that traffic, not arithmetic, set
//! the time of those blocks (Lite0's second block's expansion ran at a third of the GEMM's
//! speed), and two threads each streaming their own image made it worse. So a block runs here in
//! bands of output rows: the expansion makes only the input rows the band reads (keeping the
//! ones it shares with the next band), and the depthwise convolution and the projection follow
//! while those rows are in L2; only the block's narrow output goes to memory.
//!
//! Every float is the same sum in the same order as layer by layer, so the two give the same
//! bits (tested).

use super::depthwise::DepthwiseConv2d;
use super::layers::{Act, Conv2d, Fmap, Workspace};
use crate::error::{Error, Result};

/// Bytes of expanded rows a band aims at: a quarter of a current x86 core's L2, leaving room
/// for the depthwise output, the projection's weights and the other layers' buffers.
const BAND_BYTES: usize = 256 << 10;

/// One MBConv block with its batch norms folded in: `act2(project(act1(depthwise(act0(expand(x)))))
/// [+ x])`; EfficientNet-Lite and MobileNetV2 use ReLU6, ReLU6 and none.
#[derive(Debug)]
pub struct MbConv {
    /// Pointwise; absent where the expansion ratio is 1.
    pub(crate) expand: Option<Conv2d>,
    pub(crate) depthwise: DepthwiseConv2d,
    /// Pointwise.
    pub(crate) project: Conv2d,
    /// Adds the input to the projection's output (before its activation).
    pub(crate) skip: bool,
    /// After the expansion, the depthwise convolution and the projection.
    pub(crate) acts: [Act; 3],
}

impl MbConv {
    /// The block, or `None` when the parts do not make one ([`MbConv::fits`]).
    pub fn new(expand: Option<Conv2d>, depthwise: DepthwiseConv2d, project: Conv2d, skip: bool, acts: [Act; 3]) -> Option<MbConv> {
        MbConv::fits(expand.as_ref(), &depthwise, &project, skip).then_some(MbConv { expand, depthwise, project, skip, acts })
    }

    /// Whether these parts make a block: the expansion and the projection pointwise, the
    /// channels chained, and a skip only where the output has the input's shape.
    pub fn fits(expand: Option<&Conv2d>, depthwise: &DepthwiseConv2d, project: &Conv2d, skip: bool) -> bool {
        let ic = expand.map_or(depthwise.c, |e| e.ic);
        let pointwise = expand.is_none_or(Conv2d::is_pointwise) && project.is_pointwise();
        let chained = expand.is_none_or(|e| e.oc == depthwise.c) && project.ic == depthwise.c;
        pointwise && chained && (!skip || (depthwise.stride == 1 && project.oc == ic))
    }

    /// Input channels.
    fn ic(&self) -> usize {
        self.expand.as_ref().map_or(self.depthwise.c, |e| e.ic)
    }

    /// The block, band by band.
    ///
    /// # Shapes
    /// `x`: `[h, w, ic]`; returns `[oh, ow, project.oc]`.
    pub fn forward(&self, x: &Fmap, ws: &mut Workspace, threads: usize) -> Result<Fmap> {
        if x.c != self.ic() {
            return Err(Error::shape("MBConv input channels", self.ic(), x.c));
        }
        let dw = &self.depthwise;
        let (oh, ow) = dw.out_size(x.h, x.w)?;
        if self.skip && (oh, ow) != (x.h, x.w) {
            // A padding that shrinks the map (an ONNX graph's pads): the sum cannot be formed.
            return Err(Error::shape("MBConv residual", format!("{oh}x{ow}x{}", self.project.oc), format!("{}x{}x{}", x.h, x.w, x.c)));
        }
        // Output rows per band: as many as keep the expanded rows they read near BAND_BYTES.
        let band = (BAND_BYTES / 4 / (dw.stride * x.w * dw.c).max(1)).clamp(1, oh.max(1));
        Ok(self.forward_bands(x, band, ws, threads))
    }

    /// [`MbConv::forward`] in bands of `band` output rows, on an input of the right channels.
    ///
    /// # Shapes
    /// As [`MbConv::forward`].
    fn forward_bands(&self, x: &Fmap, band: usize, ws: &mut Workspace, threads: usize) -> Fmap {
        let dw = &self.depthwise;
        let (h, w, s, k, mid, oc) = (x.h, x.w, dw.stride, dw.k, dw.c, self.project.oc);
        let (oh, ow) = dw.out_size(h, w).expect("checked by forward");
        let (_, pt) = dw.padding.resolve(h, k, s).unwrap();
        let row = w * mid; // floats in one expanded row
        let held_max = ((band - 1) * s + k).min(h);
        // The expanded rows at hand, input rows lo..hi (only with an expansion).
        let mut e = match self.expand {
            Some(_) => ws.take_spare(held_max * row),
            None => Vec::new(),
        };
        let (mut lo, mut hi) = (0usize, 0usize);
        let mut d = ws.take(band * ow * mid);
        let mut out = ws.take_spare(oh * ow * oc);
        let mut oy0 = 0;
        while oy0 < oh {
            let oy1 = (oy0 + band).min(oh);
            // The input rows this band reads, clipped to the map.
            let need_lo = (oy0 * s).saturating_sub(pt);
            let need_hi = ((oy1 - 1) * s + k).saturating_sub(pt).min(h);
            let (rows, first): (&[f32], usize) = match &self.expand {
                // Output rows whose windows lie wholly in the padding: they read no input row.
                _ if need_hi <= need_lo => (&[], 0),
                Some(expand) => {
                    // Keep the rows shared with the last band (the bands move down, so `lo`
                    // never passes `need_lo`), then expand the new ones after them.
                    let kept = hi.saturating_sub(need_lo);
                    if kept > 0 {
                        e.copy_within((need_lo - lo) * row..(hi - lo) * row, 0);
                    }
                    e.truncate(kept * row);
                    let new = need_lo + kept;
                    (lo, hi) = (need_lo, need_hi);
                    let dst = &mut e.spare_capacity_mut()[..(hi - new) * row];
                    expand.pointwise_uninit(&x.data[new * w * x.c..hi * w * x.c], None, self.acts[0], dst, threads);
                    // SAFETY: the kept rows were initialised before, and `pointwise_uninit`
                    // wrote every float of the rows after them.
                    unsafe { e.set_len((hi - lo) * row) };
                    (&e[..], lo)
                }
                None => (&x.data[need_lo * row..need_hi * row], need_lo),
            };
            let d = &mut d[..(oy1 - oy0) * ow * mid];
            dw.forward_band(rows, first, h, w, oy0, d, self.acts[1]);
            let residual = self.skip.then(|| &x.data[oy0 * ow * oc..oy1 * ow * oc]);
            let dst = &mut out.spare_capacity_mut()[oy0 * ow * oc..oy1 * ow * oc];
            self.project.pointwise_uninit(d, residual, self.acts[2], dst, threads);
            oy0 = oy1;
        }
        // SAFETY: the bands cover output rows 0..oh, and `pointwise_uninit` wrote every float.
        unsafe { out.set_len(oh * ow * oc) };
        ws.give(e);
        ws.give(d);
        Fmap { h: oh, w: ow, c: oc, data: out }
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::backbone::cnn::layers::Padding;

    /// The block layer by layer, each layer's whole map at once.
    fn layer_by_layer(b: &MbConv, x: &Fmap, ws: &mut Workspace) -> Fmap {
        let e = b.expand.as_ref().map(|c| c.forward(x, None, b.acts[0], ws, 1).unwrap());
        let d = b.depthwise.forward(e.as_ref().unwrap_or(x), b.acts[1], ws).unwrap();
        b.project.forward(&d, b.skip.then_some(x), b.acts[2], ws, 1).unwrap()
    }

    fn random(r: &mut rand_chacha::ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| r.random_range(-1.0..1.0)).collect()
    }

    #[test]
    fn bands_give_the_same_bits_as_layer_by_layer() {
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut ws = Workspace::default();
        // (h, w, ic, expansion, k, stride, padding, oc): EfficientNet's SAME at both strides
        // (stride 2 on an even map pads after only), PyTorch's symmetric padding, a 5x5 kernel
        // wider than some bands, odd sizes, channels that are not a multiple of 16, no expansion.
        let cases = [
            (13, 11, 16, 6, 3, 1, Padding::Same, 16),
            (14, 12, 16, 6, 3, 2, Padding::Same, 24),
            (15, 9, 24, 6, 5, 2, Padding::Same, 40),
            (12, 7, 40, 6, 5, 1, Padding::Same, 40),
            (10, 10, 32, 1, 3, 1, Padding::Same, 16),
            (9, 8, 8, 3, 3, 1, Padding::Symmetric(1), 8),
            (11, 6, 20, 4, 3, 2, Padding::Symmetric(1), 12),
            (1, 1, 16, 6, 3, 1, Padding::Same, 16),
            // Padding wider than the kernel (an ONNX graph may ask for it): bands whose
            // windows lie wholly in the padding, above and below the map.
            (6, 5, 16, 6, 3, 1, Padding::Explicit { before: 4, after: 5 }, 24),
            (3, 4, 16, 1, 3, 2, Padding::Symmetric(5), 8),
        ];
        for (case, (h, w, ic, ratio, k, s, padding, oc)) in cases.into_iter().enumerate() {
            // MobileNetV2's and EfficientNet-Lite's activations, and others an ONNX graph may fuse.
            let acts = [[Act::Relu6, Act::Relu6, Act::None], [Act::Relu, Act::None, Act::Relu]][case % 2];
            let mid = ic * ratio;
            let conv = |r: &mut rand_chacha::ChaCha8Rng, i: usize, o: usize| {
                Conv2d::from_oihw(&random(r, o * i), random(r, o), [o, i, 1, 1], 1, Padding::Same)
            };
            let expand = (ratio != 1).then(|| conv(&mut r, ic, mid));
            let depthwise = DepthwiseConv2d::from_oihw(&random(&mut r, mid * k * k), random(&mut r, mid), mid, k, s, padding);
            let project = conv(&mut r, mid, oc);
            let b = MbConv::new(expand, depthwise, project, s == 1 && ic == oc, acts).unwrap();
            // The gemm crate's path where the packed kernel is the default, and the other way
            // round where it is not available (then both are the gemm crate's).
            let unpacked = MbConv::new(
                b.expand.clone().map(|c| c.with_packing(false)),
                b.depthwise.clone(),
                b.project.clone().with_packing(false),
                b.skip,
                b.acts,
            )
            .unwrap();
            let x = Fmap { h, w, c: ic, data: random(&mut r, h * w * ic) };
            for b in [&unpacked, &b] {
                let want = layer_by_layer(b, &x, &mut ws);
                for band in 1..=want.h + 1 {
                    let got = b.forward_bands(&x, band, &mut ws, 1);
                    assert_eq!((got.h, got.w, got.c), (want.h, want.w, want.c));
                    let same = got.data.iter().zip(&want.data).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{h}x{w}x{ic} x{ratio} k{k} s{s} {padding:?} -> {oc}, bands of {band} rows: differs");
                }
                // The default band, and two threads for the GEMMs.
                let got = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap().install(|| b.forward(&x, &mut ws, 2).unwrap());
                assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn parts_that_do_not_make_a_block_are_refused_and_a_wrong_input_is_an_error() {
        let pw = |i: usize, o: usize| Conv2d::from_oihw(&vec![0.0; o * i], vec![0.0; o], [o, i, 1, 1], 1, Padding::Same);
        let dw = |c: usize, s: usize| DepthwiseConv2d::from_oihw(&vec![0.0; c * 9], vec![0.0; c], c, 3, s, Padding::Same);
        let acts = [Act::Relu6, Act::Relu6, Act::None];
        assert!(MbConv::new(Some(pw(8, 16)), dw(16, 1), pw(16, 8), true, acts).is_some());
        // Channels that do not chain, a skip over a stride or a change of channels, a 3x3
        // "projection".
        assert!(MbConv::new(Some(pw(8, 24)), dw(16, 1), pw(16, 8), false, acts).is_none());
        assert!(MbConv::new(Some(pw(8, 16)), dw(16, 1), pw(24, 8), false, acts).is_none());
        assert!(MbConv::new(Some(pw(8, 16)), dw(16, 2), pw(16, 8), true, acts).is_none());
        assert!(MbConv::new(Some(pw(8, 16)), dw(16, 1), pw(16, 12), true, acts).is_none());
        let k3 = Conv2d::from_oihw(&[0.0; 8 * 16 * 9], vec![0.0; 8], [8, 16, 3, 3], 1, Padding::Same);
        assert!(MbConv::new(Some(pw(8, 16)), dw(16, 1), k3, false, acts).is_none());

        let b = MbConv::new(None, dw(16, 1), pw(16, 8), false, acts).unwrap();
        let x = Fmap { h: 4, w: 4, c: 8, data: vec![0.0; 128] };
        let e = b.forward(&x, &mut Workspace::default(), 1).unwrap_err().to_string();
        assert!(e.contains("MBConv input channels") && e.contains("16") && e.contains('8'), "{e}");
        // A skip over a depthwise convolution whose padding shrinks the map.
        let valid = DepthwiseConv2d::from_oihw(&[0.0; 16 * 9], vec![0.0; 16], 16, 3, 1, Padding::Symmetric(0));
        let b = MbConv::new(Some(pw(8, 16)), valid, pw(16, 8), true, acts).unwrap();
        let e = b.forward(&x, &mut Workspace::default(), 1).unwrap_err().to_string();
        assert!(e.contains("MBConv residual") && e.contains("2x2x8") && e.contains("4x4x8"), "{e}");
    }
}
