//! The names a checkpoint's pickle may import, and what each does in place of Python's call:
//! torch's storage classes tag persistent ids, `_rebuild_tensor(_v2)` describes a strided view
//! of a storage, `_rebuild_parameter` unwraps one, `OrderedDict` makes a dict, numpy's
//! `scalar`/`dtype` and `_codecs.encode` decode a number, `argparse.Namespace` is kept as an
//! opaque object. Every argument is checked; nothing here can name another global.

use std::rc::Rc;

use super::{Container, Value, Vm, MAX_DIMS};
use crate::error::Result;

/// Element type of a torch storage, from its class (`torch.FloatStorage`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DType {
    F32,
    F16,
    BF16,
    F64,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 | DType::I16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    /// Whether the loader converts it to f32 (integer tensors are left out of state dicts).
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16 | DType::F64)
    }

    /// torch's storage class name.
    pub fn storage_name(self) -> &'static str {
        match self {
            DType::F32 => "FloatStorage",
            DType::F16 => "HalfStorage",
            DType::BF16 => "BFloat16Storage",
            DType::F64 => "DoubleStorage",
            DType::I64 => "LongStorage",
            DType::I32 => "IntStorage",
            DType::I16 => "ShortStorage",
            DType::I8 => "CharStorage",
            DType::U8 => "ByteStorage",
            DType::Bool => "BoolStorage",
        }
    }
}

/// A storage named by a persistent id: `('storage', type, key, location, numel[, view])`.
#[derive(Debug)]
pub(crate) struct StorageRef {
    pub key: String,
    pub dtype: DType,
    /// Element count declared in the pickle; the bytes present are checked against it.
    pub numel: u64,
}

/// A tensor as `_rebuild_tensor(_v2)` describes it: a strided view of a storage, in elements.
#[derive(Debug)]
pub(crate) struct TensorRef {
    pub storage: Rc<StorageRef>,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
}

/// The names a pickle may import: everything else is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildTensorV2,
    RebuildParameter,
    RebuildParameterWithState,
    Storage(DType),
    NumpyScalar,
    NumpyDtype,
    CodecsEncode,
    Namespace,
}

/// The allow-list: (module, name, meaning). Storage classes only tag persistent ids; the
/// numpy, `_codecs` and argparse entries cover what training scripts put beside the weights
/// (a numpy-float accuracy, which protocol 2 pickles as `scalar(dtype, encode(..))`, and the
/// parsed command line).
const GLOBALS: &[(&str, &str, Global)] = &[
    ("collections", "OrderedDict", Global::OrderedDict),
    ("torch._utils", "_rebuild_tensor", Global::RebuildTensor),
    (
        "torch._utils",
        "_rebuild_tensor_v2",
        Global::RebuildTensorV2,
    ),
    (
        "torch._utils",
        "_rebuild_parameter",
        Global::RebuildParameter,
    ),
    (
        "torch._utils",
        "_rebuild_parameter_with_state",
        Global::RebuildParameterWithState,
    ),
    ("torch", "FloatStorage", Global::Storage(DType::F32)),
    ("torch", "HalfStorage", Global::Storage(DType::F16)),
    ("torch", "BFloat16Storage", Global::Storage(DType::BF16)),
    ("torch", "DoubleStorage", Global::Storage(DType::F64)),
    ("torch", "LongStorage", Global::Storage(DType::I64)),
    ("torch", "IntStorage", Global::Storage(DType::I32)),
    ("torch", "ShortStorage", Global::Storage(DType::I16)),
    ("torch", "CharStorage", Global::Storage(DType::I8)),
    ("torch", "ByteStorage", Global::Storage(DType::U8)),
    ("torch", "BoolStorage", Global::Storage(DType::Bool)),
    ("numpy.core.multiarray", "scalar", Global::NumpyScalar),
    ("numpy._core.multiarray", "scalar", Global::NumpyScalar),
    ("numpy", "dtype", Global::NumpyDtype),
    ("_codecs", "encode", Global::CodecsEncode),
    ("argparse", "Namespace", Global::Namespace),
];

impl Global {
    pub(super) fn lookup(module: &str, name: &str) -> Option<Global> {
        GLOBALS
            .iter()
            .find(|(m, n, _)| *m == module && *n == name)
            .map(|g| g.2)
    }

    /// `module.name`, for messages.
    pub fn qualname(self) -> String {
        let (m, n, _) = GLOBALS
            .iter()
            .find(|g| g.2 == self)
            .expect("every global is listed");
        format!("{m}.{n}")
    }
}

impl Vm<'_> {
    /// `f(*args)` for the allowed callables, implemented here.
    pub(super) fn reduce(&mut self, f: &Value, args: &Value) -> Result<Value> {
        let Value::Global(g) = f else {
            return Err(self.err(format_args!("REDUCE calls a {}", f.describe())));
        };
        let Value::Tuple(a, _) = args else {
            return Err(self.err(format_args!(
                "REDUCE of {} with {} instead of a tuple",
                g.qualname(),
                args.describe()
            )));
        };
        let arity = |lo: usize, hi: usize| -> Result<()> {
            if a.len() < lo || a.len() > hi {
                return Err(self.err(format_args!(
                    "{} called with {} arguments (expects {lo} to {hi})",
                    g.qualname(),
                    a.len()
                )));
            }
            Ok(())
        };
        match g {
            Global::OrderedDict => {
                arity(0, 1)?;
                let d = self.new_dict();
                if let Some(items) = a.first() {
                    let pairs = self.items_of(items)?;
                    if let Value::Dict(i) = d {
                        self.heap[i] = Container::Dict(pairs);
                    }
                }
                Ok(d)
            }
            Global::RebuildTensor | Global::RebuildTensorV2 => {
                // (storage, offset, size, stride) + v2: (requires_grad, hooks[, metadata]).
                if *g == Global::RebuildTensor {
                    arity(4, 4)
                } else {
                    arity(6, 7)
                }?;
                self.tensor(&a[0], &a[1], &a[2], &a[3])
            }
            Global::RebuildParameter | Global::RebuildParameterWithState => {
                if *g == Global::RebuildParameter {
                    arity(3, 3)
                } else {
                    arity(4, 4)
                }?;
                match &a[0] {
                    t @ Value::Tensor(_) => Ok(t.clone()),
                    v => Err(self.err(format_args!("a parameter made of a {}", v.describe()))),
                }
            }
            Global::NumpyDtype | Global::Namespace => {
                if *g == Global::Namespace {
                    arity(0, 0)?;
                }
                let args = args.clone();
                Ok(Value::Object(self.alloc(Container::Object {
                    class: *g,
                    args,
                    state: Value::None,
                })))
            }
            Global::NumpyScalar => {
                arity(2, 2)?;
                self.numpy_scalar(&a[0], &a[1])
            }
            Global::CodecsEncode => {
                arity(2, 2)?;
                match (&a[0], a[1].as_str()) {
                    (Value::Str(s), Some("latin1" | "latin-1")) => s
                        .chars()
                        .map(|c| u8::try_from(u32::from(c)).ok())
                        .collect::<Option<Vec<u8>>>()
                        .map(|b| Value::Bytes(b.into()))
                        .ok_or_else(|| self.err("_codecs.encode: a character beyond latin-1")),
                    _ => Err(self.err(format_args!(
                        "_codecs.encode of {} to {}",
                        a[0].describe(),
                        a[1].describe()
                    ))),
                }
            }
            Global::Storage(_) => Err(self.err(format_args!(
                "{} is only supported as the type of a persistent id",
                g.qualname()
            ))),
        }
    }

    /// Key-value pairs of an `OrderedDict(items)` argument: a list of pairs or a dict.
    fn items_of(&self, v: &Value) -> Result<Vec<(Value, Value)>> {
        let bad = || self.err(format_args!("OrderedDict of a {}", v.describe()));
        match v {
            Value::Dict(i) => match &self.heap[*i] {
                Container::Dict(items) => Ok(items.clone()),
                _ => Err(bad()),
            },
            Value::List(i) => match &self.heap[*i] {
                Container::List(items) => items
                    .iter()
                    .map(|p| match p {
                        Value::Tuple(kv, _) if kv.len() == 2 => Ok((kv[0].clone(), kv[1].clone())),
                        _ => Err(bad()),
                    })
                    .collect(),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }

    fn uint(&self, v: &Value, what: &str) -> Result<u64> {
        match v {
            Value::Int(i) if *i >= 0 => Ok(*i as u64),
            _ => Err(self.err(format_args!(
                "{what} is {}, not a non-negative int",
                v.describe()
            ))),
        }
    }

    /// A tuple (or list) of non-negative ints: a tensor's size or stride.
    fn dims(&self, v: &Value, what: &str) -> Result<Vec<u64>> {
        let items: &[Value] = match v {
            Value::Tuple(t, _) => t,
            Value::List(i) => match &self.heap[*i] {
                Container::List(l) => l,
                _ => &[],
            },
            _ => return Err(self.err(format_args!("tensor {what} is a {}", v.describe()))),
        };
        if items.len() > MAX_DIMS {
            return Err(self.err(format_args!(
                "tensor {what} has {} dimensions (at most {MAX_DIMS})",
                items.len()
            )));
        }
        items
            .iter()
            .map(|x| self.uint(x, &format!("a tensor {what}")))
            .collect()
    }

    fn tensor(
        &self,
        storage: &Value,
        offset: &Value,
        size: &Value,
        stride: &Value,
    ) -> Result<Value> {
        let Value::Storage(s) = storage else {
            return Err(self.err(format_args!("a tensor of a {}", storage.describe())));
        };
        let shape = self.dims(size, "size")?;
        let stride = self.dims(stride, "stride")?;
        if shape.len() != stride.len() {
            return Err(self.err(format_args!(
                "tensor size {shape:?} and stride {stride:?} differ in length"
            )));
        }
        Ok(Value::Tensor(Rc::new(TensorRef {
            storage: s.clone(),
            offset: self.uint(offset, "a storage offset")?,
            shape,
            stride,
        })))
    }

    /// `numpy.core.multiarray.scalar(dtype, raw bytes)` as a number.
    fn numpy_scalar(&self, dtype: &Value, raw: &Value) -> Result<Value> {
        let bad = || {
            self.err(format_args!(
                "numpy scalar of {} and {}",
                dtype.describe(),
                raw.describe()
            ))
        };
        let Value::Object(i) = dtype else {
            return Err(bad());
        };
        let Container::Object {
            class: Global::NumpyDtype,
            args,
            state,
        } = &self.heap[*i]
        else {
            return Err(bad());
        };
        let code = match args {
            Value::Tuple(a, _) => a.first().and_then(Value::as_str).unwrap_or(""),
            _ => "",
        };
        // BUILD gives the byte order as the second item of the state tuple ('<', '>', '|').
        let big =
            matches!(state, Value::Tuple(s, _) if s.get(1).and_then(Value::as_str) == Some(">"));
        let mut b: Vec<u8> = match raw {
            Value::Bytes(b) => b.to_vec(),
            // Python 2 pickles (no `_codecs.encode`) hold the bytes as a latin-1 string.
            Value::Str(s) => s.chars().map(|c| c as u32 as u8).collect(),
            _ => return Err(bad()),
        };
        if big {
            b.reverse();
        }
        let fixed = |n: usize| -> Result<[u8; 8]> {
            if b.len() != n {
                return Err(self.err(format_args!("numpy {code} scalar of {} bytes", b.len())));
            }
            let mut out = [0u8; 8];
            out[..n].copy_from_slice(&b);
            Ok(out)
        };
        Ok(match code {
            "f8" => Value::Float(f64::from_le_bytes(fixed(8)?)),
            "f4" => Value::Float(f32::from_le_bytes(fixed(4)?[..4].try_into().expect("4")).into()),
            "f2" => {
                let f = fixed(2)?;
                Value::Float(half::f16::from_le_bytes([f[0], f[1]]).to_f64())
            }
            "i8" | "u8" => Value::Int(i64::from_le_bytes(fixed(8)?)),
            "i4" => Value::Int(i32::from_le_bytes(fixed(4)?[..4].try_into().expect("4")).into()),
            "u4" => Value::Int(u32::from_le_bytes(fixed(4)?[..4].try_into().expect("4")).into()),
            "b1" | "?" => Value::Bool(fixed(1)?[0] != 0),
            _ => return Err(self.err(format_args!("numpy scalar of dtype '{code}'"))),
        })
    }

    /// `('storage', storage_type, key, location, numel[, view_metadata])`: the zip format has
    /// five items, the legacy format six (its last, a view of another storage, comes only from
    /// torch < 0.4 and is refused).
    pub(super) fn persistent_load(&mut self, pid: &Value) -> Result<Value> {
        let bad = |why: &str| self.err(format_args!("persistent id {}: {why}", pid.describe()));
        let Value::Tuple(t, _) = pid else {
            return Err(bad("not a tuple"));
        };
        if t.first().and_then(Value::as_str) != Some("storage") {
            return Err(bad("only ('storage', ...) ids are known"));
        }
        if !(t.len() == 5 || t.len() == 6) {
            return Err(bad("a storage id has 5 or 6 items"));
        }
        if t.len() == 6 && !matches!(t[5], Value::None) {
            return Err(bad(
                "storage views (torch < 0.4 checkpoints) are not supported",
            ));
        }
        let Value::Global(Global::Storage(dtype)) = t[1] else {
            return Err(self.err(format_args!(
                "storage type {} is not a torch storage class",
                t[1].describe()
            )));
        };
        let key = match &t[2] {
            Value::Str(s) => s.to_string(),
            Value::Int(i) => i.to_string(),
            v => return Err(self.err(format_args!("storage key {}", v.describe()))),
        };
        let numel = self.uint(&t[4], "a storage's element count")?;
        if let Some(s) = self.storages.get(&key) {
            if s.dtype != dtype || s.numel != numel {
                return Err(self.err(format_args!(
                    "storage '{key}' named twice, as {} of {} and {} of {numel} elements",
                    s.dtype.storage_name(),
                    s.numel,
                    dtype.storage_name()
                )));
            }
            return Ok(Value::Storage(s.clone()));
        }
        let s = Rc::new(StorageRef {
            key: key.clone(),
            dtype,
            numel,
        });
        self.storages.insert(key, s.clone());
        Ok(Value::Storage(s))
    }
}
