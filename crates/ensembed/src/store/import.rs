//! Importing features extracted in Python (`.npy` / `.npz`) into a store. This is where user
//! data enters the library, so every check that the rest of the pipeline relies on happens
//! here, with messages that name the file, the row and the value: equal row counts across
//! backbones, labels that are class indices, finite values and no all-zero rows (which have no
//! direction). Cheap checks run first, and backbones are loaded one at a time so that peak
//! memory is one backbone, not all of them.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use half::f16;

use super::npy::{f64_to_f32, read_npy, read_npz_selected, with_mapped, NpyArray, NpyData};
use super::writer::{check_destination, StoreWriter};
use super::{check_backbone_name, check_label, check_rows, parse_ids, Dtype, Store};
use crate::error::{Error, Result};
use crate::matrix::Matrix;

/// Features as imported: f16 stays f16 so that the store keeps the input's precision and size.
enum Features {
    F32(Matrix),
    F16 {
        rows: usize,
        cols: usize,
        data: Vec<f16>,
    },
}

impl Features {
    fn rows(&self) -> usize {
        match self {
            Features::F32(m) => m.rows,
            Features::F16 { rows, .. } => *rows,
        }
    }
}

/// Reads `spec`: a `.npy` path, `FILE.npz:ARRAY`, or a `.npz` holding exactly one array.
/// Returns the name to use in messages and the array.
fn load(spec: &Path) -> Result<(PathBuf, NpyArray)> {
    let text = spec.to_string_lossy();
    let npz = |s: &str| s.to_ascii_lowercase().ends_with(".npz");
    if let Some((file, array)) = text
        .rsplit_once(':')
        .filter(|(f, a)| npz(f) && !a.contains(['/', '\\']))
    {
        let file = Path::new(file);
        let array = array.strip_suffix(".npy").unwrap_or(array);
        let shown = PathBuf::from(format!("{}:{array}", file.display()));
        let mut found = with_mapped(file, |b| read_npz_selected(b, file, Some(array)))?;
        return match found.pop() {
            Some((_, a)) => Ok((shown, a)),
            None => {
                let names = with_mapped(file, |b| read_npz_names(b, file))?;
                Err(Error::format(
                    file,
                    "array",
                    format!(
                        "no array `{array}` in the archive; it holds: {}",
                        names.join(", ")
                    ),
                ))
            }
        };
    }
    if npz(&text) {
        let mut all = with_mapped(spec, |b| read_npz_selected(b, spec, None))?;
        if all.len() != 1 {
            let names: Vec<String> = all.into_iter().map(|(n, _)| n).collect();
            return Err(Error::format(
                spec,
                "array",
                format!(
                    "the archive holds {} arrays ({}); select one with {}:ARRAY",
                    names.len(),
                    names.join(", "),
                    spec.display()
                ),
            ));
        }
        let (name, a) = all.pop().expect("one array");
        return Ok((PathBuf::from(format!("{}:{name}", spec.display())), a));
    }
    Ok((spec.to_path_buf(), read_npy(spec)?))
}

/// The `.npy` entry names of an npz, for the message when a selected one is missing.
fn read_npz_names(bytes: &[u8], path: &Path) -> Result<Vec<String>> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| Error::format(path, "zip", e.to_string()))?;
    Ok((0..archive.len())
        .filter_map(|i| {
            archive
                .by_index(i)
                .ok()?
                .name()
                .strip_suffix(".npy")
                .map(str::to_string)
        })
        .collect())
}

/// Turns a loaded array into features, keeping f16 and f32, narrowing f64.
///
/// # Shapes
/// `a.shape` must be `[rows, cols]` with `cols > 0`.
fn to_features(a: NpyArray, path: &Path) -> Result<Features> {
    let (rows, cols) = a.dims2(path)?;
    if cols == 0 {
        return Err(Error::format(
            path,
            "shape",
            format!("({rows}, 0): the features have no columns"),
        ));
    }
    Ok(match a.data {
        NpyData::F32(v) => Features::F32(Matrix::from_vec(rows, cols, v)?),
        NpyData::F16(data) => Features::F16 { rows, cols, data },
        NpyData::F64(v) => Features::F32(Matrix::from_vec(rows, cols, f64_to_f32(&v, cols, path)?)?),
        other => {
            return Err(Error::format(
                path,
                "descr",
                format!(
                    "'{}' is not a float dtype: features must be '<f4', '<f2' or '<f8'",
                    other.descr()
                ),
            ))
        }
    })
}

/// Imports numpy features into a new store at `out` and opens it.
///
/// Each `(name, path)` of `backbones` is a `.npy` of shape `[n, d]` (f32, f16, or f64 which is
/// converted to f32) or `FILE.npz:ARRAY`; `labels` is a `.npy` (or `FILE.npz:ARRAY`) of any
/// integer dtype with n values >= 0; `ids` is a text file with one id per line. Checks that all
/// backbones have the same n, that labels and ids have n entries, and that every value is finite
/// and no row is all zeros; then writes the store through [`StoreWriter`], keeping f16 as f16
/// and f32 as f32. Nothing is left at `out` (nor a temporary directory) when it fails.
pub fn import_numpy(
    out: &Path,
    backbones: &[(String, PathBuf)],
    labels: Option<&Path>,
    ids: Option<&Path>,
    overwrite: bool,
) -> Result<Store> {
    if backbones.is_empty() {
        return Err(Error::config(
            "backbones",
            0,
            "import needs at least one backbone",
        ));
    }
    let mut seen = HashSet::new();
    for (name, _) in backbones {
        check_backbone_name(name)?;
        if !seen.insert(name.to_ascii_lowercase()) {
            return Err(Error::config(
                "backbone name",
                format!("`{name}`"),
                "is given twice (names are compared ignoring letter case, since they become file names)",
            ));
        }
    }
    check_destination(out, overwrite)?;

    let labels = match labels {
        Some(spec) => {
            let (shown, a) = load(spec)?;
            let v = a.to_i64(&shown)?;
            for (i, &x) in v.iter().enumerate() {
                check_label(x, i, None).map_err(|message| Error::format(&shown, "labels", message))?;
            }
            Some((shown, v))
        }
        None => None,
    };
    let ids = match ids {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            Some((path.to_path_buf(), parse_ids(&text)))
        }
        None => None,
    };

    let mut writer: Option<StoreWriter> = None;
    let mut first: Option<(String, PathBuf, usize)> = None;
    for (name, spec) in backbones {
        let (shown, array) = load(spec)?;
        let features = to_features(array, &shown)?;
        let n = features.rows();
        match &first {
            Some((name0, shown0, n0)) if *n0 != n => {
                return Err(Error::shape(
                    format!(
                        "row counts of backbone `{name}` ({}) and backbone `{name0}` ({})",
                        shown.display(),
                        shown0.display()
                    ),
                    format!("{n0} rows (as in {})", shown0.display()),
                    format!("{n} rows in {}", shown.display()),
                ));
            }
            Some(_) => {}
            None => {
                // The first backbone fixes n: check the small inputs before any heavy work.
                if let Some((lp, l)) = &labels {
                    if l.len() != n {
                        return Err(Error::shape(
                            format!(
                                "labels ({}) vs backbone `{name}` ({})",
                                lp.display(),
                                shown.display()
                            ),
                            format!("{n} labels, one per row of {}", shown.display()),
                            format!("{} labels in {}", l.len(), lp.display()),
                        ));
                    }
                }
                if let Some((ip, i)) = &ids {
                    if i.len() != n {
                        return Err(Error::shape(
                            format!(
                                "ids ({}) vs backbone `{name}` ({})",
                                ip.display(),
                                shown.display()
                            ),
                            format!("{n} lines, one per row of {}", shown.display()),
                            format!("{} lines in {}", i.len(), ip.display()),
                        ));
                    }
                }
                first = Some((name.clone(), shown.clone(), n));
            }
        }

        let what = format!("backbone `{name}`");
        match &features {
            Features::F32(m) => {
                check_rows(&shown, &what, m.rows, m.cols, |i, o| o.copy_from_slice(m.row(i)))?
            }
            Features::F16 { rows, cols, data } => check_rows(&shown, &what, *rows, *cols, |i, o| {
                for (x, h) in o.iter_mut().zip(&data[i * cols..(i + 1) * cols]) {
                    *x = h.to_f32();
                }
            })?,
        }

        let w = match &mut writer {
            Some(w) => w,
            None => writer.insert(StoreWriter::create(out, n, overwrite)?),
        };
        match &features {
            Features::F32(m) => w.add_backbone_f32(name, m, Dtype::F32)?,
            Features::F16 { cols, data, .. } => w.add_backbone_f16(name, *cols, data)?,
        }
    }

    let mut w = writer.expect("at least one backbone was written");
    if let Some((_, l)) = labels {
        w.set_labels(&l, None)?;
    }
    if let Some((path, i)) = ids {
        if let Some((row, id)) = i.iter().enumerate().find(|(_, id)| id.contains('\r')) {
            return Err(Error::format(
                &path,
                "ids",
                format!("the id {id:?} at line {} contains a carriage return", row + 1),
            ));
        }
        w.set_ids(i)?;
    }
    let dir = w.finish()?;
    Store::open(&dir)
}
