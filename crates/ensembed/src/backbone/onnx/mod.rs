//! ONNX image classifiers (what a user exports from PyTorch, timm or TensorFlow), run in pure
//! Rust on the same float layers as the PyTorch checkpoints. `proto.rs` decodes the protobuf
//! without executing anything and checks every declared size against the bytes present;
//! `plan.rs` checks each node and turns the graph into steps over [`super::cnn`]'s layers
//! (batch norm folded, activations and residual sums fused into the convolutions); `exec.rs`
//! runs them; `write.rs` and `export.rs` write ONNX, so that a checkpoint ensembed reads can be
//! handed to onnxruntime.
//!
//! The feature is the output of the last global average pool (`GlobalAveragePool`, or
//! `ReduceMean` over H and W): the pooled trunk output that the final classifier `Gemm`/`MatMul`
//! reads. That classifier, when there is one after the pool, gives `classify` its logits.
//!
//! ONNX carries no preprocessing, so the default is ImageNet's (torchvision's resize of the
//! shorter side, centre crop, ImageNet mean and std) with the crop taken from the graph's input
//! shape when it is static and square, and the resize in ImageNet's 256/224 ratio to it; a model
//! that ensembed exported records its own in the metadata key [`PREPROCESS_KEY`], and
//! `--resize/--crop/--mean/--std` override either.

mod attrs;
mod exec;
pub(crate) mod export;
mod plan;
mod proto;
mod write;

use std::path::{Path, PathBuf};


use super::cnn::{softmax, Parallelism, Preprocess, PreprocessOverride, Workspace, IMAGENET_MEAN, IMAGENET_STD};
use super::RgbImage;
use crate::error::{Error, Result};
use crate::matrix::Matrix;
use plan::{Op, Plan};

pub use export::export;
pub use plan::MAX_PAD;
pub use plan::OPS;
pub use proto::looks_like_model;
pub use write::{Attr, OnnxWriter};

/// Largest ONNX file read: protobuf messages are limited to 2 GiB.
pub const MAX_ONNX_FILE: u64 = 2 << 30;

/// The `metadata_props` key under which [`export`] records the preprocessing the weights expect:
/// `"resize R crop C mean m0,m1,m2 std s0,s1,s2"` (the format [`Preprocess`] displays).
pub const PREPROCESS_KEY: &str = "ensembed.preprocess";

/// An ONNX CNN, loaded, checked and planned (`Sync`: one model serves every thread).
pub struct OnnxModel {
    path: PathBuf,
    plan: Plan,
    last_use: Vec<usize>,
    preprocess: Preprocess,
    producer: String,
    opset: i64,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("path", &self.path)
            .field("steps", &self.plan.steps.len())
            .field("pooled_dim", &self.pooled_dim())
            .field("num_classes", &self.num_classes())
            .field("preprocess", &self.preprocess)
            .finish()
    }
}

impl OnnxModel {
    /// Reads and plans the model at `path`, with its default preprocessing changed by `over`.
    pub fn load(path: impl AsRef<Path>, over: &PreprocessOverride) -> Result<OnnxModel> {
        let path = path.as_ref();
        let len = std::fs::metadata(path).map_err(|e| Error::io(path, e))?.len();
        if len > MAX_ONNX_FILE {
            return Err(Error::format(path, "file size", format!("{len} bytes is more than the {MAX_ONNX_FILE} bytes of a protobuf message")));
        }
        let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        OnnxModel::from_bytes(&data, path, over)
    }

    /// Parses and plans a model held in memory; `path` only names it in errors.
    pub fn from_bytes(data: &[u8], path: &Path, over: &PreprocessOverride) -> Result<OnnxModel> {
        let model = proto::parse_model(data, path)?;
        let opset = model
            .opsets
            .iter()
            .find(|(d, _)| d.is_empty() || d == "ai.onnx")
            .map(|o| o.1)
            .ok_or_else(|| Error::format(path, "ModelProto.opset_import", "has no version of the default ONNX domain"))?;
        let plan = plan::plan(&model.graph, opset, path)?;
        let base = match model.metadata.iter().find(|(k, _)| k == PREPROCESS_KEY) {
            Some((_, v)) => parse_preprocess(v).ok_or_else(|| {
                Error::format(path, format!("metadata_props[{PREPROCESS_KEY}]"), format!("'{v}' is not 'resize R crop C mean m,m,m std s,s,s'"))
            })?,
            None => default_preprocess(&plan, path)?,
        };
        let preprocess = over.apply(base)?;
        let last_use = exec::last_uses(&plan);
        Ok(OnnxModel { path: path.to_path_buf(), plan, last_use, preprocess, producer: model.producer, opset })
    }

    /// The file the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The preprocessing in use.
    pub fn preprocess(&self) -> Preprocess {
        self.preprocess
    }

    /// Length of the pooled feature vector (the channels of the last global pool).
    pub fn pooled_dim(&self) -> usize {
        let s = &self.plan.steps;
        // The pool keeps the channels of the step before it; find them from the last
        // convolution or channel-changing step that feeds it.
        self.channels_of(s[self.plan.pooled].input)
    }

    /// Channels of the value in `slot`, traced back through the plan.
    fn channels_of(&self, slot: usize) -> usize {
        let mut slot = slot;
        loop {
            let Some(st) = self.plan.steps.iter().find(|s| s.output == slot) else {
                return 3; // the image
            };
            match &st.op {
                Op::Conv { conv, .. } => return conv.out_channels(),
                Op::MbConv(b) => return b.project.oc,
                Op::Bottleneck(c) => return c[2].oc,
                Op::Linear(l) => return l.outputs,
                Op::Affine { scale, .. } => return scale.len(),
                Op::Pad { before, after } => return self.channels_of(st.input) + before[2] + after[2],
                _ => slot = st.input,
            }
        }
    }

    /// Number of classes of the classifier after the pool, when there is one.
    pub fn num_classes(&self) -> Option<usize> {
        match &self.plan.steps[self.plan.head?].op {
            Op::Linear(l) => Some(l.outputs),
            _ => None,
        }
    }

    /// One line on what was loaded.
    pub fn describe(&self) -> String {
        let convs = self.plan.steps.iter().filter(|s| matches!(s.op, Op::Conv { .. })).count();
        let blocks = self.plan.steps.iter().filter(|s| matches!(s.op, Op::MbConv(_))).count();
        let bottlenecks = self.plan.steps.iter().filter(|s| matches!(s.op, Op::Bottleneck(_))).count();
        let (h, w) = (self.plan.input_shape[2], self.plan.input_shape[3]);
        let dim = |d: Option<usize>| d.map_or("?".to_string(), |v| v.to_string());
        format!(
            "ONNX opset {} from '{}': {} steps ({convs} convolutions, {blocks} MBConv blocks and {bottlenecks} bottlenecks after fusion); graph input '{}' [N,3,{},{}]; pooled {}; {}; preprocessing: {}",
            self.opset,
            self.producer,
            self.plan.steps.len(),
            self.plan.input_name,
            dim(h),
            dim(w),
            self.pooled_dim(),
            match self.num_classes() {
                Some(n) => format!("classifier over {n} classes"),
                None => "no classifier".to_string(),
            },
            self.preprocess,
        )
    }

    /// Runs the plan through step `stop` on one image and returns that step's output.
    fn run_to(&self, image: &RgbImage, stop: usize, threads: usize) -> Result<Vec<f32>> {
        Workspace::with(|ws| {
            let x = self.preprocess.input(image, ws)?;
            let v = exec::run(&self.plan, &self.last_use, x, stop, ws, threads)?;
            let out = v.map.data.clone();
            ws.recycle(v.map);
            Ok(out)
        })
    }

    /// Pooled features of one image. `[pooled_dim]`
    pub fn features_one(&self, image: &RgbImage) -> Result<Vec<f32>> {
        self.run_to(image, self.plan.pooled, rayon::current_num_threads())
    }

    /// Pooled features of each image, images in parallel (as [`super::cnn::CnnModel::features`]).
    ///
    /// # Shapes
    /// Returns `[images.len(), pooled_dim]`.
    pub fn features(&self, images: &[RgbImage]) -> Result<Matrix> {
        self.features_with(images, Parallelism::Auto)
    }

    /// [`OnnxModel::features`] with a chosen use of the threads.
    pub fn features_with(&self, images: &[RgbImage], par: Parallelism) -> Result<Matrix> {
        let stop = self.plan.pooled;
        par.map_images(images, self.pooled_dim(), |im, threads| self.run_to(im, stop, threads))
    }

    /// The classifier's logits for one image. `[num_classes]`
    pub fn logits(&self, image: &RgbImage) -> Result<Vec<f32>> {
        let Some(head) = self.plan.head else {
            return Err(Error::config(
                "model",
                self.path.display(),
                "has no classifier (no Gemm/MatMul after the global pool): it can only extract features",
            ));
        };
        self.run_to(image, head, rayon::current_num_threads())
    }

    /// The classifier's five most probable classes with their softmax probabilities, best first.
    pub fn classify(&self, image: &RgbImage) -> Result<Vec<(usize, f32)>> {
        let mut p: Vec<(usize, f32)> = softmax(&self.logits(image)?).into_iter().enumerate().collect();
        p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        p.truncate(5);
        Ok(p)
    }
}

/// ImageNet's preprocessing, with the crop from a static square input shape.
fn default_preprocess(plan: &Plan, path: &Path) -> Result<Preprocess> {
    let crop = match (plan.input_shape[2], plan.input_shape[3]) {
        (Some(h), Some(w)) if h == w => h,
        (Some(h), Some(w)) => {
            return Err(Error::format(
                path,
                format!("graph.input ({})", plan.input_name),
                format!("is {h}x{w}: ensembed centre-crops square inputs"),
            ))
        }
        _ => 224,
    };
    Ok(Preprocess {
        resize: (crop * 256 + 112) / 224,
        crop,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    })
}

/// Parses [`Preprocess`]'s display format.
fn parse_preprocess(s: &str) -> Option<Preprocess> {
    let w: Vec<&str> = s.split_whitespace().collect();
    let [("resize", r), ("crop", c), ("mean", m), ("std", d)] = [(w.first()?, w.get(1)?), (w.get(2)?, w.get(3)?), (w.get(4)?, w.get(5)?), (w.get(6)?, w.get(7)?)].map(|(k, v)| (*k, *v)) else {
        return None;
    };
    let three = |v: &str| -> Option<[f32; 3]> {
        let p: Vec<f32> = v.split(',').map(|x| x.parse().ok()).collect::<Option<_>>()?;
        p.try_into().ok()
    };
    Some(Preprocess { resize: r.parse().ok()?, crop: c.parse().ok()?, mean: three(m)?, std: three(d)? })
}

/// [`Preprocess`] in the format [`parse_preprocess`] reads, at full f32 precision.
fn format_preprocess(p: &Preprocess) -> String {
    let l = |v: &[f32; 3]| v.iter().map(|x| format!("{x:?}")).collect::<Vec<_>>().join(",");
    format!("resize {} crop {} mean {} std {}", p.resize, p.crop, l(&p.mean), l(&p.std))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preprocess_metadata_round_trips() {
        let p = Preprocess { resize: 37, crop: 32, mean: IMAGENET_MEAN, std: [0.1, 0.2, 0.30000001] };
        assert_eq!(parse_preprocess(&format_preprocess(&p)), Some(p));
        assert_eq!(parse_preprocess("resize 1 crop 1 mean 0,0 std 1,1,1"), None);
    }
}
