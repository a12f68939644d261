//! numpy `.npy` and `.npz` reading and writing: the format in which users hand us features
//! extracted in Python, and in which `export` hands representations back.
//!
//! The `.npy` parser is written by hand (about 150 lines) rather than taken from a crate because
//! the files are untrusted and large: we parse straight from a memory map or from embedded
//! bytes, check that the declared shape times the item size equals the bytes actually present
//! *before* allocating anything (so a 100-byte file cannot make us allocate terabytes, and a
//! shape product that overflows is an error, not a wrap), support `f16` (the natural dtype for
//! stored features), and decode with a single copy from the mapped bytes into the typed vector.
//! The format is small: the magic `\x93NUMPY`, a version byte pair, a little-endian header
//! length, and a Python-literal dict with `descr`, `fortran_order` and `shape`.

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::error::{Error, Result};
use crate::matrix::Matrix;

const MAGIC: &[u8; 6] = b"\x93NUMPY";
// numpy aligns the start of the data to 64 bytes; we do the same so our files match its bytes.
const ALIGN: usize = 64;
// numpy leaves this many spare header bytes so that the leading axis can grow in place.
const GROWTH_AXIS_MAX_DIGITS: usize = 21;
// Reading an npz entry grows its buffer as data arrives, starting from at most this much, so
// that a lying size in the zip directory cannot trigger a huge allocation.
const MAX_INITIAL_RESERVE: usize = 64 << 20;
// numpy writes headers of a few hundred bytes (and refuses to read over 10 000 by default); a
// larger length is a corrupt or hostile file, refused before allocating for it.
const MAX_HEADER_LEN: usize = 1 << 20;

/// The typed content of an array, in C (row-major) order.
#[derive(Clone, Debug, PartialEq)]
pub enum NpyData {
    F16(Vec<f16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
}

/// One array: its shape and its data (`data` has the product of `shape` elements).
#[derive(Clone, Debug, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: NpyData,
}

/// The element types we parse, named by numpy's type code without the byte order.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    F2,
    F4,
    F8,
    I1,
    I2,
    I4,
    I8,
    U1,
    U2,
    U4,
    U8,
}

impl Kind {
    fn from_code(code: &str) -> Option<Kind> {
        Some(match code {
            "f2" => Kind::F2,
            "f4" => Kind::F4,
            "f8" => Kind::F8,
            "i1" => Kind::I1,
            "i2" => Kind::I2,
            "i4" => Kind::I4,
            "i8" => Kind::I8,
            "u1" => Kind::U1,
            "u2" => Kind::U2,
            "u4" => Kind::U4,
            "u8" => Kind::U8,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            Kind::I1 | Kind::U1 => 1,
            Kind::F2 | Kind::I2 | Kind::U2 => 2,
            Kind::F4 | Kind::I4 | Kind::U4 => 4,
            Kind::F8 | Kind::I8 | Kind::U8 => 8,
        }
    }
}

impl NpyData {
    /// numpy's `descr` for this data (`'<f4'`, `'|u1'`, ...), for messages.
    pub fn descr(&self) -> &'static str {
        match self {
            NpyData::F16(_) => "<f2",
            NpyData::F32(_) => "<f4",
            NpyData::F64(_) => "<f8",
            NpyData::I8(_) => "|i1",
            NpyData::I16(_) => "<i2",
            NpyData::I32(_) => "<i4",
            NpyData::I64(_) => "<i8",
            NpyData::U8(_) => "|u1",
            NpyData::U16(_) => "<u2",
            NpyData::U32(_) => "<u4",
            NpyData::U64(_) => "<u8",
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            NpyData::F16(v) => v.len(),
            NpyData::F32(v) => v.len(),
            NpyData::F64(v) => v.len(),
            NpyData::I8(v) => v.len(),
            NpyData::I16(v) => v.len(),
            NpyData::I32(v) => v.len(),
            NpyData::I64(v) => v.len(),
            NpyData::U8(v) => v.len(),
            NpyData::U16(v) => v.len(),
            NpyData::U32(v) => v.len(),
            NpyData::U64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decodes little-endian `bytes` (whose length is a multiple of the item size) as `kind`.
    fn decode(kind: Kind, bytes: &[u8]) -> NpyData {
        match kind {
            Kind::F2 => NpyData::F16(pod_vec(bytes)),
            Kind::F4 => NpyData::F32(pod_vec(bytes)),
            Kind::F8 => NpyData::F64(pod_vec(bytes)),
            Kind::I1 => NpyData::I8(pod_vec(bytes)),
            Kind::I2 => NpyData::I16(pod_vec(bytes)),
            Kind::I4 => NpyData::I32(pod_vec(bytes)),
            Kind::I8 => NpyData::I64(pod_vec(bytes)),
            Kind::U1 => NpyData::U8(pod_vec(bytes)),
            Kind::U2 => NpyData::U16(pod_vec(bytes)),
            Kind::U4 => NpyData::U32(pod_vec(bytes)),
            Kind::U8 => NpyData::U64(pod_vec(bytes)),
        }
    }

    /// The data of a Fortran-order `[rows, cols]` array, reordered to C order.
    fn transposed(self, rows: usize, cols: usize) -> NpyData {
        fn t<T: Copy>(v: Vec<T>, rows: usize, cols: usize) -> Vec<T> {
            // v[j * rows + i] is element (i, j).
            (0..rows * cols)
                .map(|k| v[(k % cols) * rows + k / cols])
                .collect()
        }
        match self {
            NpyData::F16(v) => NpyData::F16(t(v, rows, cols)),
            NpyData::F32(v) => NpyData::F32(t(v, rows, cols)),
            NpyData::F64(v) => NpyData::F64(t(v, rows, cols)),
            NpyData::I8(v) => NpyData::I8(t(v, rows, cols)),
            NpyData::I16(v) => NpyData::I16(t(v, rows, cols)),
            NpyData::I32(v) => NpyData::I32(t(v, rows, cols)),
            NpyData::I64(v) => NpyData::I64(t(v, rows, cols)),
            NpyData::U8(v) => NpyData::U8(t(v, rows, cols)),
            NpyData::U16(v) => NpyData::U16(t(v, rows, cols)),
            NpyData::U32(v) => NpyData::U32(t(v, rows, cols)),
            NpyData::U64(v) => NpyData::U64(t(v, rows, cols)),
        }
    }
}

/// Copies little-endian bytes into a typed vector (one memcpy on little-endian hosts).
fn pod_vec<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
    let size = std::mem::size_of::<T>();
    let mut v = vec![T::zeroed(); bytes.len() / size];
    let dst: &mut [u8] = bytemuck::cast_slice_mut(&mut v);
    dst.copy_from_slice(bytes);
    if cfg!(target_endian = "big") {
        dst.chunks_exact_mut(size).for_each(|c| c.reverse());
    }
    v
}

impl NpyArray {
    /// The array as a `[rows, cols]` f32 matrix: `f32` as is, `f16` widened, `f64` narrowed
    /// (a finite value outside the f32 range is an error, not a silent infinity). `path` names
    /// the file in errors.
    ///
    /// # Shapes
    /// `self.shape` must be `[rows, cols]`; returns `[rows, cols]`.
    pub fn to_f32_matrix(&self, path: &Path) -> Result<Matrix> {
        let (rows, cols) = self.dims2(path)?;
        let data = match &self.data {
            NpyData::F32(v) => v.clone(),
            NpyData::F16(v) => {
                let mut out = vec![0.0f32; v.len()];
                v.convert_to_f32_slice(&mut out);
                out
            }
            NpyData::F64(v) => f64_to_f32(v, cols, path)?,
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
        };
        Matrix::from_vec(rows, cols, data)
    }

    /// The array as `i64` values: any integer dtype, shape `[n]` (or `[n, 1]`). Floats are
    /// refused rather than truncated. `path` names the file in errors.
    ///
    /// # Shapes
    /// `self.shape` must be `[n]` or `[n, 1]`; returns `[n]`.
    pub fn to_i64(&self, path: &Path) -> Result<Vec<i64>> {
        fn widen<T: Copy + Into<i64>>(v: &[T]) -> Vec<i64> {
            v.iter().map(|&x| x.into()).collect()
        }
        let values = match &self.data {
            NpyData::I8(v) => widen(v),
            NpyData::I16(v) => widen(v),
            NpyData::I32(v) => widen(v),
            NpyData::I64(v) => v.clone(),
            NpyData::U8(v) => widen(v),
            NpyData::U16(v) => widen(v),
            NpyData::U32(v) => widen(v),
            NpyData::U64(v) => v
                .iter()
                .enumerate()
                .map(|(i, &x)| {
                    i64::try_from(x).map_err(|_| {
                        Error::format(
                            path,
                            "data",
                            format!("value {x} at index {i} does not fit in i64"),
                        )
                    })
                })
                .collect::<Result<_>>()?,
            other => {
                return Err(Error::format(
                    path,
                    "descr",
                    format!(
                        "'{}' is not an integer dtype: labels must be integers",
                        other.descr()
                    ),
                ))
            }
        };
        if !matches!(self.shape.as_slice(), [_] | [_, 1]) {
            return Err(Error::format(
                path,
                "shape",
                format!("{} must be one-dimensional, [n]", py_shape(&self.shape)),
            ));
        }
        Ok(values)
    }

    /// `(rows, cols)` of a 2-D array; an error naming the shape otherwise.
    pub(crate) fn dims2(&self, path: &Path) -> Result<(usize, usize)> {
        match self.shape.as_slice() {
            &[r, c] => Ok((r, c)),
            s => Err(Error::format(
                path,
                "shape",
                format!("{} must be two-dimensional, [n, dim]", py_shape(s)),
            )),
        }
    }
}

/// Narrows f64 to f32, refusing finite values that would become infinite.
///
/// # Shapes
/// `v`: `[rows * cols]` row-major; `cols` only locates the offending element in messages.
pub(crate) fn f64_to_f32(v: &[f64], cols: usize, path: &Path) -> Result<Vec<f32>> {
    v.iter()
        .enumerate()
        .map(|(k, &x)| {
            let y = x as f32;
            if x.is_finite() && !y.is_finite() {
                Err(Error::format(
                    path,
                    "data",
                    format!(
                        "value {x:e} at row {}, column {} is outside the f32 range",
                        k / cols.max(1),
                        k % cols.max(1)
                    ),
                ))
            } else {
                Ok(y)
            }
        })
        .collect()
}

/// A shape as Python prints it: `(3,)`, `(2, 3)`.
fn py_shape(shape: &[usize]) -> String {
    match shape {
        [n] => format!("({n},)"),
        s => format!(
            "({})",
            s.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// What the header says about the data that follows it.
struct Header {
    kind: Kind,
    fortran: bool,
    shape: Vec<usize>,
    /// Exact byte length of the data, checked against overflow.
    data_len: usize,
}

/// Parses the fixed preamble; returns `(preamble length, header length)`. `bytes` holds at
/// least the first 12 bytes of the file when it has them.
fn parse_preamble(bytes: &[u8], path: &Path) -> Result<(usize, usize)> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(Error::format(
            path,
            "magic",
            format!(
                "the file does not start with \\x93NUMPY (first bytes: {:?}): not a .npy file",
                String::from_utf8_lossy(&bytes[..bytes.len().min(8)])
            ),
        ));
    }
    let (pre, hlen) = match bytes[6] {
        1 => (10, u16::from_le_bytes([bytes[8], bytes[9]]) as usize),
        2 | 3 if bytes.len() >= 12 => (
            12,
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
        ),
        v => {
            let message = format!(
                "format version {v}.{} is not supported (expected 1, 2 or 3)",
                bytes[7]
            );
            return Err(Error::format(path, "version", message));
        }
    };
    if hlen > MAX_HEADER_LEN {
        let message = format!(
            "a header of {hlen} bytes is implausible (numpy writes a few hundred; limit {MAX_HEADER_LEN})"
        );
        return Err(Error::format(path, "header", message));
    }
    Ok((pre, hlen))
}

/// Parses the header dict, e.g. `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }`.
fn parse_header(raw: &[u8], path: &Path) -> Result<Header> {
    let text = std::str::from_utf8(raw)
        .map_err(|_| Error::format(path, "header", "the header is not ASCII/UTF-8 text"))?
        .trim();
    let entries = dict_entries(text)
        .ok_or_else(|| Error::format(path, "header", format!("`{text}` is not a Python dict literal")))?;
    let get = |key: &str| {
        entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| Error::format(path, key, format!("missing from the header `{text}`")))
    };

    let descr_raw = get("descr")?;
    let descr = py_str(descr_raw).ok_or_else(|| {
        Error::format(
            path,
            "descr",
            format!("{descr_raw} is a structured dtype, which is not supported"),
        )
    })?;
    let kind = parse_descr(descr, path)?;

    let fortran = match get("fortran_order")? {
        "False" => false,
        "True" => true,
        v => {
            return Err(Error::format(
                path,
                "fortran_order",
                format!("`{v}` is not True or False"),
            ))
        }
    };

    let shape_raw = get("shape")?;
    let shape = parse_shape(shape_raw)
        .ok_or_else(|| Error::format(path, "shape", format!("`{shape_raw}` is not a tuple of integers")))?;
    if fortran && shape.len() > 2 {
        return Err(Error::format(
            path,
            "fortran_order",
            format!("True with shape {shape_raw}: only 1-D and 2-D Fortran-order arrays are supported"),
        ));
    }
    let data_len = shape
        .iter()
        .try_fold(kind.size(), |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            Error::format(
                path,
                "shape",
                format!("{shape_raw} times {} bytes overflows", kind.size()),
            )
        })?;
    Ok(Header {
        kind,
        fortran,
        shape,
        data_len,
    })
}

fn parse_descr(descr: &str, path: &Path) -> Result<Kind> {
    let unsupported = |why: &str| Err(Error::format(path, "descr", format!("'{descr}': {why}")));
    let mut chars = descr.chars();
    let order = chars.next().unwrap_or(' ');
    let code = chars.as_str();
    let Some(kind) = Kind::from_code(code) else {
        return unsupported(
            "unsupported dtype; expected one of '<f2' '<f4' '<f8' '<i8' '<i4' '<i2' '|i1' '<u8' '<u4' '<u2' '|u1'",
        );
    };
    let little = cfg!(target_endian = "little");
    match order {
        '<' => Ok(kind),
        '=' if little => Ok(kind),
        '|' | '>' | '=' if kind.size() == 1 => Ok(kind),
        '>' | '=' => {
            unsupported("big-endian data is not supported; re-save it with arr.astype('<f4') (or '<i8')")
        }
        _ => unsupported("unknown byte order"),
    }
}

/// Splits a Python dict literal into `(key, raw value)` pairs; `None` when it is not one.
fn dict_entries(text: &str) -> Option<Vec<(String, String)>> {
    let inner = text.strip_prefix('{')?.strip_suffix('}')?;
    let mut entries = Vec::new();
    for item in split_top_level(inner, ',') {
        let item = item.trim();
        if item.is_empty() {
            continue; // numpy writes a trailing comma
        }
        let parts = split_top_level(item, ':');
        let [key, value] = parts.as_slice() else {
            return None;
        };
        entries.push((py_str(key.trim())?.to_string(), value.trim().to_string()));
    }
    Some(entries)
}

/// Splits at `sep` outside quotes and brackets.
fn split_top_level(s: &str, sep: char) -> Vec<&str> {
    let (mut parts, mut depth, mut quote, mut start) = (Vec::new(), 0i32, None, 0);
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '(' | '[' | '{') => depth += 1,
            (None, ')' | ']' | '}') => depth -= 1,
            (None, c) if c == sep && depth == 0 => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// The content of a quoted Python string literal.
fn py_str(raw: &str) -> Option<&str> {
    let q = raw.chars().next().filter(|c| matches!(c, '\'' | '"'))?;
    raw.strip_prefix(q)?.strip_suffix(q)
}

/// `(2, 3)`, `(3,)` or `()`; Python 2 files may write `3L`.
fn parse_shape(raw: &str) -> Option<Vec<usize>> {
    let inner = raw.strip_prefix('(')?.strip_suffix(')')?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse().ok())
        .collect()
}

/// Turns checked header + data bytes into an array.
fn finish_array(h: Header, data: &[u8]) -> NpyArray {
    let mut values = NpyData::decode(h.kind, data);
    if h.fortran {
        if let &[rows, cols] = h.shape.as_slice() {
            values = values.transposed(rows, cols);
        }
    }
    NpyArray {
        shape: h.shape,
        data: values,
    }
}

/// Parses a whole `.npy` file held in memory (a memory map, or bytes embedded in the binary).
/// `name_for_errors` names it in messages.
pub fn read_npy_bytes(bytes: &[u8], name_for_errors: &Path) -> Result<NpyArray> {
    let path = name_for_errors;
    let (pre, hlen) = parse_preamble(bytes, path)?;
    let start = pre + hlen;
    if bytes.len() < start {
        return Err(Error::format(
            path,
            "header",
            format!(
                "the header declares {start} bytes but the file has only {}",
                bytes.len()
            ),
        ));
    }
    let h = parse_header(&bytes[pre..start], path)?;
    let have = bytes.len() - start;
    if have != h.data_len {
        return Err(size_mismatch(path, &h, have));
    }
    Ok(finish_array(h, &bytes[start..]))
}

fn size_mismatch(path: &Path, h: &Header, have: usize) -> Error {
    Error::format(
        path,
        "shape",
        format!(
            "{} of {}-byte items declares {} bytes of data, but {} bytes follow the header{}",
            py_shape(&h.shape),
            h.kind.size(),
            h.data_len,
            have,
            if have < h.data_len {
                " (truncated file)"
            } else {
                ""
            }
        ),
    )
}

/// Reads a `.npy` file (memory-mapped, so the data is copied once, into the result).
pub fn read_npy(path: &Path) -> Result<NpyArray> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only and dropped before returning; as for any mmap, another
    // process truncating the file meanwhile is outside what we can guard against.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    read_npy_bytes(&map, path)
}

/// Reads one `.npy` stream of `declared` bytes (an npz entry), checking the header's size
/// against `declared` before reading the data.
fn read_npy_stream(r: &mut impl Read, declared: u64, path: &Path) -> Result<NpyArray> {
    let io = |e: std::io::Error| Error::io(path, e);
    let mut pre = vec![0u8; 10];
    r.read_exact(&mut pre).map_err(io)?;
    if pre[6] >= 2 {
        pre.resize(12, 0);
        r.read_exact(&mut pre[10..]).map_err(io)?;
    }
    let (pre_len, hlen) = parse_preamble(&pre, path)?;
    let start = (pre_len + hlen) as u64;
    if start > declared {
        return Err(Error::format(
            path,
            "header",
            format!("the header declares {start} bytes but the entry has only {declared}"),
        ));
    }
    let mut raw = vec![0u8; hlen];
    r.read_exact(&mut raw).map_err(io)?;
    let h = parse_header(&raw, path)?;
    let have = declared - start;
    if have != h.data_len as u64 {
        return Err(size_mismatch(
            path,
            &h,
            usize::try_from(have).unwrap_or(usize::MAX),
        ));
    }
    let mut data = Vec::with_capacity(h.data_len.min(MAX_INITIAL_RESERVE));
    r.take(h.data_len as u64).read_to_end(&mut data).map_err(io)?;
    // One more read reaches the end of the entry, which is where the zip reader checks the CRC.
    let extra = r.read(&mut [0u8; 1]).map_err(io)?;
    if data.len() != h.data_len || extra != 0 {
        return Err(Error::format(
            path,
            "data",
            format!(
                "the entry holds {} bytes of data, the header declares {}",
                data.len() + extra,
                h.data_len
            ),
        ));
    }
    Ok(finish_array(h, &data))
}

/// Reads the `.npy` entries of an npz held in memory, or only the one named `only`.
pub(crate) fn read_npz_selected(
    bytes: &[u8],
    path: &Path,
    only: Option<&str>,
) -> Result<Vec<(String, NpyArray)>> {
    let zip_err = |e: zip::result::ZipError| Error::format(path, "zip", e.to_string());
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).map_err(zip_err)?;
    let mut out = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(zip_err)?;
        let Some(name) = entry.name().strip_suffix(".npy").map(str::to_string) else {
            continue;
        };
        if entry.is_dir() || only.is_some_and(|o| o != name) {
            continue;
        }
        let entry_path = PathBuf::from(format!("{}:{name}", path.display()));
        let size = entry.size();
        let array = read_npy_stream(&mut entry, size, &entry_path)?;
        out.push((name, array));
    }
    Ok(out)
}

/// Reads every array of an npz held in memory (the demo embeds its data with `include_bytes!`).
/// Names are returned without the `.npy` suffix, in archive order.
pub fn read_npz_bytes(bytes: &[u8], name_for_errors: &Path) -> Result<Vec<(String, NpyArray)>> {
    read_npz_selected(bytes, name_for_errors, None)
}

/// Reads every array of an `.npz` file (stored or deflated entries).
pub fn read_npz(path: &Path) -> Result<Vec<(String, NpyArray)>> {
    with_mapped(path, |bytes| read_npz_bytes(bytes, path))
}

/// Runs `f` on the memory-mapped content of `path`.
pub(crate) fn with_mapped<T>(path: &Path, f: impl FnOnce(&[u8]) -> Result<T>) -> Result<T> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: read-only map, dropped before returning (see `read_npy`).
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    f(&map)
}

/// Writes an array with numpy's exact header layout (version 1.0, C order, data aligned to 64
/// bytes), through a temporary file renamed into place so a reader never sees half a file.
fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) -> Result<()> {
    let header = npy_header(path, descr, shape)?;
    crate::fsio::write_atomic_with(path, |f| {
        f.write_all(&header)?;
        f.write_all(data)
    })
}

/// The bytes before the data of a `.npy` of `descr` and `shape` in numpy's exact layout, for
/// writers that stream the data after it; `path` only names the file in errors.
pub(crate) fn npy_header(path: &Path, descr: &str, shape: &[usize]) -> Result<Vec<u8>> {
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': {}, }}",
        py_shape(shape)
    );
    if let Some(first) = shape.first() {
        header.push_str(&" ".repeat(GROWTH_AXIS_MAX_DIGITS.saturating_sub(first.to_string().len())));
    }
    let pad = ALIGN - (MAGIC.len() + 4 + header.len() + 1) % ALIGN;
    header.push_str(&" ".repeat(pad));
    header.push('\n');
    let hlen = u16::try_from(header.len()).map_err(|_| {
        Error::format(
            path,
            "shape",
            format!("{} makes a header too long for version 1.0", py_shape(shape)),
        )
    })?;

    let mut bytes = Vec::with_capacity(MAGIC.len() + 4 + header.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&[1, 0]);
    bytes.extend_from_slice(&hlen.to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    Ok(bytes)
}

/// Little-endian bytes of a numeric slice (borrowed on little-endian hosts).
pub(crate) fn le_bytes<T: bytemuck::Pod>(v: &[T]) -> std::borrow::Cow<'_, [u8]> {
    let bytes: &[u8] = bytemuck::cast_slice(v);
    if cfg!(target_endian = "little") {
        bytes.into()
    } else {
        let size = std::mem::size_of::<T>();
        let mut owned = bytes.to_vec();
        owned.chunks_exact_mut(size).for_each(|c| c.reverse());
        owned.into()
    }
}

/// Writes `m` as a `.npy` of `'<f4'`, byte-identical to `np.save` of the same array.
///
/// # Shapes
/// `m`: `[rows, cols]`; the file's shape is `(rows, cols)`.
pub fn write_npy_f32(path: &Path, m: &Matrix) -> Result<()> {
    write_npy(path, "<f4", &[m.rows, m.cols], &le_bytes(&m.data))
}

/// Writes `v` as a one-dimensional `.npy` of `'<i8'`, byte-identical to `np.save`.
///
/// # Shapes
/// `v`: `[n]`; the file's shape is `(n,)`.
pub fn write_npy_i64(path: &Path, v: &[i64]) -> Result<()> {
    write_npy(path, "<i8", &[v.len()], &le_bytes(v))
}
