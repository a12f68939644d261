//! TFLite's fixed-point arithmetic, bit for bit: how a real multiplier becomes a 31-bit
//! multiplier and a shift (`QuantizeMultiplier`), and how an int32 accumulator is scaled back to
//! 8 bits (`MultiplyByQuantizedMultiplier` = gemmlowp's `SaturatingRoundingDoublingHighMul`
//! then `RoundingDivideByPOT`, TFLite's default "double rounding"). Features only agree with
//! the official interpreter if every rounding step here matches its; each function names the
//! TFLite or gemmlowp function it reproduces, and the tests pin the corner cases.

use super::tflite::Activation;

/// `frexp`: `x = q * 2^e` with `q` in [0.5, 1), for finite positive `x`.
fn frexp(x: f64) -> (f64, i32) {
    let bits = x.to_bits();
    let exp = ((bits >> 52) & 0x7ff) as i32;
    if exp == 0 {
        // Subnormal: scale into the normal range first.
        let (q, e) = frexp(x * f64::powi(2.0, 64));
        return (q, e - 64);
    }
    let q = f64::from_bits((bits & !(0x7ff << 52)) | (1022 << 52));
    (q, exp - 1022)
}

/// TFLite's `QuantizeMultiplier`: `m ≈ multiplier * 2^(shift - 31)`, `multiplier` in
/// [2^30, 2^31) (or 0). A positive `shift` is a left shift. Multipliers below about 2^-31 flush
/// to zero, as in TFLite. `m` must be finite and non-negative (checked by the caller).
pub(crate) fn quantize_multiplier(m: f64) -> (i32, i32) {
    if m == 0.0 {
        return (0, 0);
    }
    let (q, mut shift) = frexp(m);
    // TfLiteRound is std::round: halves away from zero.
    let mut q_fixed = (q * (1i64 << 31) as f64).round() as i64;
    if q_fixed == 1i64 << 31 {
        q_fixed /= 2;
        shift += 1;
    }
    if shift < -31 {
        return (0, 0);
    }
    (q_fixed as i32, shift)
}

/// gemmlowp's `SaturatingRoundingDoublingHighMul` as written there: `a * b / 2^31` rounded to
/// nearest (its nudge-then-truncate rounds ties upwards), saturating the one overflowing case
/// `a = b = i32::MIN`. The reference [`high_mul`] is tested against.
#[cfg(test)]
fn srdhm(a: i32, b: i32) -> i32 {
    let ab = a as i64 * b as i64;
    let nudge = if ab >= 0 {
        1i64 << 30
    } else {
        1 - (1i64 << 30)
    };
    // C++ integer division truncates toward zero, as Rust's does.
    let r = ((ab + nudge) / (1i64 << 31)) as i32;
    if a == b && a == i32::MIN {
        i32::MAX
    } else {
        r
    }
}

/// gemmlowp's `RoundingDivideByPOT`: `x / 2^exponent` rounded to nearest, ties away from zero.
/// `exponent` in 0..=31.
#[inline(always)]
pub(crate) fn rounding_divide_by_pot(x: i32, exponent: i32) -> i32 {
    let mask = ((1i64 << exponent) - 1) as i32;
    let remainder = x & mask;
    let threshold = (mask >> 1) + (x < 0) as i32;
    (x >> exponent) + (remainder > threshold) as i32
}

/// A multiplier and shift from [`quantize_multiplier`], split into the left and right shifts
/// that `MultiplyByQuantizedMultiplier` applies (so the hot loop does not branch on the sign).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Requant {
    pub multiplier: i32,
    pub left: i32,
    pub right: i32,
}

impl Requant {
    /// From a real multiplier (finite, non-negative).
    pub(crate) fn new(real: f64) -> Requant {
        let (multiplier, shift) = quantize_multiplier(real);
        Requant {
            multiplier,
            left: shift.max(0),
            right: (-shift).max(0),
        }
    }

    /// TFLite's `MultiplyByQuantizedMultiplier(x, multiplier, shift)`. The left shift wraps on
    /// overflow, as the C++ does in practice.
    #[inline(always)]
    pub(crate) fn apply(self, x: i32) -> i32 {
        requant(x, self.multiplier, self.left, self.right)
    }
}

/// `SaturatingRoundingDoublingHighMul(a, m)` for a non-negative multiplier `m` (all that
/// [`quantize_multiplier`] produces, so the saturating case `a = m = i32::MIN` cannot occur).
/// gemmlowp's nudge-and-truncate, `trunc((a·m ± nudge) / 2^31)`, equals `floor((a·m + 2^30) /
/// 2^31)` for either sign of `a·m`, and the low 32 bits of that floor are those of a logical
/// shift. Written this way the hot loops vectorise with 32x32→64 multiplies and 64-bit logical
/// shifts, which AVX2 has, instead of the 64-bit sign fix-ups a truncating division needs.
#[inline(always)]
fn high_mul(a: i32, m: i32) -> i32 {
    ((((a as i64) * (m as i64)) + (1 << 30)) as u64 >> 31) as i32
}

/// [`Requant::apply`] on loose parts, for loops that keep them in separate arrays.
#[inline(always)]
pub(crate) fn requant(x: i32, multiplier: i32, left: i32, right: i32) -> i32 {
    rounding_divide_by_pot(high_mul(x.wrapping_shl(left as u32), multiplier), right)
}

/// `MultiplyByQuantizedMultiplier` as the ruy GEMM library bundled with TFLite 2.14 computes it
/// in its x86 kernels, which TFLite uses for int8 CONV_2D and FULLY_CONNECTED: the same two
/// roundings as [`requant`] (to 31 fraction bits, then by the right shift), but the second
/// rounds ties upwards where gemmlowp rounds negative ties away from zero. Found, and checked
/// bit-exact, against tflite-runtime 2.14 on the tf2 MobileNetV2 (gemmlowp's rounding differs
/// in 0.2% of the outputs of its first projection layer).
#[inline(always)]
pub(crate) fn requant_ruy(x: i32, multiplier: i32, left: i32, right: i32) -> i32 {
    let t = high_mul(x.wrapping_shl(left as u32), multiplier);
    t.wrapping_add((1 << right) >> 1) >> right
}

/// Which of TFLite's two roundings of a rescaled accumulator an operator uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rounding {
    /// gemmlowp's ([`requant`]): TFLite's reference kernels, uint8 GEMMs, depthwise, ADD.
    Gemmlowp,
    /// ruy's ([`requant_ruy`]): int8 GEMMs.
    Ruy,
}

/// TFLite's `CalculateActivationRangeQuantized`: the clamp a fused activation becomes, for an
/// output of `scale`, `zero_point` and type range `[qmin, qmax]`.
pub(crate) fn activation_range(
    act: Activation,
    scale: f32,
    zero_point: i32,
    qmin: i32,
    qmax: i32,
) -> (i32, i32) {
    // `zero_point + static_cast<int32_t>(TfLiteRound(f / scale))`, in float as in TFLite.
    let q = |f: f32| zero_point.saturating_add((f / scale).round() as i32);
    match act {
        Activation::None => (qmin, qmax),
        Activation::Relu => (qmin.max(q(0.0)), qmax),
        Activation::Relu6 => (qmin.max(q(0.0)), qmax.min(q(6.0))),
        Activation::ReluN1To1 => (qmin.max(q(-1.0)), qmax.min(q(1.0))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantize_multiplier_matches_tflite() {
        // Values from TFLite's quantization_util_test.cc (QuantizeMultiplier cases).
        assert_eq!(quantize_multiplier(0.0), (0, 0));
        assert_eq!(quantize_multiplier(1.0), (1 << 30, 1));
        assert_eq!(quantize_multiplier(2.0), (1 << 30, 2));
        assert_eq!(quantize_multiplier(0.5), (1 << 30, 0));
        assert_eq!(quantize_multiplier(0.25), (1 << 30, -1));
        // 1 - 2^-32 rounds up to 2^31 and is renormalised.
        assert_eq!(quantize_multiplier(1.0 - 1.0 / 4294967296.0), (1 << 30, 1));
        // Below 2^-31 flushes to zero.
        assert_eq!(quantize_multiplier(1e-12), (0, 0));
        let (m, s) = quantize_multiplier(0.0123);
        let back = m as f64 * 2f64.powi(s - 31);
        assert!((back - 0.0123).abs() < 1e-11);
        let (m, s) = quantize_multiplier(f64::MIN_POSITIVE / 4.0);
        assert_eq!((m, s), (0, 0));
    }

    #[test]
    fn high_mul_is_srdhm() {
        let mut x = 0x1234_5678u32;
        for _ in 0..100_000 {
            // xorshift: arguments over the whole range, multipliers non-negative
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let a = x as i32 >> (x % 24);
            let m = (x.rotate_left(7) >> 1) as i32;
            assert_eq!(high_mul(a, m), srdhm(a, m), "{a} * {m}");
        }
        assert_eq!(high_mul(i32::MIN, i32::MAX), srdhm(i32::MIN, i32::MAX));
    }

    #[test]
    fn srdhm_rounds_and_saturates() {
        assert_eq!(srdhm(i32::MIN, i32::MIN), i32::MAX);
        assert_eq!(srdhm(1 << 30, 1 << 30), 1 << 29);
        // gemmlowp's nudge rounds ties upwards: 1.5 -> 2 but -1.5 -> -1, 0.5 -> 1, -0.5 -> 0.
        assert_eq!(srdhm(3, 1 << 30), 2);
        assert_eq!(srdhm(-3, 1 << 30), -1);
        assert_eq!(srdhm(1, 1 << 30), 1);
        assert_eq!(srdhm(-1, 1 << 30), 0);
        assert_eq!(srdhm(-5, 1 << 30), -2); // -2.5 -> -2
    }

    #[test]
    fn rounding_divide_by_pot_rounds_half_away() {
        assert_eq!(rounding_divide_by_pot(5, 1), 3);
        assert_eq!(rounding_divide_by_pot(-5, 1), -3);
        assert_eq!(rounding_divide_by_pot(4, 1), 2);
        assert_eq!(rounding_divide_by_pot(-7, 2), -2);
        assert_eq!(rounding_divide_by_pot(7, 0), 7);
        assert_eq!(rounding_divide_by_pot(i32::MAX, 31), 1);
        assert_eq!(rounding_divide_by_pot(i32::MIN, 31), -1);
    }

    #[test]
    fn ruy_rounds_ties_up() {
        // 3 * 2^30 / 2^31 = 1.5 -> 2 and -1.5 -> -1; then / 2^1: 2.5 -> 3, -2.5 -> -2.
        assert_eq!(requant_ruy(3, 1 << 30, 0, 0), 2);
        assert_eq!(requant_ruy(-3, 1 << 30, 0, 0), -1);
        assert_eq!(requant_ruy(10, 1 << 30, 0, 1), 3); // 5 / 2 = 2.5 -> 3
        assert_eq!(requant_ruy(-10, 1 << 30, 0, 1), -2); // -5 / 2 = -2.5 -> -2
        assert_eq!(requant(-10, 1 << 30, 0, 1), -3); // gemmlowp: away from zero
                                                     // With a left shift: 10 * 2^30 / 2^31 = 5, then 5 / 2 = 2.5 -> 3.
        assert_eq!(requant_ruy(5, 1 << 30, 1, 1), 3);
    }

    #[test]
    fn activation_ranges() {
        // uint8, scale 6/255, zero point 0: RELU6 is the whole range.
        assert_eq!(
            activation_range(Activation::Relu6, 6.0 / 255.0, 0, 0, 255),
            (0, 255)
        );
        assert_eq!(
            activation_range(Activation::Relu6, 0.0470588, 0, 0, 255),
            (0, 128)
        );
        assert_eq!(
            activation_range(Activation::Relu, 0.1, -128, -128, 127),
            (-128, 127)
        );
        assert_eq!(activation_range(Activation::None, 0.1, 3, 0, 255), (0, 255));
    }
}
