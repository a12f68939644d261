//! What a fit leaves on disk, and how the next stage reads it back: a model directory holding
//! the weights, the resolved config beside them, the learned training representations and the
//! loss curve (burn's "config saved beside the weights" pattern). The directory is built under
//! a temporary name and renamed into place, so an interrupted fit never leaves a model that
//! looks complete.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::tensor::Dtype as StDtype;
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
    let mut w = RepresentationWriter::create(path, m.rows, m.cols)?;
    w.write_rows(&m.data)?;
    w.finish()
}

/// Writes representations a block of rows at a time, so that a result larger than memory can
/// be streamed to disk (lazy `embed`): the header goes first (the shape is known up front),
/// rows are appended as they come, and [`finish`](RepresentationWriter::finish) flushes and
/// renames the temporary file into place. The bytes are those of [`write_representations`] on
/// the whole matrix (`.npy` as numpy writes it, `.safetensors` as `safetensors::serialize`).
/// Dropped unfinished, it removes its temporary file unless it was made resumable.
#[derive(Debug)]
pub struct RepresentationWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
    rows: usize,
    cols: usize,
    written: usize,
    keep_on_drop: bool,
    finished: bool,
}

impl RepresentationWriter {
    /// Starts writing `[rows, cols]` representations to `path` (its extension chooses the
    /// format), under a temporary name.
    pub fn create(path: &Path, rows: usize, cols: usize) -> Result<Self> {
        Self::open(path, &fsio::temp_path(path), rows, cols, 0, false)
    }

    /// Like [`create`](Self::create), but under the fixed temporary name `tmp`, which is kept
    /// when the writer is dropped unfinished, and continuing after the first `done` rows when
    /// `tmp` already holds at least that many (bytes after them are cut off): a killed run
    /// resumes from what it had flushed ([`sync`](Self::sync)).
    pub fn resumable(path: &Path, tmp: &Path, rows: usize, cols: usize, done: usize) -> Result<Self> {
        Self::open(path, tmp, rows, cols, done, true)
    }

    fn open(path: &Path, tmp: &Path, rows: usize, cols: usize, done: usize, keep_on_drop: bool) -> Result<Self> {
        use std::io::{Seek, SeekFrom, Write};
        let header = match extension(path).as_deref() {
            Some("npy") => npy::npy_header(path, "<f4", &[rows, cols])?,
            Some("safetensors") => {
                let meta = HashMap::from([("format".to_string(), "ensembed-representations".to_string())]);
                fsio::safetensors_header(path, REPR_TENSOR, StDtype::F32, &[rows, cols], Some(meta))?
            }
            other => return Err(Error::format(path, "extension", format!("{other:?}: expected .npy or .safetensors"))),
        };
        if let Some(dir) = tmp.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let io = |e| Error::io(tmp, e);
        let row_bytes = cols as u64 * 4;
        let keep = header.len() as u64 + done as u64 * row_bytes;
        let file = if done > 0 {
            let mut f = std::fs::OpenOptions::new().read(true).write(true).open(tmp).map_err(io)?;
            let len = f.metadata().map_err(io)?.len();
            if len < keep {
                return Err(Error::format(tmp, "length", format!("{len} bytes, fewer than the {keep} of its header and {done} rows")));
            }
            let mut head = vec![0u8; header.len()];
            std::io::Read::read_exact(&mut f, &mut head).map_err(io)?;
            if head != header {
                return Err(Error::format(tmp, "header", format!("not the header of [{rows}, {cols}] representations")));
            }
            f.set_len(keep).map_err(io)?;
            f.seek(SeekFrom::Start(keep)).map_err(io)?;
            f
        } else {
            let mut f = std::fs::File::create(tmp).map_err(io)?;
            f.write_all(&header).map_err(io)?;
            f
        };
        Ok(RepresentationWriter {
            path: path.to_path_buf(),
            tmp: tmp.to_path_buf(),
            file: std::io::BufWriter::with_capacity(1 << 20, file),
            rows,
            cols,
            written: done,
            keep_on_drop,
            finished: false,
        })
    }

    /// Appends whole rows.
    ///
    /// # Shapes
    /// `data`: `[k, cols]` for any k that keeps the total within `rows`.
    pub fn write_rows(&mut self, data: &[f32]) -> Result<()> {
        use std::io::Write;
        let k = if self.cols == 0 { 0 } else { data.len() / self.cols };
        if k * self.cols != data.len() || self.written + k > self.rows {
            return Err(Error::shape(format!("rows written to {}", self.path.display()), self.rows, format!("{} + {} values", self.written, data.len())));
        }
        self.file.write_all(&npy::le_bytes(data)).map_err(|e| Error::io(&self.tmp, e))?;
        self.written += k;
        Ok(())
    }

    /// Rows written so far.
    pub fn rows_written(&self) -> usize {
        self.written
    }

    /// Flushes what was written to the disk, so that a resumed run can count on it.
    pub fn sync(&mut self) -> Result<()> {
        use std::io::Write;
        self.file.flush().map_err(|e| Error::io(&self.tmp, e))?;
        self.file.get_ref().sync_data().map_err(|e| Error::io(&self.tmp, e))
    }

    /// Checks that every row was written, flushes, and renames the file into place.
    pub fn finish(mut self) -> Result<()> {
        if self.written != self.rows {
            return Err(Error::shape(format!("rows written to {}", self.path.display()), self.rows, self.written));
        }
        self.sync()?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        self.finished = true;
        Ok(())
    }
}

impl Drop for RepresentationWriter {
    fn drop(&mut self) {
        if !self.finished && !self.keep_on_drop {
            let _ = std::fs::remove_file(&self.tmp);
        }
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
