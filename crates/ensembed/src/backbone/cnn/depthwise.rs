//! Depthwise convolution (`groups == channels`), the layer of every MobileNet and EfficientNet
//! block between the two pointwise GEMMs. It does few multiply-adds per byte, so how it walks
//! memory decides its speed: the generic loop reads and writes the output row once per tap,
//! and the AVX-512 kernel below keeps each output vector in a register through all its taps,
//! with four independent accumulators (four neighbouring pixels inside the image, four channel
//! blocks at the borders) so that the additions' latency is hidden. Both add the bias first,
//! then the taps row by row with a separate multiply and add, so they give the same bits
//! (tested), whichever the CPU runs.

use super::layers::{Act, Fmap, Padding, Window, Workspace};
use crate::backbone::ops::multiversion;
use crate::error::{Error, Result};

/// A depthwise convolution (`groups == channels`, one filter per channel) with its batch norm
/// folded in.
#[derive(Clone, Debug)]
pub struct DepthwiseConv2d {
    pub c: usize,
    pub k: usize,
    pub stride: usize,
    pub padding: Padding,
    /// `[k, k, c]`
    weight: Vec<f32>,
    /// `[c]`
    bias: Vec<f32>,
}

impl DepthwiseConv2d {
    /// From PyTorch's layout.
    ///
    /// # Shapes
    /// `weight`: `[c, 1, k, k]`; `bias`: `[c]`.
    pub fn from_oihw(
        weight: &[f32],
        bias: Vec<f32>,
        c: usize,
        k: usize,
        stride: usize,
        padding: Padding,
    ) -> Self {
        assert_eq!(
            weight.len(),
            c * k * k,
            "depthwise weight is not [c, 1, k, k]"
        );
        assert_eq!(bias.len(), c, "depthwise bias is not [c]");
        let mut w = vec![0.0; weight.len()];
        for ch in 0..c {
            for t in 0..k * k {
                w[t * c + ch] = weight[ch * k * k + t];
            }
        }
        DepthwiseConv2d {
            c,
            k,
            stride,
            padding,
            weight: w,
            bias,
        }
    }

    /// Output (height, width) for an input of `h` x `w`.
    pub fn out_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        match (
            self.padding.resolve(h, self.k, self.stride),
            self.padding.resolve(w, self.k, self.stride),
        ) {
            (Some((oh, _)), Some((ow, _))) => Ok((oh, ow)),
            _ => Err(Error::shape(
                "depthwise convolution input",
                format!("at least the {0}x{0} kernel", self.k),
                format!("{h}x{w}"),
            )),
        }
    }

    /// Multiply-adds for an `h` x `w` input.
    pub fn macs(&self, h: usize, w: usize) -> Option<u64> {
        let (oh, ow) = self.out_size(h, w).ok()?;
        Some((oh * ow * self.c * self.k * self.k) as u64)
    }

    /// `act(depthwise(x) + bias)`.
    ///
    /// # Shapes
    /// `x`: `[h, w, c]`; returns `[oh, ow, c]`.
    pub fn forward(&self, x: &Fmap, act: Act, ws: &mut Workspace) -> Result<Fmap> {
        if x.c != self.c {
            return Err(Error::shape("depthwise input channels", self.c, x.c));
        }
        let (oh, ow) = self.out_size(x.h, x.w)?;
        let mut out = ws.fmap(oh, ow, self.c);
        self.forward_band(&x.data, 0, x.h, x.w, 0, &mut out.data, act);
        Ok(out)
    }

    /// Output rows `oy0..` (as many as `out` holds) of [`DepthwiseConv2d::forward`] over an `h`
    /// x `w` input of which only rows `first..` (as many as `band` holds) are at hand: a block
    /// that runs in bands of rows ([`super::mbconv`]) passes just the rows the band reads.
    ///
    /// # Shapes
    /// `band`: `[rows, w, c]`; `out`: `[out_rows, ow, c]`.
    ///
    /// # Panics
    /// When `band` lacks a row that the outputs read, or a size disagrees.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward_band(&self, band: &[f32], first: usize, h: usize, w: usize, oy0: usize, out: &mut [f32], act: Act) {
        let c = self.c;
        let (oh, ow) = self.out_size(h, w).expect("depthwise band of a map smaller than its kernel");
        let (_, pt) = self.padding.resolve(h, self.k, self.stride).unwrap();
        let (_, pl) = self.padding.resolve(w, self.k, self.stride).unwrap();
        assert!(w * c > 0 && band.len().is_multiple_of(w * c) && out.len().is_multiple_of(ow * c), "depthwise band is not whole rows");
        let (rows, out_rows) = (band.len() / (w * c), out.len() / (ow * c));
        assert!(oy0 + out_rows <= oh, "depthwise band: output rows {oy0}+{out_rows} of {oh}");
        if out_rows == 0 {
            return;
        }
        // The input rows these outputs read, clipped to the map, must all be in the band.
        let need_lo = (oy0 * self.stride).saturating_sub(pt);
        let need_hi = ((oy0 + out_rows - 1) * self.stride + self.k).saturating_sub(pt).min(h);
        let g = if need_hi <= need_lo {
            // Outputs whose windows lie wholly in the padding (a padding wider than the
            // kernel): no input rows, bias only.
            Window { h: 0, w, c, ow, k: self.k, stride: self.stride, pt: 0, pl }
        } else {
            assert!(first <= need_lo && need_hi <= first + rows, "depthwise band: rows {first}..{} lack {need_lo}..{need_hi}", first + rows);
            // From its first needed row on, the band's own coordinates have `pt + need_lo - oy0
            // * stride` (>= 0) rows of padding above its first output row; rows past its end are
            // either past the map or read by no output here, so taking them for padding is exact.
            let skip = need_lo - first;
            Window { h: rows - skip, w, c, ow, k: self.k, stride: self.stride, pt: pt + need_lo - oy0 * self.stride, pl }
        };
        let band = &band[(band.len() - g.h * w * c)..];
        for (oy, row) in out.chunks_exact_mut(ow * c).enumerate() {
            depthwise_row(&g, band, &self.weight, &self.bias, oy, row, act);
        }
    }
}


/// One output row: the whole blocks of [`avx512::LANES`] channels through the AVX-512 kernel
/// where the CPU has it, the rest (or all) through [`depthwise_row_generic`].
///
/// # Shapes
/// `x`: `[h, w, c]`; `weight`: `[k, k, c]`; `bias`: `[c]`; `row`: `[ow, c]`.
fn depthwise_row(g: &Window, x: &[f32], weight: &[f32], bias: &[f32], oy: usize, row: &mut [f32], act: Act) {
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if g.c >= avx512::LANES && g.k <= avx512::MAX_K && std::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; `row` checks every size it relies on.
        done = unsafe { avx512::row(g, x, weight, bias, oy, row, act) };
    }
    if done < g.c {
        depthwise_row_generic(g, x, weight, bias, oy, row, act, done);
    }
}

multiversion! {
    /// Channels `from..c` of one output row: bias, then each tap's channel vector
    /// multiply-added over the whole row (the loop over channels vectorises), then the
    /// activation.
    ///
    /// # Shapes
    /// As [`depthwise_row`].
    #[allow(clippy::too_many_arguments)]
    fn depthwise_row_generic(g: &Window, x: &[f32], weight: &[f32], bias: &[f32], oy: usize, row: &mut [f32], act: Act, from: usize) {
        let c = g.c;
        for o in row.chunks_exact_mut(c) {
            o[from..].copy_from_slice(&bias[from..]);
        }
        for ky in 0..g.k {
            let iy = (oy * g.stride + ky).wrapping_sub(g.pt);
            if iy >= g.h {
                continue;
            }
            let xrow = &x[iy * g.w * c..(iy + 1) * g.w * c];
            for kx in 0..g.k {
                let wv = &weight[(ky * g.k + kx) * c + from..(ky * g.k + kx + 1) * c];
                for ox in 0..g.ow {
                    let ix = (ox * g.stride + kx).wrapping_sub(g.pl);
                    if ix >= g.w {
                        continue;
                    }
                    let xs = &xrow[ix * c + from..(ix + 1) * c];
                    let o = &mut row[ox * c + from..(ox + 1) * c];
                    for ((ov, &xv), &w) in o.iter_mut().zip(xs).zip(wv) {
                        *ov += xv * w;
                    }
                }
            }
        }
        let (lo, hi) = match act {
            Act::None => return,
            Act::Relu => (0.0, f32::INFINITY),
            Act::Relu6 => (0.0, 6.0),
        };
        for o in row.chunks_exact_mut(c) {
            for v in &mut o[from..] {
                *v = v.max(lo).min(hi);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Act, Window};

    /// Channels per vector.
    pub const LANES: usize = 16;
    /// Largest kernel side the kernel takes (its row list is a fixed array).
    pub const MAX_K: usize = 16;
    /// Accumulators in flight.
    const P: usize = 4;

    /// `act` as a clamp: `None` when there is none (a clamp to ±inf would turn NaN into -inf,
    /// which the generic loop leaves alone).
    fn clamp(act: Act) -> Option<(f32, f32)> {
        match act {
            Act::None => None,
            Act::Relu => Some((0.0, f32::INFINITY)),
            Act::Relu6 => Some((0.0, 6.0)),
        }
    }

    /// `max(v, lo)` then `min(., hi)` as `f32::max`/`min` do it: `_mm512_max_ps` returns its
    /// second operand when either is NaN, so a NaN sum becomes `lo`, as with `f32::max`.
    #[inline(always)]
    unsafe fn store(dst: *mut f32, v: __m512, bounds: Option<(__m512, __m512)>) {
        let v = match bounds {
            Some((lo, hi)) => _mm512_min_ps(_mm512_max_ps(v, lo), hi),
            None => v,
        };
        _mm512_storeu_ps(dst, v);
    }

    /// Channels `0..LANES * (c / LANES)` of output row `oy`; returns how many channels it wrote.
    ///
    /// # Safety
    /// The CPU must have AVX-512F. The sizes are checked here (a panic, not a wild read).
    ///
    /// # Shapes
    /// `x`: `[h, w, c]`; `weight`: `[k, k, c]`; `bias`: `[c]`; `out`: `[ow, c]`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn row(g: &Window, x: &[f32], weight: &[f32], bias: &[f32], oy: usize, out: &mut [f32], act: Act) -> usize {
        let (c, k, s) = (g.c, g.k, g.stride);
        assert!(k <= MAX_K && s >= 1);
        assert!(x.len() >= g.h * g.w * c && weight.len() >= k * k * c && bias.len() >= c && out.len() >= g.ow * c);
        let blocks = c / LANES;
        let bounds = clamp(act).map(|(lo, hi)| (_mm512_set1_ps(lo), _mm512_set1_ps(hi)));
        let (xp, wp, bp, op) = (x.as_ptr(), weight.as_ptr(), bias.as_ptr(), out.as_mut_ptr());
        // The kernel rows inside the image: (ky, offset of input row iy).
        let mut rows = [(0usize, 0usize); MAX_K];
        let mut nrows = 0;
        for ky in 0..k {
            let iy = (oy * s + ky).wrapping_sub(g.pt);
            if iy < g.h {
                rows[nrows] = (ky, iy * g.w * c);
                nrows += 1;
            }
        }
        let rows = &rows[..nrows];
        // Output columns whose whole window lies inside the image: [first, end).
        let first = g.pl.div_ceil(s).min(g.ow);
        let end = if g.w + g.pl >= k { ((g.w + g.pl - k) / s + 1).clamp(first, g.ow) } else { first };
        // Inside: P neighbouring pixels of one channel block at a time.
        let inner_end = first + (end - first) / P * P;
        for blk in 0..blocks {
            let c0 = blk * LANES;
            let b = _mm512_loadu_ps(bp.add(c0));
            let mut ox = first;
            while ox < inner_end {
                let mut a = [b; P];
                for &(ky, r) in rows {
                    for kx in 0..k {
                        let wv = _mm512_loadu_ps(wp.add((ky * k + kx) * c + c0));
                        let base = xp.add(r + (ox * s + kx - g.pl) * c + c0);
                        for (p, acc) in a.iter_mut().enumerate() {
                            let xv = _mm512_loadu_ps(base.add(p * s * c));
                            *acc = _mm512_add_ps(*acc, _mm512_mul_ps(xv, wv));
                        }
                    }
                }
                for (p, acc) in a.iter().enumerate() {
                    store(op.add((ox + p) * c + c0), *acc, bounds);
                }
                ox += P;
            }
        }
        // The rest (borders, and what the groups of P left inside): one pixel, P channel
        // blocks at a time, over the columns of the window inside the image.
        for ox in (0..first).chain(inner_end..g.ow) {
            let kx_lo = g.pl.saturating_sub(ox * s);
            let kx_hi = (g.w + g.pl).saturating_sub(ox * s).min(k);
            let mut blk = 0;
            while blk < blocks {
                let n = (blocks - blk).min(P);
                let c0 = blk * LANES;
                let mut a = [_mm512_setzero_ps(); P];
                for (j, acc) in a.iter_mut().enumerate().take(n) {
                    *acc = _mm512_loadu_ps(bp.add(c0 + j * LANES));
                }
                for &(ky, r) in rows {
                    for kx in kx_lo..kx_hi {
                        let xb = xp.add(r + (ox * s + kx - g.pl) * c + c0);
                        let wb = wp.add((ky * k + kx) * c + c0);
                        for (j, acc) in a.iter_mut().enumerate().take(n) {
                            let xv = _mm512_loadu_ps(xb.add(j * LANES));
                            let wv = _mm512_loadu_ps(wb.add(j * LANES));
                            *acc = _mm512_add_ps(*acc, _mm512_mul_ps(xv, wv));
                        }
                    }
                }
                for (j, acc) in a.iter().enumerate().take(n) {
                    store(op.add(ox * c + c0 + j * LANES), *acc, bounds);
                }
                blk += n;
            }
        }
        blocks * LANES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX-512 kernel gives the generic loop's bits, at the borders and inside, for the
    /// strides, paddings and kernels the networks use, with a tail of channels left to the
    /// generic loop.
    #[test]
    fn vector_kernel_equals_generic_bit_for_bit() {
        let mut seed = 1u32;
        let mut next = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        for (h, w, c, k, stride, padding) in [
            (9, 11, 32, 3, 1, Padding::Same),
            (10, 10, 48, 3, 2, Padding::Same),
            (12, 7, 16, 5, 1, Padding::Same),
            (13, 13, 40, 5, 2, Padding::Explicit { before: 1, after: 2 }),
            (6, 6, 80, 3, 1, Padding::Symmetric(1)),
            (2, 3, 16, 5, 1, Padding::Same),
            (7, 7, 24, 7, 1, Padding::Symmetric(3)),
        ] {
            let x: Vec<f32> = (0..h * w * c).map(|_| next() * 4.0).collect();
            let weight: Vec<f32> = (0..k * k * c).map(|_| next()).collect();
            let bias: Vec<f32> = (0..c).map(|_| next()).collect();
            let (oh, pt) = padding.resolve(h, k, stride).unwrap();
            let (ow, pl) = padding.resolve(w, k, stride).unwrap();
            let g = Window { h, w, c, ow, k, stride, pt, pl };
            for act in [Act::None, Act::Relu6] {
                for oy in 0..oh {
                    let mut fast = vec![f32::NAN; ow * c];
                    let mut slow = vec![f32::NAN; ow * c];
                    depthwise_row(&g, &x, &weight, &bias, oy, &mut fast, act);
                    depthwise_row_generic(&g, &x, &weight, &bias, oy, &mut slow, act, 0);
                    let same = fast.iter().zip(&slow).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{h}x{w}x{c} k{k} s{stride} {padding:?} {act:?} row {oy}");
                }
            }
        }
    }
}
