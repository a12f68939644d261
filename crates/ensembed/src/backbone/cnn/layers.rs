//! The float layers of an inference-only CNN: dense convolution (any kernel, stride and
//! padding; 1x1 stride-1 convolutions straight from the activations, other stride-1 ones over 16
//! or more channels from a zero-padded copy of the input where the weights are packed, the rest
//! through an im2col tile), depthwise convolution, max pooling, global average pooling and
//! linear heads, all on one image at a time in NHWC (`[height, width, channels]`, channels
//! contiguous).
//!
//! Why NHWC: a 1x1 convolution is then exactly one GEMM, `[h*w, ic] · [ic, oc]`, with no copy;
//! a k x k one is a GEMM over an im2col block whose rows are runs of `ic` contiguous floats
//! (one copy per tap), or, at stride 1, over strided views of the padded input that need no
//! block at all ([`crate::kernels::ShiftedRows`]); and a depthwise convolution vectorises over
//! the channels. Batch norm is folded into the preceding convolution when the model is built
//! ([`fold_batch_norm`]), so every convolution here is `act(conv(x) + bias [+ residual])`, with
//! bias, residual and activation applied to each output tile while it is still in registers
//! (packed weights, AVX-512) or in cache (the `gemm` crate). Convolutions run in tiles of output
//! rows small enough that the tile's im2col block and output stay in L2, which also bounds the
//! scratch memory whatever the image size.
//!
//! Buffers come from a per-thread [`Workspace`], so that the steady state allocates nothing:
//! fresh multi-megabyte allocations cost page faults on every layer of every image.

use std::cell::RefCell;
use std::mem::MaybeUninit;

use crate::backbone::ops::multiversion;
use crate::error::{Error, Result};
use crate::kernels::{
    matmul, matmul_packed_shifted_uninit, matmul_packed_uninit, packed_available, Epilogue, Layout,
    PackedB, ShiftedRows,
};

/// Bytes of im2col block plus output aimed at per tile (the L2 of current x86 cores is
/// 1-2 MiB; half of it leaves room for the packed weights).
const TILE_BYTES: usize = 512 << 10;
/// The same for weights packed at load: measured best at a quarter of L2 (ResNet-50 on two
/// threads, 2026-12-02: 0.87 of onnxruntime at 512 KiB, 0.91-0.93 at 256 KiB, 0.90 at 128 KiB),
/// as the weights' depth block and the other thread's share of L3 want the rest.
const PACKED_TILE_BYTES: usize = 256 << 10;

/// A feature map of one image, NHWC.
///
/// # Shapes
/// `data`: `[h, w, c]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Fmap {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub data: Vec<f32>,
}

impl Fmap {
    /// Pixels (`h * w`).
    pub fn pixels(&self) -> usize {
        self.h * self.w
    }
}

/// The activation applied after a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    None,
    Relu,
    Relu6,
}

/// How a convolution or pooling window is padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    /// PyTorch's `padding=p`: `p` zeros on every side.
    Symmetric(usize),
    /// TensorFlow's "SAME": output `ceil(in / stride)`, the padding that needs split with the
    /// odd one after (bottom/right), as `Conv2dStaticSamePadding` of the EfficientNet ports.
    Same,
    /// `before` zeros above and left, `after` below and right: ONNX's explicit `pads` when they
    /// differ between the two ends (what tf2onnx writes for TensorFlow's "SAME").
    Explicit { before: usize, after: usize },
}

impl Padding {
    /// (output size, padding before) along one axis of `input` samples.
    pub fn resolve(self, input: usize, kernel: usize, stride: usize) -> Option<(usize, usize)> {
        match self {
            Padding::Symmetric(p) => {
                let span = input + 2 * p;
                (span >= kernel).then(|| ((span - kernel) / stride + 1, p))
            }
            Padding::Same => {
                let out = input.div_ceil(stride);
                let total = ((out - 1) * stride + kernel).saturating_sub(input);
                Some((out, total / 2))
            }
            Padding::Explicit { before, after } => {
                let span = input + before + after;
                (span >= kernel).then(|| ((span - kernel) / stride + 1, before))
            }
        }
    }
}

/// Scratch buffers reused across layers and images (one per thread).
#[derive(Default)]
pub struct Workspace {
    free: Vec<Vec<f32>>,
}

thread_local! {
    static WORKSPACE: RefCell<Workspace> = RefCell::new(Workspace::default());
}

impl Workspace {
    /// Runs `f` with this thread's workspace. The workspace is moved out for the duration, so a
    /// nested call on the same thread (rayon work stealing inside a threaded GEMM) gets a fresh
    /// one instead of a double borrow.
    pub fn with<R>(f: impl FnOnce(&mut Workspace) -> R) -> R {
        let mut ws = WORKSPACE.with(|w| std::mem::take(&mut *w.borrow_mut()));
        let r = f(&mut ws);
        WORKSPACE.with(|w| {
            let mut slot = w.borrow_mut();
            // Keep the larger pool when a nested call left one behind.
            if slot.free.len() < ws.free.len() {
                *slot = ws;
            }
        });
        r
    }

    /// A buffer of `len` floats with unspecified (initialised) contents: the smallest free one
    /// that fits, so that the same layer sizes image after image reuse the same buffers.
    pub fn take(&mut self, len: usize) -> Vec<f32> {
        let mut v = self.pick(len);
        if v.len() >= len {
            v.truncate(len);
        } else {
            v.resize(len, 0.0);
        }
        v
    }

    /// An empty buffer with room for `len` floats (the one [`Workspace::take`] would pick), for
    /// a caller that writes all of them through `spare_capacity_mut` and then sets the length.
    pub fn take_spare(&mut self, len: usize) -> Vec<f32> {
        let mut v = self.pick(len);
        v.clear();
        v.reserve(len);
        v
    }

    /// The smallest free buffer with room for `len` floats, or a new one.
    fn pick(&mut self, len: usize) -> Vec<f32> {
        let best = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= len)
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i);
        best.map_or_else(|| Vec::with_capacity(len), |i| self.free.swap_remove(i))
    }

    /// Returns a buffer for reuse.
    pub fn give(&mut self, v: Vec<f32>) {
        if v.capacity() > 0 {
            self.free.push(v);
        }
    }

    /// A feature map of the given size with unspecified contents.
    pub fn fmap(&mut self, h: usize, w: usize, c: usize) -> Fmap {
        Fmap {
            h,
            w,
            c,
            data: self.take(h * w * c),
        }
    }

    /// Returns a feature map's buffer for reuse.
    pub fn recycle(&mut self, f: Fmap) {
        self.give(f.data);
    }
}

/// A PyTorch `BatchNorm2d` in eval mode.
pub struct BatchNorm<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub mean: &'a [f32],
    pub var: &'a [f32],
    pub eps: f64,
}

/// Folds `bn(conv(x) + bias)` into one convolution: per output channel `o`, with
/// `s = gamma / sqrt(var + eps)`, the weights scale by `s` and the bias becomes
/// `beta + s * (bias - mean)`. Computed in f64, rounded once.
///
/// # Shapes
/// `weight`: `[oc, rest...]` (any trailing shape), modified in place; `bias`: `[oc]` or empty
/// (no conv bias). Returns the folded bias `[oc]`.
pub fn fold_batch_norm(weight: &mut [f32], bias: &[f32], bn: &BatchNorm) -> Vec<f32> {
    let oc = bn.gamma.len();
    let per = weight.len() / oc;
    let mut out = Vec::with_capacity(oc);
    for o in 0..oc {
        let s = bn.gamma[o] as f64 / (bn.var[o] as f64 + bn.eps).sqrt();
        for w in &mut weight[o * per..(o + 1) * per] {
            *w = (*w as f64 * s) as f32;
        }
        let b = bias.get(o).map_or(0.0, |&b| b as f64);
        out.push((bn.beta[o] as f64 + s * (b - bn.mean[o] as f64)) as f32);
    }
    out
}

/// A dense 2-D convolution with its batch norm folded in.
#[derive(Clone, Debug)]
pub struct Conv2d {
    pub ic: usize,
    pub oc: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub padding: Padding,
    /// `[kh, kw, ic, oc]`: row `(ky * kw + kx) * ic + c` of the GEMM's right operand.
    weight: ConvWeight,
    /// `[oc]`
    bias: Vec<f32>,
}

/// A convolution's GEMM operand `[kh * kw * ic, oc]`: packed once for the AVX-512 kernel where
/// the CPU has it, row-major for the `gemm` crate elsewhere.
#[derive(Clone, Debug)]
enum ConvWeight {
    Plain(Vec<f32>),
    Packed(PackedB),
}

impl ConvWeight {
    /// # Shapes
    /// `w`: `[k, n]` row-major.
    fn new(w: Vec<f32>, k: usize, n: usize, pack: bool) -> ConvWeight {
        if pack {
            ConvWeight::Packed(PackedB::pack(&w, k, n))
        } else {
            ConvWeight::Plain(w)
        }
    }

    /// Element `(row, o)`.
    fn at(&self, row: usize, o: usize, n: usize) -> f32 {
        match self {
            ConvWeight::Plain(w) => w[row * n + o],
            ConvWeight::Packed(p) => p.get(row, o),
        }
    }

    /// The row-major `[k, n]` matrix.
    fn plain(&self, k: usize, n: usize) -> Vec<f32> {
        match self {
            ConvWeight::Plain(w) => w.clone(),
            ConvWeight::Packed(p) => (0..k * n).map(|i| p.get(i / n, i % n)).collect(),
        }
    }
}

impl Act {
    /// The activation as a clamp `[lo, hi]`.
    fn bounds(self) -> (f32, f32) {
        match self {
            Act::None => (f32::NEG_INFINITY, f32::INFINITY),
            Act::Relu => (0.0, f32::INFINITY),
            Act::Relu6 => (0.0, 6.0),
        }
    }
}

impl Conv2d {
    /// From PyTorch's layout.
    ///
    /// # Shapes
    /// `weight`: `[oc, ic, kh, kw]` (OIHW, row-major); `bias`: `[oc]`.
    pub fn from_oihw(
        weight: &[f32],
        bias: Vec<f32>,
        [oc, ic, kh, kw]: [usize; 4],
        stride: usize,
        padding: Padding,
    ) -> Conv2d {
        assert_eq!(
            weight.len(),
            oc * ic * kh * kw,
            "conv weight is not [oc, ic, kh, kw]"
        );
        assert_eq!(bias.len(), oc, "conv bias is not [oc]");
        assert!(stride >= 1, "conv stride 0");
        let mut w = vec![0.0; weight.len()];
        for o in 0..oc {
            for c in 0..ic {
                for y in 0..kh {
                    for x in 0..kw {
                        w[((y * kw + x) * ic + c) * oc + o] =
                            weight[((o * ic + c) * kh + y) * kw + x];
                    }
                }
            }
        }
        Conv2d {
            ic,
            oc,
            kh,
            kw,
            stride,
            padding,
            weight: ConvWeight::new(w, kh * kw * ic, oc, packed_available()),
            bias,
        }
    }

    /// Whether the weights are packed for the AVX-512 kernel (the default where the CPU has
    /// it) or kept for the `gemm` crate. Both give the same convolution up to f32 rounding;
    /// the choice exists for tests and benchmarks that compare the two.
    pub fn packed(&self) -> bool {
        matches!(self.weight, ConvWeight::Packed(_))
    }

    /// The same convolution with its weights packed (`true`, where the CPU has AVX-512) or
    /// row-major for the `gemm` crate (`false`).
    pub fn with_packing(mut self, pack: bool) -> Conv2d {
        let (k, n) = (self.kh * self.kw * self.ic, self.oc);
        let pack = pack && packed_available();
        if pack != self.packed() {
            self.weight = ConvWeight::new(self.weight.plain(k, n), k, n, pack);
        }
        self
    }

    /// Multiply-adds for an `h` x `w` input.
    pub fn macs(&self, h: usize, w: usize) -> Option<u64> {
        let (oh, ow) = self.out_size(h, w).ok()?;
        Some((oh * ow * self.oc * self.kh * self.kw * self.ic) as u64)
    }

    /// Whether this is a pointwise convolution: 1x1, stride 1, no padding, so that it is one
    /// GEMM over any run of pixels ([`Conv2d::pointwise_uninit`]).
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding.resolve(1, 1, 1) == Some((1, 0))
    }

    /// `act(conv(x) + bias + residual)` for output rows of a stride-1 convolution with packed
    /// weights, read in place from `padded`, the band of its input those rows read with the
    /// convolution's padding already in it, into memory that need not be initialised (every
    /// float of `out` is written). Blocks that run in bands of rows call it on each band.
    ///
    /// # Shapes
    /// `padded`: `[rows + kh - 1, ow + kw - 1, ic]`; `residual`, `out`: `[rows, ow, oc]`.
    ///
    /// # Panics
    /// When the weights are not packed ([`Conv2d::packed`]), the stride is not 1, or a shape
    /// disagrees.
    pub(super) fn padded_band_uninit(
        &self,
        padded: &[f32],
        ow: usize,
        residual: Option<&[f32]>,
        act: Act,
        out: &mut [MaybeUninit<f32>],
        threads: usize,
    ) {
        let ConvWeight::Packed(w) = &self.weight else { panic!("padded_band_uninit needs packed weights") };
        assert_eq!(self.stride, 1, "padded_band_uninit at stride {}", self.stride);
        let m = out.len() / self.oc;
        assert!(ow > 0 && out.len() == m * self.oc && m.is_multiple_of(ow), "padded_band_uninit: out is not whole rows");
        let wp = ow + self.kw - 1;
        assert_eq!(padded.len(), (m / ow + self.kh - 1) * wp * self.ic, "padded_band_uninit: padded is not the band's input");
        let (lo, hi) = act.bounds();
        let epi = Epilogue { bias: &self.bias, residual, lo, hi };
        let rows = ShiftedRows { x: padded, wp, c: self.ic, kh: self.kh, kw: self.kw, ow, first: 0 };
        matmul_packed_shifted_uninit(out, &rows, w, m, &epi, threads);
    }

    /// `act(x · W + bias + residual)` over a run of pixels, for a pointwise convolution, into
    /// memory that need not be initialised: every float of `out` is written. Blocks that run in
    /// bands of rows ([`super::mbconv`]) call it on each band.
    ///
    /// # Shapes
    /// `x`: `[rows, ic]`; `residual`: `[rows, oc]`; `out`: `[rows, oc]`.
    ///
    /// # Panics
    /// When the convolution is not pointwise or a shape disagrees.
    pub(super) fn pointwise_uninit(
        &self,
        x: &[f32],
        residual: Option<&[f32]>,
        act: Act,
        out: &mut [MaybeUninit<f32>],
        threads: usize,
    ) {
        assert!(self.is_pointwise(), "pointwise_uninit on a {}x{} stride-{} convolution", self.kh, self.kw, self.stride);
        let rows = x.len() / self.ic;
        assert!(x.len() == rows * self.ic && out.len() == rows * self.oc, "pointwise_uninit: x or out is not whole rows");
        match &self.weight {
            ConvWeight::Packed(w) => {
                let (lo, hi) = act.bounds();
                let epi = Epilogue { bias: &self.bias, residual, lo, hi };
                matmul_packed_uninit(out, x, w, rows, &epi, threads);
            }
            ConvWeight::Plain(w) => {
                out.fill(MaybeUninit::new(0.0));
                // SAFETY: every element was just initialised, and f32 and MaybeUninit<f32>
                // share their layout.
                let out = unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) };
                matmul(out, x, Layout::N, w, Layout::N, rows, self.oc, self.ic, false, threads);
                epilogue(out, &self.bias, residual, act);
            }
        }
    }

    /// The weights back in PyTorch's (and ONNX's) layout, for export.
    ///
    /// # Shapes
    /// Returns `[oc, ic, kh, kw]`.
    pub fn weight_oihw(&self) -> Vec<f32> {
        let (oc, ic, kh, kw) = (self.oc, self.ic, self.kh, self.kw);
        let mut w = vec![0.0; oc * ic * kh * kw];
        for o in 0..oc {
            for c in 0..ic {
                for y in 0..kh {
                    for x in 0..kw {
                        w[((o * ic + c) * kh + y) * kw + x] = self.weight.at((y * kw + x) * ic + c, o, oc);
                    }
                }
            }
        }
        w
    }

    /// The (folded) bias. `[oc]`
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// Output (height, width) for an input of `h` x `w`.
    pub fn out_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let oh = self.padding.resolve(h, self.kh, self.stride);
        let ow = self.padding.resolve(w, self.kw, self.stride);
        match (oh, ow) {
            (Some((oh, _)), Some((ow, _))) => Ok((oh, ow)),
            _ => Err(Error::shape(
                "convolution input",
                format!("at least the {}x{} kernel", self.kh, self.kw),
                format!("{h}x{w}"),
            )),
        }
    }

    /// `act(conv(x) + bias + residual)`; `threads` > 1 splits each GEMM over rayon's pool.
    ///
    /// # Shapes
    /// `x`: `[h, w, ic]`; `residual`: `[oh, ow, oc]`; returns `[oh, ow, oc]`.
    pub fn forward(
        &self,
        x: &Fmap,
        residual: Option<&Fmap>,
        act: Act,
        ws: &mut Workspace,
        threads: usize,
    ) -> Result<Fmap> {
        if x.c != self.ic {
            return Err(Error::shape("convolution input channels", self.ic, x.c));
        }
        let (oh, ow) = self.out_size(x.h, x.w)?;
        let (_, pt) = self.padding.resolve(x.h, self.kh, self.stride).unwrap();
        let (_, pl) = self.padding.resolve(x.w, self.kw, self.stride).unwrap();
        if let Some(r) = residual {
            if (r.h, r.w, r.c) != (oh, ow, self.oc) {
                return Err(Error::shape(
                    "residual",
                    format!("{oh}x{ow}x{}", self.oc),
                    format!("{}x{}x{}", r.h, r.w, r.c),
                ));
            }
        }
        // The packed kernel writes every output float, so its buffer is not zeroed first
        // (refilling recycled buffers cost EfficientNet-Lite0 about 10 MB of writes per image).
        let mut data = if self.packed() {
            ws.take_spare(oh * ow * self.oc)
        } else {
            ws.take(oh * ow * self.oc)
        };
        let k = self.kh * self.kw * self.ic;
        let m = oh * ow;
        let n = self.oc;
        // A pointwise stride-1 convolution reads its GEMM operand straight from the input.
        let direct = self.kh == 1 && self.kw == 1 && self.stride == 1 && (oh, ow) == (x.h, x.w) && pt == 0 && pl == 0;
        // With packed weights, a stride-1 convolution over enough channels reads its receptive
        // fields in place from a zero-padded copy of the input (about a ninth of an im2col
        // block for 3x3); few channels (the RGB stem) would make each tap's run too short.
        let shifted = self.packed() && self.stride == 1 && !direct && self.ic >= SHIFTED_MIN_CHANNELS;
        let rows = tile_rows(m, k, n, self.packed());
        let mut cols = if direct || shifted {
            Vec::new()
        } else {
            ws.take(rows * k)
        };
        let geom = Im2col {
            h: x.h,
            w: x.w,
            c: x.c,
            ow,
            kh: self.kh,
            kw: self.kw,
            stride: self.stride,
            pt,
            pl,
        };
        let padded = shifted.then(|| pad(&geom, &x.data, oh, ws));
        let mut p0 = 0;
        while p0 < m {
            let p1 = (p0 + rows).min(m);
            let t = p1 - p0;
            let res = residual.map(|r| &r.data[p0 * n..p1 * n]);
            // The GEMM's stored left operand (none where the shifted rows read the input).
            let a: &[f32] = if direct {
                &x.data[p0 * k..p1 * k]
            } else if shifted {
                &[]
            } else {
                im2col(&geom, &x.data, p0, p1, &mut cols[..t * k]);
                &cols[..t * k]
            };
            match &self.weight {
                ConvWeight::Packed(w) => {
                    let c_tile = &mut data.spare_capacity_mut()[p0 * n..p1 * n];
                    let (lo, hi) = act.bounds();
                    let epi = Epilogue {
                        bias: &self.bias,
                        residual: res,
                        lo,
                        hi,
                    };
                    if let Some(xp) = &padded {
                        let a = ShiftedRows { x: xp, wp: ow + self.kw - 1, c: x.c, kh: self.kh, kw: self.kw, ow, first: p0 };
                        matmul_packed_shifted_uninit(c_tile, &a, w, t, &epi, threads);
                    } else {
                        matmul_packed_uninit(c_tile, a, w, t, &epi, threads);
                    }
                }
                ConvWeight::Plain(w) => {
                    let c_tile = &mut data[p0 * n..p1 * n];
                    matmul(c_tile, a, Layout::N, w, Layout::N, t, n, k, false, threads);
                    epilogue(c_tile, &self.bias, res, act);
                }
            }
            p0 = p1;
        }
        if let Some(xp) = padded {
            ws.give(xp);
        }
        if self.packed() {
            // SAFETY: the tiles cover rows 0..m, and `matmul_packed*_uninit` write every float of
            // their output (their contract), so the first m * n floats are initialised.
            unsafe { data.set_len(m * n) };
        }
        let out = Fmap { h: oh, w: ow, c: self.oc, data };
        ws.give(cols);
        Ok(out)
    }
}

/// Output rows per GEMM tile. Through the gemm crate each tile re-packs the weights, so a layer
/// whose weights are large next to its activations (the deep, small-map layers) runs as one GEMM;
/// the others, and every layer with packed weights (which only re-reads them), run in tiles whose
/// im2col block and output fit in L2.
fn tile_rows(m: usize, k: usize, n: usize, packed: bool) -> usize {
    let weights = k * n * 4;
    if !packed && weights >= TILE_BYTES / 2 && m * k * 4 <= MAX_UNTILED_BYTES {
        return m;
    }
    let budget = if packed { PACKED_TILE_BYTES } else { TILE_BYTES };
    (budget / 4 / (k + n)).clamp(16, m.max(16)).min(m)
}

/// Fewest input channels for which a stride-1 convolution with packed weights reads its
/// receptive fields in place ([`matmul_packed_shifted`]) rather than through im2col: each tap
/// is then a run of at least this many floats for the GEMM's inner loop.
const SHIFTED_MIN_CHANNELS: usize = 16;

/// The input of a stride-1 convolution with its padding as zeros: `[oh + kh - 1, ow + kw - 1,
/// c]`, input pixel `(y, x)` at `(y + pt, x + pl)`.
fn pad(g: &Im2col, x: &[f32], oh: usize, ws: &mut Workspace) -> Vec<f32> {
    let (hp, wp, c) = (oh + g.kh - 1, g.ow + g.kw - 1, g.c);
    let mut xp = ws.take(hp * wp * c);
    for (y, row) in xp.chunks_exact_mut(wp * c).enumerate() {
        let iy = y.wrapping_sub(g.pt);
        if iy >= g.h {
            row.fill(0.0);
            continue;
        }
        // At stride 1, `wp = pl + w + pr`: the row is left padding, the input row, right padding.
        row[..g.pl * c].fill(0.0);
        row[g.pl * c..(g.pl + g.w) * c].copy_from_slice(&x[iy * g.w * c..(iy + 1) * g.w * c]);
        row[(g.pl + g.w) * c..].fill(0.0);
    }
    xp
}

/// Largest im2col block built in one piece when tiling is skipped.
const MAX_UNTILED_BYTES: usize = 16 << 20;

/// Where an im2col block reads from.
struct Im2col {
    h: usize,
    w: usize,
    c: usize,
    ow: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pt: usize,
    pl: usize,
}

multiversion! {
    /// Fills `cols` with the receptive fields of output pixels `p0..p1` (zeros in the padding).
    /// (AVX-512 copies measured no faster than AVX2's here: the copy is bound by its stores.)
    ///
    /// # Shapes
    /// `x`: `[h, w, c]`; `cols`: `[p1 - p0, kh * kw * c]`.
    fn im2col(g: &Im2col, x: &[f32], p0: usize, p1: usize, cols: &mut [f32]) {
        let c = g.c;
        let k = g.kh * g.kw * c;
        for (p, row) in (p0..p1).zip(cols.chunks_exact_mut(k)) {
            let (oy, ox) = (p / g.ow, p % g.ow);
            for ky in 0..g.kh {
                let iy = (oy * g.stride + ky).wrapping_sub(g.pt);
                let dst = &mut row[ky * g.kw * c..(ky + 1) * g.kw * c];
                if iy >= g.h {
                    dst.fill(0.0);
                    continue;
                }
                let x0 = (ox * g.stride) as isize - g.pl as isize;
                if x0 >= 0 && x0 as usize + g.kw <= g.w {
                    // The whole kernel row is inside: one contiguous run of kw * c floats.
                    let s = (iy * g.w + x0 as usize) * c;
                    copy_run(dst, &x[s..s + g.kw * c]);
                    continue;
                }
                for kx in 0..g.kw {
                    let ix = (x0 + kx as isize) as usize;
                    let d = &mut dst[kx * c..(kx + 1) * c];
                    if ix >= g.w {
                        d.fill(0.0);
                    } else {
                        let s = (iy * g.w + ix) * c;
                        copy_run(d, &x[s..s + c]);
                    }
                }
            }
        }
    }
}

/// `dst.copy_from_slice(src)`, with runs shorter than 64 floats copied inline in 16-float
/// blocks rather than by a call to `memmove` per run: im2col took 12.5% of a CIFAR ResNet-56's
/// time with the calls (16-channel maps make runs of 48 floats), 9.6% without.
#[inline(always)]
fn copy_run(dst: &mut [f32], src: &[f32]) {
    if src.len() >= 64 {
        dst.copy_from_slice(src);
        return;
    }
    let mut d = dst.chunks_exact_mut(16);
    let mut s = src.chunks_exact(16);
    for (d, s) in (&mut d).zip(&mut s) {
        let s: &[f32; 16] = s.try_into().unwrap();
        d.copy_from_slice(s);
    }
    for (d, s) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *d = *s;
    }
}

multiversion! {
    /// `c = act(c + bias + residual)` over rows of `bias.len()` values.
    ///
    /// # Shapes
    /// `c`: `[rows, n]`; `bias`: `[n]`; `residual`: like `c`.
    fn epilogue(c: &mut [f32], bias: &[f32], residual: Option<&[f32]>, act: Act) {
        let n = bias.len();
        let (lo, hi) = act.bounds();
        match residual {
            Some(r) => {
                for (row, rrow) in c.chunks_exact_mut(n).zip(r.chunks_exact(n)) {
                    for ((v, &b), &rv) in row.iter_mut().zip(bias).zip(rrow) {
                        *v = (*v + b + rv).max(lo).min(hi);
                    }
                }
            }
            None => {
                for row in c.chunks_exact_mut(n) {
                    for (v, &b) in row.iter_mut().zip(bias) {
                        *v = (*v + b).max(lo).min(hi);
                    }
                }
            }
        }
    }
}

/// A square window over an NHWC map.
pub(super) struct Window {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub ow: usize,
    pub k: usize,
    pub stride: usize,
    pub pt: usize,
    pub pl: usize,
}

impl Window {
    /// A `k` x `k` window with stride `stride` over `x`, making rows of `ow` outputs, with
    /// `pt` rows and `pl` columns of padding before the map.
    pub fn over(x: &Fmap, ow: usize, k: usize, stride: usize, pt: usize, pl: usize) -> Window {
        Window { h: x.h, w: x.w, c: x.c, ow, k, stride, pt, pl }
    }
}

/// Max pooling over a square window (padding never wins: it counts as minus infinity, as in
/// PyTorch).
///
/// # Shapes
/// `x`: `[h, w, c]`; returns `[oh, ow, c]`.
pub fn max_pool(x: &Fmap, k: usize, stride: usize, pad: usize, ws: &mut Workspace) -> Result<Fmap> {
    let p = Padding::Symmetric(pad);
    let (Some((oh, _)), Some((ow, _))) = (p.resolve(x.h, k, stride), p.resolve(x.w, k, stride))
    else {
        return Err(Error::shape(
            "max pool input",
            format!("at least {k}x{k}"),
            format!("{}x{}", x.h, x.w),
        ));
    };
    let mut out = ws.fmap(oh, ow, x.c);
    let g = Window::over(x, ow, k, stride, pad, pad);
    for (oy, row) in out.data.chunks_exact_mut(ow * x.c).enumerate() {
        max_pool_row(&g, &x.data, oy, row);
    }
    Ok(out)
}

multiversion! {
    /// One output row of a max pool.
    fn max_pool_row(g: &Window, x: &[f32], oy: usize, row: &mut [f32]) {
        let c = g.c;
        row.fill(f32::NEG_INFINITY);
        for ky in 0..g.k {
            let iy = (oy * g.stride + ky).wrapping_sub(g.pt);
            if iy >= g.h {
                continue;
            }
            for ox in 0..g.ow {
                let o = &mut row[ox * c..(ox + 1) * c];
                for kx in 0..g.k {
                    let ix = (ox * g.stride + kx).wrapping_sub(g.pl);
                    if ix >= g.w {
                        continue;
                    }
                    let xs = &x[(iy * g.w + ix) * c..(iy * g.w + ix + 1) * c];
                    for (ov, &xv) in o.iter_mut().zip(xs) {
                        *ov = ov.max(xv);
                    }
                }
            }
        }
    }
}

multiversion! {
    /// Mean over all pixels (PyTorch's `AdaptiveAvgPool2d(1)` / `mean((2, 3))`), summed in f64
    /// so that the result does not depend on the map's size more than f32 rounding demands.
    ///
    /// # Shapes
    /// `x`: `[h, w, c]`; returns `[c]`.
    pub fn global_avg_pool(x: &Fmap) -> Vec<f32> {
        let mut acc = vec![0f64; x.c];
        for px in x.data.chunks_exact(x.c) {
            for (a, &v) in acc.iter_mut().zip(px) {
                *a += v as f64;
            }
        }
        let n = x.pixels() as f64;
        acc.into_iter().map(|a| (a / n) as f32).collect()
    }
}

/// A fully connected layer (`nn.Linear`).
#[derive(Clone, Debug)]
pub struct Linear {
    pub inputs: usize,
    pub outputs: usize,
    /// `[outputs, inputs]` as PyTorch stores it.
    weight: Vec<f32>,
    /// `[outputs]`
    bias: Vec<f32>,
}

impl Linear {
    /// # Shapes
    /// `weight`: `[outputs, inputs]`; `bias`: `[outputs]`.
    pub fn new(weight: Vec<f32>, bias: Vec<f32>, outputs: usize, inputs: usize) -> Linear {
        assert_eq!(
            weight.len(),
            outputs * inputs,
            "linear weight is not [out, in]"
        );
        assert_eq!(bias.len(), outputs, "linear bias is not [out]");
        Linear {
            inputs,
            outputs,
            weight,
            bias,
        }
    }

    /// The weights as PyTorch stores them. `[outputs, inputs]`
    pub fn weight(&self) -> &[f32] {
        &self.weight
    }

    /// The bias. `[outputs]`
    pub fn bias(&self) -> &[f32] {
        &self.bias
    }

    /// `x · Wᵀ + b` for a batch of rows.
    ///
    /// # Shapes
    /// `x`: `[rows, inputs]`; returns `[rows, outputs]`.
    pub fn forward(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut y = vec![0.0; rows * self.outputs];
        matmul(
            &mut y,
            x,
            Layout::N,
            &self.weight,
            Layout::T,
            rows,
            self.outputs,
            self.inputs,
            false,
            1,
        );
        for row in y.chunks_exact_mut(self.outputs) {
            for (v, &b) in row.iter_mut().zip(&self.bias) {
                *v += b;
            }
        }
        y
    }
}

/// Softmax probabilities of a logit vector, computed in f64.
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| (v / s) as f32).collect()
}
