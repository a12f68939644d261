//! One type for every backbone file ensembed can run, so that extraction, classification and
//! the CLI do not care which format a model came in: [`Backbone::load`] looks at the file's
//! first bytes (a TFLite flatbuffer has the identifier `TFL3` at offset 4; a PyTorch checkpoint
//! is a zip archive or a legacy pickle, see [`is_checkpoint`]) and dispatches. TFLite
//! models keep their own, bit-exact pipeline (preprocessing overrides are refused for them);
//! checkpoints go through [`super::cnn`]; an ONNX model (a protobuf ModelProto, whose first field
//! is `ir_version`, or any file named `.onnx`) goes through [`super::onnx`].

use std::io::Read;
use std::path::Path;

use super::checkpoint::is_checkpoint;
use super::cnn::{CnnModel, PreprocessOverride, SUPPORTED};
use super::onnx::{self, OnnxModel};
use super::{RgbImage, TfliteModel};
use crate::error::{Error, Result};
use crate::matrix::Matrix;

/// A loaded backbone of any supported format.
#[derive(Debug)]
pub enum Backbone {
    /// A quantised TFLite model (boxed: its plan is several times the size of the other variant).
    Tflite(Box<TfliteModel>),
    /// A float CNN from a PyTorch checkpoint.
    Cnn(CnnModel),
    /// A float CNN from an ONNX file.
    Onnx(OnnxModel),
}

/// Anything that turns images into pooled features: what [`super::extract_folder`] needs.
pub trait FeatureExtractor: Sync {
    /// Length of one image's feature vector.
    fn pooled_dim(&self) -> usize;
    /// Pooled features of each image. `[images.len(), pooled_dim]`
    fn features(&self, images: &[RgbImage]) -> Result<Matrix>;
}

impl FeatureExtractor for TfliteModel {
    fn pooled_dim(&self) -> usize {
        TfliteModel::pooled_dim(self)
    }
    fn features(&self, images: &[RgbImage]) -> Result<Matrix> {
        TfliteModel::features(self, images)
    }
}

impl FeatureExtractor for CnnModel {
    fn pooled_dim(&self) -> usize {
        CnnModel::pooled_dim(self)
    }
    fn features(&self, images: &[RgbImage]) -> Result<Matrix> {
        CnnModel::features(self, images)
    }
}

impl FeatureExtractor for OnnxModel {
    fn pooled_dim(&self) -> usize {
        OnnxModel::pooled_dim(self)
    }
    fn features(&self, images: &[RgbImage]) -> Result<Matrix> {
        OnnxModel::features(self, images)
    }
}

impl FeatureExtractor for Backbone {
    fn pooled_dim(&self) -> usize {
        Backbone::pooled_dim(self)
    }
    fn features(&self, images: &[RgbImage]) -> Result<Matrix> {
        Backbone::features(self, images)
    }
}

/// The file formats a backbone can be loaded from, for `ensembed backbones` and errors.
pub const FORMATS: &[(&str, &str)] = &[
    (
        "TFLite flatbuffer (.tflite)",
        "8-bit quantised image classifiers (uint8 or int8; CONV_2D, DEPTHWISE_CONV_2D, ADD, \
         AVERAGE_POOL_2D/MEAN, RESHAPE, FULLY_CONNECTED, SOFTMAX, QUANTIZE), e.g. the coral MobileNets; \
         bit-exact with tflite-runtime",
    ),
    (
        "PyTorch checkpoint (.pth/.pt/.th, zip or legacy pickle)",
        "float CNNs recognised from their state dict (below); batch norm folded at load",
    ),
    (
        "ONNX (.onnx, weights inside the file)",
        "float CNNs of image classifiers (PyTorch, timm, tf2onnx exports); feature = the last global \
         average pool, logits = the Gemm/MatMul after it; ImageNet preprocessing by default",
    ),
];

/// A multi-line description of every supported format and architecture.
pub fn supported() -> String {
    let mut s = String::from("Backbone file formats:\n");
    for (f, what) in FORMATS {
        s += &format!("  {f}\n      {what}\n");
    }
    s += "PyTorch architectures (recognised from state-dict names and shapes):\n";
    for (a, keys) in SUPPORTED {
        s += &format!("  {a}\n      {keys}\n");
    }
    s += &format!(
        "ONNX operators (default domain, float; batch norm folded, activations and residual sums fused):\n  {}\n",
        onnx::OPS.join(", ")
    );
    s
}

impl Backbone {
    /// Loads the backbone in `path` with its family's default preprocessing.
    pub fn load(path: impl AsRef<Path>) -> Result<Backbone> {
        Backbone::load_with(path, &PreprocessOverride::default())
    }

    /// Loads the backbone in `path`, its format recognised from the first bytes; `over` changes
    /// a checkpoint's preprocessing (and is refused for TFLite models, whose input pipeline is
    /// fixed by their quantisation).
    pub fn load_with(path: impl AsRef<Path>, over: &PreprocessOverride) -> Result<Backbone> {
        let path = path.as_ref();
        // Enough for a zip's first entry name (checkpoint.rs looks for `.../data.pkl`).
        let mut head = [0u8; 512];
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        drop(f);
        let head = &head[..n];
        if head.len() >= 8 && &head[4..8] == b"TFL3" {
            if !over.is_empty() {
                return Err(Error::config(
                    "preprocessing",
                    path.display(),
                    "is a TFLite model: its input size and pixel mapping are fixed by the model \
                     (--resize/--crop/--mean/--std apply to PyTorch checkpoints only)",
                ));
            }
            return Ok(Backbone::Tflite(Box::new(TfliteModel::load(path)?)));
        }
        if is_checkpoint(head) {
            return Ok(Backbone::Cnn(CnnModel::load(path, over)?));
        }
        if onnx::looks_like_model(head) || path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx")) {
            return Ok(Backbone::Onnx(OnnxModel::load(path, over)?));
        }
        let formats: Vec<&str> = FORMATS.iter().map(|(f, _)| *f).collect();
        Err(Error::format(
            path,
            "file type",
            format!(
                "not a backbone ensembed can load (first bytes {:02x?}); supported: {}",
                &head[..head.len().min(8)],
                formats.join(", ")
            ),
        ))
    }

    /// The file the backbone was loaded from.
    pub fn path(&self) -> &Path {
        match self {
            Backbone::Tflite(m) => m.path(),
            Backbone::Cnn(m) => m.path(),
            Backbone::Onnx(m) => m.path(),
        }
    }

    /// Length of the pooled feature vector.
    pub fn pooled_dim(&self) -> usize {
        match self {
            Backbone::Tflite(m) => m.pooled_dim(),
            Backbone::Cnn(m) => m.pooled_dim(),
            Backbone::Onnx(m) => m.pooled_dim(),
        }
    }

    /// Number of classes of the classifier head, when there is one.
    pub fn num_classes(&self) -> Option<usize> {
        match self {
            Backbone::Tflite(m) => m.num_classes(),
            Backbone::Cnn(m) => m.num_classes(),
            Backbone::Onnx(m) => m.num_classes(),
        }
    }

    /// Pooled features of each image (unnormalised), images in parallel.
    ///
    /// # Shapes
    /// Returns `[images.len(), pooled_dim]`.
    pub fn features(&self, images: &[RgbImage]) -> Result<Matrix> {
        match self {
            Backbone::Tflite(m) => m.features(images),
            Backbone::Cnn(m) => m.features(images),
            Backbone::Onnx(m) => m.features(images),
        }
    }

    /// The classifier's five most probable classes with their probabilities, best first, in
    /// the head's class indices.
    pub fn classify(&self, image: &RgbImage) -> Result<Vec<(usize, f32)>> {
        match self {
            Backbone::Tflite(m) => m.classify(image),
            Backbone::Cnn(m) => m.classify(image),
            Backbone::Onnx(m) => m.classify(image),
        }
    }

    /// One line on what was loaded: format, architecture, input, feature size, head.
    pub fn describe(&self) -> String {
        match self {
            Backbone::Tflite(m) => {
                let (h, w) = m.input_size();
                format!(
                    "TFLite {}: quantised, input {h}x{w} (Pillow bilinear resize); pooled {}; {}",
                    m.path().display(),
                    m.pooled_dim(),
                    match m.num_classes() {
                        Some(n) => format!("classifier over {n} classes"),
                        None => "no classifier".to_string(),
                    }
                )
            }
            Backbone::Cnn(m) => format!("PyTorch {}: {}", m.path().display(), m.describe()),
            Backbone::Onnx(m) => format!("{}: {}", m.path().display(), m.describe()),
        }
    }
}
