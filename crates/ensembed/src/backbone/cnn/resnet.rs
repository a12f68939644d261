//! ResNets: the CIFAR-10 ones of akamaster/pytorch_resnet_cifar10 (3x3 stem, three stages of
//! basic blocks at 16/32/64 channels, "option A" parameter-free shortcuts, 64-d pooled feature,
//! `linear` head) and torchvision's ImageNet ones (7x7 stride-2 stem, 3x3 max pool, four stages
//! of basic or bottleneck blocks with 1x1 projection shortcuts, stride on the 3x3 convolution as
//! in v1.5, `fc` head), which VISSL trunk checkpoints share once their `_feature_blocks.` prefix
//! is stripped (without a head). Depths, widths and block kinds are read from the weights'
//! shapes, so ResNet-18/34/50/101/152 and wide variants all load; strides are the published
//! ones, since a state dict does not store them. Batch norm eps is PyTorch's default, 1e-5.

use super::bottleneck;
use super::layers::{global_avg_pool, max_pool, Act, Conv2d, Fmap, Linear, Padding, Workspace};
use super::{Net, Preprocess, Weights, IMAGENET_MEAN, IMAGENET_STD};
use crate::backbone::onnx::{self, OnnxWriter};
use crate::backbone::StateDict;
use crate::error::{Error, Result};

/// `nn.BatchNorm2d`'s default epsilon.
const EPS: f64 = 1e-5;

/// How a block's input reaches its output sum.
enum Shortcut {
    Identity,
    /// akamaster's option A: `F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))`: every other
    /// pixel, `pad` zero channels before and after.
    OptionA {
        pad: usize,
    },
    /// A 1x1 convolution (stride of the block) with its batch norm: torchvision's `downsample`.
    Projection(Conv2d),
}

impl Shortcut {
    fn apply(&self, x: &Fmap, ws: &mut Workspace, threads: usize) -> Result<Option<Fmap>> {
        Ok(match self {
            Shortcut::Identity => None,
            Shortcut::OptionA { pad } => {
                let (oh, ow) = (x.h.div_ceil(2), x.w.div_ceil(2));
                let oc = x.c + 2 * pad;
                let mut out = ws.fmap(oh, ow, oc);
                for y in 0..oh {
                    for xx in 0..ow {
                        let dst = &mut out.data[(y * ow + xx) * oc..(y * ow + xx + 1) * oc];
                        let src =
                            &x.data[(2 * y * x.w + 2 * xx) * x.c..(2 * y * x.w + 2 * xx + 1) * x.c];
                        dst[..*pad].fill(0.0);
                        dst[*pad..pad + x.c].copy_from_slice(src);
                        dst[pad + x.c..].fill(0.0);
                    }
                }
                Some(out)
            }
            Shortcut::Projection(conv) => Some(conv.forward(x, None, Act::None, ws, threads)?),
        })
    }
}

/// A residual block: `relu(convs(x) + shortcut(x))`, the convolutions ReLU'd in between.
struct Block {
    /// Two (basic) or three (bottleneck) convolutions; the last one takes the residual.
    convs: Vec<Conv2d>,
    shortcut: Shortcut,
}

impl Block {
    fn forward(&self, x: Fmap, ws: &mut Workspace, threads: usize) -> Result<Fmap> {
        if let (Shortcut::Identity, [c1, c2, c3]) = (&self.shortcut, &self.convs[..]) {
            if bottleneck::fits(c1, c2, c3) {
                let out = bottleneck::forward(c1, c2, c3, &x, ws, threads)?;
                ws.recycle(x);
                return Ok(out);
            }
        }
        self.forward_layers(x, ws, threads)
    }

    /// The block one whole convolution after another.
    fn forward_layers(&self, x: Fmap, ws: &mut Workspace, threads: usize) -> Result<Fmap> {
        let res = self.shortcut.apply(&x, ws, threads)?;
        let last = self.convs.len() - 1;
        let mut h: Option<Fmap> = None;
        for conv in &self.convs[..last] {
            let input = h.as_ref().unwrap_or(&x);
            let y = conv.forward(input, None, Act::Relu, ws, threads)?;
            if let Some(old) = h.replace(y) {
                ws.recycle(old);
            }
        }
        let input = h.as_ref().unwrap_or(&x);
        let out = self.convs[last].forward(
            input,
            Some(res.as_ref().unwrap_or(&x)),
            Act::Relu,
            ws,
            threads,
        )?;
        if let Some(h) = h {
            ws.recycle(h);
        }
        if let Some(r) = res {
            ws.recycle(r);
        }
        ws.recycle(x);
        Ok(out)
    }

    /// Writes the block as ONNX nodes (shortcut first, as [`Block::forward`] computes it, so
    /// that the reader fuses the sum into the same convolution) and returns its output.
    fn onnx(&self, w: &mut OnnxWriter, x: &str) -> Result<String> {
        let res = match &self.shortcut {
            Shortcut::Identity => x.to_string(),
            Shortcut::OptionA { pad } => onnx::export::option_a(w, x, *pad),
            Shortcut::Projection(c) => onnx::export::conv(w, x, c, Act::None, None)?,
        };
        let last = self.convs.len() - 1;
        let mut h = x.to_string();
        for c in &self.convs[..last] {
            h = onnx::export::conv(w, &h, c, Act::Relu, None)?;
        }
        onnx::export::conv(w, &h, &self.convs[last], Act::Relu, Some(&res))
    }

    fn macs(&self, h: usize, w: usize) -> (u64, usize, usize) {
        let mut total = 0;
        let (mut hh, mut ww) = (h, w);
        for c in &self.convs {
            total += c.macs(hh, ww).unwrap_or(0);
            (hh, ww) = c.out_size(hh, ww).unwrap_or((0, 0));
        }
        if let Shortcut::Projection(c) = &self.shortcut {
            total += c.macs(h, w).unwrap_or(0);
        }
        (total, hh, ww)
    }
}

/// Number of blocks `prefix.0`, `prefix.1`, ... present (by their `conv1.weight`).
fn count_blocks(w: &Weights, prefix: &str) -> usize {
    (0..)
        .take_while(|i| w.contains(&format!("{prefix}.{i}.conv1.weight")))
        .count()
}

/// The residual stages `layer1` ..= `layer{stages}` of a ResNet, both families: the blocks of
/// each stage are counted from the weights, the first block of every stage after the first has
/// stride 2, and `block(prefix, in_channels, stride)` builds one block and gives its output
/// channels. Returns the blocks, the blocks per stage and the final channel count; a missing
/// stage is an error saying `missing: {layout}`.
fn build_stages(
    w: &Weights,
    stages: usize,
    mut c: usize,
    layout: &str,
    mut block: impl FnMut(&str, usize, usize) -> Result<(Block, usize)>,
) -> Result<(Vec<Block>, Vec<usize>, usize)> {
    let mut blocks = Vec::new();
    let mut per_stage = Vec::new();
    for stage in 1..=stages {
        let n = count_blocks(w, &format!("layer{stage}"));
        if n == 0 {
            return Err(Error::format(w.path(), format!("layer{stage}.0.conv1.weight"), format!("missing: {layout}")));
        }
        per_stage.push(n);
        for i in 0..n {
            let stride = if stage > 1 && i == 0 { 2 } else { 1 };
            let (b, out_c) = block(&format!("layer{stage}.{i}"), c, stride)?;
            blocks.push(b);
            c = out_c;
        }
    }
    Ok((blocks, per_stage, c))
}

/// The CIFAR ResNet-(6n+2) of akamaster/pytorch_resnet_cifar10.
pub struct CifarResNet {
    stem: Conv2d,
    blocks: Vec<Block>,
    head: Linear,
    per_stage: Vec<usize>,
}

impl CifarResNet {
    pub fn build(sd: &StateDict) -> Result<CifarResNet> {
        let w = Weights::new(sd);
        let stem = w.conv_bn("conv1", "bn1", 3, 1, Padding::Symmetric(1), EPS)?;
        let (blocks, per_stage, c) = build_stages(&w, 3, stem.oc, "a CIFAR ResNet has stages layer1, layer2 and layer3", |p, c, stride| {
            let conv1 = w.conv_bn(&format!("{p}.conv1"), &format!("{p}.bn1"), c, stride, Padding::Symmetric(1), EPS)?;
            let planes = conv1.oc;
            let conv2 = w.conv_bn(&format!("{p}.conv2"), &format!("{p}.bn2"), planes, 1, Padding::Symmetric(1), EPS)?;
            let shortcut = if stride == 1 && c == planes {
                Shortcut::Identity
            } else if c + 2 * (planes / 4) == planes {
                Shortcut::OptionA { pad: planes / 4 }
            } else {
                return Err(Error::format(
                    w.path(),
                    format!("{p}.conv1.weight"),
                    format!(
                        "{c} -> {planes} channels: an option-A shortcut pads planes/4 = {} zero \
                         channels on each side, which does not reach {planes}",
                        planes / 4
                    ),
                ));
            };
            Ok((Block { convs: vec![conv1, conv2], shortcut }, planes))
        })?;
        let head = w.linear("linear", c)?;
        w.finish("a CIFAR ResNet")?;
        Ok(CifarResNet {
            stem,
            blocks,
            head,
            per_stage,
        })
    }
}

impl Net for CifarResNet {
    fn name(&self) -> String {
        format!("CIFAR ResNet-{}", 2 * self.blocks.len() + 2)
    }

    fn structure(&self) -> String {
        format!(
            "3 stages x {:?} basic blocks, option-A shortcuts",
            self.per_stage
        )
    }

    fn default_preprocess(&self) -> Preprocess {
        Preprocess {
            resize: 32,
            crop: 32,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    fn pooled_dim(&self) -> usize {
        self.head.inputs
    }

    fn pooled(&self, x: Fmap, ws: &mut Workspace, threads: usize) -> Result<Vec<f32>> {
        let mut h = self.stem.forward(&x, None, Act::Relu, ws, threads)?;
        ws.recycle(x);
        for b in &self.blocks {
            h = b.forward(h, ws, threads)?;
        }
        let f = global_avg_pool(&h);
        ws.recycle(h);
        Ok(f)
    }

    fn head(&self) -> Option<&Linear> {
        Some(&self.head)
    }

    fn macs(&self, h: usize, w: usize) -> u64 {
        let mut total = self.stem.macs(h, w).unwrap_or(0);
        let (mut hh, mut ww) = self.stem.out_size(h, w).unwrap_or((0, 0));
        for b in &self.blocks {
            let (m, a, c) = b.macs(hh, ww);
            total += m;
            (hh, ww) = (a, c);
        }
        total + (self.head.inputs * self.head.outputs) as u64
    }

    fn onnx_trunk(&self, w: &mut OnnxWriter, input: &str) -> Result<String> {
        let mut h = onnx::export::conv(w, input, &self.stem, Act::Relu, None)?;
        for b in &self.blocks {
            h = b.onnx(w, &h)?;
        }
        Ok(onnx::export::global_pool(w, &h))
    }
}

/// torchvision's ResNet (and VISSL's trunk of it).
pub struct ResNet {
    stem: Conv2d,
    blocks: Vec<Block>,
    head: Option<Linear>,
    per_stage: Vec<usize>,
    bottleneck: bool,
    pooled_dim: usize,
}

impl ResNet {
    pub fn build(sd: &StateDict) -> Result<ResNet> {
        let w = Weights::new(sd);
        let stem = w.conv_bn("conv1", "bn1", 3, 2, Padding::Symmetric(3), EPS)?;
        if (stem.kh, stem.kw) != (7, 7) {
            return Err(Error::format(
                w.path(),
                "conv1.weight",
                format!(
                    "a {}x{} stem with layer4: torchvision ResNets have a 7x7 one (a CIFAR ResNet has \
                     3x3 and three stages)",
                    stem.kh, stem.kw
                ),
            ));
        }
        let bottleneck = w.contains("layer1.0.conv3.weight");
        let (blocks, per_stage, c) = build_stages(&w, 4, stem.oc, "a torchvision ResNet has stages layer1 to layer4", |p, c, stride| {
            let cb = |k: usize, ic: usize, s: usize, pad: usize| {
                w.conv_bn(&format!("{p}.conv{k}"), &format!("{p}.bn{k}"), ic, s, Padding::Symmetric(pad), EPS)
            };
            let convs = if bottleneck {
                // v1.5: the stride sits on the 3x3 convolution, not the first 1x1.
                let c1 = cb(1, c, 1, 0)?;
                let c2 = cb(2, c1.oc, stride, 1)?;
                let c3 = cb(3, c2.oc, 1, 0)?;
                if (c1.kh, c2.kh, c3.kh) != (1, 3, 1) {
                    return Err(Error::format(
                        w.path(),
                        format!("{p}.conv2.weight"),
                        "a bottleneck block needs 1x1, 3x3, 1x1 convolutions",
                    ));
                }
                vec![c1, c2, c3]
            } else {
                let c1 = cb(1, c, stride, 1)?;
                let c2 = cb(2, c1.oc, 1, 1)?;
                vec![c1, c2]
            };
            let out_c = convs.last().unwrap().oc;
            let shortcut = if w.contains(&format!("{p}.downsample.0.weight")) {
                let d = w.conv_bn(
                    &format!("{p}.downsample.0"),
                    &format!("{p}.downsample.1"),
                    c,
                    stride,
                    Padding::Symmetric(0),
                    EPS,
                )?;
                if d.oc != out_c || d.kh != 1 {
                    return Err(Error::format(
                        w.path(),
                        format!("{p}.downsample.0.weight"),
                        format!("expected a 1x1 convolution to {out_c} channels"),
                    ));
                }
                Shortcut::Projection(d)
            } else if stride == 1 && c == out_c {
                Shortcut::Identity
            } else {
                return Err(Error::format(
                    w.path(),
                    format!("{p}.downsample.0.weight"),
                    format!("missing: the block changes {c} -> {out_c} channels or has stride {stride}"),
                ));
            };
            Ok((Block { convs, shortcut }, out_c))
        })?;
        let head = if w.contains("fc.weight") {
            Some(w.linear("fc", c)?)
        } else {
            None
        };
        let arch = if bottleneck {
            "a bottleneck ResNet"
        } else {
            "a basic-block ResNet"
        };
        w.finish(arch)?;
        Ok(ResNet {
            stem,
            blocks,
            head,
            per_stage,
            bottleneck,
            pooled_dim: c,
        })
    }
}

impl Net for ResNet {
    fn name(&self) -> String {
        let per_block = if self.bottleneck { 3 } else { 2 };
        let depth = per_block * self.blocks.len() + 2;
        format!("ResNet-{depth}")
    }

    fn structure(&self) -> String {
        format!(
            "4 stages x {:?} {} blocks, 7x7 stem and max pool",
            self.per_stage,
            if self.bottleneck {
                "bottleneck"
            } else {
                "basic"
            }
        )
    }

    fn default_preprocess(&self) -> Preprocess {
        Preprocess {
            resize: 256,
            crop: 224,
            mean: IMAGENET_MEAN,
            std: IMAGENET_STD,
        }
    }

    fn pooled_dim(&self) -> usize {
        self.pooled_dim
    }

    fn pooled(&self, x: Fmap, ws: &mut Workspace, threads: usize) -> Result<Vec<f32>> {
        let s = self.stem.forward(&x, None, Act::Relu, ws, threads)?;
        ws.recycle(x);
        let mut h = max_pool(&s, 3, 2, 1, ws)?;
        ws.recycle(s);
        for b in &self.blocks {
            h = b.forward(h, ws, threads)?;
        }
        let f = global_avg_pool(&h);
        ws.recycle(h);
        Ok(f)
    }

    fn head(&self) -> Option<&Linear> {
        self.head.as_ref()
    }

    fn macs(&self, h: usize, w: usize) -> u64 {
        let mut total = self.stem.macs(h, w).unwrap_or(0);
        let (sh, sw) = self.stem.out_size(h, w).unwrap_or((0, 0));
        let (mut hh, mut ww) = ((sh + 2 - 3) / 2 + 1, (sw + 2 - 3) / 2 + 1);
        for b in &self.blocks {
            let (m, a, c) = b.macs(hh, ww);
            total += m;
            (hh, ww) = (a, c);
        }
        total
            + self
                .head
                .as_ref()
                .map_or(0, |h| (h.inputs * h.outputs) as u64)
    }

    fn onnx_trunk(&self, w: &mut OnnxWriter, input: &str) -> Result<String> {
        let s = onnx::export::conv(w, input, &self.stem, Act::Relu, None)?;
        let mut h = onnx::export::max_pool(w, &s, 3, 2, 1);
        for b in &self.blocks {
            h = b.onnx(w, &h)?;
        }
        Ok(onnx::export::global_pool(w, &h))
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    /// A bottleneck with an identity shortcut runs in bands ([`bottleneck`]), with the bits of
    /// the block layer by layer.
    #[test]
    fn identity_bottlenecks_run_in_bands_with_the_same_bits() {
        if !crate::kernels::packed_available() {
            eprintln!("SKIP identity_bottlenecks_run_in_bands_with_the_same_bits: bands need the AVX-512 kernel");
            return;
        }
        let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut random = |n: usize| -> Vec<f32> { (0..n).map(|_| r.random_range(-0.5..0.5)).collect() };
        let mut ws = Workspace::default();
        let (h, w, c4, c) = (13, 9, 48, 24);
        let conv = |wt: Vec<f32>, b: Vec<f32>, o: usize, i: usize, k: usize| Conv2d::from_oihw(&wt, b, [o, i, k, k], 1, Padding::Symmetric(k / 2));
        let convs = vec![
            conv(random(c * c4), random(c), c, c4, 1),
            conv(random(c * c * 9), random(c), c, c, 3),
            conv(random(c4 * c), random(c4), c4, c, 1),
        ];
        assert!(bottleneck::fits(&convs[0], &convs[1], &convs[2]));
        let b = Block { convs, shortcut: Shortcut::Identity };
        let x = Fmap { h, w, c: c4, data: random(h * w * c4) };
        let want = b.forward_layers(x.clone(), &mut ws, 1).unwrap();
        assert_eq!(b.forward(x, &mut ws, 1).unwrap(), want);
    }
}
