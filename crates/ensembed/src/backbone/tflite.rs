//! A reader for the few tables of the TFLite flatbuffer schema (`tensorflow/lite/schema/
//! schema.fbs`) that an image backbone needs: Model, SubGraph, Tensor, Buffer, Operator,
//! OperatorCode, QuantizationParameters and the builtin options of the operators we run.
//!
//! Hand-written rather than generated with the `flatbuffers` crate because a model file is
//! untrusted input: generated accessors trust the offsets they follow (their verifier is opt-in
//! and checks structure, not meaning), whereas here every offset, vtable and vector length is
//! checked against the file before it is followed, every error names the field it was reading,
//! and the result is plain owned data, so nothing downstream touches the raw bytes again. The
//! schema is read only as far as needed; unknown fields and tables are skipped, so files from
//! newer converters load.
//!
//! Flatbuffer layout in one paragraph: the file starts with a `u32` offset to the root table.
//! A table starts with an `i32` that, subtracted from the table's position, gives its vtable;
//! the vtable is `u16` vtable size, `u16` table size, then one `u16` offset per field (0 =
//! absent, use the default). Reference fields (tables, vectors, strings) hold a `u32` offset
//! relative to the field's own position; a vector is a `u32` length followed by its elements.

use std::path::Path;

use crate::error::{Error, Result};

/// Tensor element types (`TensorType` in the schema) that we know by name.
pub(crate) mod dtype {
    pub const INT32: u8 = 2;
    pub const UINT8: u8 = 3;
    pub const INT8: u8 = 9;

    /// The schema's name of a type, for messages.
    pub fn name(t: u8) -> String {
        match t {
            0 => "FLOAT32".into(),
            1 => "FLOAT16".into(),
            2 => "INT32".into(),
            3 => "UINT8".into(),
            4 => "INT64".into(),
            5 => "STRING".into(),
            6 => "BOOL".into(),
            7 => "INT16".into(),
            8 => "COMPLEX64".into(),
            9 => "INT8".into(),
            t => format!("type code {t}"),
        }
    }
}

/// Builtin operator codes (`BuiltinOperator` in the schema) that we run or name.
pub(crate) mod opcode {
    pub const ADD: i32 = 0;
    pub const AVERAGE_POOL_2D: i32 = 1;
    pub const CONV_2D: i32 = 3;
    pub const DEPTHWISE_CONV_2D: i32 = 4;
    pub const FULLY_CONNECTED: i32 = 9;
    pub const RESHAPE: i32 = 22;
    pub const SOFTMAX: i32 = 25;
    pub const CUSTOM: i32 = 32;
    pub const MEAN: i32 = 40;
    pub const SQUEEZE: i32 = 43;
    pub const QUANTIZE: i32 = 114;

    /// The schema's name of an operator, for messages.
    pub fn name(code: i32) -> String {
        match code {
            ADD => "ADD".into(),
            AVERAGE_POOL_2D => "AVERAGE_POOL_2D".into(),
            2 => "CONCATENATION".into(),
            CONV_2D => "CONV_2D".into(),
            DEPTHWISE_CONV_2D => "DEPTHWISE_CONV_2D".into(),
            6 => "DEQUANTIZE".into(),
            FULLY_CONNECTED => "FULLY_CONNECTED".into(),
            14 => "LOGISTIC".into(),
            17 => "MAX_POOL_2D".into(),
            18 => "MUL".into(),
            RESHAPE => "RESHAPE".into(),
            SOFTMAX => "SOFTMAX".into(),
            CUSTOM => "CUSTOM".into(),
            34 => "PAD".into(),
            MEAN => "MEAN".into(),
            SQUEEZE => "SQUEEZE".into(),
            QUANTIZE => "QUANTIZE".into(),
            c => format!("builtin operator {c}"),
        }
    }
}

/// `Padding` in the schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Padding {
    Same,
    Valid,
}

/// `ActivationFunctionType` in the schema (only the ones a quantised kernel can fuse as a clamp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Activation {
    None,
    Relu,
    ReluN1To1,
    Relu6,
}

/// The builtin options of one operator, decoded for the operators we run.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Options {
    /// Absent, or options of an operator we do not run.
    None,
    Conv {
        padding: Padding,
        stride: (i32, i32),
        dilation: (i32, i32),
        act: Activation,
    },
    Depthwise {
        padding: Padding,
        stride: (i32, i32),
        dilation: (i32, i32),
        depth_multiplier: i32,
        act: Activation,
    },
    Pool {
        padding: Padding,
        stride: (i32, i32),
        filter: (i32, i32),
        act: Activation,
    },
    FullyConnected {
        act: Activation,
        weights_format: u8,
        keep_num_dims: bool,
    },
    Softmax {
        beta: f32,
    },
    Add {
        act: Activation,
    },
    Reducer {
        keep_dims: bool,
    },
}

/// `QuantizationParameters`: `real = scale * (q - zero_point)`, per tensor (one entry) or per
/// slice along `dim`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Quant {
    pub scale: Vec<f32>,
    pub zero_point: Vec<i64>,
    pub dim: i32,
}

/// One tensor of the graph.
#[derive(Clone, Debug)]
pub(crate) struct Tensor {
    pub name: String,
    pub shape: Vec<i32>,
    pub dtype: u8,
    /// Index into [`Model::buffers`]; buffer 0 is the schema's always-empty buffer.
    pub buffer: usize,
    pub quant: Option<Quant>,
}

/// One operator: its builtin code, tensor indices (-1 = optional input left out) and options.
#[derive(Clone, Debug)]
pub(crate) struct Operator {
    pub code: i32,
    pub version: i32,
    pub inputs: Vec<i32>,
    pub outputs: Vec<i32>,
    pub options: Options,
}

/// The first subgraph of a model, in owned form. `buffers[i]` is the byte range of buffer `i`
/// inside the file (empty for buffers without data).
#[derive(Clone, Debug)]
pub(crate) struct Model {
    pub tensors: Vec<Tensor>,
    pub operators: Vec<Operator>,
    pub inputs: Vec<i32>,
    pub buffers: Vec<std::ops::Range<usize>>,
}

/// The file's bytes, with the path for messages.
#[derive(Clone, Copy)]
struct Buf<'a> {
    data: &'a [u8],
    path: &'a Path,
}

impl<'a> Buf<'a> {
    fn err(&self, field: &str, message: impl Into<String>) -> Error {
        Error::format(self.path, field, message)
    }

    /// `n` bytes at `pos`, or an error naming `field` when they are not all in the file.
    fn bytes(&self, pos: usize, n: usize, field: &str) -> Result<&'a [u8]> {
        pos.checked_add(n)
            .and_then(|end| self.data.get(pos..end))
            .ok_or_else(|| {
                self.err(
                    field,
                    format!(
                        "{n} bytes at offset {pos} run past the end of the file ({} bytes): the file is truncated or corrupt",
                        self.data.len()
                    ),
                )
            })
    }

    fn u16(&self, pos: usize, field: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.bytes(pos, 2, field)?.try_into().unwrap(),
        ))
    }

    fn u32(&self, pos: usize, field: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.bytes(pos, 4, field)?.try_into().unwrap(),
        ))
    }

    /// The position a `u32` offset stored at `pos` points to.
    fn follow(&self, pos: usize, field: &str) -> Result<usize> {
        let off = self.u32(pos, field)? as usize;
        let target = pos.saturating_add(off);
        if target >= self.data.len() {
            return Err(self.err(
                field,
                format!(
                    "offset {off} at byte {pos} points to byte {target}, past the end of the file ({} bytes)",
                    self.data.len()
                ),
            ));
        }
        Ok(target)
    }

    /// The table at `pos`, with its vtable checked.
    fn table(&self, pos: usize, ctx: String) -> Result<Table<'a>> {
        let soff = i32::from_le_bytes(self.bytes(pos, 4, &ctx)?.try_into().unwrap());
        let vt = pos as i64 - soff as i64;
        if vt < 0 || vt as usize >= self.data.len() {
            return Err(self.err(
                &ctx,
                format!("table at byte {pos} has its vtable at byte {vt}, outside the file"),
            ));
        }
        let vt = vt as usize;
        let vt_len = self.u16(vt, &ctx)? as usize;
        let t_len = self.u16(vt + 2, &ctx)? as usize;
        if vt_len < 4 || vt_len % 2 != 0 {
            return Err(self.err(
                &ctx,
                format!("vtable at byte {vt} declares a size of {vt_len} bytes"),
            ));
        }
        self.bytes(vt, vt_len, &ctx)?;
        self.bytes(pos, t_len.max(4), &ctx)?;
        Ok(Table {
            buf: *self,
            pos,
            vt,
            vt_len,
            t_len,
            ctx,
        })
    }

    /// A vector of `elem`-byte elements whose length word is at `pos`: (first element, length).
    fn vector(&self, pos: usize, elem: usize, field: &str) -> Result<(usize, usize)> {
        let len = self.u32(pos, field)? as usize;
        let start = pos + 4;
        let avail = self.data.len().saturating_sub(start);
        if len.checked_mul(elem).map_or(true, |b| b > avail) {
            return Err(self.err(
                field,
                format!(
                    "vector of {len} elements of {elem} bytes at byte {pos} runs past the end of the file ({} bytes): the file is truncated or corrupt",
                    self.data.len()
                ),
            ));
        }
        Ok((start, len))
    }
}

/// One table, vtable checked; `ctx` is its path in the schema (for messages).
struct Table<'a> {
    buf: Buf<'a>,
    pos: usize,
    vt: usize,
    vt_len: usize,
    t_len: usize,
    ctx: String,
}

impl<'a> Table<'a> {
    fn field_name(&self, name: &str) -> String {
        format!("{}.{name}", self.ctx)
    }

    /// Position of field `id` (of `size` bytes) inside the table, `None` when absent.
    fn field(&self, id: usize, size: usize, name: &str) -> Result<Option<usize>> {
        let slot = 4 + 2 * id;
        if slot + 2 > self.vt_len {
            return Ok(None);
        }
        let off = self.buf.u16(self.vt + slot, name)? as usize;
        if off == 0 {
            return Ok(None);
        }
        if off < 4 || off + size > self.t_len {
            return Err(self.buf.err(
                &self.field_name(name),
                format!(
                    "field offset {off} (+{size} bytes) lies outside its table of {} bytes",
                    self.t_len
                ),
            ));
        }
        Ok(Some(self.pos + off))
    }

    fn bytes_of<const N: usize>(&self, id: usize, name: &str) -> Result<Option<[u8; N]>> {
        match self.field(id, N, name)? {
            None => Ok(None),
            Some(p) => Ok(Some(
                self.buf
                    .bytes(p, N, &self.field_name(name))?
                    .try_into()
                    .unwrap(),
            )),
        }
    }

    fn u8(&self, id: usize, name: &str, default: u8) -> Result<u8> {
        Ok(self.bytes_of::<1>(id, name)?.map_or(default, |b| b[0]))
    }

    fn i32(&self, id: usize, name: &str, default: i32) -> Result<i32> {
        Ok(self
            .bytes_of::<4>(id, name)?
            .map_or(default, i32::from_le_bytes))
    }

    fn u32(&self, id: usize, name: &str, default: u32) -> Result<u32> {
        Ok(self
            .bytes_of::<4>(id, name)?
            .map_or(default, u32::from_le_bytes))
    }

    fn u64(&self, id: usize, name: &str, default: u64) -> Result<u64> {
        Ok(self
            .bytes_of::<8>(id, name)?
            .map_or(default, u64::from_le_bytes))
    }

    fn f32(&self, id: usize, name: &str, default: f32) -> Result<f32> {
        Ok(self
            .bytes_of::<4>(id, name)?
            .map_or(default, f32::from_le_bytes))
    }

    /// Position the reference field `id` points to.
    fn target(&self, id: usize, name: &str) -> Result<Option<usize>> {
        match self.field(id, 4, name)? {
            None => Ok(None),
            Some(p) => Ok(Some(self.buf.follow(p, &self.field_name(name))?)),
        }
    }

    fn table(&self, id: usize, name: &str) -> Result<Option<Table<'a>>> {
        match self.target(id, name)? {
            None => Ok(None),
            Some(t) => Ok(Some(self.buf.table(t, self.field_name(name))?)),
        }
    }

    /// Raw vector field: (first element position, length).
    fn vector(&self, id: usize, elem: usize, name: &str) -> Result<Option<(usize, usize)>> {
        match self.target(id, name)? {
            None => Ok(None),
            Some(t) => Ok(Some(self.buf.vector(t, elem, &self.field_name(name))?)),
        }
    }

    fn bytes(&self, id: usize, name: &str) -> Result<&'a [u8]> {
        match self.vector(id, 1, name)? {
            None => Ok(&[]),
            Some((s, n)) => self.buf.bytes(s, n, &self.field_name(name)),
        }
    }

    fn string(&self, id: usize, name: &str) -> Result<String> {
        Ok(String::from_utf8_lossy(self.bytes(id, name)?).into_owned())
    }

    /// A vector of 4-byte scalars decoded with `f`.
    fn vec4<T>(&self, id: usize, name: &str, f: fn([u8; 4]) -> T) -> Result<Vec<T>> {
        let Some((s, n)) = self.vector(id, 4, name)? else {
            return Ok(Vec::new());
        };
        let b = self.buf.bytes(s, 4 * n, &self.field_name(name))?;
        Ok(b.chunks_exact(4)
            .map(|c| f(c.try_into().unwrap()))
            .collect())
    }

    fn vec_i64(&self, id: usize, name: &str) -> Result<Vec<i64>> {
        let Some((s, n)) = self.vector(id, 8, name)? else {
            return Ok(Vec::new());
        };
        let b = self.buf.bytes(s, 8 * n, &self.field_name(name))?;
        Ok(b.chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect())
    }

    /// A vector of tables, each opened (and checked) in turn.
    fn tables(&self, id: usize, name: &str) -> Result<Vec<Table<'a>>> {
        let Some((s, n)) = self.vector(id, 4, name)? else {
            return Ok(Vec::new());
        };
        (0..n)
            .map(|i| {
                let ctx = format!("{}.{name}[{i}]", self.ctx);
                let t = self.buf.follow(s + 4 * i, &ctx)?;
                self.buf.table(t, ctx)
            })
            .collect()
    }
}

fn activation(t: &Table<'_>, id: usize) -> Result<Activation> {
    match t.u8(id, "fused_activation_function", 0)? {
        0 => Ok(Activation::None),
        1 => Ok(Activation::Relu),
        2 => Ok(Activation::ReluN1To1),
        3 => Ok(Activation::Relu6),
        a => Err(t.buf.err(
            &t.field_name("fused_activation_function"),
            format!("activation {a} (TANH=4, SIGN_BIT=5 or unknown) cannot be fused into a quantised kernel here"),
        )),
    }
}

fn padding(t: &Table<'_>, id: usize) -> Result<Padding> {
    match t.u8(id, "padding", 0)? {
        0 => Ok(Padding::Same),
        1 => Ok(Padding::Valid),
        p => Err(t.buf.err(
            &t.field_name("padding"),
            format!("unknown padding {p} (SAME=0, VALID=1)"),
        )),
    }
}

/// Decodes the builtin options of an operator with builtin `code`. `kind` is the union's type
/// tag, checked against the one the operator's options must have.
fn options(code: i32, kind: u8, t: Option<Table<'_>>) -> Result<Options> {
    // Union tags of `BuiltinOptions` for the operators we run.
    let expected = match code {
        opcode::CONV_2D => 1,
        opcode::DEPTHWISE_CONV_2D => 2,
        opcode::AVERAGE_POOL_2D => 5,
        opcode::FULLY_CONNECTED => 8,
        opcode::SOFTMAX => 9,
        opcode::ADD => 11,
        opcode::MEAN => 27,
        _ => return Ok(Options::None),
    };
    let Some(t) = t else {
        // TFLite fills absent options with zeros; only ADD and FULLY_CONNECTED have all-zero
        // defaults that make sense.
        return match code {
            opcode::ADD => Ok(Options::Add {
                act: Activation::None,
            }),
            opcode::FULLY_CONNECTED => Ok(Options::FullyConnected {
                act: Activation::None,
                weights_format: 0,
                keep_num_dims: false,
            }),
            opcode::MEAN => Ok(Options::Reducer { keep_dims: false }),
            _ => Ok(Options::None),
        };
    };
    if kind != expected {
        return Err(t.buf.err(
            &t.ctx,
            format!(
                "{} has builtin options of union type {kind}, expected {expected}",
                opcode::name(code)
            ),
        ));
    }
    let stride = |t: &Table<'_>| -> Result<(i32, i32)> {
        Ok((t.i32(2, "stride_h", 0)?, t.i32(1, "stride_w", 0)?))
    };
    Ok(match code {
        opcode::CONV_2D => Options::Conv {
            padding: padding(&t, 0)?,
            stride: stride(&t)?,
            act: activation(&t, 3)?,
            dilation: (
                t.i32(5, "dilation_h_factor", 1)?,
                t.i32(4, "dilation_w_factor", 1)?,
            ),
        },
        opcode::DEPTHWISE_CONV_2D => Options::Depthwise {
            padding: padding(&t, 0)?,
            stride: stride(&t)?,
            depth_multiplier: t.i32(3, "depth_multiplier", 0)?,
            act: activation(&t, 4)?,
            dilation: (
                t.i32(6, "dilation_h_factor", 1)?,
                t.i32(5, "dilation_w_factor", 1)?,
            ),
        },
        opcode::AVERAGE_POOL_2D => Options::Pool {
            padding: padding(&t, 0)?,
            stride: stride(&t)?,
            filter: (t.i32(4, "filter_height", 0)?, t.i32(3, "filter_width", 0)?),
            act: activation(&t, 5)?,
        },
        opcode::FULLY_CONNECTED => Options::FullyConnected {
            act: activation(&t, 0)?,
            weights_format: t.u8(1, "weights_format", 0)?,
            keep_num_dims: t.u8(2, "keep_num_dims", 0)? != 0,
        },
        opcode::SOFTMAX => Options::Softmax {
            beta: t.f32(0, "beta", 0.0)?,
        },
        opcode::ADD => Options::Add {
            act: activation(&t, 0)?,
        },
        opcode::MEAN => Options::Reducer {
            keep_dims: t.u8(0, "keep_dims", 0)? != 0,
        },
        _ => unreachable!("filtered above"),
    })
}

/// Parses the first subgraph of the TFLite flatbuffer `data` (read from `path`, named in
/// errors). Checks the structure only; shapes and operator semantics are checked when the
/// graph is planned.
pub(crate) fn parse(data: &[u8], path: &Path) -> Result<Model> {
    let buf = Buf { data, path };
    if data.len() < 8 {
        return Err(buf.err(
            "header",
            format!("{} bytes is too short for a TFLite flatbuffer", data.len()),
        ));
    }
    if &data[4..8] != b"TFL3" {
        return Err(buf.err(
            "file_identifier",
            format!(
                "{:?} is not \"TFL3\": not a TFLite model (or a schema version we do not read)",
                String::from_utf8_lossy(&data[4..8])
            ),
        ));
    }
    let root = buf.follow(0, "root")?;
    let model = buf.table(root, "model".to_string())?;
    let version = model.u32(0, "version", 0)?;
    if version != 3 {
        return Err(buf.err(
            "model.version",
            format!("schema version {version}, expected 3"),
        ));
    }

    let codes: Vec<(i32, i32)> = model
        .tables(1, "operator_codes")?
        .iter()
        .map(|c| {
            // Codes above 127 live in `builtin_code`; older files only set the deprecated byte.
            let deprecated = c.u8(0, "deprecated_builtin_code", 0)? as i8 as i32;
            let code = c.i32(3, "builtin_code", 0)?;
            Ok((deprecated.max(code), c.i32(2, "version", 1)?))
        })
        .collect::<Result<_>>()?;

    let mut buffers = Vec::new();
    for b in model.tables(4, "buffers")? {
        let (offset, size) = (b.u64(1, "offset", 0)?, b.u64(2, "size", 0)?);
        if offset > 1 {
            // Large models keep buffer data after the flatbuffer, addressed from the file start.
            let end = offset.checked_add(size).filter(|&e| e <= data.len() as u64).ok_or_else(|| {
                buf.err(
                    &b.field_name("offset"),
                    format!(
                        "buffer data of {size} bytes at offset {offset} runs past the end of the file ({} bytes)",
                        data.len()
                    ),
                )
            })?;
            buffers.push(offset as usize..end as usize);
        } else {
            match b.vector(0, 1, "data")? {
                None => buffers.push(0..0),
                Some((s, n)) => buffers.push(s..s + n),
            }
        }
    }

    let subgraphs = model.tables(2, "subgraphs")?;
    let Some(sg) = subgraphs.first() else {
        return Err(buf.err("model.subgraphs", "the model has no subgraph"));
    };

    let mut tensors = Vec::new();
    for t in sg.tables(0, "tensors")? {
        let quant = match t.table(4, "quantization")? {
            None => None,
            Some(q) => {
                if q.u8(4, "details_type", 0)? != 0 {
                    return Err(buf.err(
                        &q.field_name("details"),
                        "custom quantisation is not supported",
                    ));
                }
                let scale = q.vec4(2, "scale", f32::from_le_bytes)?;
                let zero_point = q.vec_i64(3, "zero_point")?;
                if scale.is_empty() {
                    None // min/max only: not quantised for inference
                } else {
                    Some(Quant {
                        scale,
                        zero_point,
                        dim: q.i32(6, "quantized_dimension", 0)?,
                    })
                }
            }
        };
        if t.table(6, "sparsity")?.is_some() {
            return Err(buf.err(
                &t.field_name("sparsity"),
                "sparse tensors are not supported",
            ));
        }
        tensors.push(Tensor {
            name: t.string(3, "name")?,
            shape: t.vec4(0, "shape", i32::from_le_bytes)?,
            dtype: t.u8(1, "type", 0)?,
            buffer: t.u32(2, "buffer", 0)? as usize,
            quant,
        });
    }

    let mut operators = Vec::new();
    for o in sg.tables(3, "operators")? {
        let idx = o.u32(0, "opcode_index", 0)? as usize;
        let &(code, version) = codes.get(idx).ok_or_else(|| {
            buf.err(
                &o.field_name("opcode_index"),
                format!(
                    "{idx} is out of range: the model has {} operator codes",
                    codes.len()
                ),
            )
        })?;
        let kind = o.u8(3, "builtin_options_type", 0)?;
        let opts = options(code, kind, o.table(4, "builtin_options")?)?;
        operators.push(Operator {
            code,
            version,
            inputs: o.vec4(1, "inputs", i32::from_le_bytes)?,
            outputs: o.vec4(2, "outputs", i32::from_le_bytes)?,
            options: opts,
        });
    }

    Ok(Model {
        tensors,
        operators,
        inputs: sg.vec4(1, "inputs", i32::from_le_bytes)?,
        buffers,
    })
}
