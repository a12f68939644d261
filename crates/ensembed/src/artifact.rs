//! What a fit leaves on disk, and how the next stage reads it back: a model directory holding
//! the weights, the resolved config beside them, the learned training representations and the
//! loss curve (burn's "config saved beside the weights" pattern). The directory is built under
//! a temporary name and renamed into place, so an interrupted fit never leaves a model that
//! looks complete.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype as StDtype, TensorView};
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};

use crate::config::FitConfig;
use crate::error::{Error, Result};
use crate::fit::{EpochStats, FitOutput};
use crate::fsio;
use crate::matrix::Matrix;
use crate::model::{EnsembleModel, ModelSpec};
use crate::store::npy;

/// Weights file inside a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Config and history file inside a model directory.
pub const CONFIG_FILE: &str = "fit.json";
/// Learned training representations inside a model directory.
pub const TRAIN_REPR_FILE: &str = "train_repr.safetensors";
/// Tensor name of representations in a safetensors file.
pub const REPR_TENSOR: &str = "representations";

/// `fit.json`: how the model was made.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FitRecord {
    pub format: String,
    pub version: u32,
    pub config: FitConfig,
    pub spec: ModelSpec,
    /// Training samples.
    pub n: usize,
    /// Where the training features came from, as given by the user.
    pub train: Option<String>,
    pub history: Vec<EpochStats>,
    /// Threads the fit ran on (outputs are byte-identical for the same seed, data and threads).
    pub threads: usize,
}

/// Writes a fitted model to `dir` (atomically, as a whole directory).
pub fn save_model_dir(dir: &Path, out: &FitOutput, cfg: &FitConfig, train: Option<&str>, overwrite: bool) -> Result<()> {
    if dir.exists() && !overwrite {
        return Err(Error::io(dir, std::io::Error::new(std::io::ErrorKind::AlreadyExists, "already exists (pass --overwrite to replace it)")));
    }
    fsio::write_dir_atomic(dir, |tmp| {
        out.model.save(&tmp.join(WEIGHTS_FILE))?;
        write_representations(&tmp.join(TRAIN_REPR_FILE), &out.representations)?;
        let record = FitRecord {
            format: "ensembed-fit".into(),
            version: 1,
            config: cfg.clone(),
            spec: out.model.spec.clone(),
            n: out.representations.rows,
            train: train.map(str::to_string),
            history: out.history.clone(),
            threads: rayon::current_num_threads(),
        };
        let json = serde_json::to_vec_pretty(&record).expect("record serialises");
        fsio::write_atomic(&tmp.join(CONFIG_FILE), &json)
    })
}

/// Reads the model and its record from a model directory.
pub fn load_model_dir(dir: &Path) -> Result<(EnsembleModel, FitRecord)> {
    let model = EnsembleModel::load(&dir.join(WEIGHTS_FILE))?;
    let path = dir.join(CONFIG_FILE);
    let record: FitRecord = serde_json::from_slice(&fsio::read(&path)?).map_err(|e| Error::format(&path, "json", e.to_string()))?;
    if record.spec != model.spec {
        return Err(Error::format(&path, "spec", "does not match the spec stored with the weights"));
    }
    Ok((model, record))
}

/// The training representations saved in a model directory. `[n, dim]`
pub fn load_train_representations(dir: &Path) -> Result<Matrix> {
    read_representations(&dir.join(TRAIN_REPR_FILE))
}

/// Writes representations as `.npy` (f32) or `.safetensors` (tensor `representations`),
/// chosen by the extension.
pub fn write_representations(path: &Path, m: &Matrix) -> Result<()> {
    match extension(path).as_deref() {
        Some("npy") => npy::write_npy_f32(path, m),
        Some("safetensors") => {
            let view = TensorView::new(StDtype::F32, vec![m.rows, m.cols], bytemuck::cast_slice(&m.data))
                .map_err(|e| Error::format(path, REPR_TENSOR, e.to_string()))?;
            let meta = HashMap::from([("format".to_string(), "ensembed-representations".to_string())]);
            let bytes = safetensors::serialize([(REPR_TENSOR, view)], Some(meta)).map_err(|e| Error::format(path, REPR_TENSOR, e.to_string()))?;
            fsio::write_atomic(path, &bytes)
        }
        other => Err(Error::format(path, "extension", format!("{other:?}: expected .npy or .safetensors"))),
    }
}

/// Reads representations written by [`write_representations`] (or any `[n, d]` f32/f16 `.npy`).
pub fn read_representations(path: &Path) -> Result<Matrix> {
    let m = read_representations_unchecked(path)?;
    // `[n, 0]` holds no data whatever n says: a few bytes could otherwise declare n = 2^60 rows
    // that the next stage would allocate for.
    if m.cols == 0 {
        return Err(Error::format(path, "shape", format!("[{}, 0]: representations need at least one column", m.rows)));
    }
    Ok(m)
}

fn read_representations_unchecked(path: &Path) -> Result<Matrix> {
    match extension(path).as_deref() {
        Some("npy") => npy::read_npy(path)?.to_f32_matrix(path),
        Some("safetensors") => {
            let bytes = fsio::read(path)?;
            let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, "header", e.to_string()))?;
            let t = st.tensor(REPR_TENSOR).map_err(|_| Error::format(path, REPR_TENSOR, "tensor missing"))?;
            if t.dtype() != StDtype::F32 || t.shape().len() != 2 {
                return Err(Error::format(path, REPR_TENSOR, format!("expected F32 [n, d], found {:?} {:?}", t.dtype(), t.shape())));
            }
            let data = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            Matrix::from_vec(t.shape()[0], t.shape()[1], data)
        }
        other => Err(Error::format(path, "extension", format!("{other:?}: expected .npy or .safetensors"))),
    }
}

fn extension(path: &Path) -> Option<String> {
    path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase())
}

/// The model directory path with a trailing file, for messages.
pub fn weights_path(dir: &Path) -> PathBuf {
    dir.join(WEIGHTS_FILE)
}
