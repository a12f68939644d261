//! A minimal reader of ONNX's protobuf messages: the wire format (varints, length-delimited
//! fields, fixed32/fixed64) and the few messages an image CNN needs (ModelProto, GraphProto,
//! NodeProto, AttributeProto, TensorProto, ValueInfoProto and the shape inside it), decoded by
//! hand.
//!
//! Why by hand: the subset is a few hundred lines, while `prost`/`protobuf` codegen needs
//! `protoc` or a build script plus the `.proto` files, and a generic decoder would accept (and
//! allocate for) everything the schema allows. Here every length is checked against the bytes
//! that are actually present before anything is allocated, so that a hostile file (a tensor
//! declaring a terabyte, a length prefix past the end) fails with an [`Error::Format`] naming the
//! file, the field and the value, and memory stays proportional to the file. Unknown fields are
//! skipped, as protobuf requires; subgraphs (`If`/`Loop` bodies) are skipped too, so decoding
//! never recurses beyond the fixed depth of the schema.

use std::path::Path;

use crate::error::{Error, Result};

/// ONNX `TensorProto.DataType` values ensembed reads.
pub const DT_FLOAT: i32 = 1;
pub const DT_INT64: i32 = 7;

/// One field's payload on the wire.
#[derive(Clone, Copy, Debug)]
enum Wire<'a> {
    Varint(u64),
    /// A fixed64 (doubles, fixed ints): skipped, no field ensembed reads has this type.
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Reads the fields of one message, bounds-checked.
struct Fields<'a, 'p> {
    buf: &'a [u8],
    pos: usize,
    path: &'p Path,
    /// Which message this is, for errors ("graph.node[3]").
    ctx: String,
}

impl<'a, 'p> Fields<'a, 'p> {
    fn new(buf: &'a [u8], path: &'p Path, ctx: impl Into<String>) -> Self {
        Fields {
            buf,
            pos: 0,
            path,
            ctx: ctx.into(),
        }
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::format(self.path, self.ctx.clone(), message)
    }

    fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.err(format!("truncated varint at byte {} of {}", self.pos, self.buf.len())));
            };
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err(format!("varint longer than 10 bytes ending at byte {}", self.pos)))
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let left = (self.buf.len() - self.pos) as u64;
        if n > left {
            return Err(self.err(format!(
                "{what} declares {n} bytes but only {left} remain (truncated or corrupt file)"
            )));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    /// The next (field number, payload), or `None` at the end of the message.
    fn next(&mut self) -> Result<Option<(u32, Wire<'a>)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > u32::MAX as u64 >> 3 {
            return Err(self.err(format!("invalid field number {field}")));
        }
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8, "fixed64")?;
                Wire::Fixed64
            }
            2 => {
                let n = self.varint()?;
                Wire::Bytes(self.take(n, &format!("field {field}"))?)
            }
            5 => Wire::Fixed32(u32::from_le_bytes(self.take(4, "fixed32")?.try_into().unwrap())),
            t => {
                return Err(self.err(format!(
                    "field {field} has wire type {t} (groups are not valid in ONNX)"
                )))
            }
        };
        Ok(Some((field as u32, wire)))
    }

    fn expect_bytes(&self, field: &str, w: Wire<'a>) -> Result<&'a [u8]> {
        match w {
            Wire::Bytes(b) => Ok(b),
            other => Err(self.err(format!("`{field}` should be length-delimited, found {other:?}"))),
        }
    }

    fn expect_varint(&self, field: &str, w: Wire<'a>) -> Result<u64> {
        match w {
            Wire::Varint(v) => Ok(v),
            other => Err(self.err(format!("`{field}` should be a varint, found {other:?}"))),
        }
    }

    fn string(&self, field: &str, w: Wire<'a>) -> Result<String> {
        let b = self.expect_bytes(field, w)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err(format!("`{field}` is not UTF-8")))
    }

    /// Appends repeated int64s, packed or one per field.
    fn int64s(&self, field: &str, w: Wire<'a>, out: &mut Vec<i64>) -> Result<()> {
        match w {
            Wire::Varint(v) => out.push(v as i64),
            Wire::Bytes(b) => {
                let mut f = Fields::new(b, self.path, format!("{}.{field}", self.ctx));
                while f.pos < b.len() {
                    out.push(f.varint()? as i64);
                }
            }
            other => return Err(self.err(format!("`{field}` should hold int64s, found {other:?}"))),
        }
        Ok(())
    }

    /// Appends repeated floats, packed or one per field.
    fn floats(&self, field: &str, w: Wire<'a>, out: &mut Vec<f32>) -> Result<()> {
        match w {
            Wire::Fixed32(v) => out.push(f32::from_bits(v)),
            Wire::Bytes(b) => {
                if b.len() % 4 != 0 {
                    return Err(self.err(format!("packed `{field}` has {} bytes, not a multiple of 4", b.len())));
                }
                out.extend(b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())));
            }
            other => return Err(self.err(format!("`{field}` should hold floats, found {other:?}"))),
        }
        Ok(())
    }
}

/// A decoded `ModelProto`.
#[derive(Debug, Default)]
pub struct Model {
    pub ir_version: i64,
    pub producer: String,
    /// (domain, version); "" is the default ONNX domain.
    pub opsets: Vec<(String, i64)>,
    pub graph: Graph,
    /// `metadata_props` (key, value).
    pub metadata: Vec<(String, String)>,
}

/// A decoded `GraphProto`.
#[derive(Debug, Default)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub initializers: Vec<Tensor>,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
}

/// A decoded `NodeProto`.
#[derive(Debug, Default)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    pub domain: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<Attribute>,
}

/// An attribute's value (the types CNN operators use).
#[derive(Debug)]
pub enum AttrValue {
    Float(f32),
    Int(i64),
    String(String),
    Tensor(Tensor),
    Floats(Vec<f32>),
    Ints(Vec<i64>),
    /// Graphs, sparse tensors, type protos, lists of strings or tensors: read past, refused where
    /// an operator asks for them.
    Other(i32),
}

/// A decoded `AttributeProto`.
#[derive(Debug)]
pub struct Attribute {
    pub name: String,
    pub value: AttrValue,
}

/// A tensor's elements, in the types ensembed reads.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// A decoded `TensorProto` (an initializer or a `Constant`'s value).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dims: Vec<usize>,
    pub data: TensorData,
}

impl AttrValue {
    /// What the value is, for errors.
    pub fn kind(&self) -> String {
        match self {
            AttrValue::Float(f) => format!("FLOAT {f}"),
            AttrValue::Int(i) => format!("INT {i}"),
            AttrValue::String(s) => format!("STRING '{s}'"),
            AttrValue::Tensor(t) => format!("TENSOR with dims {:?}", t.dims),
            AttrValue::Floats(v) => format!("FLOATS {v:?}"),
            AttrValue::Ints(v) => format!("INTS {v:?}"),
            AttrValue::Other(t) => format!("attribute type {t}"),
        }
    }
}

/// A decoded `ValueInfoProto` of a tensor: name, element type and shape (`None` for a symbolic
/// dimension such as the batch).
#[derive(Debug, Default)]
pub struct ValueInfo {
    pub name: String,
    pub elem_type: i32,
    pub shape: Option<Vec<Option<usize>>>,
}

/// Decodes a whole model. `path` only names the file in errors.
pub fn parse_model(data: &[u8], path: &Path) -> Result<Model> {
    let mut f = Fields::new(data, path, "ModelProto");
    let mut m = Model::default();
    let mut graph = None;
    let mut ir = None;
    while let Some((field, w)) = f.next()? {
        match field {
            1 => ir = Some(f.expect_varint("ir_version", w)? as i64),
            2 => m.producer = f.string("producer_name", w)?,
            7 => graph = Some(parse_graph(f.expect_bytes("graph", w)?, path)?),
            8 => {
                let b = f.expect_bytes("opset_import", w)?;
                let mut o = Fields::new(b, path, "ModelProto.opset_import");
                let (mut domain, mut version) = (String::new(), 0);
                while let Some((k, w)) = o.next()? {
                    match k {
                        1 => domain = o.string("domain", w)?,
                        2 => version = o.expect_varint("version", w)? as i64,
                        _ => {}
                    }
                }
                m.opsets.push((domain, version));
            }
            14 => {
                let b = f.expect_bytes("metadata_props", w)?;
                let mut e = Fields::new(b, path, "ModelProto.metadata_props");
                let (mut k, mut v) = (String::new(), String::new());
                while let Some((n, w)) = e.next()? {
                    match n {
                        1 => k = e.string("key", w)?,
                        2 => v = e.string("value", w)?,
                        _ => {}
                    }
                }
                m.metadata.push((k, v));
            }
            _ => {}
        }
    }
    m.ir_version = ir.ok_or_else(|| f.err("no `ir_version` (field 1): not an ONNX model"))?;
    m.graph = graph.ok_or_else(|| f.err("no `graph` (field 7): not an ONNX model"))?;
    Ok(m)
}

fn parse_graph(data: &[u8], path: &Path) -> Result<Graph> {
    let mut f = Fields::new(data, path, "graph");
    let mut g = Graph::default();
    while let Some((field, w)) = f.next()? {
        match field {
            1 => {
                let ctx = format!("graph.node[{}]", g.nodes.len());
                g.nodes.push(parse_node(f.expect_bytes("node", w)?, path, ctx)?);
            }
            5 => {
                let ctx = format!("graph.initializer[{}]", g.initializers.len());
                g.initializers.push(parse_tensor(f.expect_bytes("initializer", w)?, path, ctx)?);
            }
            11 => g.inputs.push(parse_value_info(f.expect_bytes("input", w)?, path, "graph.input")?),
            12 => g.outputs.push(parse_value_info(f.expect_bytes("output", w)?, path, "graph.output")?),
            15 => return Err(f.err("has sparse initializers, which ensembed does not read")),
            _ => {}
        }
    }
    Ok(g)
}

fn parse_node(data: &[u8], path: &Path, ctx: String) -> Result<Node> {
    let mut f = Fields::new(data, path, ctx);
    let mut n = Node::default();
    while let Some((field, w)) = f.next()? {
        match field {
            1 => n.inputs.push(f.string("input", w)?),
            2 => n.outputs.push(f.string("output", w)?),
            3 => n.name = f.string("name", w)?,
            4 => n.op_type = f.string("op_type", w)?,
            7 => n.domain = f.string("domain", w)?,
            5 => {
                let ctx = format!("{}.attribute[{}]", f.ctx, n.attributes.len());
                n.attributes.push(parse_attribute(f.expect_bytes("attribute", w)?, path, ctx)?);
            }
            _ => {}
        }
    }
    Ok(n)
}

fn parse_attribute(data: &[u8], path: &Path, ctx: String) -> Result<Attribute> {
    let mut f = Fields::new(data, path, ctx);
    let mut name = String::new();
    let mut ty = 0i32;
    let (mut fl, mut i, mut s, mut t) = (None, None, None, None);
    let (mut floats, mut ints) = (Vec::new(), Vec::new());
    while let Some((field, w)) = f.next()? {
        match field {
            1 => name = f.string("name", w)?,
            20 => ty = f.expect_varint("type", w)? as i32,
            2 => match w {
                Wire::Fixed32(v) => fl = Some(f32::from_bits(v)),
                other => return Err(f.err(format!("`f` should be a float, found {other:?}"))),
            },
            3 => i = Some(f.expect_varint("i", w)? as i64),
            4 => s = Some(String::from_utf8_lossy(f.expect_bytes("s", w)?).into_owned()),
            5 => t = Some(parse_tensor(f.expect_bytes("t", w)?, path, format!("{}.t", f.ctx))?),
            7 => f.floats("floats", w, &mut floats)?,
            8 => f.int64s("ints", w, &mut ints)?,
            _ => {}
        }
    }
    let missing = |what: &str| f.err(format!("attribute `{name}` has type {what} but no value"));
    let value = match ty {
        1 => AttrValue::Float(fl.ok_or_else(|| missing("FLOAT"))?),
        2 => AttrValue::Int(i.ok_or_else(|| missing("INT"))?),
        3 => AttrValue::String(s.ok_or_else(|| missing("STRING"))?),
        4 => AttrValue::Tensor(t.ok_or_else(|| missing("TENSOR"))?),
        6 => AttrValue::Floats(floats),
        7 => AttrValue::Ints(ints),
        other => AttrValue::Other(other),
    };
    Ok(Attribute { name, value })
}

fn parse_tensor(data: &[u8], path: &Path, ctx: String) -> Result<Tensor> {
    let mut f = Fields::new(data, path, ctx);
    let mut dims_raw = Vec::new();
    let mut dtype = 0i32;
    let mut name = String::new();
    let mut raw: Option<&[u8]> = None;
    let (mut floats, mut int64s) = (Vec::new(), Vec::new());
    let mut external = false;
    while let Some((field, w)) = f.next()? {
        match field {
            1 => f.int64s("dims", w, &mut dims_raw)?,
            2 => dtype = f.expect_varint("data_type", w)? as i32,
            4 => f.floats("float_data", w, &mut floats)?,
            7 => f.int64s("int64_data", w, &mut int64s)?,
            8 => name = f.string("name", w)?,
            9 => raw = Some(f.expect_bytes("raw_data", w)?),
            13 => external = true,
            14 => external |= f.expect_varint("data_location", w)? == 1,
            _ => {}
        }
    }
    if !name.is_empty() {
        f.ctx = format!("{} ({name})", f.ctx);
    }
    if external {
        return Err(f.err("stores its data in an external file, which ensembed does not read (save the model with its weights inside)"));
    }
    let mut dims = Vec::with_capacity(dims_raw.len());
    let mut count: u64 = 1;
    for &d in &dims_raw {
        if d < 0 {
            return Err(f.err(format!("has negative dimension {d} in dims {dims_raw:?}")));
        }
        count = count
            .checked_mul(d as u64)
            .ok_or_else(|| f.err(format!("dims {dims_raw:?} overflow")))?;
        dims.push(d as usize);
    }
    let elem = match dtype {
        DT_FLOAT => 4,
        DT_INT64 => 8,
        other => {
            return Err(f.err(format!(
                "has data type {other} ({}): ensembed reads FLOAT (1) and INT64 (7) tensors",
                dtype_name(other)
            )))
        }
    };
    let data = if let Some(raw) = raw {
        // Checked before anything is allocated: the declared size must be what is present.
        let declared = count.checked_mul(elem);
        if declared != Some(raw.len() as u64) {
            return Err(f.err(format!(
                "dims {dims_raw:?} declare {} bytes of {} but raw_data holds {}",
                declared.map_or("more than 2^64".to_string(), |d| d.to_string()),
                dtype_name(dtype),
                raw.len()
            )));
        }
        if dtype == DT_FLOAT {
            TensorData::F32(raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
        } else {
            TensorData::I64(raw.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
        }
    } else {
        let (n, d) = if dtype == DT_FLOAT {
            (floats.len(), TensorData::F32(floats))
        } else {
            (int64s.len(), TensorData::I64(int64s))
        };
        if n as u64 != count {
            return Err(f.err(format!(
                "dims {dims_raw:?} declare {count} elements but the tensor holds {n}"
            )));
        }
        d
    };
    Ok(Tensor { name, dims, data })
}

fn parse_value_info(data: &[u8], path: &Path, ctx: &str) -> Result<ValueInfo> {
    let mut f = Fields::new(data, path, ctx);
    let mut v = ValueInfo::default();
    while let Some((field, w)) = f.next()? {
        match field {
            1 => {
                v.name = f.string("name", w)?;
                f.ctx = format!("{ctx} ({})", v.name);
            }
            2 => {
                // TypeProto { tensor_type = 1: { elem_type = 1, shape = 2 } }
                let mut t = Fields::new(f.expect_bytes("type", w)?, path, format!("{}.type", f.ctx));
                while let Some((k, w)) = t.next()? {
                    if k != 1 {
                        continue;
                    }
                    let mut tt = Fields::new(t.expect_bytes("tensor_type", w)?, path, format!("{}.tensor_type", f.ctx));
                    while let Some((k, w)) = tt.next()? {
                        match k {
                            1 => v.elem_type = tt.expect_varint("elem_type", w)? as i32,
                            2 => v.shape = Some(parse_shape(tt.expect_bytes("shape", w)?, path, &tt.ctx)?),
                            _ => {}
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(v)
}

fn parse_shape(data: &[u8], path: &Path, ctx: &str) -> Result<Vec<Option<usize>>> {
    let mut f = Fields::new(data, path, format!("{ctx}.shape"));
    let mut dims = Vec::new();
    while let Some((field, w)) = f.next()? {
        if field != 1 {
            continue;
        }
        let mut d = Fields::new(f.expect_bytes("dim", w)?, path, format!("{ctx}.shape.dim"));
        let mut value = None;
        while let Some((k, w)) = d.next()? {
            if k == 1 {
                let v = d.expect_varint("dim_value", w)? as i64;
                value = usize::try_from(v).ok().filter(|&v| v > 0);
            }
        }
        dims.push(value);
    }
    Ok(dims)
}

/// ONNX's name of a `TensorProto.DataType`.
pub fn dtype_name(t: i32) -> &'static str {
    match t {
        1 => "FLOAT",
        2 => "UINT8",
        3 => "INT8",
        4 => "UINT16",
        5 => "INT16",
        6 => "INT32",
        7 => "INT64",
        8 => "STRING",
        9 => "BOOL",
        10 => "FLOAT16",
        11 => "DOUBLE",
        12 => "UINT32",
        13 => "UINT64",
        16 => "BFLOAT16",
        _ => "unknown",
    }
}

/// Whether the first bytes look like a serialised ModelProto: field 1 (`ir_version`, a varint
/// between 1 and 64) first, as every ONNX writer emits it. The full parse decides.
pub fn looks_like_model(head: &[u8]) -> bool {
    if head.first() != Some(&0x08) {
        return false;
    }
    let mut f = Fields::new(&head[1..], Path::new(""), "");
    matches!(f.varint(), Ok(v) if (1..=64).contains(&v))
}
