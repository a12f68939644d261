//! Writing a store so that it appears all at once or not at all. Files go to a temporary sibling
//! directory (`.STORE.tmp-<pid>`) that is flushed to disk and renamed into place by
//! [`StoreWriter::finish`]; dropping an unfinished writer (an error, a panic, Ctrl-C unwinding)
//! removes it. A reader therefore never sees a half-written store, and an existing store is
//! replaced only after its successor is complete.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use half::f16;
use half::slice::HalfFloatSliceExt;

use super::manifest::{
    check_backbone_name, sync_dir, sync_file, BackboneEntry, Dtype, Manifest, FEATURES_TENSOR, FORMAT,
    IDS_FILE, LABELS_FILE, LABELS_TENSOR, MANIFEST_FILE, VERSION,
};
use super::npy::le_bytes;
use crate::error::{Error, Result};
use crate::matrix::Matrix;

/// Builds a store in a temporary sibling directory and renames it into place on
/// [`finish`](StoreWriter::finish). Refuses to replace an existing directory that is not a store
/// (unless it is empty), and replaces an existing store only when `overwrite` is true.
#[derive(Debug)]
pub struct StoreWriter {
    dir: PathBuf,
    tmp: PathBuf,
    n: usize,
    overwrite: bool,
    backbones: Vec<BackboneEntry>,
    names: HashSet<String>,
    labels: Option<String>,
    classes: Option<Vec<String>>,
    ids: Option<String>,
    finished: bool,
}

/// A tensor borrowed for `safetensors::serialize_to_file`, which streams it to disk.
struct Raw<'a> {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    bytes: Cow<'a, [u8]>,
}

impl safetensors::View for Raw<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// The final component and the parent of a store path (`.` when the path is relative and bare).
fn split_dir(dir: &Path) -> Result<(String, PathBuf)> {
    let name = dir.file_name().ok_or_else(|| {
        Error::config(
            "store directory",
            dir.display(),
            "the path must end in a directory name",
        )
    })?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((name.to_string_lossy().into_owned(), parent))
}

/// Whether `dir` holds a store manifest (only its `format` field is looked at, so that a store
/// with a damaged or newer manifest can still be replaced).
fn is_store(dir: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.join(MANIFEST_FILE)) else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("format").and_then(|f| f.as_str()).map(|f| f == FORMAT))
        .unwrap_or(false)
}

/// Checks that a store may be written at `dir`: it does not exist, is an empty directory, or is
/// a store and `overwrite` is set. Import calls this before reading any input, so that a refusal
/// comes before minutes of work.
pub(crate) fn check_destination(dir: &Path, overwrite: bool) -> Result<()> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    if !meta.is_dir() {
        return Err(Error::config(
            "store directory",
            dir.display(),
            "exists and is not a directory; refusing to replace it",
        ));
    }
    if is_store(dir) {
        return if overwrite {
            Ok(())
        } else {
            Err(Error::config(
                "overwrite",
                false,
                format!(
                    "{} already holds a feature store; pass overwrite to replace it",
                    dir.display()
                ),
            ))
        };
    }
    let empty = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .next()
        .is_none();
    if empty {
        Ok(())
    } else {
        Err(Error::config(
            "store directory",
            dir.display(),
            format!("exists and is not a feature store (no valid {MANIFEST_FILE}); refusing to replace it"),
        ))
    }
}

impl StoreWriter {
    /// Starts a store of `n` samples at `dir` (creating its parent directories).
    pub fn create(dir: &Path, n: usize, overwrite: bool) -> Result<StoreWriter> {
        let (name, parent) = split_dir(dir)?;
        check_destination(dir, overwrite)?;
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        // Our pid in the name: a leftover is from an earlier run that crashed with the same pid.
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(StoreWriter {
            dir: dir.to_path_buf(),
            tmp,
            n,
            overwrite,
            backbones: Vec::new(),
            names: HashSet::new(),
            labels: None,
            classes: None,
            ids: None,
            finished: false,
        })
    }

    /// Number of samples the store is being built for.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Checks a new backbone's name (valid, not yet used) and size before anything is written.
    fn check_new(&self, name: &str, dim: usize, len: usize) -> Result<()> {
        check_backbone_name(name)?;
        if self.names.contains(&name.to_ascii_lowercase()) {
            return Err(Error::config(
                "backbone name",
                format!("`{name}`"),
                "is used twice (names are compared ignoring letter case, since they become file names)",
            ));
        }
        if dim == 0 {
            return Err(Error::config(
                "dim",
                0,
                format!("backbone `{name}` has no feature columns"),
            ));
        }
        if self.n.checked_mul(dim) != Some(len) {
            return Err(Error::shape(
                format!("features of backbone `{name}`"),
                format!("[{}, {dim}] = {} values", self.n, self.n as u128 * dim as u128),
                format!("{len} values"),
            ));
        }
        Ok(())
    }

    /// Writes one tensor as `<file>` in the temporary directory and flushes it.
    fn write_tensor(&self, file: &str, tensor: &str, raw: Raw<'_>) -> Result<()> {
        let path = self.tmp.join(file);
        safetensors::serialize_to_file([(tensor, raw)], None, &path).map_err(|e| match e {
            safetensors::SafeTensorError::IoError(e) => Error::io(&path, e),
            e => Error::format(&path, "header", e.to_string()),
        })?;
        sync_file(&path)
    }

    fn push(&mut self, name: &str, dim: usize, dtype: Dtype, bytes: Cow<'_, [u8]>) -> Result<()> {
        let file = format!("{name}.safetensors");
        let st_dtype = match dtype {
            Dtype::F32 => safetensors::Dtype::F32,
            Dtype::F16 => safetensors::Dtype::F16,
        };
        let raw = Raw {
            dtype: st_dtype,
            shape: vec![self.n, dim],
            bytes,
        };
        self.write_tensor(&file, FEATURES_TENSOR, raw)?;
        self.names.insert(name.to_ascii_lowercase());
        self.backbones.push(BackboneEntry {
            name: name.to_string(),
            dim,
            dtype,
            file,
        });
        Ok(())
    }

    /// Adds backbone `name` from an f32 matrix, stored as `dtype` (f16 rounds to nearest).
    ///
    /// # Shapes
    /// `m`: `[n, dim]`.
    pub fn add_backbone_f32(&mut self, name: &str, m: &Matrix, dtype: Dtype) -> Result<()> {
        if m.rows != self.n {
            return Err(Error::shape(
                format!("rows of backbone `{name}`"),
                format!("{} (the store's n)", self.n),
                m.rows,
            ));
        }
        self.check_new(name, m.cols, m.data.len())?;
        match dtype {
            Dtype::F32 => self.push(name, m.cols, dtype, le_bytes(&m.data)),
            Dtype::F16 => {
                let mut h = vec![f16::ZERO; m.data.len()];
                h.convert_from_f32_slice(&m.data);
                self.push(name, m.cols, dtype, le_bytes(&h))
            }
        }
    }

    /// Adds backbone `name` from f16 values, stored as f16.
    ///
    /// # Shapes
    /// `data`: `[n, dim]` row-major.
    pub fn add_backbone_f16(&mut self, name: &str, dim: usize, data: &[f16]) -> Result<()> {
        self.check_new(name, dim, data.len())?;
        self.push(name, dim, Dtype::F16, le_bytes(data))
    }

    /// Sets the labels (class indices >= 0, below `classes.len()` when classes are named).
    ///
    /// # Shapes
    /// `labels`: `[n]`.
    pub fn set_labels(&mut self, labels: &[i64], classes: Option<Vec<String>>) -> Result<()> {
        if labels.len() != self.n {
            return Err(Error::shape(
                "labels",
                format!("{} (one per sample)", self.n),
                labels.len(),
            ));
        }
        let k = classes.as_ref().map(|c| c.len());
        for (i, &v) in labels.iter().enumerate() {
            super::check_label(v, i, k).map_err(|message| Error::config("labels", v, message))?;
        }
        let raw = Raw {
            dtype: safetensors::Dtype::I64,
            shape: vec![self.n],
            bytes: le_bytes(labels),
        };
        self.write_tensor(LABELS_FILE, LABELS_TENSOR, raw)?;
        self.labels = Some(LABELS_FILE.to_string());
        self.classes = classes;
        Ok(())
    }

    /// Sets one id per sample (an id may not contain a line break, since the file has one id
    /// per line).
    ///
    /// # Shapes
    /// `ids`: `[n]`.
    pub fn set_ids(&mut self, ids: Vec<String>) -> Result<()> {
        if ids.len() != self.n {
            return Err(Error::shape(
                "ids",
                format!("{} (one per sample)", self.n),
                ids.len(),
            ));
        }
        if let Some((i, id)) = ids.iter().enumerate().find(|(_, id)| id.contains(['\n', '\r'])) {
            return Err(Error::config(
                "ids",
                format!("{id:?}"),
                format!("the id at row {i} contains a line break"),
            ));
        }
        let mut text = String::with_capacity(ids.iter().map(|s| s.len() + 1).sum());
        for id in &ids {
            text.push_str(id);
            text.push('\n');
        }
        let path = self.tmp.join(IDS_FILE);
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
        sync_file(&path)?;
        self.ids = Some(IDS_FILE.to_string());
        Ok(())
    }

    /// Writes the manifest, flushes everything and renames the temporary directory into place
    /// (moving an existing store aside first and deleting it afterwards). Returns the store's
    /// path.
    pub fn finish(mut self) -> Result<PathBuf> {
        if self.backbones.is_empty() {
            return Err(Error::config(
                "backbones",
                0,
                "a store needs at least one backbone",
            ));
        }
        let manifest = Manifest {
            format: FORMAT.to_string(),
            version: VERSION,
            n: self.n,
            backbones: self.backbones.clone(),
            labels: self.labels.clone(),
            classes: self.classes.clone(),
            ids: self.ids.clone(),
        };
        manifest.validate(&self.tmp.join(MANIFEST_FILE))?;
        manifest.write(&self.tmp.join(MANIFEST_FILE))?;
        sync_dir(&self.tmp)?;

        // Something may have appeared at the destination since `create`.
        check_destination(&self.dir, self.overwrite)?;
        let (name, parent) = split_dir(&self.dir)?;
        let exists = self.dir.exists();
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        if exists {
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
            }
            std::fs::rename(&self.dir, &old).map_err(|e| Error::io(&self.dir, e))?;
        }
        if let Err(e) = std::fs::rename(&self.tmp, &self.dir) {
            if exists {
                let _ = std::fs::rename(&old, &self.dir);
            }
            return Err(Error::io(&self.dir, e));
        }
        self.finished = true;
        sync_dir(&parent)?;
        if exists {
            // The new store is complete and in place; failing to delete the old one must not
            // make the caller believe the write failed.
            let _ = std::fs::remove_dir_all(&old);
        }
        Ok(self.dir.clone())
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        if !self.finished {
            // Best effort: the error that got us here matters more than a cleanup failure.
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}
