//! Float CNN backbones from PyTorch checkpoints, run in pure Rust: the architecture is
//! recognised from the state dict's names and shapes (no Python class is needed, and none
//! could be run), batch norm is folded into the convolutions at load, and images go through the
//! same preprocessing the weights were trained with (Pillow's bilinear resize of the shorter
//! side, a centre crop, per-channel normalisation; every step overridable).
//!
//! Supported: the CIFAR ResNets of akamaster/pytorch_resnet_cifar10 (option-A shortcuts),
//! torchvision ResNets (basic or bottleneck blocks, v1.5 strides) and VISSL trunks of them, and
//! EfficientNet-Lite0..4 as ported by `efficientnet_lite_pytorch` (see each module). `layers.rs`
//! holds the arithmetic: NHWC maps, 1x1 convolutions as one GEMM, the others over an im2col
//! block or, at stride 1 with packed weights, over the padded input in place
//! (`kernels/packed.rs`); `depthwise.rs` the depthwise convolution; `mbconv.rs` and
//! `bottleneck.rs` the two blocks that run in bands of rows, so that their intermediate maps
//! stay in L2 (EfficientNet's MBConv, ResNet's identity bottleneck; ONNX graphs use them too).
//!
//! Images run in parallel, one per rayon thread with single-threaded GEMMs, which beats
//! splitting each GEMM over the threads once there are at least as many images as threads
//! (`benches/cnn.rs` measures both); a single image splits its GEMMs instead.

pub(crate) mod bottleneck;
mod depthwise;
mod efficientnet;
mod layers;
mod mbconv;
mod resnet;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::onnx::OnnxWriter;
use super::{RgbImage, StateDict, Tensor};
use crate::error::{Error, Result};
use crate::matrix::Matrix;
pub use depthwise::DepthwiseConv2d;
pub use mbconv::MbConv;
pub use layers::{
    fold_batch_norm, global_avg_pool, max_pool, softmax, Act, BatchNorm, Conv2d, Fmap, Linear,
    Padding, Workspace,
};

/// ImageNet's per-channel mean of [0, 1] pixels (torchvision's `Normalize`).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel standard deviation of [0, 1] pixels.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Largest `resize` accepted: far beyond what the supported networks were trained on, and small
/// enough that the resized image stays in memory.
pub const MAX_RESIZE: usize = 4096;

/// Largest resized image (pixels): a shorter side of `resize` on a very elongated image would
/// otherwise make a gigabyte-sized intermediate.
const MAX_RESIZED_PIXELS: u64 = 1 << 26;

/// How an image becomes a network input: Pillow-bilinear resize so that the shorter side is
/// `resize` (torchvision's `Resize(int)`, aspect ratio kept), centre crop to `crop` x `crop`
/// (torchvision's `CenterCrop`), then `(pixel / 255 - mean) / std` per channel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preprocess {
    pub resize: usize,
    pub crop: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Changes to a backbone family's default [`Preprocess`] (the CLI's `--resize`, `--crop`,
/// `--mean`, `--std`); `None` keeps the default.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PreprocessOverride {
    pub resize: Option<usize>,
    pub crop: Option<usize>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
}

impl PreprocessOverride {
    /// Whether anything is overridden.
    pub fn is_empty(&self) -> bool {
        *self == PreprocessOverride::default()
    }

    /// `base` with the overrides applied, checked: sizes at least 1, a crop no larger than the
    /// resize, finite means, positive finite deviations.
    pub fn apply(&self, base: Preprocess) -> Result<Preprocess> {
        let p = Preprocess {
            resize: self.resize.unwrap_or(base.resize),
            crop: self.crop.unwrap_or(base.crop),
            mean: self.mean.unwrap_or(base.mean),
            std: self.std.unwrap_or(base.std),
        };
        if p.resize == 0 || p.resize > MAX_RESIZE {
            return Err(Error::config(
                "resize",
                p.resize,
                format!("must be between 1 and {MAX_RESIZE} pixels"),
            ));
        }
        if p.crop == 0 || p.crop > p.resize {
            return Err(Error::config(
                "crop",
                p.crop,
                format!("must be between 1 and the resize ({})", p.resize),
            ));
        }
        if let Some(m) = p.mean.iter().find(|m| !m.is_finite()) {
            return Err(Error::config("mean", m, "must be finite"));
        }
        if let Some(s) = p.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::config("std", s, "must be positive and finite"));
        }
        Ok(p)
    }
}

impl std::fmt::Display for Preprocess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[f32; 3]| {
            v.iter()
                .map(|x| format!("{x:.4}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        write!(
            f,
            "resize {} crop {} mean {} std {}",
            self.resize,
            self.crop,
            list(&self.mean),
            list(&self.std)
        )
    }
}

impl Preprocess {
    /// The normalised input map of one image.
    ///
    /// # Shapes
    /// Returns `[crop, crop, 3]`.
    pub fn input(&self, image: &RgbImage, ws: &mut Workspace) -> Result<Fmap> {
        let (w, h) = (image.width(), image.height());
        // torchvision's `_compute_resized_output_size`: the shorter side becomes `resize`, the
        // longer one `int(resize * long / short)`.
        let (short, long) = (w.min(h), w.max(h));
        let new_long = (self.resize as u64 * long as u64 / short as u64) as usize;
        let (nw, nh) = if w <= h {
            (self.resize, new_long)
        } else {
            (new_long, self.resize)
        };
        if nw as u64 * nh as u64 > MAX_RESIZED_PIXELS {
            return Err(Error::config(
                "resize",
                self.resize,
                format!("would turn a {w}x{h} image into {nw}x{nh} pixels (more than {MAX_RESIZED_PIXELS})"),
            ));
        }
        let resized;
        let img = if (nw, nh) == (w, h) {
            image
        } else {
            resized = image.resize_bilinear(nw, nh)?;
            &resized
        };
        if self.crop > nw || self.crop > nh {
            return Err(Error::config(
                "crop",
                self.crop,
                format!("is larger than the resized {nw}x{nh} image"),
            ));
        }
        // torchvision's `center_crop`: int(round((size - crop) / 2)), Python's round (half to
        // even).
        let top = ((nh - self.crop) as f64 / 2.0).round_ties_even() as usize;
        let left = ((nw - self.crop) as f64 / 2.0).round_ties_even() as usize;
        let c = self.crop;
        let mut out = ws.fmap(c, c, 3);
        let px = img.pixels();
        for y in 0..c {
            let src = &px[((top + y) * nw + left) * 3..((top + y) * nw + left + c) * 3];
            let dst = &mut out.data[y * c * 3..(y + 1) * c * 3];
            for (d, s) in dst.chunks_exact_mut(3).zip(src.chunks_exact(3)) {
                for ch in 0..3 {
                    // As ToTensor then Normalize do it in f32.
                    d[ch] = (s[ch] as f32 / 255.0 - self.mean[ch]) / self.std[ch];
                }
            }
        }
        Ok(out)
    }
}

/// One recognised architecture: its layers and what it needs around them.
pub(crate) trait Net: Send + Sync {
    /// "CIFAR ResNet-20", "ResNet-50", "EfficientNet-Lite0", ...
    fn name(&self) -> String;
    /// The block structure, in a few words.
    fn structure(&self) -> String;
    /// Preprocessing the weights were trained with.
    fn default_preprocess(&self) -> Preprocess;
    /// Length of the pooled feature.
    fn pooled_dim(&self) -> usize;
    /// The pooled feature of one input map (consumed: its buffer returns to `ws`).
    ///
    /// # Shapes
    /// `x`: `[h, w, 3]`; returns `[pooled_dim]`.
    fn pooled(&self, x: Fmap, ws: &mut Workspace, threads: usize) -> Result<Vec<f32>>;
    /// The classifier, when the checkpoint has one.
    fn head(&self) -> Option<&Linear>;
    /// Multiply-adds of the convolutions and the head for an `h` x `w` input.
    fn macs(&self, h: usize, w: usize) -> u64;
    /// Writes the trunk as ONNX nodes reading `input` (`[N, 3, h, w]`) and returns the name of
    /// the pooled `[N, C, 1, 1]` value ([`crate::backbone::onnx::export`]).
    fn onnx_trunk(&self, w: &mut OnnxWriter, input: &str) -> Result<String> {
        let _ = (w, input);
        Err(Error::config(
            "export",
            self.name(),
            "exporting this architecture to ONNX is not implemented (the ResNets are)",
        ))
    }
}

/// Reads tensors out of a state dict while recording which were used, so that a checkpoint
/// with parts the recognised architecture does not have (squeeze-and-excitation, an extra
/// stage) is refused instead of silently running a different network.
pub(crate) struct Weights<'a> {
    sd: &'a StateDict,
    used: RefCell<BTreeSet<String>>,
}

impl<'a> Weights<'a> {
    pub fn new(sd: &'a StateDict) -> Self {
        Weights {
            sd,
            used: RefCell::new(BTreeSet::new()),
        }
    }

    pub fn path(&self) -> &Path {
        &self.sd.path
    }

    pub fn contains(&self, name: &str) -> bool {
        self.sd.contains(name)
    }

    /// The tensor `name`, which must have `shape`.
    pub fn shaped(&self, name: &str, shape: &[usize]) -> Result<&'a Tensor> {
        let t = self.sd.get_shaped(name, shape)?;
        self.used.borrow_mut().insert(name.to_string());
        Ok(t)
    }

    /// The shape of `name` if it has `rank` dimensions, else a format error.
    pub fn shape(&self, name: &str, rank: usize) -> Result<&'a [usize]> {
        let t = self.sd.get(name)?;
        if t.shape.len() != rank {
            return Err(Error::format(
                self.path(),
                name,
                format!("has shape {:?}, expected {rank} dimensions", t.shape),
            ));
        }
        Ok(&t.shape)
    }

    /// A `BatchNorm2d` of `channels` at `prefix` (`prefix.weight`, `.bias`, `.running_mean`,
    /// `.running_var`; `.num_batches_tracked` is ignored).
    pub fn batch_norm(&self, prefix: &str, channels: usize, eps: f64) -> Result<BatchNorm<'a>> {
        let v = |n: &str| -> Result<&'a [f32]> {
            Ok(&self.shaped(&format!("{prefix}.{n}"), &[channels])?.data)
        };
        Ok(BatchNorm {
            gamma: v("weight")?,
            beta: v("bias")?,
            mean: v("running_mean")?,
            var: v("running_var")?,
            eps,
        })
    }

    /// A bias-free convolution `conv` (`[oc, ic, k, k]` with the given `ic`) followed by the
    /// batch norm `bn`, folded.
    pub fn conv_bn(
        &self,
        conv: &str,
        bn: &str,
        ic: usize,
        stride: usize,
        padding: Padding,
        eps: f64,
    ) -> Result<Conv2d> {
        let name = format!("{conv}.weight");
        let s = self.shape(&name, 4)?;
        let (oc, kh, kw) = (s[0], s[2], s[3]);
        if oc == 0 || kh == 0 || kw == 0 {
            return Err(Error::format(
                self.path(),
                &name,
                format!("has shape {s:?}: a convolution needs at least one filter of at least 1x1"),
            ));
        }
        let w = self.shaped(&name, &[oc, ic, kh, kw])?;
        let mut weight = w.data.clone();
        let bias = fold_batch_norm(&mut weight, &[], &self.batch_norm(bn, oc, eps)?);
        Ok(Conv2d::from_oihw(
            &weight,
            bias,
            [oc, ic, kh, kw],
            stride,
            padding,
        ))
    }

    /// A `Linear(inputs, outputs)` at `prefix` (`.weight` `[outputs, inputs]`, `.bias`).
    pub fn linear(&self, prefix: &str, inputs: usize) -> Result<Linear> {
        let name = format!("{prefix}.weight");
        let outputs = self.shape(&name, 2)?[0];
        let w = self.shaped(&name, &[outputs, inputs])?;
        let b = self.shaped(&format!("{prefix}.bias"), &[outputs])?;
        Ok(Linear::new(w.data.clone(), b.data.clone(), outputs, inputs))
    }

    /// Refuses tensors that were never read (batch norms' `num_batches_tracked` aside).
    pub fn finish(&self, arch: &str) -> Result<()> {
        let used = self.used.borrow();
        let unused: Vec<&str> = self
            .sd
            .keys()
            .filter(|k| !used.contains(*k) && !k.ends_with("num_batches_tracked"))
            .collect();
        if unused.is_empty() {
            return Ok(());
        }
        let shown: Vec<&str> = unused.iter().take(8).copied().collect();
        Err(Error::format(
            self.path(),
            "state dict",
            format!(
                "recognised as {arch}, but {} tensor(s) have no place in it ({}{}): a variant \
                 ensembed does not implement",
                unused.len(),
                shown.join(", "),
                if unused.len() > shown.len() {
                    ", ..."
                } else {
                    ""
                }
            ),
        ))
    }
}

/// What `ensembed backbones` lists for PyTorch checkpoints: each architecture and the state
/// dict names that identify it.
pub const SUPPORTED: &[(&str, &str)] = &[
    (
        "CIFAR ResNet-20/32/44/56/... (akamaster/pytorch_resnet_cifar10)",
        "conv1.weight [16,3,3,3], bn1, layer1..3.N.{conv1,bn1,conv2,bn2}, linear; option-A shortcuts; 32x32 input",
    ),
    (
        "ResNet-18/34/50/101/152 (torchvision) and VISSL trunks",
        "conv1.weight [64,3,7,7], bn1, layer1..4.N.{conv1..3,bn1..3,downsample.0/1}, optional fc",
    ),
    (
        "EfficientNet-Lite0..4 (efficientnet_lite_pytorch)",
        "_conv_stem, _bn0, _blocks.N.{_expand_conv,_bn0,_depthwise_conv,_bn1,_project_conv,_bn2}, _conv_head, _bn1, _fc",
    ),
];

/// Recognises the architecture of a state dict and builds it.
fn build(sd: &StateDict) -> Result<Box<dyn Net>> {
    if sd.contains("_conv_stem.weight") {
        return Ok(Box::new(efficientnet::EfficientNetLite::build(sd)?));
    }
    if sd.contains("conv1.weight") && sd.contains("layer1.0.conv1.weight") {
        if sd.contains("layer4.0.conv1.weight") {
            return Ok(Box::new(resnet::ResNet::build(sd)?));
        }
        return Ok(Box::new(resnet::CifarResNet::build(sd)?));
    }
    let keys: Vec<&str> = sd.keys().take(6).collect();
    let expected: Vec<String> = SUPPORTED.iter().map(|(a, k)| format!("{a}: {k}")).collect();
    Err(Error::format(
        &sd.path,
        "state dict",
        format!(
            "is no architecture ensembed knows (its first names: {}); expected one of: {}",
            if keys.is_empty() {
                "none".to_string()
            } else {
                keys.join(", ")
            },
            expected.join("; ")
        ),
    ))
}

/// How [`CnnModel::features_with`] uses the threads of rayon's pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parallelism {
    /// One image per thread when there are at least as many images as threads, else split
    /// each GEMM.
    Auto,
    /// One image per thread, single-threaded GEMMs.
    Images,
    /// One image at a time, each GEMM split over the threads.
    Gemm,
}

impl Parallelism {
    /// Runs `one(image, threads)` (an image's `dim` pooled features, computed with that many
    /// threads for its GEMMs) over `images` as this setting says, and stacks the rows.
    ///
    /// # Shapes
    /// Returns `[images.len(), dim]`.
    pub(crate) fn map_images(
        self,
        images: &[RgbImage],
        dim: usize,
        one: impl Fn(&RgbImage, usize) -> Result<Vec<f32>> + Sync,
    ) -> Result<Matrix> {
        let threads = rayon::current_num_threads();
        let per_image = match self {
            Parallelism::Auto => threads > 1 && images.len() >= threads,
            Parallelism::Images => true,
            Parallelism::Gemm => false,
        };
        let rows: Vec<Vec<f32>> = if per_image {
            images.par_iter().map(|im| one(im, 1)).collect::<Result<_>>()?
        } else {
            images.iter().map(|im| one(im, threads)).collect::<Result<_>>()?
        };
        Matrix::from_vec(rows.len(), dim, rows.concat())
    }
}

/// A float CNN loaded from a PyTorch checkpoint, ready to run (`Sync`: one model serves every
/// thread).
pub struct CnnModel {
    path: PathBuf,
    net: Box<dyn Net>,
    preprocess: Preprocess,
}

impl std::fmt::Debug for CnnModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CnnModel")
            .field("path", &self.path)
            .field("architecture", &self.net.name())
            .field("pooled_dim", &self.pooled_dim())
            .field("num_classes", &self.num_classes())
            .field("preprocess", &self.preprocess)
            .finish()
    }
}

impl CnnModel {
    /// Reads the checkpoint at `path` and builds the network it holds, with the family's
    /// default preprocessing changed by `over`.
    pub fn load(path: impl AsRef<Path>, over: &PreprocessOverride) -> Result<CnnModel> {
        let sd = super::load_checkpoint(path.as_ref())?;
        CnnModel::from_state_dict(&sd, over)
    }

    /// Builds the network a state dict holds (`sd.path` names it in errors).
    pub fn from_state_dict(sd: &StateDict, over: &PreprocessOverride) -> Result<CnnModel> {
        let net = build(sd)?;
        let preprocess = over.apply(net.default_preprocess())?;
        Ok(CnnModel {
            path: sd.path.clone(),
            net,
            preprocess,
        })
    }

    /// The file the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The recognised network, for export.
    pub(crate) fn net(&self) -> &dyn Net {
        self.net.as_ref()
    }

    /// The recognised architecture ("ResNet-50", ...).
    pub fn architecture(&self) -> String {
        self.net.name()
    }

    /// The preprocessing in use.
    pub fn preprocess(&self) -> Preprocess {
        self.preprocess
    }

    /// Length of the pooled feature vector.
    pub fn pooled_dim(&self) -> usize {
        self.net.pooled_dim()
    }

    /// Number of classes of the classifier head, when the checkpoint has one.
    pub fn num_classes(&self) -> Option<usize> {
        self.net.head().map(|h| h.outputs)
    }

    /// Multiply-adds per image at the configured input size.
    pub fn macs(&self) -> u64 {
        self.net.macs(self.preprocess.crop, self.preprocess.crop)
    }

    /// One line on what was loaded.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}); input {c}x{c}, {:.2} GMACs; pooled {}; {}; preprocessing: {}",
            self.net.name(),
            self.net.structure(),
            self.macs() as f64 / 1e9,
            self.pooled_dim(),
            match self.num_classes() {
                Some(n) => format!("classifier over {n} classes"),
                None => "no classifier".to_string(),
            },
            self.preprocess,
            c = self.preprocess.crop,
        )
    }

    fn pooled_one(&self, image: &RgbImage, threads: usize) -> Result<Vec<f32>> {
        Workspace::with(|ws| {
            let x = self.preprocess.input(image, ws)?;
            self.net.pooled(x, ws, threads)
        })
    }

    /// Pooled features of one image. `[pooled_dim]`
    pub fn features_one(&self, image: &RgbImage) -> Result<Vec<f32>> {
        self.pooled_one(image, rayon::current_num_threads())
    }

    /// Pooled features (after the last activation, before the classifier) of each image.
    ///
    /// # Shapes
    /// Returns `[images.len(), pooled_dim]`.
    pub fn features(&self, images: &[RgbImage]) -> Result<Matrix> {
        self.features_with(images, Parallelism::Auto)
    }

    /// [`CnnModel::features`] with a chosen use of the threads (for benchmarks).
    pub fn features_with(&self, images: &[RgbImage], par: Parallelism) -> Result<Matrix> {
        par.map_images(images, self.pooled_dim(), |im, threads| self.pooled_one(im, threads))
    }

    /// Logits of the classifier for pooled features.
    ///
    /// # Shapes
    /// `pooled`: `[rows, pooled_dim]`; returns `[rows, num_classes]`.
    pub fn logits(&self, pooled: &Matrix) -> Result<Matrix> {
        let Some(head) = self.net.head() else {
            return Err(self.no_head());
        };
        if pooled.cols != head.inputs {
            return Err(Error::shape("pooled features", head.inputs, pooled.cols));
        }
        Matrix::from_vec(
            pooled.rows,
            head.outputs,
            head.forward(&pooled.data, pooled.rows),
        )
    }

    fn no_head(&self) -> Error {
        Error::config(
            "model",
            self.path.display(),
            "has no classifier head (no `fc`/`linear`/`_fc` weights): it can only extract features",
        )
    }

    /// The classifier's five most probable classes with their softmax probabilities, best
    /// first (class indices are the head's: 0..num_classes).
    pub fn classify(&self, image: &RgbImage) -> Result<Vec<(usize, f32)>> {
        if self.net.head().is_none() {
            return Err(self.no_head());
        }
        let f = self.features_one(image)?;
        let pooled = Matrix::from_vec(1, f.len(), f)?;
        let logits = self.logits(&pooled)?;
        let mut p: Vec<(usize, f32)> = softmax(&logits.data).into_iter().enumerate().collect();
        p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        p.truncate(5);
        Ok(p)
    }
}
