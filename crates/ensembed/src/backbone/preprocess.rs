//! Images in, model inputs out: decoding (baseline JPEG through [`super::jpeg`], which matches
//! libjpeg-turbo exactly; other JPEGs, PNG and BMP through the `image` crate), conversion
//! to 8-bit RGB, and bilinear resizing that reproduces Pillow's `Image.resize(size,
//! Image.BILINEAR)` bit for bit (its separable triangle filter, widened when downscaling, with
//! 22-bit fixed-point weights and a rounding to 8 bits between the horizontal and the vertical
//! pass). The reference features (`data/demo`, `scripts/make_demo_features.py`) were made with
//! Pillow, so matching its resize matters as much as matching TFLite's arithmetic: CIFAR-10
//! images are 32x32 and every model input is an upscale.

use std::io::Cursor;
use std::path::Path;

use crate::error::{Error, Result};

/// Largest image file read (bytes).
pub const MAX_IMAGE_FILE: u64 = 256 << 20;
/// Largest decoded side (pixels).
const MAX_SIDE: u32 = 1 << 14;
/// Largest allocation the decoder may make (bytes).
const MAX_DECODE_ALLOC: u64 = 512 << 20;
/// Allocation every image file may cause, whatever its size (a 2048x2048 RGBA image, with room
/// for the decoder's own buffers).
const DECODE_ALLOC_FLOOR: u64 = 32 << 20;
/// Decoded bytes per file byte allowed beyond the floor: deflate's largest ratio, with slack.
const DECODE_RATIO: u64 = 1100;

/// An 8-bit RGB image, rows top to bottom, pixels interleaved (`[height, width, 3]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    width: usize,
    height: usize,
    data: Vec<u8>,
}

impl RgbImage {
    /// Wraps interleaved RGB bytes.
    ///
    /// # Shapes
    /// `data`: `[height, width, 3]`.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<RgbImage> {
        if width == 0 || height == 0 {
            return Err(Error::config(
                "image size",
                format!("{width}x{height}"),
                "an image needs at least one pixel",
            ));
        }
        let expected = width.checked_mul(height).and_then(|n| n.checked_mul(3));
        if expected != Some(data.len()) {
            return Err(Error::shape(
                "RGB image data",
                format!("{width} x {height} x 3 bytes"),
                format!("{} bytes", data.len()),
            ));
        }
        Ok(RgbImage {
            width,
            height,
            data,
        })
    }

    /// Reads and decodes the image file at `path` (JPEG, PNG or BMP, recognised by content),
    /// converted to RGB like Pillow's `convert("RGB")` (alpha dropped, grey replicated).
    pub fn open(path: &Path) -> Result<RgbImage> {
        let len = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        if len > MAX_IMAGE_FILE {
            return Err(Error::format(
                path,
                "file size",
                format!(
                    "{len} bytes is more than the {MAX_IMAGE_FILE} bytes an image file may have"
                ),
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        RgbImage::decode(&bytes, path)
    }

    /// Decodes an encoded image held in memory; `path` only names it in errors.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<RgbImage> {
        // Baseline JPEGs go through our libjpeg-turbo-exact decoder (see `jpeg.rs`).
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            if let Some(img) = super::jpeg::decode(bytes, path)? {
                return Ok(img);
            }
        }
        let mut reader = image::ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| Error::io(path, e))?;
        if reader.format().is_none() {
            return Err(Error::format(
                path,
                "image format",
                "not a JPEG, PNG or BMP file (unrecognised signature)",
            ));
        }
        // The decoders allocate their output from the declared size before reading the pixel
        // data, so a 68-byte PNG declaring 16384x8192 would cost 512 MB. Beyond a floor that
        // any ordinary image fits, the budget grows with the file: an image whose pixels are
        // all coded in it expands at most ~1032:1 (deflate's limit; a progressive 4:2:0 JPEG
        // needs at least 6 bits per 16x16 pixels, 1024:1). Only a file that leaves pixels out
        // (BMP RLE escapes) can claim more, and is refused beyond the floor.
        let budget = MAX_DECODE_ALLOC
            .min(DECODE_ALLOC_FLOOR.max(DECODE_RATIO.saturating_mul(bytes.len() as u64)));
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(MAX_SIDE);
        limits.max_image_height = Some(MAX_SIDE);
        limits.max_alloc = Some(budget);
        reader.limits(limits);
        let img = reader
            .decode()
            .map_err(|e| match e {
                image::ImageError::Limits(_) => Error::format(
                    path,
                    "image size",
                    format!(
                        "decoding needs more than {budget} bytes, more than a file of {} bytes can hold ({e}; at most {MAX_SIDE} pixels a side, {DECODE_RATIO} decoded bytes per file byte beyond {DECODE_ALLOC_FLOOR})",
                        bytes.len()
                    ),
                ),
                e => Error::format(path, "image data", e.to_string()),
            })?
            .into_rgb8();
        let (w, h) = (img.width() as usize, img.height() as usize);
        RgbImage::new(w, h, img.into_raw())
            .map_err(|_| Error::format(path, "image size", format!("{w}x{h} has no pixels")))
    }

    pub fn width(&self) -> usize {
        self.width
    }

    pub fn height(&self) -> usize {
        self.height
    }

    /// The pixels. `[height, width, 3]`
    pub fn pixels(&self) -> &[u8] {
        &self.data
    }

    /// Resized to `width` x `height` exactly as Pillow 13's `Image.resize((width, height),
    /// Image.BILINEAR)`; a copy when the size is unchanged. Both sizes must be non-zero.
    pub fn resize_bilinear(&self, width: usize, height: usize) -> Result<RgbImage> {
        if width == 0 || height == 0 {
            return Err(Error::config(
                "resize",
                format!("{width}x{height}"),
                "the target size must be at least 1x1",
            ));
        }
        // Pillow 13 runs the vertical pass first when the height shrinks by more than twice as
        // many pixels as the width (`ImagingResampleInner`); the order changes the rounding
        // between the passes. Earlier Pillows always went horizontal first, which agrees on
        // every upscale (all CIFAR-10 inputs).
        let (dw, dh) = (
            self.width as i64 - width as i64,
            self.height as i64 - height as i64,
        );
        let vertical_first = dh > 0 && dh > 2 * dw;
        let mut img = self.clone();
        if vertical_first && height != self.height {
            img = vertical(&img, height);
        }
        if width != self.width {
            img = horizontal(&img, width);
        }
        if !vertical_first && height != self.height {
            img = vertical(&img, height);
        }
        Ok(img)
    }
}

/// Pillow's `PRECISION_BITS` for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's fixed-point filter weights for resampling one axis from `input` to `output` samples:
/// for each output sample, the first input sample and the weights of the ones that follow.
struct Coeffs {
    /// (first input index, number of taps) per output sample.
    bounds: Vec<(usize, usize)>,
    /// `[output, ksize]` weights in units of 2^-22.
    k: Vec<i32>,
    ksize: usize,
}

/// Pillow's `precompute_coeffs` with the bilinear filter, then `normalize_coeffs_8bpc`. The
/// float expressions keep Pillow's operation order, since the weights are rounded afterwards.
fn coeffs(input: usize, output: usize) -> Coeffs {
    let scale = input as f64 / output as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // bilinear support 1.0, widened when downscaling
    let ksize = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(output);
    let mut k = vec![0i32; output * ksize];
    let mut w = vec![0f64; ksize];
    for xx in 0..output {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) cast truncates toward zero, as `as i64` does.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(input as i64) - xmin;
        let (xmin, n) = (xmin as usize, xmax.max(0) as usize);
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().enumerate().take(n) {
            let t = (((x + xmin) as f64 - center + 0.5) * ss).abs();
            *wx = if t < 1.0 { 1.0 - t } else { 0.0 };
            ww += *wx;
        }
        for (x, &wx) in w.iter().enumerate().take(n) {
            let v = if ww != 0.0 { wx / ww } else { wx };
            let f = v * (1u32 << PRECISION_BITS) as f64;
            k[xx * ksize + x] = if v < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin, n));
    }
    Coeffs { bounds, k, ksize }
}

/// Pillow's `clip8`: drop the fraction bits, clamp to a byte.
#[inline(always)]
fn clip8(v: i32) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `ImagingResampleHorizontal_8bpc`.
fn horizontal(img: &RgbImage, width: usize) -> RgbImage {
    let c = coeffs(img.width, width);
    let mut out = vec![0u8; width * img.height * 3];
    for (src, dst) in img
        .data
        .chunks_exact(img.width * 3)
        .zip(out.chunks_exact_mut(width * 3))
    {
        for (xx, &(xmin, n)) in c.bounds.iter().enumerate() {
            let k = &c.k[xx * c.ksize..][..n];
            let mut ss = [1i32 << (PRECISION_BITS - 1); 3];
            for (x, &kx) in k.iter().enumerate() {
                let p = &src[(xmin + x) * 3..][..3];
                for ch in 0..3 {
                    ss[ch] += p[ch] as i32 * kx;
                }
            }
            for ch in 0..3 {
                dst[xx * 3 + ch] = clip8(ss[ch]);
            }
        }
    }
    RgbImage {
        width,
        height: img.height,
        data: out,
    }
}

/// Pillow's `ImagingResampleVertical_8bpc`.
fn vertical(img: &RgbImage, height: usize) -> RgbImage {
    let c = coeffs(img.height, height);
    let row = img.width * 3;
    let mut out = vec![0u8; row * height];
    let mut ss = vec![0i32; row];
    for (yy, &(ymin, n)) in c.bounds.iter().enumerate() {
        ss.fill(1 << (PRECISION_BITS - 1));
        for (y, &ky) in c.k[yy * c.ksize..][..n].iter().enumerate() {
            let src = &img.data[(ymin + y) * row..][..row];
            ss.iter_mut()
                .zip(src)
                .for_each(|(s, &p)| *s += p as i32 * ky);
        }
        out[yy * row..(yy + 1) * row]
            .iter_mut()
            .zip(&ss)
            .for_each(|(o, &s)| *o = clip8(s));
    }
    RgbImage {
        width: img.width,
        height,
        data: out,
    }
}

/// The byte fed to a model's input tensor for each pixel value, following
/// `scripts/make_demo_features.py`: TF1 quantised MobileNets (uint8, scale 1/128, zero point
/// 128) take the raw pixel bytes, which is what they were calibrated with; any other
/// quantisation maps `real = p / 127.5 - 1` (the MobileNet convention) through the input's
/// parameters, `q = clamp(round_half_even(real / scale) + zero_point)` (numpy's `np.round`).
pub(crate) fn input_table(unsigned: bool, scale: f32, zero_point: i32) -> [u8; 256] {
    let mut lut = [0u8; 256];
    let raw = unsigned && ((scale as f64) - 1.0 / 128.0).abs() < 1e-7 && zero_point == 128;
    let (lo, hi) = if unsigned {
        (0.0, 255.0)
    } else {
        (-128.0, 127.0)
    };
    for (p, q) in lut.iter_mut().enumerate() {
        *q = if raw {
            p as u8
        } else {
            let real = p as f64 / 127.5 - 1.0;
            let v = ((real / scale as f64).round_ties_even() + zero_point as f64).clamp(lo, hi);
            v as i32 as u8
        };
    }
    lut
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pillow_upscale_2_to_4() {
        // from PIL import Image; import numpy as np
        // im = Image.fromarray(np.array([[[0, 100, 255], [200, 50, 0]]], np.uint8))
        // np.asarray(im.resize((4, 1), Image.BILINEAR)).tolist()
        //   -> [[[0, 100, 255], [50, 88, 191], [150, 63, 64], [200, 50, 0]]]
        let img = RgbImage::new(2, 1, vec![0, 100, 255, 200, 50, 0]).unwrap();
        let r = img.resize_bilinear(4, 1).unwrap();
        assert_eq!(
            r.pixels(),
            &[0, 100, 255, 50, 88, 191, 150, 63, 64, 200, 50, 0]
        );
    }

    #[test]
    fn pillow_downscale_width_upscale_height() {
        // im = Image.fromarray(np.random.RandomState(0).randint(0, 256, (5, 7, 3)).astype(np.uint8))
        // np.asarray(im.resize((3, 9), Image.BILINEAR)).reshape(-1).tolist()   (Pillow 13.0)
        let src = [
            172, 47, 117, 192, 67, 251, 195, 103, 9, 211, 21, 242, 36, 87, 70, 216, 88, 140, 58,
            193, 230, 39, 87, 174, 88, 81, 165, 25, 77, 72, 9, 148, 115, 208, 243, 197, 254, 79,
            175, 192, 82, 99, 216, 177, 243, 29, 147, 147, 142, 167, 32, 193, 9, 185, 127, 32, 31,
            202, 244, 151, 163, 254, 203, 114, 183, 28, 34, 128, 128, 164, 53, 133, 38, 232, 244,
            17, 79, 132, 105, 42, 186, 31, 120, 1, 65, 231, 169, 57, 35, 102, 119, 11, 174, 82, 91,
            128, 142, 99, 53, 140, 121, 170, 84, 203, 68,
        ];
        let expected = [
            185, 68, 151, 165, 62, 141, 121, 125, 157, 142, 73, 150, 136, 90, 138, 155, 122, 156,
            71, 80, 148, 89, 137, 132, 211, 116, 153, 85, 118, 152, 113, 114, 121, 200, 154, 149,
            120, 162, 157, 156, 74, 109, 172, 202, 144, 103, 145, 121, 106, 109, 149, 110, 133,
            124, 88, 128, 98, 71, 130, 174, 67, 86, 108, 79, 111, 125, 93, 94, 142, 100, 123, 109,
            73, 100, 141, 107, 73, 122, 120, 146, 109,
        ];
        let img = RgbImage::new(7, 5, src.to_vec()).unwrap();
        assert_eq!(img.resize_bilinear(3, 9).unwrap().pixels(), &expected);
    }

    #[test]
    fn tf2_input_table() {
        // scale 1/127.5 (as f32), zero point 127: q = p for p <= 127, p - 1 above.
        let lut = input_table(true, (1.0f64 / 127.5) as f32, 127);
        assert_eq!(lut[0], 0);
        assert_eq!(lut[127], 127);
        assert_eq!(lut[128], 127);
        assert_eq!(lut[255], 254);
        let raw = input_table(true, 0.0078125, 128);
        assert!(raw.iter().enumerate().all(|(p, &q)| p as u8 == q));
    }
}
