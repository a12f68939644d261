//! A pickle virtual machine for the subset of the format that PyTorch checkpoints use, written
//! so that reading a checkpoint can never run code. Python's own unpickler imports any module
//! and calls any callable a file names (`os.system` included), which is why `torch.load` of an
//! untrusted file is unsafe; here a `GLOBAL` is looked up in a short allow-list of torch,
//! `collections`, numpy and argparse names and anything else is an error naming it, and the
//! allowed callables are not called but implemented natively (`globals.rs`):
//! `_rebuild_tensor_v2` becomes a description of a strided view (checked and copied later, in
//! `checkpoint.rs`), `OrderedDict` a dict, a numpy scalar a number.
//!
//! Resources are bounded by the input: every length an opcode declares is checked against the
//! bytes left before anything is allocated, memo indices go into a map (a `LONG_BINPUT` of 2^32
//! costs one entry), lists and dicts live in a heap and are referred to by index (so `BINGET`
//! copies a handle, never a structure, and self-referencing lists cannot make traversals loop
//! or drops recurse), and tuples, the one value nested by ownership, are limited to
//! [`MAX_DEPTH`] levels so that dropping them cannot overflow the stack.

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use crate::error::{Error, Result};

mod globals;

pub(crate) use globals::{DType, Global, StorageRef, TensorRef};

/// Deepest nesting of tuples accepted; torch's pickles nest three deep.
pub(crate) const MAX_DEPTH: u32 = 64;
/// Most dimensions a tensor may have (torch's own limit).
pub(crate) const MAX_DIMS: usize = 64;
/// Longest line of a `GLOBAL` opcode (module or name) read.
const MAX_GLOBAL_LINE: usize = 256;

/// A pickled value. Lists, dicts and objects are indices into [`Pickled::heap`].
#[derive(Clone, Debug)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits, as its little-endian two's-complement bytes.
    BigInt(Rc<[u8]>),
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    /// Items and nesting depth (1 for a tuple holding no tuple).
    Tuple(Rc<[Value]>, u32),
    List(usize),
    Dict(usize),
    Object(usize),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    fn depth(&self) -> u32 {
        match self {
            Value::Tuple(_, d) => *d,
            _ => 0,
        }
    }

    /// A short description for messages.
    pub fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(b) => format!("bool {b}"),
            Value::Int(i) => format!("int {i}"),
            Value::BigInt(b) => format!("{}-byte int", b.len()),
            Value::Float(f) => format!("float {f}"),
            Value::Str(s) if s.chars().count() > 40 => {
                format!("str '{}...'", s.chars().take(40).collect::<String>())
            }
            Value::Str(s) => format!("str '{s}'"),
            Value::Bytes(b) => format!("{} bytes", b.len()),
            Value::Tuple(t, _) => format!("tuple of {}", t.len()),
            Value::List(_) => "list".into(),
            Value::Dict(_) => "dict".into(),
            Value::Object(_) => "object".into(),
            Value::Global(g) => format!("global {}", g.qualname()),
            Value::Storage(s) => format!("storage '{}'", s.key),
            Value::Tensor(_) => "tensor".into(),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// A mutable container of the pickle.
#[derive(Debug)]
pub(crate) enum Container {
    List(Vec<Value>),
    /// Items in insertion order; a repeated key keeps its later value when read (as Python).
    Dict(Vec<(Value, Value)>),
    /// An instance of an allowed class (argparse.Namespace, numpy.dtype): its constructor
    /// arguments and the state `BUILD` gave it.
    Object {
        class: Global,
        args: Value,
        state: Value,
    },
}

/// The result of one pickle: its value, the heap its handles point into, and the offset just
/// past its `STOP` (the legacy format puts pickles back to back).
#[derive(Debug)]
pub(crate) struct Pickled {
    pub root: Value,
    pub heap: Vec<Container>,
    pub end: usize,
}

impl Pickled {
    /// The items of a dict value, or `None` when `v` is not a dict.
    pub fn dict(&self, v: &Value) -> Option<&[(Value, Value)]> {
        match v {
            Value::Dict(i) => match &self.heap[*i] {
                Container::Dict(items) => Some(items),
                _ => None,
            },
            _ => None,
        }
    }

    /// The value of string key `key` in dict `v` (the last one, when repeated).
    pub fn get<'p>(&'p self, v: &Value, key: &str) -> Option<&'p Value> {
        self.dict(v)?
            .iter()
            .rev()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }
}

/// Storages already named in the pickles of one checkpoint, by key, so that tensors sharing a
/// storage share one [`StorageRef`].
pub(crate) type Storages = HashMap<String, Rc<StorageRef>>;

/// Runs the pickle that starts at `data[start]`. `field` names it in errors (together with
/// the byte offset of the opcode that failed).
pub(crate) fn unpickle(
    data: &[u8],
    start: usize,
    path: &Path,
    field: &str,
    storages: &mut Storages,
) -> Result<Pickled> {
    let mut vm = Vm {
        data,
        pos: start,
        op_at: start,
        path,
        field,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        heap: Vec::new(),
        storages,
    };
    let root = vm.run()?;
    Ok(Pickled {
        root,
        heap: vm.heap,
        end: vm.pos,
    })
}

/// The name of a pickle opcode (protocols 0 to 5), for messages.
pub(crate) fn opcode_name(op: u8) -> &'static str {
    match op {
        b'(' => "MARK",
        b'.' => "STOP",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'F' => "FLOAT",
        b'I' => "INT",
        b'J' => "BININT",
        b'K' => "BININT1",
        b'L' => "LONG",
        b'M' => "BININT2",
        b'N' => "NONE",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'R' => "REDUCE",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'X' => "BINUNICODE",
        b'a' => "APPEND",
        b'b' => "BUILD",
        b'c' => "GLOBAL",
        b'd' => "DICT",
        b'}' => "EMPTY_DICT",
        b'e' => "APPENDS",
        b'g' => "GET",
        b'h' => "BINGET",
        b'i' => "INST",
        b'j' => "LONG_BINGET",
        b'l' => "LIST",
        b']' => "EMPTY_LIST",
        b'o' => "OBJ",
        b'p' => "PUT",
        b'q' => "BINPUT",
        b'r' => "LONG_BINPUT",
        b's' => "SETITEM",
        b't' => "TUPLE",
        b')' => "EMPTY_TUPLE",
        b'u' => "SETITEMS",
        b'G' => "BINFLOAT",
        b'B' => "BINBYTES",
        b'C' => "SHORT_BINBYTES",
        0x80 => "PROTO",
        0x81 => "NEWOBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x85 => "TUPLE1",
        0x86 => "TUPLE2",
        0x87 => "TUPLE3",
        0x88 => "NEWTRUE",
        0x89 => "NEWFALSE",
        0x8a => "LONG1",
        0x8b => "LONG4",
        0x8c => "SHORT_BINUNICODE",
        0x8d => "BINUNICODE8",
        0x8e => "BINBYTES8",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x92 => "NEWOBJ_EX",
        0x93 => "STACK_GLOBAL",
        0x94 => "MEMOIZE",
        0x95 => "FRAME",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "not a pickle opcode",
    }
}

struct Vm<'a> {
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed, for messages.
    op_at: usize,
    path: &'a Path,
    field: &'a str,
    stack: Vec<Value>,
    /// Stack heights at each open `MARK`.
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    heap: Vec<Container>,
    storages: &'a mut Storages,
}

impl<'a> Vm<'a> {
    fn err(&self, message: impl std::fmt::Display) -> Error {
        let op = self.data.get(self.op_at).copied().unwrap_or(0);
        Error::format(
            self.path,
            self.field,
            format!(
                "{message} (opcode {} at byte {})",
                opcode_name(op),
                self.op_at
            ),
        )
    }

    // ---- reading the opcode stream

    /// The next `n` bytes; an error, before any allocation, when fewer remain.
    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let left = self.data.len() - self.pos;
        if n > left as u64 {
            return Err(self.err(format_args!(
                "declares {n} bytes but only {left} remain in the file (truncated or corrupt)"
            )));
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N as u64)?.try_into().expect("N bytes"))
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A signed 32-bit length (BINSTRING, LONG4): negative is an error.
    fn len_i32(&mut self) -> Result<u64> {
        let n = i32::from_le_bytes(self.array()?);
        u64::try_from(n).map_err(|_| self.err(format_args!("negative length {n}")))
    }

    /// One newline-terminated line of a `GLOBAL`.
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest
            .iter()
            .take(MAX_GLOBAL_LINE + 1)
            .position(|&b| b == b'\n')
        else {
            if rest.len() <= MAX_GLOBAL_LINE {
                return Err(self.err("the file ends inside a GLOBAL name (truncated file)"));
            }
            return Err(self.err(format_args!(
                "GLOBAL name without a newline in its first {MAX_GLOBAL_LINE} bytes"
            )));
        };
        let line =
            std::str::from_utf8(&rest[..n]).map_err(|_| self.err("GLOBAL name is not UTF-8"))?;
        self.pos += n + 1;
        Ok(line)
    }

    fn utf8(&self, bytes: &[u8]) -> Result<Value> {
        std::str::from_utf8(bytes)
            .map(|s| Value::Str(s.into()))
            .map_err(|e| self.err(format_args!("string is not UTF-8 ({e})")))
    }

    // ---- the stack

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Value> {
        if self.stack.len() <= self.floor() {
            return Err(self.err("stack underflow"));
        }
        Ok(self.stack.pop().expect("checked"))
    }

    fn top(&self) -> Result<&Value> {
        if self.stack.len() <= self.floor() {
            return Err(self.err("stack underflow"));
        }
        Ok(self.stack.last().expect("checked"))
    }

    /// The items pushed since the last `MARK`, which is closed.
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let Some(m) = self.marks.pop() else {
            return Err(self.err("no MARK to close"));
        };
        Ok(self.stack.split_off(m))
    }

    fn tuple(&self, items: Vec<Value>) -> Result<Value> {
        let depth = 1 + items.iter().map(Value::depth).max().unwrap_or(0);
        if depth > MAX_DEPTH {
            return Err(self.err(format_args!("tuples nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(Value::Tuple(items.into(), depth))
    }

    fn alloc(&mut self, c: Container) -> usize {
        self.heap.push(c);
        self.heap.len() - 1
    }

    fn new_dict(&mut self) -> Value {
        Value::Dict(self.alloc(Container::Dict(Vec::new())))
    }

    /// The dict on top of the stack (for SETITEM(S)).
    fn top_dict(&mut self) -> Result<&mut Vec<(Value, Value)>> {
        let what = match self.top()? {
            Value::Dict(i) => *i,
            v => return Err(self.err(format_args!("setting items of a {}", v.describe()))),
        };
        match &mut self.heap[what] {
            Container::Dict(items) => Ok(items),
            _ => unreachable!("a Dict handle points to a dict"),
        }
    }

    fn top_list(&mut self) -> Result<&mut Vec<Value>> {
        let what = match self.top()? {
            Value::List(i) => *i,
            v => return Err(self.err(format_args!("appending to a {}", v.describe()))),
        };
        match &mut self.heap[what] {
            Container::List(items) => Ok(items),
            _ => unreachable!("a List handle points to a list"),
        }
    }

    fn pairs(&self, items: Vec<Value>) -> Result<Vec<(Value, Value)>> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err(format_args!(
                "{} items do not make key-value pairs",
                items.len()
            )));
        }
        let mut it = items.into_iter();
        let mut out = Vec::with_capacity(it.len() / 2);
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            out.push((k, v));
        }
        Ok(out)
    }

    fn global(&self, module: &str, name: &str) -> Result<Value> {
        match Global::lookup(module, name) {
            Some(g) => Ok(Value::Global(g)),
            None => Err(self.err(format_args!(
                "unsupported global `{module}.{name}` (ensembed never executes pickled code)"
            ))),
        }
    }

    fn memo_get(&self, i: u32) -> Result<Value> {
        self.memo
            .get(&i)
            .cloned()
            .ok_or_else(|| self.err(format_args!("memo entry {i} was never set")))
    }

    fn memo_put(&mut self, i: u32) -> Result<()> {
        let v = self.top()?.clone();
        self.memo.insert(i, v);
        Ok(())
    }

    // ---- the machine

    fn run(&mut self) -> Result<Value> {
        loop {
            self.op_at = self.pos;
            if self.pos >= self.data.len() {
                return Err(self.err("the pickle ends without STOP (truncated file)"));
            }
            let op = self.u8()?;
            match op {
                0x80 => {
                    let p = self.u8()?;
                    if p > 5 {
                        return Err(
                            self.err(format_args!("pickle protocol {p} (at most 5 exists)"))
                        );
                    }
                }
                0x95 => {
                    // FRAME: a length hint only; checked so a lie is reported where it is.
                    let n = self.u64()?;
                    let left = self.data.len() - self.pos;
                    if n > left as u64 {
                        return Err(self.err(format_args!("frame of {n} bytes, {left} remain")));
                    }
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.array()?);
                    self.stack.push(Value::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v.into()));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.array()?);
                    self.stack.push(Value::Int(v.into()));
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        self.u8()?.into()
                    } else {
                        self.len_i32()?
                    };
                    let bytes = self.take(n)?;
                    self.stack.push(long(bytes));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.array()?);
                    self.stack.push(Value::Float(v));
                }
                b'X' | 0x8c | 0x8d => {
                    let n = match op {
                        b'X' => self.u32()?.into(),
                        0x8c => self.u8()?.into(),
                        _ => self.u64()?,
                    };
                    let bytes = self.take(n)?;
                    let v = self.utf8(bytes)?;
                    self.stack.push(v);
                }
                b'T' | b'U' => {
                    // Python 2 `str`: torch.load decodes them as UTF-8; keep bytes otherwise.
                    let n = if op == b'T' {
                        self.len_i32()?
                    } else {
                        self.u8()?.into()
                    };
                    let bytes = self.take(n)?;
                    let v = self
                        .utf8(bytes)
                        .unwrap_or_else(|_| Value::Bytes(bytes.into()));
                    self.stack.push(v);
                }
                b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'B' => self.u32()?.into(),
                        b'C' => self.u8()?.into(),
                        _ => self.u64()?,
                    };
                    let bytes = self.take(n)?;
                    self.stack.push(Value::Bytes(bytes.into()));
                }
                b')' => self.stack.push(Value::Tuple(Rc::from([]), 1)),
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < self.floor() + n {
                        return Err(self.err("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    let t = self.tuple(items)?;
                    self.stack.push(t);
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let t = self.tuple(items)?;
                    self.stack.push(t);
                }
                b']' => {
                    let i = self.alloc(Container::List(Vec::new()));
                    self.stack.push(Value::List(i));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let i = self.alloc(Container::List(items));
                    self.stack.push(Value::List(i));
                }
                b'}' => {
                    let d = self.new_dict();
                    self.stack.push(d);
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    let i = self.alloc(Container::Dict(pairs));
                    self.stack.push(Value::Dict(i));
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.top_dict()?.push((k, v));
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let pairs = self.pairs(items)?;
                    self.top_dict()?.extend(pairs);
                }
                b'a' => {
                    let v = self.pop()?;
                    self.top_list()?.push(v);
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.top_list()?.extend(items);
                }
                b'q' => {
                    let i = self.u8()?;
                    self.memo_put(i.into())?;
                }
                b'r' => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).map_err(|_| self.err("memo full"))?;
                    self.memo_put(i)?;
                }
                b'h' => {
                    let i = self.u8()?;
                    let v = self.memo_get(i.into())?;
                    self.stack.push(v);
                }
                b'j' => {
                    let i = self.u32()?;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(module, name)?;
                    self.stack.push(g);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Some(m), Some(n)) = (module.as_str(), name.as_str()) else {
                        return Err(self.err(format_args!(
                            "STACK_GLOBAL of {} and {}",
                            module.describe(),
                            name.describe()
                        )));
                    };
                    let g = self.global(m, n)?;
                    self.stack.push(g);
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = self.reduce(&f, &args)?;
                    self.stack.push(v);
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = match cls {
                        Value::Global(g @ Global::Namespace) => {
                            Value::Object(self.alloc(Container::Object {
                                class: g,
                                args,
                                state: Value::None,
                            }))
                        }
                        Value::Global(Global::OrderedDict) => self.new_dict(),
                        other => {
                            return Err(self.err(format_args!("NEWOBJ of {}", other.describe())))
                        }
                    };
                    self.stack.push(v);
                }
                b'b' => {
                    let state = self.pop()?;
                    match self.top()? {
                        // An OrderedDict's attributes (a state dict's `_metadata`): not needed.
                        Value::Dict(_) => {}
                        Value::Object(i) => {
                            let i = *i;
                            if let Container::Object { state: s, .. } = &mut self.heap[i] {
                                *s = state;
                            }
                        }
                        v => return Err(self.err(format_args!("BUILD of a {}", v.describe()))),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(&pid)?;
                    self.stack.push(v);
                }
                _ => {
                    return Err(self.err(format_args!(
                        "unsupported pickle opcode 0x{op:02x} ({})",
                        opcode_name(op)
                    )))
                }
            }
        }
    }
}

/// A `LONG1`/`LONG4` payload (little-endian two's complement) as a value.
fn long(bytes: &[u8]) -> Value {
    if bytes.len() > 8 {
        return Value::BigInt(bytes.into());
    }
    let negative = bytes.last().is_some_and(|&b| b & 0x80 != 0);
    let mut full = [if negative { 0xff } else { 0 }; 8];
    full[..bytes.len()].copy_from_slice(bytes);
    Value::Int(i64::from_le_bytes(full))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Result<Pickled> {
        unpickle(bytes, 0, Path::new("t.pkl"), "pickle", &mut Storages::new())
    }

    #[test]
    fn longs_sign_extend() {
        assert!(matches!(long(&[]), Value::Int(0)));
        assert!(matches!(long(&[0xff]), Value::Int(-1)));
        assert!(matches!(long(&[0x00, 0x80]), Value::Int(-32768)));
        assert!(matches!(long(&[0xe9, 0x03]), Value::Int(1001)));
        assert!(matches!(long(&[0; 10]), Value::BigInt(_)));
    }

    #[test]
    fn memo_shares_dicts_filled_after_memoizing() {
        // {}, BINPUT 0, MARK 'a' 1 SETITEMS, POP, BINGET 0, STOP: the memoized dict is the
        // filled one, as in Python (torch memoizes a dict before setting its items).
        let p = run(b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x01u0h\x00.").unwrap();
        assert!(matches!(p.get(&p.root, "a"), Some(Value::Int(1))));
    }

    #[test]
    fn deep_tuples_are_refused_without_recursion() {
        let mut b = b"\x80\x02N".to_vec();
        b.extend(vec![0x85u8; 100_000]);
        b.push(b'.');
        let e = run(&b).unwrap_err().to_string();
        assert!(e.contains("nested deeper than 64"), "{e}");
    }

    #[test]
    fn self_referencing_list_is_harmless() {
        // [] BINPUT 0, BINGET 0, APPEND: a list holding itself.
        let p = run(b"\x80\x02]q\x00h\x00a.").unwrap();
        assert!(matches!(p.root, Value::List(0)));
    }
}
