//! Sharding and merging stores: the part of running ensembed on data that outgrows one machine
//! which needs no cluster. `embed` with the `lazy` bank is independent per sample, so a big
//! store can be cut into shards, each shard embedded on any machine of a batch scheduler, and
//! the pieces put back together; `merge` also joins stores extracted in parallel; `subset`
//! keeps some backbones or the first rows of each class, for experiments at a reduced scale. Rows keep
//! their dtype (f16 stays f16) and their labels and ids travel with them.

use std::path::{Path, PathBuf};

use half::f16;

use super::{Dtype, Store, StoreWriter};
use crate::error::{Error, Result};
use crate::matrix::Matrix;

/// Writes the given rows of the chosen backbones (indices into `srcs[0].backbones()`) of each
/// source, in order, with their labels and ids, as a new store at `out`.
fn write_rows(srcs: &[(&Store, Vec<usize>)], backbones: &[usize], out: &Path, overwrite: bool) -> Result<PathBuf> {
    let first = srcs[0].0;
    let n: usize = srcs.iter().map(|(_, r)| r.len()).sum();
    let mut w = StoreWriter::create(out, n, overwrite)?;
    for &j in backbones {
        let b = &first.backbones()[j];
        let row_bytes = b.dim * b.dtype.size();
        let mut bytes = Vec::with_capacity(n * row_bytes);
        for (s, rows) in srcs {
            for &i in rows {
                bytes.extend_from_slice(s.row_bytes(j, i));
            }
        }
        match b.dtype {
            Dtype::F16 => {
                let data: Vec<f16> = bytes.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]])).collect();
                w.add_backbone_f16(&b.name, b.dim, &data)?;
            }
            Dtype::F32 => {
                let data = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
                w.add_backbone_f32(&b.name, &Matrix::from_vec(n, b.dim, data)?, Dtype::F32)?;
            }
        }
    }
    if first.labels().is_some() {
        let labels: Vec<i64> = srcs.iter().flat_map(|(s, r)| r.iter().map(|&i| s.labels().unwrap()[i] as i64)).collect();
        w.set_labels(&labels, first.classes().map(<[String]>::to_vec))?;
    }
    if first.ids().is_some() {
        w.set_ids(srcs.iter().flat_map(|(s, r)| r.iter().map(|&i| s.ids().unwrap()[i].clone())).collect())?;
    }
    w.finish()
}

/// What [`subset_store`] keeps.
#[derive(Clone, Debug, Default)]
pub struct Subset {
    /// Backbones to keep, by name, in this order (all when empty).
    pub backbones: Vec<String>,
    /// Keep the first this many rows (in store order) of every class (all rows when `None`).
    /// Taking the first rather than a random draw makes the sample reproducible from the
    /// image folder alone (the demo sample is the first files of each class, sorted by name).
    pub per_class: Option<usize>,
}

/// Writes a smaller store: some of the backbones and/or the first `per_class` rows of every
/// class of `src`, rows in their original order. For experiments at a reduced scale and for
/// single-backbone or sub-ensemble runs on one extracted store.
pub fn subset_store(src: &Store, subset: &Subset, out: &Path, overwrite: bool) -> Result<PathBuf> {
    let names: Vec<&str> = src.backbones().iter().map(|b| b.name.as_str()).collect();
    let backbones: Vec<usize> = if subset.backbones.is_empty() {
        (0..names.len()).collect()
    } else {
        let mut picked = Vec::new();
        for want in &subset.backbones {
            let j = names.iter().position(|n| n == want).ok_or_else(|| {
                Error::config("backbones", want, format!("{} has no such backbone (it has {})", src.root().display(), names.join(", ")))
            })?;
            if picked.contains(&j) {
                return Err(Error::config("backbones", want, "is named twice"));
            }
            picked.push(j);
        }
        picked
    };
    let rows: Vec<usize> = match subset.per_class {
        None => (0..src.len()).collect(),
        Some(0) => return Err(Error::config("per_class", 0, "must be at least 1")),
        Some(k) => {
            let labels = src.labels().ok_or_else(|| {
                Error::config("per_class", k, format!("needs labels, and {} has none", src.root().display()))
            })?;
            let mut taken = std::collections::HashMap::<u32, usize>::new();
            (0..src.len())
                .filter(|&i| {
                    let t = taken.entry(labels[i]).or_insert(0);
                    *t += 1;
                    *t <= k
                })
                .collect()
        }
    };
    write_rows(&[(src, rows)], &backbones, out, overwrite)
}

/// Cuts `src` into `parts` stores of contiguous rows, `out/part-0000`, `out/part-0001`, ...
/// (sizes differ by at most one row), and returns their paths in order.
pub fn shard_store(src: &Store, parts: usize, out: &Path, overwrite: bool) -> Result<Vec<PathBuf>> {
    let n = src.len();
    if parts == 0 || parts > n {
        return Err(Error::config("parts", parts, format!("must be between 1 and the {n} samples of {}", src.root().display())));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    (0..parts)
        .map(|p| {
            let rows = (p * n / parts..(p + 1) * n / parts).collect();
            let all: Vec<usize> = (0..src.backbones().len()).collect();
            write_rows(&[(src, rows)], &all, &out.join(format!("part-{p:04}")), overwrite)
        })
        .collect()
}

/// Joins stores with the same backbones (names, widths and dtypes, in order) and the same
/// labelling into one store at `out`, rows in the order given.
pub fn merge_stores(srcs: &[Store], out: &Path, overwrite: bool) -> Result<PathBuf> {
    let Some(first) = srcs.first() else {
        return Err(Error::config("stores", 0, "give at least one store to merge"));
    };
    for s in &srcs[1..] {
        if s.backbones() != first.backbones() {
            let show = |s: &Store| s.backbones().iter().map(|b| format!("{}[{}, {}]", b.name, b.dim, b.dtype)).collect::<Vec<_>>().join(", ");
            return Err(Error::shape(format!("backbones of {} against {}", s.root().display(), first.root().display()), show(first), show(s)));
        }
        let same = |a: bool, b: bool, what: &str| if a == b { Ok(()) } else { Err(Error::shape(format!("{what} of {} against {}", s.root().display(), first.root().display()), a, b)) };
        same(first.labels().is_some(), s.labels().is_some(), "has labels")?;
        same(first.ids().is_some(), s.ids().is_some(), "has ids")?;
        if first.classes() != s.classes() {
            return Err(Error::shape(format!("class names of {} against {}", s.root().display(), first.root().display()), format!("{:?}", first.classes()), format!("{:?}", s.classes())));
        }
    }
    let rows: Vec<(&Store, Vec<usize>)> = srcs.iter().map(|s| (s, (0..s.len()).collect())).collect();
    let all: Vec<usize> = (0..first.backbones().len()).collect();
    write_rows(&rows, &all, out, overwrite)
}
