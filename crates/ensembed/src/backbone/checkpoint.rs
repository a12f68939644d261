//! PyTorch checkpoints (`torch.save` files: `.pt`, `.pth`, `.th`) read as named f32 tensors,
//! so that CNN backbones published as PyTorch weights can run in Rust without Python or torch.
//! `torch.load` unpickles, which runs whatever code a file names; this reader runs the pickle
//! on the restricted machine of `pickle/`, which only recognises the few torch globals a
//! state dict is made of, and then copies each tensor out of its storage after checking the
//! view against the bytes actually present.
//!
//! Two layouts exist. The zip format (torch >= 1.6) is an archive holding `<name>/data.pkl`
//! (the pickled object, storages as persistent ids), `<name>/data/<key>` (each storage's raw
//! bytes), `<name>/byteorder` (`little` or `big`; older writers leave it out, meaning little)
//! and `<name>/version`. The legacy format (older torch, or `_use_new_zipfile_serialization=False`)
//! is five pickles back to back: torch's magic number 0x1950a86a20f9469cfc6c, the protocol
//! version 1001, a `sys_info` dict (`little_endian`), the object, and the list of storage keys;
//! then, for each key in that order, an int64 element count and the raw bytes.
//!
//! **Which tensors.** A checkpoint is often more than a state dict: `{'epoch', 'state_dict',
//! 'optimizer'}`, `{'model': ...}`, VISSL's `classy_state_dict.base_model.model.trunk`, DINO's
//! `teacher`. Starting at the top-level object, the reader takes the first dict that holds at
//! least one tensor, descending while there is none through the first present key of
//! [`STATE_DICT_KEYS`]; when that route ends without tensors, the reachable dict holding the
//! most tensors wins. Only floating-point tensors (f32, f16, bf16, f64, all converted to f32)
//! are kept; integer ones (`num_batches_tracked`) are left out. Then wrapper prefixes
//! ([`WRAPPER_PREFIXES`]: DataParallel's `module.`, VISSL's `_feature_blocks.`, `backbone.`,
//! `encoder.`) are removed, repeatedly, whenever every name starts with the same one, so
//! `module.conv1.weight` becomes `conv1.weight` while a dict mixing `backbone.*` with `head.*`
//! keeps its names.
//!
//! **Limits.** Every view (offset, shape, strides) must lie inside its storage, every storage
//! must hold the elements its persistent id declares, and each is checked before anything is
//! copied. A tensor may not have more elements than its storage (stride-0 broadcasts would let
//! a few bytes declare gigabytes), and all the tensors together at most [`MAX_OVERLAP`] times
//! the elements of the storages they view (shared storages are legitimate, e.g. tied weights;
//! a thousand views of one storage are not).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{Cursor, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use super::pickle::{unpickle, Container, DType, Pickled, Storages, TensorRef, Value};
use crate::error::{Error, Result};

/// Keys followed, in this order, from a checkpoint's top-level dict to its weights.
pub const STATE_DICT_KEYS: &[&str] = &[
    "state_dict",
    "model_state_dict",
    "model_state",
    "model",
    "module",
    "net",
    "network",
    "teacher",
    "classy_state_dict",
    "base_model",
    "trunk",
];

/// Prefixes removed from tensor names when every name carries the same one.
pub const WRAPPER_PREFIXES: &[&str] = &["module.", "_feature_blocks.", "backbone.", "encoder."];

/// The tensors of a state dict may add up to at most this many times the elements of the
/// storages they view.
pub const MAX_OVERLAP: u64 = 4;

/// torch's magic number 0x1950a86a20f9469cfc6c, as a pickled `LONG1` payload (little-endian).
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

/// A float tensor read from a checkpoint, contiguous row-major (C order), converted to f32.
#[derive(Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl std::fmt::Debug for Tensor {
    // The values can be millions: show the shape and a few.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tensor")
            .field("shape", &self.shape)
            .field("first", &&self.data[..self.data.len().min(4)])
            .finish()
    }
}

/// Named tensors of a checkpoint's model weights, names with wrapper prefixes removed.
#[derive(Clone)]
pub struct StateDict {
    pub path: PathBuf,
    pub tensors: BTreeMap<String, Tensor>,
}

impl std::fmt::Debug for StateDict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shapes: BTreeMap<&str, &[usize]> = self
            .tensors
            .iter()
            .map(|(k, t)| (k.as_str(), t.shape.as_slice()))
            .collect();
        f.debug_struct("StateDict")
            .field("path", &self.path)
            .field("tensors", &shapes)
            .finish()
    }
}

impl StateDict {
    /// The tensor called `name`, or an [`Error::Format`] naming the file and the key.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| {
            let some: Vec<&str> = self.keys().take(5).collect();
            Error::format(
                &self.path,
                name,
                format!(
                    "no such tensor in the checkpoint ({} tensors: {}{})",
                    self.tensors.len(),
                    some.join(", "),
                    if self.tensors.len() > some.len() {
                        ", ..."
                    } else {
                        ""
                    }
                ),
            )
        })
    }

    /// The tensor called `name`, which must have shape `shape`.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<&Tensor> {
        let t = self.get(name)?;
        if t.shape != shape {
            return Err(Error::format(
                &self.path,
                name,
                format!("shape {:?}, expected {shape:?}", t.shape),
            ));
        }
        Ok(t)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Tensor names, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }
}

/// Reads the model weights of the PyTorch checkpoint at `path` (zip or legacy format; see the
/// module documentation for which tensors and names). Nothing in the file is executed; every
/// malformed, truncated or hostile file is an [`Error::Format`] naming the file and the part.
pub fn load_checkpoint(path: &Path) -> Result<StateDict> {
    crate::store::npy::with_mapped(path, |bytes| read_checkpoint_bytes(bytes, path))
}

/// [`load_checkpoint`] of a file held in memory; `path` only names it in errors.
pub fn read_checkpoint_bytes(data: &[u8], path: &Path) -> Result<StateDict> {
    let mut ckpt = if data.starts_with(b"PK\x03\x04") {
        open_zip(data, path)?
    } else if data.first() == Some(&0x80) {
        open_legacy(data, path)?
    } else {
        let head: Vec<String> = data.iter().take(8).map(|b| format!("{b:02x}")).collect();
        return Err(Error::format(
            path,
            "format",
            format!(
                "not a PyTorch checkpoint: neither a zip archive nor a pickle (first bytes {})",
                head.join(" ")
            ),
        ));
    };
    let named = select_tensors(&ckpt.pickled, path)?;
    let tensors = ckpt.materialise(&named, path)?;
    Ok(StateDict {
        path: path.to_path_buf(),
        tensors,
    })
}

/// True when the first bytes look like a PyTorch checkpoint: a zip archive whose first entry
/// is `<name>/data.pkl` (torch writes it first), or a pickle of torch's legacy magic number.
pub fn is_checkpoint(head: &[u8]) -> bool {
    if head.starts_with(b"PK\x03\x04") {
        let Some(n) = head
            .get(26..28)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
        else {
            return false;
        };
        return head
            .get(30..30 + n)
            .is_some_and(|name| name == b"data.pkl" || name.ends_with(b"/data.pkl"));
    }
    // PROTO n, maybe a FRAME, then LONG1 of 10 bytes: the magic number.
    let mut long = vec![0x8a, 0x0a];
    long.extend(LEGACY_MAGIC);
    head.first() == Some(&0x80)
        && head.len() >= 14
        && head[..head.len().min(32)]
            .windows(long.len())
            .any(|w| w == long)
}

// ---------------------------------------------------------------------------------------------
// The two layouts

/// Where storage bytes come from.
enum Source<'a> {
    /// Byte ranges of each storage inside the file.
    Legacy(&'a [u8], HashMap<String, Range<usize>>),
    /// The archive and the prefix of its entries (`<name>/`).
    Zip(zip::ZipArchive<Cursor<&'a [u8]>>, String),
}

struct Checkpoint<'a> {
    pickled: Pickled,
    big_endian: bool,
    source: Source<'a>,
    file_len: usize,
}

fn zip_err<'p>(path: &'p Path, what: &str) -> impl Fn(zip::result::ZipError) -> Error + 'p {
    let what = what.to_string();
    move |e| Error::format(path, &what, e.to_string())
}

/// The uncompressed size of entry `name`, `None` when absent. A stored entry must hold what
/// it declares; a compressed one cannot declare more than deflate can expand its bytes to.
fn entry_size(
    archive: &mut zip::ZipArchive<Cursor<&[u8]>>,
    name: &str,
    path: &Path,
) -> Result<Option<u64>> {
    let e = match archive.by_name(name) {
        Ok(e) => e,
        Err(zip::result::ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(zip_err(path, name)(e)),
    };
    let (size, packed) = (e.size(), e.compressed_size());
    let bound = match e.compression() {
        zip::CompressionMethod::Stored => packed,
        _ => packed.saturating_mul(1032).saturating_add(64),
    };
    if size > bound {
        return Err(Error::format(
            path,
            name,
            format!(
                "the zip entry declares {size} bytes, more than its {packed} stored bytes can hold"
            ),
        ));
    }
    Ok(Some(size))
}

/// The first `n` bytes of entry `name` (whose size was checked to be at least `n`).
fn read_entry(
    archive: &mut zip::ZipArchive<Cursor<&[u8]>>,
    name: &str,
    n: u64,
    file_len: usize,
    path: &Path,
) -> Result<Vec<u8>> {
    let e = archive.by_name(name).map_err(zip_err(path, name))?;
    let mut out = Vec::with_capacity((n as usize).min(file_len));
    e.take(n)
        .read_to_end(&mut out)
        .map_err(|e| Error::io(path, e))?;
    if (out.len() as u64) < n {
        return Err(Error::format(
            path,
            name,
            format!("the zip entry ends after {} of its {n} bytes", out.len()),
        ));
    }
    Ok(out)
}

fn open_zip<'a>(data: &'a [u8], path: &Path) -> Result<Checkpoint<'a>> {
    let mut archive = zip::ZipArchive::new(Cursor::new(data)).map_err(zip_err(path, "zip"))?;
    let mut pkls: Vec<&str> = archive
        .file_names()
        .filter(|n| {
            *n == "data.pkl"
                || n.strip_suffix("/data.pkl")
                    .is_some_and(|d| !d.contains('/'))
        })
        .collect();
    pkls.sort();
    let Some(pkl) = pkls.first().map(|s| s.to_string()) else {
        let torchscript = archive.file_names().any(|n| n.ends_with("constants.pkl"));
        return Err(Error::format(
            path,
            "data.pkl",
            if torchscript {
                "a TorchScript archive (torch.jit.save), not a checkpoint: save the model's state_dict() with torch.save"
            } else {
                "a zip archive without `<name>/data.pkl`: not a PyTorch checkpoint"
            },
        ));
    };
    let prefix = pkl[..pkl.len() - "data.pkl".len()].to_string();
    let size = entry_size(&mut archive, &pkl, path)?.unwrap_or(0);
    let pickle_bytes = read_entry(&mut archive, &pkl, size, data.len(), path)?;

    let order_name = format!("{prefix}byteorder");
    let big_endian = match entry_size(&mut archive, &order_name, path)? {
        None => false,
        Some(n) => {
            match read_entry(&mut archive, &order_name, n.min(16), data.len(), path)?.as_slice() {
                b"little" => false,
                b"big" => true,
                other => {
                    return Err(Error::format(
                        path,
                        order_name,
                        format!(
                            "byte order {:?} (expected `little` or `big`)",
                            String::from_utf8_lossy(other)
                        ),
                    ))
                }
            }
        }
    };
    let pickled = unpickle(&pickle_bytes, 0, path, &pkl, &mut Storages::new())?;
    Ok(Checkpoint {
        pickled,
        big_endian,
        source: Source::Zip(archive, prefix),
        file_len: data.len(),
    })
}

fn open_legacy<'a>(data: &'a [u8], path: &Path) -> Result<Checkpoint<'a>> {
    let mut storages = Storages::new();
    let magic = unpickle(data, 0, path, "magic number", &mut storages)?;
    if !matches!(&magic.root, Value::BigInt(b) if **b == LEGACY_MAGIC) {
        return Err(Error::format(
            path,
            "magic number",
            format!(
                "the file starts with a pickle of {}, not torch's magic number 0x1950a86a20f9469cfc6c: not a PyTorch checkpoint",
                magic.root.describe()
            ),
        ));
    }
    let version = unpickle(data, magic.end, path, "protocol version", &mut storages)?;
    if !matches!(version.root, Value::Int(1001)) {
        return Err(Error::format(
            path,
            "protocol version",
            format!("{} (only 1001 is known)", version.root.describe()),
        ));
    }
    let info = unpickle(data, version.end, path, "sys_info", &mut storages)?;
    let big_endian = match info.get(&info.root, "little_endian") {
        Some(Value::Bool(little)) => !little,
        None => false,
        Some(v) => {
            return Err(Error::format(
                path,
                "sys_info",
                format!("little_endian is {}", v.describe()),
            ))
        }
    };
    let pickled = unpickle(data, info.end, path, "main pickle", &mut storages)?;
    let keys = unpickle(
        data,
        pickled.end,
        path,
        "storage keys",
        &mut Storages::new(),
    )?;
    let key_list: Vec<&str> = match &keys.root {
        Value::List(i) => match &keys.heap[*i] {
            Container::List(items) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        },
        v => {
            return Err(Error::format(
                path,
                "storage keys",
                format!("a {} instead of a list", v.describe()),
            ))
        }
    };
    // Each storage: an int64 element count, then the bytes. Only offsets are recorded here;
    // bytes are read for the tensors that are kept.
    let mut ranges = HashMap::new();
    let mut pos = keys.end;
    for key in key_list {
        let field = format!("storage `{key}`");
        let Some(s) = storages.get(key) else {
            return Err(Error::format(
                path,
                field,
                "listed in the storage keys, but no persistent id names it",
            ));
        };
        let Some(count) = data.get(pos..pos + 8) else {
            return Err(Error::format(
                path,
                field,
                format!(
                    "the file ends at byte {} before its element count (truncated file)",
                    data.len()
                ),
            ));
        };
        let count: [u8; 8] = count.try_into().expect("8 bytes");
        let count = if big_endian {
            u64::from_be_bytes(count)
        } else {
            u64::from_le_bytes(count)
        };
        let left = (data.len() - pos - 8) as u64;
        let bytes = count.checked_mul(s.dtype.size() as u64).filter(|&b| b <= left).ok_or_else(|| {
            Error::format(
                path,
                &field,
                format!(
                    "its count declares {count} {} elements ({} bytes each) but only {left} bytes remain (truncated file)",
                    s.dtype.storage_name(),
                    s.dtype.size()
                ),
            )
        })? as usize;
        ranges.insert(key.to_string(), pos + 8..pos + 8 + bytes);
        pos += 8 + bytes;
    }
    Ok(Checkpoint {
        pickled,
        big_endian,
        source: Source::Legacy(data, ranges),
        file_len: data.len(),
    })
}

// ---------------------------------------------------------------------------------------------
// Which tensors

/// Number of tensors under string keys in dict `v`.
fn tensor_count(p: &Pickled, v: &Value) -> usize {
    p.dict(v).map_or(0, |items| {
        items
            .iter()
            .filter(|(k, t)| k.as_str().is_some() && matches!(t, Value::Tensor(_)))
            .count()
    })
}

/// The dict holding the weights (see the module documentation).
fn find_weights<'p>(p: &'p Pickled, path: &Path) -> Result<&'p Value> {
    let mut cur = &p.root;
    let mut seen = HashSet::new();
    while let Value::Dict(i) = cur {
        if tensor_count(p, cur) > 0 {
            return Ok(cur);
        }
        if !seen.insert(*i) {
            break;
        }
        let next = STATE_DICT_KEYS
            .iter()
            .find_map(|k| p.get(cur, k).filter(|v| p.dict(v).is_some()));
        match next {
            Some(v) => cur = v,
            None => break,
        }
    }
    // Breadth-first over everything reachable; each container and tuple is visited once.
    let mut best: Option<(&Value, usize)> = None;
    let mut queue = VecDeque::from([&p.root]);
    let (mut seen_heap, mut seen_tuples) = (HashSet::new(), HashSet::new());
    while let Some(v) = queue.pop_front() {
        match v {
            Value::Tuple(items, _) if seen_tuples.insert(Rc::as_ptr(items) as *const Value) => {
                queue.extend(items.iter());
            }
            Value::List(i) | Value::Dict(i) | Value::Object(i) if seen_heap.insert(*i) => {
                match &p.heap[*i] {
                    Container::List(items) => queue.extend(items.iter()),
                    Container::Dict(items) => {
                        let n = tensor_count(p, v);
                        if n > best.map_or(0, |b| b.1) {
                            best = Some((v, n));
                        }
                        queue.extend(items.iter().map(|(_, x)| x));
                    }
                    Container::Object { args, state, .. } => queue.extend([args, state]),
                }
            }
            _ => {}
        }
    }
    best.map(|b| b.0).ok_or_else(|| {
        let top = match p.dict(&p.root) {
            Some(items) => {
                let keys: Vec<String> = items.iter().take(12).map(|(k, _)| k.describe()).collect();
                format!("a dict of {}", keys.join(", "))
            }
            None => format!("a {}", p.root.describe()),
        };
        Error::format(
            path,
            "state dict",
            format!("no dict of tensors in the checkpoint (its top level is {top})"),
        )
    })
}

/// The floating-point tensors of the weights dict by their final names.
fn select_tensors(p: &Pickled, path: &Path) -> Result<Vec<(String, Rc<TensorRef>)>> {
    let weights = find_weights(p, path)?;
    // A repeated key keeps its last value, as in Python.
    let mut named: BTreeMap<&str, &Rc<TensorRef>> = BTreeMap::new();
    for (k, v) in p.dict(weights).unwrap_or(&[]) {
        if let (Some(k), Value::Tensor(t)) = (k.as_str(), v) {
            named.insert(k, t);
        }
    }
    named.retain(|_, t| t.storage.dtype.is_float());
    if named.is_empty() {
        return Err(Error::format(
            path,
            "state dict",
            "its tensors are all integer tensors: no weights",
        ));
    }
    let mut strip = 0;
    while let Some(prefix) = WRAPPER_PREFIXES.iter().find(|pre| {
        named
            .keys()
            .all(|k| k[strip..].starts_with(*pre) && k.len() > strip + pre.len())
    }) {
        strip += prefix.len();
    }
    Ok(named
        .into_iter()
        .map(|(k, t)| (k[strip..].to_string(), t.clone()))
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Copying the tensors out

/// `a * b + c` on u64 without overflow, or `None`.
fn mul_add(a: u64, b: u64, c: u64) -> Option<u64> {
    a.checked_mul(b)?.checked_add(c)
}

impl<'a> Checkpoint<'a> {
    /// The first `need` bytes of storage `key`, or an error naming `tensor` when the storage
    /// holds fewer.
    fn storage_bytes(
        &mut self,
        key: &str,
        numel: u64,
        es: usize,
        tensor: &str,
        path: &Path,
    ) -> Result<Cow<'a, [u8]>> {
        let field = format!("tensor `{tensor}`");
        let short = |have: u64| {
            Error::format(
                path,
                format!("tensor `{tensor}`"),
                format!("its storage `{key}` declares {numel} elements of {es} bytes but holds {have} bytes"),
            )
        };
        let need = numel.checked_mul(es as u64).ok_or_else(|| short(0))?;
        match &mut self.source {
            Source::Legacy(data, ranges) => {
                let Some(r) = ranges.get(key) else {
                    return Err(Error::format(
                        path,
                        field,
                        format!("its storage `{key}` is not in the file's storage list"),
                    ));
                };
                if (r.len() as u64) < need {
                    return Err(short(r.len() as u64));
                }
                let data: &'a [u8] = data;
                Ok(Cow::Borrowed(&data[r.start..r.start + need as usize]))
            }
            Source::Zip(archive, prefix) => {
                let name = format!("{prefix}data/{key}");
                match entry_size(archive, &name, path)? {
                    None => Err(Error::format(
                        path,
                        field,
                        format!("its storage `{name}` is not in the archive"),
                    )),
                    Some(have) if have < need => Err(short(have)),
                    Some(_) => Ok(Cow::Owned(read_entry(
                        archive,
                        &name,
                        need,
                        self.file_len,
                        path,
                    )?)),
                }
            }
        }
    }

    fn materialise(
        &mut self,
        named: &[(String, Rc<TensorRef>)],
        path: &Path,
    ) -> Result<BTreeMap<String, Tensor>> {
        // Check every view and the total before reading or allocating anything.
        let mut numels = Vec::with_capacity(named.len());
        let mut uses: HashMap<&str, (u64, usize)> = HashMap::new();
        for (name, t) in named {
            let s = &t.storage;
            let field = format!("tensor `{name}`");
            let numel = t.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
            let last = t
                .shape
                .iter()
                .zip(&t.stride)
                .try_fold(t.offset, |a, (&n, &st)| mul_add(n.saturating_sub(1), st, a));
            let view = format!(
                "(offset {}, shape {:?}, stride {:?})",
                t.offset, t.shape, t.stride
            );
            match (numel, last) {
                (Some(0), _) => {}
                (Some(n), Some(last)) if last < s.numel && n <= s.numel => {}
                (Some(n), Some(last)) if last < s.numel => {
                    return Err(Error::format(path, field, format!(
                        "the view {view} has {n} elements, more than the {} of its storage `{}` (broadcast views are not supported)",
                        s.numel, s.key
                    )))
                }
                _ => {
                    return Err(Error::format(path, field, format!(
                        "the view {view} reaches beyond its storage `{}` of {} elements",
                        s.key, s.numel
                    )))
                }
            }
            let numel = numel.unwrap_or(0);
            numels.push(numel);
            if numel > 0 {
                uses.entry(&s.key).or_insert((s.numel, 0)).1 += 1;
            }
        }
        let total = numels.iter().fold(0u64, |a, &n| a.saturating_add(n));
        let stored = uses.values().fold(0u64, |a, u| a.saturating_add(u.0));
        if total > stored.saturating_mul(MAX_OVERLAP) {
            return Err(Error::format(path, "state dict", format!(
                "its tensors add up to {total} elements, more than {MAX_OVERLAP} times the {stored} of the storages they view"
            )));
        }

        // Each storage is read once and dropped after its last tensor.
        let big = self.big_endian;
        let mut cache: HashMap<String, Cow<'a, [u8]>> = HashMap::new();
        let mut out = BTreeMap::new();
        for ((name, t), numel) in named.iter().zip(numels) {
            let s = &t.storage;
            let mut data = Vec::new();
            if numel > 0 {
                if !cache.contains_key(&s.key) {
                    let b = self.storage_bytes(&s.key, s.numel, s.dtype.size(), name, path)?;
                    cache.insert(s.key.clone(), b);
                }
                data = gather(&cache[&s.key], t, numel as usize, s.dtype, big);
                let left = &mut uses.get_mut(s.key.as_str()).expect("counted above").1;
                *left -= 1;
                if *left == 0 {
                    cache.remove(&s.key);
                }
            }
            let shape = t.shape.iter().map(|&d| d as usize).collect();
            out.insert(name.clone(), Tensor { shape, data });
        }
        Ok(out)
    }
}

/// f32 of one element of `dtype`.
fn reader(dtype: DType, big: bool) -> fn(&[u8]) -> f32 {
    match (dtype, big) {
        (DType::F32, false) => |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        (DType::F32, true) => |b| f32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        (DType::F16, false) => |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
        (DType::F16, true) => |b| half::f16::from_be_bytes([b[0], b[1]]).to_f32(),
        (DType::BF16, false) => |b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        (DType::BF16, true) => |b| half::bf16::from_be_bytes([b[0], b[1]]).to_f32(),
        (DType::F64, false) => {
            |b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        }
        (DType::F64, true) => {
            |b| f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        }
        _ => unreachable!("integer tensors are filtered out before"),
    }
}

/// The view's elements in C order, as f32. The view was checked to lie inside `bytes`.
fn gather(bytes: &[u8], t: &TensorRef, numel: usize, dtype: DType, big: bool) -> Vec<f32> {
    let es = dtype.size();
    let read = reader(dtype, big);
    let mut out = Vec::with_capacity(numel);
    if numel == 0 {
        return out;
    }
    let offset = t.offset as usize;
    // Contiguous: every dimension of more than one element has the stride of C order.
    let mut expect = 1u64;
    let contiguous = t.shape.iter().zip(&t.stride).rev().all(|(&n, &s)| {
        let ok = n <= 1 || s == expect;
        expect *= n;
        ok
    });
    if contiguous {
        out.extend(
            bytes[offset * es..(offset + numel) * es]
                .chunks_exact(es)
                .map(read),
        );
        return out;
    }
    // An odometer over the indices, moving `pos` by the strides.
    let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
    let stride: Vec<usize> = t.stride.iter().map(|&d| d as usize).collect();
    let mut idx = vec![0usize; shape.len()];
    let mut pos = offset;
    for _ in 0..numel {
        out.push(read(&bytes[pos * es..pos * es + es]));
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            pos += stride[d];
            if idx[d] < shape[d] {
                break;
            }
            pos -= stride[d] * shape[d];
            idx[d] = 0;
        }
    }
    out
}
