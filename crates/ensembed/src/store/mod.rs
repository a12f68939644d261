//! The feature store: for n samples, one feature matrix per backbone (`[n, d_j]`, f32 or f16),
//! plus optional labels and ids, in a directory of safetensors files described by
//! `manifest.json`. Features are memory-mapped rather than loaded, because a store for a large
//! dataset (millions of rows, several 2048-wide backbones) does not fit in memory, while a
//! training step only needs a minibatch of rows; the layout is plain safetensors so that Python
//! can read a store without this library.
//!
//! ```text
//! STORE/manifest.json        format, version, n, backbones [{name, dim, dtype, file}], labels, classes, ids
//! STORE/<name>.safetensors   one tensor "features", [n, dim], F32 or F16
//! STORE/labels.safetensors   one tensor "labels", [n], I64, values >= 0
//! STORE/ids.txt              one id per line
//! ```
//!
//! Opening checks the manifest against the files' headers and lengths (O(1) per file);
//! [`Store::validate_values`] scans the data (O(n d)) for non-finite values and zero rows.

mod import;
mod manifest;
pub mod npy;
mod shard;
mod writer;

use std::ops::Range;
use std::path::{Path, PathBuf};

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use safetensors::SafeTensors;

use crate::error::{Error, Result};
use crate::matrix::{normalize, Matrix};

pub use import::import_numpy;
pub use manifest::{check_backbone_name, BackboneEntry, Dtype, Manifest, MANIFEST_FILE};
pub use shard::{merge_stores, shard_store, subset_store, Subset};
pub use writer::StoreWriter;
pub(crate) use writer::check_destination;

use manifest::{FEATURES_TENSOR, LABELS_TENSOR};

/// What a user needs to know about one backbone of a store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackboneInfo {
    pub name: String,
    pub dim: usize,
    pub dtype: Dtype,
}

/// One backbone file, memory-mapped.
#[derive(Debug)]
struct Mapped {
    path: PathBuf,
    map: memmap2::Mmap,
    /// Byte range of the `features` tensor inside `map`.
    data: Range<usize>,
}

/// An opened feature store. Cheap to open (headers only); rows are decoded on demand from the
/// memory maps, so it is `Sync` and can be read from many threads at once.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    manifest: Manifest,
    infos: Vec<BackboneInfo>,
    maps: Vec<Mapped>,
    labels: Option<Vec<u32>>,
    ids: Option<Vec<String>>,
}

impl Store {
    /// Opens the store in `dir`: reads the manifest, memory-maps each backbone file and checks
    /// its tensor name, dtype, shape `[n, dim]` and byte length against the manifest, and loads
    /// and checks labels (>= 0, below the number of classes when classes are named) and ids.
    /// Feature values are not scanned; see [`Store::validate_values`]. Every file must be a
    /// regular file inside `dir`: the manifest can only name plain file names, and an entry that
    /// is a symbolic link resolving outside the store is refused (see `check_entry`).
    pub fn open(dir: &Path) -> Result<Store> {
        let manifest_path = dir.join(MANIFEST_FILE);
        check_entry(dir, &manifest_path, MANIFEST_FILE)?;
        let manifest = Manifest::read(&manifest_path)?;
        let n = manifest.n;

        let mut infos = Vec::with_capacity(manifest.backbones.len());
        let mut maps = Vec::with_capacity(manifest.backbones.len());
        for (k, b) in manifest.backbones.iter().enumerate() {
            let path = dir.join(&b.file);
            check_entry(dir, &path, &format!("backbones[{k}].file"))?;
            let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            // SAFETY: the map is read-only. Like every mmap it assumes no other process
            // truncates the file while the store is open; stores are written to a temporary
            // directory and renamed into place, never modified in place.
            let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
            let (dtype, shape, data) = locate_tensor(&map, &path, FEATURES_TENSOR)?;
            let want = match b.dtype {
                Dtype::F32 => safetensors::Dtype::F32,
                Dtype::F16 => safetensors::Dtype::F16,
            };
            if dtype != want {
                return Err(Error::format(
                    &path,
                    "dtype",
                    format!("tensor `features` is {dtype:?} but the manifest says {}", b.dtype),
                ));
            }
            if shape != [n, b.dim] {
                return Err(Error::format(
                    &path,
                    "shape",
                    format!(
                        "tensor `features` has shape {shape:?} but the manifest says [{n}, {}]",
                        b.dim
                    ),
                ));
            }
            infos.push(BackboneInfo {
                name: b.name.clone(),
                dim: b.dim,
                dtype: b.dtype,
            });
            maps.push(Mapped { path, map, data });
        }

        let labels = match &manifest.labels {
            Some(f) => {
                check_entry(dir, &dir.join(f), "labels")?;
                Some(read_labels(&dir.join(f), n, manifest.classes.as_deref())?)
            }
            None => None,
        };
        let ids = match &manifest.ids {
            Some(f) => {
                check_entry(dir, &dir.join(f), "ids")?;
                Some(read_ids(&dir.join(f), n)?)
            }
            None => None,
        };
        Ok(Store {
            root: dir.to_path_buf(),
            manifest,
            infos,
            maps,
            labels,
            ids,
        })
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The parsed manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Number of samples n.
    pub fn len(&self) -> usize {
        self.manifest.n
    }

    /// Whether the store has no samples.
    pub fn is_empty(&self) -> bool {
        self.manifest.n == 0
    }

    /// The backbones, in manifest order (index j in the other methods).
    pub fn backbones(&self) -> &[BackboneInfo] {
        &self.infos
    }

    /// Index of the backbone called `name`; the error lists the available names.
    pub fn backbone_index(&self, name: &str) -> Result<usize> {
        self.infos.iter().position(|b| b.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.infos.iter().map(|b| b.name.as_str()).collect();
            Error::config(
                "backbone",
                name,
                format!(
                    "no such backbone in {}; it has: {}",
                    self.root.display(),
                    names.join(", ")
                ),
            )
        })
    }

    /// Raw little-endian bytes of row `i` of backbone `j`.
    fn row_bytes(&self, j: usize, i: usize) -> &[u8] {
        assert!(
            i < self.manifest.n,
            "row {i} out of range for a store of {} rows",
            self.manifest.n
        );
        let m = &self.maps[j];
        let row = self.infos[j].dim * self.infos[j].dtype.size();
        &m.map[m.data.start + i * row..m.data.start + (i + 1) * row]
    }

    /// Copies row `i` of backbone `j` into `out` as f32 (widening f16), not normalised.
    ///
    /// # Shapes
    /// `out`: `[dim_j]`.
    ///
    /// # Panics
    /// When `j` or `i` is out of range or `out` has the wrong length.
    pub fn read_row(&self, j: usize, i: usize, out: &mut [f32]) {
        assert_eq!(
            out.len(),
            self.infos[j].dim,
            "read_row: output length vs dim of backbone {j}"
        );
        decode_row(self.row_bytes(j, i), self.infos[j].dtype, out);
    }

    /// Rows `idx` of backbone `j`, each scaled to unit L2 norm (a zero row stays zero; import
    /// and [`Store::validate_values`] reject those).
    ///
    /// # Shapes
    /// `idx`: `[b]`; `out`: `[b, dim_j]` row-major.
    ///
    /// # Panics
    /// When an index is out of range or `out` has the wrong length.
    pub fn gather_normalized(&self, j: usize, idx: &[usize], out: &mut [f32]) {
        let dim = self.infos[j].dim;
        assert_eq!(
            out.len(),
            idx.len() * dim,
            "gather_normalized: output length vs idx.len() * dim"
        );
        let dtype = self.infos[j].dtype;
        out.par_chunks_mut(dim)
            .zip(idx.par_iter())
            .with_min_len(64)
            .for_each(|(o, &i)| {
                decode_row(self.row_bytes(j, i), dtype, o);
                normalize(o);
            });
    }

    /// The whole of backbone `j` as an f32 matrix with unit-norm rows (one copy of the data).
    ///
    /// # Shapes
    /// Returns `[n, dim_j]`.
    pub fn features_normalized(&self, j: usize) -> Matrix {
        let (n, dim, dtype) = (self.manifest.n, self.infos[j].dim, self.infos[j].dtype);
        let mut m = Matrix::zeros(n, dim);
        m.data
            .par_chunks_mut(dim)
            .enumerate()
            .with_min_len(64)
            .for_each(|(i, o)| {
                decode_row(self.row_bytes(j, i), dtype, o);
                normalize(o);
            });
        m
    }

    /// Class index of each sample, when the store has labels.
    ///
    /// # Shapes
    /// `[n]`.
    pub fn labels(&self) -> Option<&[u32]> {
        self.labels.as_deref()
    }

    /// Class names, indexed by label, when the store names them.
    pub fn classes(&self) -> Option<&[String]> {
        self.manifest.classes.as_deref()
    }

    /// Number of classes: the number of class names when given, else the largest label + 1.
    pub fn num_classes(&self) -> Option<usize> {
        match (&self.manifest.classes, &self.labels) {
            (Some(c), _) => Some(c.len()),
            (None, Some(l)) => Some(l.iter().max().map_or(0, |&m| m as usize + 1)),
            (None, None) => None,
        }
    }

    /// One id per sample (for example the image's relative path), when the store has ids.
    pub fn ids(&self) -> Option<&[String]> {
        self.ids.as_deref()
    }

    /// Scans every value of every backbone: a NaN or infinity is [`Error::NonFinite`], a row of
    /// zeros (which has no direction, so no cosine similarity) is [`Error::ZeroRow`]. Reports the
    /// first offending row of the first offending backbone.
    pub fn validate_values(&self) -> Result<()> {
        for (j, b) in self.infos.iter().enumerate() {
            let what = format!("backbone `{}`", b.name);
            check_rows(&self.maps[j].path, &what, self.manifest.n, b.dim, |i, out| {
                decode_row(self.row_bytes(j, i), b.dtype, out)
            })?;
        }
        Ok(())
    }
}

/// Checks that the store entry `path` (named by the manifest field `field`) is a regular file
/// inside the store directory `root`. The manifest can only name plain file names (see
/// [`manifest::check_file_name`]), but the entry itself may be a symbolic link: one that
/// resolves outside the store is refused, so that a store from an untrusted source cannot make
/// us read (and echo in messages, or copy into a new store) `/etc/shadow` or another user's
/// data; a link to another file of the same store is allowed. A FIFO, device or directory is
/// refused too (opening a FIFO would block forever, `/dev/zero` would never end). Nothing ever
/// writes through an existing store's files: writers build a new directory and rename it.
fn check_entry(root: &Path, path: &Path, field: &str) -> Result<()> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.file_type().is_symlink() {
        let real_root = root.canonicalize().map_err(|e| Error::io(root, e))?;
        let target = path.canonicalize().map_err(|e| Error::io(path, e))?;
        if !target.starts_with(&real_root) {
            return Err(Error::format(
                path,
                field,
                format!(
                    "is a symbolic link to {}, outside the store {}: refused (copy the file into the store)",
                    target.display(),
                    real_root.display()
                ),
            ));
        }
    }
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(Error::format(path, field, "is not a regular file"));
    }
    Ok(())
}

/// Decodes one row of little-endian f32 or f16 bytes into f32. Reinterprets in place when the
/// bytes are aligned (they are for files this library writes: safetensors pads its header to 8
/// bytes), and converts element by element otherwise.
///
/// # Shapes
/// `bytes`: `[out.len() * dtype.size()]`; `out`: `[dim]`.
fn decode_row(bytes: &[u8], dtype: Dtype, out: &mut [f32]) {
    let little = cfg!(target_endian = "little");
    match dtype {
        Dtype::F32 => match bytemuck::try_cast_slice::<u8, f32>(bytes) {
            Ok(s) if little => out.copy_from_slice(s),
            _ => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                }
            }
        },
        Dtype::F16 => match bytemuck::try_cast_slice::<u8, f16>(bytes) {
            Ok(s) if little => s.convert_to_f32_slice(out),
            _ => {
                for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_le_bytes([c[0], c[1]]).to_f32();
                }
            }
        },
    }
}

/// Checks `rows` rows of width `dim`, fetched by `row(i, buf)`, for non-finite values and
/// all-zero rows, in parallel; reports the lowest offending row. `path` and `what` name the
/// file and the backbone in the error.
///
/// # Shapes
/// `row` fills a `[dim]` buffer with row `i`.
pub(crate) fn check_rows(
    path: &Path,
    what: &str,
    rows: usize,
    dim: usize,
    row: impl Fn(usize, &mut [f32]) + Sync,
) -> Result<()> {
    const BLOCK: usize = 1024;
    let first = (0..rows.div_ceil(BLOCK)).into_par_iter().find_map_first(|b| {
        let mut buf = vec![0.0f32; dim];
        for i in b * BLOCK..((b + 1) * BLOCK).min(rows) {
            row(i, &mut buf);
            if let Some((col, &value)) = buf.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Some(Error::NonFinite {
                    path: path.to_path_buf(),
                    what: what.to_string(),
                    row: i,
                    col,
                    value,
                });
            }
            if buf.iter().all(|&v| v == 0.0) {
                return Some(Error::ZeroRow {
                    path: path.to_path_buf(),
                    what: what.to_string(),
                    row: i,
                });
            }
        }
        None
    });
    first.map_or(Ok(()), Err)
}

/// Checks that a safetensors file's length matches what its header declares, so that a
/// truncated file is reported with both byte counts (the safetensors crate only says
/// "incomplete metadata"). A header that does not parse is left to the crate to report.
fn check_length(bytes: &[u8], path: &Path) -> Result<()> {
    let len = bytes.len() as u64;
    let Some(prefix) = bytes.get(..8) else {
        return Err(Error::format(
            path,
            "length",
            format!("the file is {len} bytes, too short for a safetensors header (at least 8)"),
        ));
    };
    let hn = u64::from_le_bytes(prefix.try_into().expect("8 bytes"));
    let header_end = hn.saturating_add(8);
    if header_end > len {
        return Err(Error::format(
            path,
            "length",
            format!("the header alone declares {header_end} bytes but the file is {len} bytes (truncated?)"),
        ));
    }
    let Ok(serde_json::Value::Object(header)) = serde_json::from_slice(&bytes[8..header_end as usize]) else {
        return Ok(());
    };
    let data_end = header
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    let expected = header_end.saturating_add(data_end);
    if expected != len {
        return Err(Error::format(
            path,
            "length",
            format!(
                "the header declares {expected} bytes (header + tensor data) but the file is {len} bytes{}",
                if len < expected {
                    " (truncated)"
                } else {
                    " (trailing bytes)"
                }
            ),
        ));
    }
    Ok(())
}

/// Finds tensor `name` in a safetensors file held in `bytes`; returns its dtype, shape and the
/// byte range of its data within `bytes`.
fn locate_tensor(
    bytes: &[u8],
    path: &Path,
    name: &str,
) -> Result<(safetensors::Dtype, Vec<usize>, Range<usize>)> {
    check_length(bytes, path)?;
    let (hn, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::format(path, "header", format!("not a valid safetensors file: {e}")))?;
    let Some(info) = meta.info(name) else {
        let mut names: Vec<String> = meta.tensors().into_keys().collect();
        names.sort();
        return Err(Error::format(
            path,
            "tensor",
            format!("no tensor named `{name}`; the file holds {names:?}"),
        ));
    };
    let base = 8 + hn;
    Ok((
        info.dtype,
        info.shape.clone(),
        base + info.data_offsets.0..base + info.data_offsets.1,
    ))
}

/// Loads and checks the labels file: tensor `labels`, I64, shape `[n]`, values in
/// `0..classes.len()` (or merely >= 0 when classes are not named).
fn read_labels(path: &Path, n: usize, classes: Option<&[String]>) -> Result<Vec<u32>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (dtype, shape, range) = locate_tensor(&bytes, path, LABELS_TENSOR)?;
    if dtype != safetensors::Dtype::I64 {
        return Err(Error::format(
            path,
            "dtype",
            format!("tensor `labels` is {dtype:?}, expected I64"),
        ));
    }
    if shape != [n] {
        return Err(Error::format(
            path,
            "shape",
            format!("tensor `labels` has shape {shape:?} but the store has n = {n}: expected [{n}]"),
        ));
    }
    bytes[range]
        .chunks_exact(8)
        .enumerate()
        .map(|(i, c)| {
            let v = i64::from_le_bytes(c.try_into().expect("8 bytes"));
            check_label(v, i, classes.map(|c| c.len()))
                .map_err(|message| Error::format(path, "labels", message))
        })
        .collect()
}

/// A label as a class index, or why it is not one (the message names the row and the value).
pub(crate) fn check_label(v: i64, row: usize, num_classes: Option<usize>) -> Result<u32, String> {
    if v < 0 {
        return Err(format!(
            "label {v} at row {row} is negative; labels must be class indices >= 0"
        ));
    }
    let Ok(u) = u32::try_from(v) else {
        return Err(format!("label {v} at row {row} is too large for a class index"));
    };
    match num_classes {
        Some(k) if u as usize >= k => Err(format!(
            "label {v} at row {row} is not below the number of classes, {k}"
        )),
        _ => Ok(u),
    }
}

/// Parses an ids file: one id per line, a final newline optional, `\r\n` accepted.
pub(crate) fn parse_ids(text: &str) -> Vec<String> {
    text.split_terminator('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect()
}

fn read_ids(path: &Path, n: usize) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let ids = parse_ids(&text);
    if ids.len() != n {
        return Err(Error::format(
            path,
            "lines",
            format!("{} ids, but the store has n = {n} samples", ids.len()),
        ));
    }
    Ok(ids)
}
