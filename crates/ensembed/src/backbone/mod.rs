//! Pretrained image backbones run in pure Rust, to turn a folder of images into a feature
//! store without Python. The first format is TFLite's 8-bit quantised models (the coral
//! MobileNets, uint8 or int8, per-tensor or per-channel). `tflite.rs` reads the flatbuffer
//! without executing anything; `plan.rs` checks every operator against its tensors and prepares
//! it; `graph.rs` runs the plan; `conv.rs` and `ops.rs` compute the operators with TFLite's
//! integer arithmetic (`quant.rs`); `preprocess.rs` and `jpeg.rs` decode and resize images as
//! Pillow and libjpeg-turbo do; `images.rs` lists an image folder or a list file, and
//! `extract.rs` turns it, resumably, into a store.
//!
//! The aim is agreement with the official interpreter, and it is exact: on the coral models
//! and CIFAR-10, the pooled features equal tflite-runtime 2.14's (builtin kernels) bit for bit,
//! which took reproducing each rounding TFLite performs, including the ones its x86 kernels
//! perform differently from its reference kernels (see `quant.rs`, `plan.rs`, `ops.rs`).
//!
//! ```no_run
//! use ensembed::backbone::{RgbImage, TfliteModel};
//! # fn main() -> ensembed::Result<()> {
//! let model = TfliteModel::load("mobilenet_v2_1.0_224_quant.tflite")?;
//! let image = RgbImage::open("cat.bmp".as_ref())?;
//! let features = model.features(&[image])?; // [1, 1280], pooled, unnormalised
//! # Ok(()) }
//! ```

mod any;
pub mod checkpoint;
pub mod cnn;
mod conv;
mod extract;
mod graph;
mod images;
mod jpeg;
pub mod onnx;
mod ops;
mod pickle;
mod plan;
mod preprocess;
mod quant;
mod tflite;

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::matrix::Matrix;
use graph::{Graph, Step};
use ops::QType;

pub use any::{supported, Backbone, FeatureExtractor, FORMATS};
pub use checkpoint::{load_checkpoint, StateDict, Tensor};
pub use extract::{extract_folder, extract_images, extract_partial_path, file_fingerprint, ExtractOptions};
pub use onnx::OnnxModel;
pub use images::{list_image_file, list_image_folder, list_images, ImageSet, IMAGE_EXTENSIONS};
pub use preprocess::RgbImage;

/// Largest model file read (bytes): flatbuffers address at most 2 GiB.
pub const MAX_MODEL_FILE: u64 = 2 << 30;

/// A quantised TFLite image model, loaded and checked, ready to run (it is `Sync`: one model
/// serves every thread).
pub struct TfliteModel {
    path: PathBuf,
    graph: Graph,
    /// Input byte for each pixel value.
    input_lut: [u8; 256],
}

impl std::fmt::Debug for TfliteModel {
    // The plan holds every weight: show what identifies the model instead.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TfliteModel")
            .field("path", &self.path)
            .field("input_size", &self.input_size())
            .field("operators", &self.graph.nodes.len())
            .field("pooled_dim", &self.pooled_dim())
            .field("num_classes", &self.num_classes())
            .finish()
    }
}

impl TfliteModel {
    /// Reads, parses and plans the model at `path`. Every structural problem (truncation, bad
    /// offsets, shapes that do not fit, unsupported operators or types) is an [`Error::Format`]
    /// naming the file and the field.
    pub fn load(path: impl AsRef<Path>) -> Result<TfliteModel> {
        let path = path.as_ref();
        let len = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        if len > MAX_MODEL_FILE {
            return Err(Error::format(
                path,
                "file size",
                format!("{len} bytes is more than the {MAX_MODEL_FILE} bytes a TFLite flatbuffer can address"),
            ));
        }
        let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        TfliteModel::from_bytes(&data, path)
    }

    /// Parses and plans a model held in memory; `path` only names it in errors.
    pub fn from_bytes(data: &[u8], path: &Path) -> Result<TfliteModel> {
        if data.len() as u64 > MAX_MODEL_FILE {
            return Err(Error::format(
                path,
                "file size",
                format!("{} bytes is too large for a TFLite flatbuffer", data.len()),
            ));
        }
        let model = tflite::parse(data, path)?;
        let graph = Graph::plan(&model, data, path)?;
        let a = graph.input_act();
        let input_lut = preprocess::input_table(a.q == QType::U8, a.scale, a.zp);
        Ok(TfliteModel {
            path: path.to_path_buf(),
            graph,
            input_lut,
        })
    }

    /// The file the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// (height, width) of the model's input; images are resized to it.
    pub fn input_size(&self) -> (usize, usize) {
        self.graph.input_hw
    }

    /// Length of the pooled feature vector.
    pub fn pooled_dim(&self) -> usize {
        self.graph.pooled_dim
    }

    /// Number of classes of the classifier head, when the graph has one (a SOFTMAX).
    pub fn num_classes(&self) -> Option<usize> {
        let s = self.graph.softmax?;
        match &self.graph.nodes[s].step {
            Step::Softmax(sm) => Some(sm.classes),
            _ => None,
        }
    }

    /// The quantised input bytes of one image: resized to the input size as Pillow's bilinear
    /// resize, then mapped per pixel value. `[h, w, 3]`
    fn input_bytes(&self, image: &RgbImage) -> Result<Vec<u8>> {
        let (h, w) = self.input_size();
        let resized;
        let img = if (image.height(), image.width()) == (h, w) {
            image
        } else {
            resized = image.resize_bilinear(w, h)?;
            &resized
        };
        Ok(img
            .pixels()
            .iter()
            .map(|&p| self.input_lut[p as usize])
            .collect())
    }

    /// Pooled features of one image (dequantised). `[pooled_dim]`
    pub fn features_one(&self, image: &RgbImage) -> Result<Vec<f32>> {
        let g = &self.graph;
        let t = g.nodes[g.pooled].output;
        let q = g
            .run(self.input_bytes(image)?, g.pooled, &[t], false)
            .pop()
            .unwrap_or_default();
        let a = g.act(t);
        // scale * (q - zp) in f32, as numpy does it for the reference features.
        Ok(q.iter()
            .map(|&v| a.scale * (a.q.get(v) - a.zp) as f32)
            .collect())
    }

    /// Pooled features (the output of the last global AVERAGE_POOL_2D or MEAN, before the
    /// classifier), dequantised and not normalised, of each image; images run in parallel.
    ///
    /// # Shapes
    /// Returns `[images.len(), pooled_dim]`.
    pub fn features(&self, images: &[RgbImage]) -> Result<Matrix> {
        let rows: Vec<Vec<f32>> = images
            .par_iter()
            .map(|im| self.features_one(im))
            .collect::<Result<_>>()?;
        let d = self.pooled_dim();
        Matrix::from_vec(rows.len(), d, rows.concat())
    }

    /// The classifier's five most probable classes with their probabilities, best first.
    /// Probabilities are a float softmax of the dequantised logits (the input of the graph's
    /// SOFTMAX); class indices are the head's (index 0 is "background" on the ImageNet heads).
    pub fn classify(&self, image: &RgbImage) -> Result<Vec<(usize, f32)>> {
        let g = &self.graph;
        let Some(s) = g.softmax else {
            return Err(Error::config(
                "model",
                self.path.display(),
                "has no classifier head (no SOFTMAX operator): it can only extract features",
            ));
        };
        let Step::Softmax(sm) = &g.nodes[s].step else {
            unreachable!("softmax node")
        };
        let t = g.nodes[s].inputs[0];
        let logits = g
            .run(self.input_bytes(image)?, s, &[t], false)
            .pop()
            .unwrap_or_default();
        let mut p: Vec<(usize, f32)> = sm.probabilities(&logits).into_iter().enumerate().collect();
        p.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        p.truncate(5);
        Ok(p)
    }

    /// The raw (quantised) output of every operator on one image, in graph order, up to the
    /// pooled features or, with `full`, to the end; for comparing with another interpreter
    /// operator by operator (see `scripts/tflite_dump.py`).
    pub fn trace(&self, image: &RgbImage, full: bool) -> Result<Vec<Vec<u8>>> {
        let until = if full {
            self.graph.nodes.len() - 1
        } else {
            self.graph.pooled
        };
        Ok(self.graph.run(self.input_bytes(image)?, until, &[], true))
    }
}
