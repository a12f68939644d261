//! Sharding and merging stores: the part of running ensembed on data that outgrows one machine
//! which needs no cluster. `embed` with the `lazy` bank is independent per sample, so a big
//! store can be cut into shards, each shard embedded on any machine of a batch scheduler, and
//! the pieces put back together; `merge` also joins stores extracted in parallel. Rows keep
//! their dtype (f16 stays f16) and their labels and ids travel with them.

use std::path::{Path, PathBuf};

use half::f16;

use super::{Dtype, Store, StoreWriter};
use crate::error::{Error, Result};
use crate::matrix::Matrix;

/// Writes the rows `range` of every backbone (and their labels and ids) of `src` as a new store.
fn write_rows(srcs: &[(&Store, std::ops::Range<usize>)], out: &Path, overwrite: bool) -> Result<PathBuf> {
    let first = srcs[0].0;
    let n: usize = srcs.iter().map(|(_, r)| r.len()).sum();
    let mut w = StoreWriter::create(out, n, overwrite)?;
    for (j, b) in first.backbones().iter().enumerate() {
        let row_bytes = b.dim * b.dtype.size();
        let mut bytes = Vec::with_capacity(n * row_bytes);
        for (s, range) in srcs {
            for i in range.clone() {
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
        let labels: Vec<i64> = srcs.iter().flat_map(|(s, r)| s.labels().unwrap()[r.clone()].iter().map(|&l| l as i64)).collect();
        w.set_labels(&labels, first.classes().map(<[String]>::to_vec))?;
    }
    if first.ids().is_some() {
        w.set_ids(srcs.iter().flat_map(|(s, r)| s.ids().unwrap()[r.clone()].iter().cloned()).collect())?;
    }
    w.finish()
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
            let range = p * n / parts..(p + 1) * n / parts;
            write_rows(&[(src, range)], &out.join(format!("part-{p:04}")), overwrite)
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
    let ranges: Vec<(&Store, std::ops::Range<usize>)> = srcs.iter().map(|s| (s, 0..s.len())).collect();
    write_rows(&ranges, out, overwrite)
}
