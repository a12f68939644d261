//! The two operators that hold nearly all of a MobileNet's arithmetic: CONV_2D (and
//! FULLY_CONNECTED, a 1x1 convolution over a 1x1 image) and DEPTHWISE_CONV_2D, for 8-bit
//! activations and weights (uint8 or int8, per-tensor or per-channel) with int32 biases.
//!
//! TFLite computes `acc = Σ (x - x_zp)(w - w_zp) + bias` in int32 and requantises `acc` with
//! fixed-point arithmetic ([`super::quant`]). Here the convolution's sum runs through the
//! crate's f32 GEMM ([`crate::kernels::matmul`], runtime-dispatched AVX2/AVX-512 kernels) on the
//! zero-point-centred integers, because a sum of integer products is computed EXACTLY in f32 as
//! long as every partial sum stays below 2^24 in magnitude; `Conv::new` proves that bound per
//! layer from the actual weights (`max|x - x_zp| · max_n Σ_k |w_kn - w_zp|`) and splits the
//! inner dimension into chunks whose sums are exact where it does not hold, adding the chunks in
//! int32. The result is bit-identical to an integer GEMM, at the speed of a tuned float one,
//! without writing SIMD kernels for every target. Depthwise convolutions use the same
//! argument over their taps.
//!
//! Layouts are TFLite's: activations NHWC (batch 1 here: the caller runs images one at a
//! time), CONV_2D filters `[oc, kh, kw, ic]`, DEPTHWISE_CONV_2D filters `[1, kh, kw, oc]`.

use super::ops::{multiversion, OutQ, QType};
use super::quant::{requant, requant_ruy, Rounding};
use crate::kernels::{matmul, Layout};

/// Magnitudes below this are exact in f32.
const F32_EXACT: f64 = (1u32 << 24) as f64;

/// Output rows per GEMM tile: small enough that the tile's im2col block and output stay in L2.
const TILE_VALUES: usize = 1 << 15;

/// Geometry of a 2-D convolution or pooling window over one NHWC image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Geom {
    pub ih: usize,
    pub iw: usize,
    pub ic: usize,
    pub oh: usize,
    pub ow: usize,
    pub oc: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub dh: usize,
    pub dw: usize,
    /// Padding before the first row / column (TFLite's `ComputePadding`).
    pub pt: usize,
    pub pl: usize,
}

impl Geom {
    /// Input row of output row `oy`, filter row `ky` (`None` in the padding).
    #[inline(always)]
    fn in_y(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.sh + ky * self.dh)
            .checked_sub(self.pt)
            .filter(|&y| y < self.ih)
    }

    #[inline(always)]
    fn in_x(&self, ox: usize, kx: usize) -> Option<usize> {
        (ox * self.sw + kx * self.dw)
            .checked_sub(self.pl)
            .filter(|&x| x < self.iw)
    }
}

/// Per-output-channel requantisation: `out = clamp(requant(acc + bias) + zp)`.
#[derive(Clone, Debug)]
pub(crate) struct ChannelRequant {
    pub bias: Vec<i32>,
    pub multiplier: Vec<i32>,
    pub left: Vec<i32>,
    pub right: Vec<i32>,
    pub out: OutQ,
    pub rounding: Rounding,
}

impl ChannelRequant {
    /// Requantises rows of exact integer sums held in f32.
    ///
    /// # Shapes
    /// `acc`: `[rows, n]`; `out`: `[rows, n]`; the vectors of `self`: `[n]`.
    fn rows_f32(&self, acc: &[f32], out: &mut [u8]) {
        requant_rows_f32(self, acc, out)
    }

    /// Requantises rows of int32 sums.
    ///
    /// # Shapes
    /// `acc`: `[rows, n]`; `out`: `[rows, n]`; the vectors of `self`: `[n]`.
    fn rows_i32(&self, acc: &[i32], out: &mut [u8]) {
        requant_rows_i32(self, acc, out)
    }
}

multiversion! {
    fn requant_rows_f32(r: &ChannelRequant, acc: &[f32], out: &mut [u8]) {
        let n = r.bias.len();
        let (b, m, left, right) = (&r.bias[..n], &r.multiplier[..n], &r.left[..n], &r.right[..n]);
        let ruy = r.rounding == Rounding::Ruy;
        for (a, o) in acc.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            for j in 0..n {
                // SAFETY: the sums are exact integers below 2^24 in magnitude (`Conv::new`
                // chose the chunks so), hence finite and in i32 range.
                let acc = unsafe { a[j].to_int_unchecked::<i32>() }.wrapping_add(b[j]);
                let v = if ruy {
                    requant_ruy(acc, m[j], left[j], right[j])
                } else {
                    requant(acc, m[j], left[j], right[j])
                };
                o[j] = r.out.store(v);
            }
        }
    }
}

multiversion! {
    fn requant_rows_i32(r: &ChannelRequant, acc: &[i32], out: &mut [u8]) {
        let n = r.bias.len();
        let (b, m, left, right) = (&r.bias[..n], &r.multiplier[..n], &r.left[..n], &r.right[..n]);
        let ruy = r.rounding == Rounding::Ruy;
        for (a, o) in acc.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
            for j in 0..n {
                let v = if ruy {
                    requant_ruy(a[j].wrapping_add(b[j]), m[j], left[j], right[j])
                } else {
                    requant(a[j].wrapping_add(b[j]), m[j], left[j], right[j])
                };
                o[j] = r.out.store(v);
            }
        }
    }
}

/// Zero-point-centred values as f32: `dst[i] = q(src[i]) - zp`.
#[inline(always)]
fn center_f32(src: &[u8], dst: &mut [f32], q: QType, zp: i32) {
    match q {
        QType::U8 => dst
            .iter_mut()
            .zip(src)
            .for_each(|(d, &s)| *d = (s as i32 - zp) as f32),
        QType::I8 => dst
            .iter_mut()
            .zip(src)
            .for_each(|(d, &s)| *d = (s as i8 as i32 - zp) as f32),
    }
}

/// A prepared CONV_2D (or FULLY_CONNECTED).
#[derive(Clone, Debug)]
pub(crate) struct Conv {
    pub g: Geom,
    pub in_q: QType,
    pub in_zp: i32,
    /// Inner dimension `kh * kw * ic`.
    pub k: usize,
    /// Centred weights, `[k, oc]` (transposed from TFLite's `[oc, k]` once, at load).
    pub weights: Vec<f32>,
    /// Ranges of the inner dimension whose f32 sums are exact (one range on real models).
    pub chunks: Vec<(usize, usize)>,
    pub rq: ChannelRequant,
}

impl Conv {
    /// Prepares a convolution from TFLite's filter.
    ///
    /// # Shapes
    /// `filter`: `[oc, kh, kw, ic]` raw bytes of type `w_q`; `w_zp`: `[oc]`.
    pub(crate) fn new(
        g: Geom,
        in_q: QType,
        in_zp: i32,
        filter: &[u8],
        w_q: QType,
        w_zp: &[i32],
        rq: ChannelRequant,
    ) -> Conv {
        let (k, n) = (g.kh * g.kw * g.ic, g.oc);
        let mut weights = vec![0f32; k * n];
        for (o, row) in filter.chunks_exact(k).enumerate() {
            for (i, &w) in row.iter().enumerate() {
                weights[i * n + o] = (w_q.get(w) - w_zp[o]) as f32;
            }
        }
        // Exactness bound: every partial sum is at most max|x| · Σ_k |w_kn| for its column.
        let (lo, hi) = in_q.range();
        let max_x = (in_zp - lo).abs().max((hi - in_zp).abs()) as f64;
        let mut chunks = Vec::new();
        let mut sums = vec![0f64; n];
        let mut start = 0;
        for i in 0..k {
            let row = &weights[i * n..(i + 1) * n];
            let over = sums
                .iter()
                .zip(row)
                .any(|(s, w)| max_x * (s + w.abs() as f64) >= F32_EXACT);
            if over && i > start {
                chunks.push((start, i));
                start = i;
                sums.fill(0.0);
            }
            sums.iter_mut()
                .zip(row)
                .for_each(|(s, w)| *s += w.abs() as f64);
        }
        chunks.push((start, k));
        Conv {
            g,
            in_q,
            in_zp,
            k,
            weights,
            chunks,
            rq,
        }
    }

    /// Runs the convolution on one image.
    ///
    /// # Shapes
    /// `input`: `[ih, iw, ic]`; `output`: `[oh, ow, oc]`.
    pub(crate) fn run(&self, input: &[u8], output: &mut [u8]) {
        let (k, n) = (self.k, self.g.oc);
        let pixels = self.g.oh * self.g.ow;
        let tile = (TILE_VALUES / k.max(n)).clamp(8, 1024);
        let mut a = vec![0f32; tile.min(pixels) * k];
        let mut c = vec![0f32; tile.min(pixels) * n];
        let mut acc = if self.chunks.len() > 1 {
            vec![0i32; tile.min(pixels) * n]
        } else {
            Vec::new()
        };
        let mut part = Vec::new();
        for p0 in (0..pixels).step_by(tile) {
            let m = tile.min(pixels - p0);
            let (a, c) = (&mut a[..m * k], &mut c[..m * n]);
            im2col(self, input, p0, a);
            let out = &mut output[p0 * n..(p0 + m) * n];
            if let [(0, _)] = self.chunks[..] {
                matmul(c, a, Layout::N, &self.weights, Layout::N, m, n, k, false, 1);
                self.rq.rows_f32(c, out);
                continue;
            }
            let acc = &mut acc[..m * n];
            acc.fill(0);
            for &(k0, k1) in &self.chunks {
                let kc = k1 - k0;
                part.resize(m * kc, 0.0);
                for (dst, src) in part.chunks_exact_mut(kc).zip(a.chunks_exact(k)) {
                    dst.copy_from_slice(&src[k0..k1]);
                }
                matmul(
                    c,
                    &part,
                    Layout::N,
                    &self.weights[k0 * n..k1 * n],
                    Layout::N,
                    m,
                    n,
                    kc,
                    false,
                    1,
                );
                acc.iter_mut()
                    .zip(c.iter())
                    .for_each(|(s, &v)| *s = s.wrapping_add(v as i32));
            }
            self.rq.rows_i32(acc, out);
        }
    }
}

multiversion! {
    /// Fills `a` with the centred im2col rows of output pixels `p0..p0 + rows`.
    ///
    /// # Shapes
    /// `input`: `[ih, iw, ic]`; `a`: `[rows, k]`.
    fn im2col(conv: &Conv, input: &[u8], p0: usize, a: &mut [f32]) {
        let g = &conv.g;
        let (q, zp, k) = (conv.in_q, conv.in_zp, conv.k);
        let simple = g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.pt == 0 && g.pl == 0;
        if simple {
            // A 1x1 stride-1 convolution reads its input rows as they are.
            let src = &input[p0 * g.ic..p0 * g.ic + a.len()];
            return center_f32(src, a, q, zp);
        }
        for (r, row) in a.chunks_exact_mut(k).enumerate() {
            let (oy, ox) = ((p0 + r) / g.ow, (p0 + r) % g.ow);
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let dst = &mut row[(ky * g.kw + kx) * g.ic..][..g.ic];
                    match (g.in_y(oy, ky), g.in_x(ox, kx)) {
                        (Some(y), Some(x)) => center_f32(&input[(y * g.iw + x) * g.ic..][..g.ic], dst, q, zp),
                        // Padding is the zero point, i.e. 0 once centred.
                        _ => dst.fill(0.0),
                    }
                }
            }
        }
    }
}

/// A prepared DEPTHWISE_CONV_2D. Like [`Conv`] it sums in f32 where that is exact (always, for
/// kernels up to 16x16): products of centred 8-bit values are below 2^16, and `new` splits the
/// taps into runs whose per-channel sums provably stay below 2^24, flushed to int32 between runs.
#[derive(Clone, Debug)]
pub(crate) struct Depthwise {
    pub g: Geom,
    /// Output channels per input channel (`oc = ic * mult`).
    pub mult: usize,
    pub in_q: QType,
    pub in_zp: i32,
    /// Centred weights, `[kh * kw, oc]`.
    pub weights: Vec<f32>,
    /// Per tap: whether the f32 sums are flushed to int32 before it (false everywhere on real
    /// models).
    pub flush: Vec<bool>,
    pub rq: ChannelRequant,
}

impl Depthwise {
    /// Prepares a depthwise convolution from TFLite's filter.
    ///
    /// # Shapes
    /// `filter`: `[1, kh, kw, oc]` raw bytes of type `w_q`; `w_zp`: `[oc]`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        g: Geom,
        mult: usize,
        in_q: QType,
        in_zp: i32,
        filter: &[u8],
        w_q: QType,
        w_zp: &[i32],
        rq: ChannelRequant,
    ) -> Depthwise {
        let weights: Vec<f32> = filter
            .chunks_exact(g.oc)
            .flat_map(|tap| tap.iter().zip(w_zp).map(|(&w, &z)| (w_q.get(w) - z) as f32))
            .collect();
        let (lo, hi) = in_q.range();
        let max_x = (in_zp - lo).abs().max((hi - in_zp).abs()) as f64;
        let mut sums = vec![0f64; g.oc];
        let mut flush = Vec::with_capacity(g.kh * g.kw);
        for (t, tap) in weights.chunks_exact(g.oc).enumerate() {
            let over = sums
                .iter()
                .zip(tap)
                .any(|(s, w)| max_x * (s + w.abs() as f64) >= F32_EXACT);
            flush.push(over && t > 0);
            if over {
                sums.fill(0.0);
            }
            sums.iter_mut()
                .zip(tap)
                .for_each(|(s, w)| *s += w.abs() as f64);
        }
        Depthwise {
            g,
            mult,
            in_q,
            in_zp,
            weights,
            flush,
            rq,
        }
    }

    /// Runs the depthwise convolution on one image, one output row at a time.
    ///
    /// # Shapes
    /// `input`: `[ih, iw, ic]`; `output`: `[oh, ow, oc]`.
    pub(crate) fn run(&self, input: &[u8], output: &mut [u8]) {
        depthwise_run(self, input, output)
    }
}

multiversion! {
    fn depthwise_run(d: &Depthwise, input: &[u8], output: &mut [u8]) {
        let g = &d.g;
        let oc = g.oc;
        let mut acc = vec![0f32; g.ow * oc];
        let chunked = d.flush.iter().any(|&f| f);
        let mut acc_i = if chunked { vec![0i32; g.ow * oc] } else { Vec::new() };
        let mut row = vec![0f32; g.iw * oc];
        for (oy, out) in output.chunks_exact_mut(g.ow * oc).enumerate() {
            acc.fill(0.0);
            acc_i.fill(0);
            for ky in 0..g.kh {
                let Some(y) = g.in_y(oy, ky) else { continue };
                let src = &input[y * g.iw * g.ic..(y + 1) * g.iw * g.ic];
                center_row(src, &mut row, d.in_q, d.in_zp, d.mult);
                for kx in 0..g.kw {
                    let t = ky * g.kw + kx;
                    if d.flush[t] {
                        acc_i.iter_mut().zip(&mut acc).for_each(|(i, f)| {
                            *i = i.wrapping_add(*f as i32);
                            *f = 0.0;
                        });
                    }
                    depthwise_taps(g, kx, &row, &d.weights[t * oc..][..oc], &mut acc);
                }
            }
            if chunked {
                acc_i.iter_mut().zip(&acc).for_each(|(i, &f)| *i = i.wrapping_add(f as i32));
                requant_rows_i32(&d.rq, &acc_i, out);
            } else {
                requant_rows_f32(&d.rq, &acc, out);
            }
        }
    }
}

/// Zero-point-centred values as f32, each repeated `mult` times (depth multiplier).
#[inline(always)]
fn center_row(src: &[u8], dst: &mut [f32], q: QType, zp: i32, mult: usize) {
    if mult == 1 {
        center_f32(src, dst, q, zp);
    } else {
        for (d, &s) in dst.chunks_exact_mut(mult).zip(src) {
            d.fill((q.get(s) - zp) as f32);
        }
    }
}

/// Adds one filter tap's products to a row of accumulators (exact: see [`Depthwise`]).
///
/// # Shapes
/// `row`: `[iw, oc]` centred input row; `w`: `[oc]`; `acc`: `[ow, oc]`.
#[inline(always)]
fn depthwise_taps(g: &Geom, kx: usize, row: &[f32], w: &[f32], acc: &mut [f32]) {
    let oc = w.len();
    for (ox, a) in acc.chunks_exact_mut(oc).enumerate() {
        if let Some(x) = g.in_x(ox, kx) {
            let r = &row[x * oc..(x + 1) * oc];
            for c in 0..oc {
                a[c] += r[c] * w[c];
            }
        }
    }
}

/// Output size and leading padding of one spatial axis, as TFLite's `ComputeOutSize` and
/// `ComputePadding`: (out, pad_before). `None` when the window does not fit.
pub(crate) fn out_size(
    same: bool,
    input: usize,
    filter: usize,
    stride: usize,
    dilation: usize,
) -> Option<(usize, usize)> {
    let eff = (filter - 1).checked_mul(dilation)?.checked_add(1)?;
    let out = if same {
        input.div_ceil(stride)
    } else {
        (input + stride).checked_sub(eff)? / stride
    };
    let total = ((out.max(1) - 1) * stride + eff).saturating_sub(input);
    Some((out, total / 2))
}
