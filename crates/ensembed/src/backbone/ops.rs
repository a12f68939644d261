//! The cheap operators of a quantised MobileNet (ADD, AVERAGE_POOL_2D, MEAN, QUANTIZE,
//! SOFTMAX), the 8-bit element types they share with [`super::conv`], and the
//! `multiversion!` macro that compiles a hot loop twice (baseline and AVX2+FMA) and picks one
//! at run time. The crate builds for baseline x86-64, where integer loops only get SSE2; the
//! AVX2 copy lets the compiler vectorise them with 8-lane integer multiplies and variable shifts
//! on any machine that has them, without `unsafe` SIMD code to maintain.
//!
//! Each operator reproduces the integer arithmetic of TFLite 2.14's builtin (non-delegated)
//! kernel for the case the coral models use; the function comments name it.

use super::quant::Requant;

/// Defines `fn NAME(args) BODY` twice, as a baseline function and as an AVX2+FMA one, and
/// dispatches on the CPU at each call. The body may only call `#[inline(always)]` helpers if
/// they are to be compiled for AVX2 too.
macro_rules! multiversion {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            // The copies share the outer function's signature, whatever clippy thinks of it.
            #[allow(clippy::too_many_arguments)]
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU has the features `avx2` was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// An 8-bit activation or weight type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QType {
    U8,
    I8,
}

impl QType {
    /// `[min, max]` of the type.
    pub(crate) fn range(self) -> (i32, i32) {
        match self {
            QType::U8 => (0, 255),
            QType::I8 => (-128, 127),
        }
    }

    /// The value of a stored byte.
    #[inline(always)]
    pub(crate) fn get(self, b: u8) -> i32 {
        match self {
            QType::U8 => b as i32,
            QType::I8 => b as i8 as i32,
        }
    }
}

/// How an operator stores its int32 result: add the zero point, clamp to the fused activation's
/// range (inside the type's range), keep the low byte (two's complement for int8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OutQ {
    pub zp: i32,
    pub lo: i32,
    pub hi: i32,
}

impl OutQ {
    #[inline(always)]
    pub(crate) fn store(self, v: i32) -> u8 {
        v.wrapping_add(self.zp).clamp(self.lo, self.hi) as u8
    }
}

/// A prepared ADD of two same-shape tensors (TFLite's quantised `AddElementwise`): both inputs
/// are rescaled to a common scale with 20 extra bits, summed, and rescaled to the output.
#[derive(Clone, Debug)]
pub(crate) struct Add {
    pub a_q: QType,
    pub a_zp: i32,
    pub a_rq: Requant,
    pub b_q: QType,
    pub b_zp: i32,
    pub b_rq: Requant,
    pub out_rq: Requant,
    pub out: OutQ,
}

/// TFLite's `left_shift` for 8-bit ADD.
pub(crate) const ADD_LEFT_SHIFT: i32 = 20;

impl Add {
    /// # Shapes
    /// `a`, `b`, `out`: `[len]`, any common layout.
    pub(crate) fn run(&self, a: &[u8], b: &[u8], out: &mut [u8]) {
        add_run(self, a, b, out)
    }
}

multiversion! {
    fn add_run(op: &Add, a: &[u8], b: &[u8], out: &mut [u8]) {
        for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
            let x = (op.a_q.get(x) - op.a_zp) << ADD_LEFT_SHIFT;
            let y = (op.b_q.get(y) - op.b_zp) << ADD_LEFT_SHIFT;
            let sum = op.a_rq.apply(x).wrapping_add(op.b_rq.apply(y));
            *o = op.out.store(op.out_rq.apply(sum));
        }
    }
}

/// A prepared AVERAGE_POOL_2D (TFLite's quantised `AveragePool`): the rounded mean of the
/// window's in-bounds values, clamped to the fused activation. Input and output share their
/// quantisation, so no rescaling.
#[derive(Clone, Debug)]
pub(crate) struct AvgPool {
    pub g: super::conv::Geom,
    pub q: QType,
    pub out: OutQ,
}

impl AvgPool {
    /// # Shapes
    /// `input`: `[ih, iw, c]`; `output`: `[oh, ow, c]`.
    pub(crate) fn run(&self, input: &[u8], output: &mut [u8]) {
        let g = &self.g;
        let c = g.ic;
        let mut acc = vec![0i32; c];
        for oy in 0..g.oh {
            for ox in 0..g.ow {
                acc.fill(0);
                let mut count = 0i32;
                // Windows are clipped to the image, as in TFLite (padding is not averaged in).
                let y0 = (oy * g.sh).saturating_sub(g.pt);
                let y1 = (oy * g.sh + g.kh).saturating_sub(g.pt).min(g.ih);
                let x0 = (ox * g.sw).saturating_sub(g.pl);
                let x1 = (ox * g.sw + g.kw).saturating_sub(g.pl).min(g.iw);
                for y in y0..y1 {
                    for x in x0..x1 {
                        let px = &input[(y * g.iw + x) * c..][..c];
                        acc.iter_mut()
                            .zip(px)
                            .for_each(|(a, &v)| *a += self.q.get(v));
                        count += 1;
                    }
                }
                let out = &mut output[(oy * g.ow + ox) * c..][..c];
                for (o, &a) in out.iter_mut().zip(&acc) {
                    let avg = if count == 0 {
                        0
                    } else if a > 0 {
                        (a + count / 2) / count
                    } else {
                        (a - count / 2) / count
                    };
                    *o = avg.clamp(self.out.lo, self.out.hi) as u8;
                }
            }
        }
    }
}

/// A prepared MEAN over height and width with kept dimensions, as TFLite 2.14's optimized
/// 8-bit `Mean` (the builtin kernel the interpreter uses for this case): the raw sum is scaled by
/// `in_scale / (count * out_scale)` with a fixed-point multiplier and a precomputed integer
/// bias `out_zp - round(in_zp * in_scale / out_scale)` is added. (Checked bit-exact against
/// tflite-runtime 2.14 on the tf2 MobileNetV2's pooled tensor, where the reference kernel's
/// formula differs in 10% of the channels.)
#[derive(Clone, Debug)]
pub(crate) struct Mean {
    pub q: QType,
    pub channels: usize,
    pub rq: Requant,
    pub bias: i32,
    pub lo: i32,
    pub hi: i32,
}

impl Mean {
    /// The multiplier and bias, computed in f32 where TFLite does.
    pub(crate) fn new(
        q: QType,
        count: usize,
        channels: usize,
        in_scale: f32,
        in_zp: i32,
        out_scale: f32,
        out_zp: i32,
    ) -> Mean {
        let mut temp = in_zp as f32 * in_scale / out_scale;
        temp = if temp > 0.0 { temp + 0.5 } else { temp - 0.5 };
        let bias = out_zp.wrapping_sub(temp as i32);
        let real_scale = in_scale / (count as f32 * out_scale);
        let (lo, hi) = q.range();
        Mean {
            q,
            channels,
            rq: Requant::new(real_scale as f64),
            bias,
            lo,
            hi,
        }
    }

    /// # Shapes
    /// `input`: `[count, channels]`; `output`: `[channels]`.
    pub(crate) fn run(&self, input: &[u8], output: &mut [u8]) {
        let mut acc = vec![0i32; self.channels];
        for px in input.chunks_exact(self.channels) {
            acc.iter_mut()
                .zip(px)
                .for_each(|(a, &v)| *a += self.q.get(v));
        }
        for (o, &a) in output.iter_mut().zip(&acc) {
            *o = self
                .rq
                .apply(a)
                .wrapping_add(self.bias)
                .clamp(self.lo, self.hi) as u8;
        }
    }
}

/// A prepared QUANTIZE between 8-bit types (TFLite's `Requantize`):
/// `out = clamp(MultiplyByQuantizedMultiplier(q - in_zp) + out_zp)`.
#[derive(Clone, Debug)]
pub(crate) struct Requantize {
    pub in_q: QType,
    pub in_zp: i32,
    pub rq: Requant,
    pub out: OutQ,
}

impl Requantize {
    /// # Shapes
    /// `input`, `output`: `[len]`.
    pub(crate) fn run(&self, input: &[u8], output: &mut [u8]) {
        for (o, &v) in output.iter_mut().zip(input) {
            *o = self.out.store(self.rq.apply(self.in_q.get(v) - self.in_zp));
        }
    }
}

/// SOFTMAX over the last axis, in floating point on the dequantised logits, written back with
/// the output's quantisation. TFLite's 8-bit softmax uses a fixed-point exp whose outputs differ
/// from this by at most a unit of 1/256; only the classifier's probabilities depend on it, never
/// the pooled features.
#[derive(Clone, Debug)]
pub(crate) struct Softmax {
    pub in_q: QType,
    pub in_scale: f32,
    pub in_zp: i32,
    pub beta: f32,
    pub classes: usize,
    pub out_scale: f32,
    pub out: OutQ,
}

impl Softmax {
    /// Probabilities of one row of quantised logits.
    ///
    /// # Shapes
    /// `logits`: `[classes]`; returns `[classes]`.
    pub(crate) fn probabilities(&self, logits: &[u8]) -> Vec<f32> {
        let z: Vec<f64> = logits[..self.classes.min(logits.len())]
            .iter()
            .map(|&v| (self.beta * self.in_scale) as f64 * (self.in_q.get(v) - self.in_zp) as f64)
            .collect();
        let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = z.iter().map(|v| (v - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        e.iter().map(|v| (v / sum) as f32).collect()
    }

    /// # Shapes
    /// `input`, `output`: `[rows, classes]`.
    pub(crate) fn run(&self, input: &[u8], output: &mut [u8]) {
        for (o, row) in output
            .chunks_exact_mut(self.classes)
            .zip(input.chunks_exact(self.classes))
        {
            for (o, p) in o.iter_mut().zip(self.probabilities(row)) {
                *o = self.out.store((p / self.out_scale).round() as i32);
            }
        }
    }
}
