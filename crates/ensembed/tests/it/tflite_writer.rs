//! A minimal TFLite flatbuffer writer, so that tests can build small valid models (and hostile
//! variants of them) instead of shipping the 0.5-4 MB coral files: the fuzzer's seeds and the
//! planner's regression tests. Written forwards: a table's vtable just before it, every object a
//! reference points to after the reference (the reader follows unsigned offsets, so references
//! always point forwards), 4-byte alignment throughout. Field numbers are those of
//! `tensorflow/lite/schema/schema.fbs`, as `src/backbone/tflite.rs` reads them.
#![allow(dead_code)]

/// A field of a table.
pub enum F {
    U8(u8),
    I32(i32),
    U32(u32),
    U64(u64),
    F32(f32),
    /// A reference to another object.
    Obj(Obj),
    /// A `u64` buffer offset: `bytes` are appended after the flatbuffer (16-byte aligned) and
    /// the field holds their position, as converters write buffers of large models.
    External(Vec<u8>),
}

/// An object a reference points to.
pub enum Obj {
    /// (field number, value); numbers need not be sorted nor contiguous.
    Table(Vec<(usize, F)>),
    Bytes(Vec<u8>),
    I32s(Vec<i32>),
    F32s(Vec<f32>),
    I64s(Vec<i64>),
    Str(String),
    Tables(Vec<Obj>),
}

struct Writer {
    buf: Vec<u8>,
    /// (field position, bytes) of the [`F::External`] fields.
    external: Vec<(usize, Vec<u8>)>,
}

impl Writer {
    fn align(&mut self, to: usize) {
        while self.buf.len() % to != 0 {
            self.buf.push(0);
        }
    }

    fn patch_offset(&mut self, at: usize, target: usize) {
        let off = u32::try_from(target - at).unwrap();
        self.buf[at..at + 4].copy_from_slice(&off.to_le_bytes());
    }

    /// Writes `obj`; returns its position (a table's start, a vector's length word).
    fn write(&mut self, obj: Obj) -> usize {
        self.align(4);
        let pos = self.buf.len();
        let put = |w: &mut Writer, len: usize, bytes: &[u8]| {
            w.buf.extend_from_slice(&u32::try_from(len).unwrap().to_le_bytes());
            w.buf.extend_from_slice(bytes);
        };
        match obj {
            Obj::Bytes(v) => put(self, v.len(), &v),
            Obj::Str(s) => {
                put(self, s.len(), s.as_bytes());
                self.buf.push(0);
            }
            Obj::I32s(v) => put(self, v.len(), &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>()),
            Obj::F32s(v) => put(self, v.len(), &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>()),
            Obj::I64s(v) => put(self, v.len(), &v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>()),
            Obj::Tables(v) => {
                put(self, v.len(), &vec![0; 4 * v.len()]);
                for (i, t) in v.into_iter().enumerate() {
                    let at = pos + 4 + 4 * i;
                    let target = self.write(t);
                    self.patch_offset(at, target);
                }
            }
            Obj::Table(fields) => return self.table(fields),
        }
        pos
    }

    fn table(&mut self, fields: Vec<(usize, F)>) -> usize {
        let slots = fields.iter().map(|(id, _)| id + 1).max().unwrap_or(0);
        // Field layout inside the table: after the 4-byte vtable offset, each at its own size's
        // alignment (8-byte fields start at 8).
        let mut offsets = vec![0u16; slots];
        let mut end = 4usize;
        for (id, f) in &fields {
            let size = match f {
                F::U8(_) => 1,
                F::U64(_) | F::External(_) => 8,
                _ => 4,
            };
            end = end.next_multiple_of(size);
            offsets[*id] = end as u16;
            end += size;
        }
        let t_len = end.next_multiple_of(4);
        let vt = self.buf.len();
        self.buf.extend_from_slice(&((4 + 2 * slots) as u16).to_le_bytes());
        self.buf.extend_from_slice(&(t_len as u16).to_le_bytes());
        for o in &offsets {
            self.buf.extend_from_slice(&o.to_le_bytes());
        }
        self.align(8);
        // The table must start 8-aligned minus 0 so that its 8-byte fields are aligned too.
        let pos = self.buf.len();
        self.buf.extend_from_slice(&i32::try_from(pos - vt).unwrap().to_le_bytes());
        self.buf.resize(pos + t_len, 0);
        let mut children = Vec::new();
        for (id, f) in fields {
            let at = pos + offsets[id] as usize;
            let bytes: Vec<u8> = match f {
                F::U8(v) => vec![v],
                F::I32(v) => v.to_le_bytes().to_vec(),
                F::U32(v) => v.to_le_bytes().to_vec(),
                F::F32(v) => v.to_le_bytes().to_vec(),
                F::U64(v) => v.to_le_bytes().to_vec(),
                F::External(data) => {
                    self.external.push((at, data));
                    continue;
                }
                F::Obj(o) => {
                    children.push((at, o));
                    continue;
                }
            };
            self.buf[at..at + bytes.len()].copy_from_slice(&bytes);
        }
        for (at, o) in children {
            let target = self.write(o);
            self.patch_offset(at, target);
        }
        pos
    }
}

/// The bytes of a TFLite file whose root table is `model`.
pub fn finish(model: Obj) -> Vec<u8> {
    let mut w = Writer { buf: vec![0, 0, 0, 0, b'T', b'F', b'L', b'3'], external: Vec::new() };
    let root = w.write(model);
    w.patch_offset(0, root);
    for (at, data) in std::mem::take(&mut w.external) {
        w.align(16);
        let pos = w.buf.len() as u64;
        w.buf[at..at + 8].copy_from_slice(&pos.to_le_bytes());
        w.buf.extend_from_slice(&data);
    }
    w.buf
}

// ---------------------------------------------------------------------------------------------
// The schema's tables

/// `Tensor`: shape, type (3 = UINT8, 9 = INT8, 2 = INT32), buffer, name and, when given,
/// `QuantizationParameters` (scales, zero points, quantized_dimension).
pub fn tensor(name: &str, shape: &[i32], dtype: u8, buffer: u32, quant: Option<(Vec<f32>, Vec<i64>, i32)>) -> Obj {
    let mut f = vec![
        (0, F::Obj(Obj::I32s(shape.to_vec()))),
        (1, F::U8(dtype)),
        (2, F::U32(buffer)),
        (3, F::Obj(Obj::Str(name.into()))),
    ];
    if let Some((scale, zp, dim)) = quant {
        f.push((4, F::Obj(Obj::Table(vec![(2, F::Obj(Obj::F32s(scale))), (3, F::Obj(Obj::I64s(zp))), (6, F::I32(dim))]))));
    }
    Obj::Table(f)
}

/// `Operator`: opcode index, inputs, outputs and builtin options (union type, table).
pub fn operator(opcode_index: u32, inputs: &[i32], outputs: &[i32], options: Option<(u8, Vec<(usize, F)>)>) -> Obj {
    let mut f = vec![
        (0, F::U32(opcode_index)),
        (1, F::Obj(Obj::I32s(inputs.to_vec()))),
        (2, F::Obj(Obj::I32s(outputs.to_vec()))),
    ];
    if let Some((kind, table)) = options {
        f.push((3, F::U8(kind)));
        f.push((4, F::Obj(Obj::Table(table))));
    }
    Obj::Table(f)
}

/// `OperatorCode` of builtin `code` (both the deprecated byte and the int field, as converters
/// write them).
pub fn opcode(code: i32) -> Obj {
    Obj::Table(vec![(0, F::U8(code.min(127) as u8)), (2, F::I32(1)), (3, F::I32(code))])
}

/// `Buffer` holding `data` inside the flatbuffer.
pub fn buffer(data: Vec<u8>) -> Obj {
    if data.is_empty() {
        Obj::Table(vec![])
    } else {
        Obj::Table(vec![(0, F::Obj(Obj::Bytes(data)))])
    }
}

/// `Buffer` whose `data` follows the flatbuffer, addressed by `offset` and `size`.
pub fn external_buffer(data: Vec<u8>) -> Obj {
    let n = data.len() as u64;
    Obj::Table(vec![(1, F::External(data)), (2, F::U64(n))])
}

/// `Model` (schema version 3) of one subgraph.
pub fn model(codes: Vec<Obj>, tensors: Vec<Obj>, inputs: &[i32], outputs: &[i32], operators: Vec<Obj>, buffers: Vec<Obj>) -> Vec<u8> {
    let subgraph = Obj::Table(vec![
        (0, F::Obj(Obj::Tables(tensors))),
        (1, F::Obj(Obj::I32s(inputs.to_vec()))),
        (2, F::Obj(Obj::I32s(outputs.to_vec()))),
        (3, F::Obj(Obj::Tables(operators))),
        (4, F::Obj(Obj::Str("main".into()))),
    ]);
    finish(Obj::Table(vec![
        (0, F::U32(3)),
        (1, F::Obj(Obj::Tables(codes))),
        (2, F::Obj(Obj::Tables(vec![subgraph]))),
        (3, F::Obj(Obj::Str("ensembed test model".into()))),
        (4, F::Obj(Obj::Tables(buffers))),
    ]))
}

// ---------------------------------------------------------------------------------------------
// A tiny image model

/// Builtin operator codes (`BuiltinOperator`) and options union tags (`BuiltinOptions`).
const ADD: i32 = 0;
const AVERAGE_POOL_2D: i32 = 1;
const CONV_2D: i32 = 3;
const DEPTHWISE_CONV_2D: i32 = 4;
const FULLY_CONNECTED: i32 = 9;
const RESHAPE: i32 = 22;
const SOFTMAX: i32 = 25;
const MEAN: i32 = 40;
const QUANTIZE: i32 = 114;

/// Deterministic weight bytes.
fn pattern(n: usize, seed: u32) -> Vec<u8> {
    (0..n as u32).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8).collect()
}

fn int32s(v: &[i32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A 4x4x3 image model that passes every planner check and runs every kind of operator the
/// planner accepts: QUANTIZE → CONV_2D (3x3, stride 2, SAME, RELU6) → DEPTHWISE_CONV_2D (3x3,
/// RELU) → ADD (of the two) → AVERAGE_POOL_2D to 1x1 (or, with `mean`, MEAN over height and
/// width) → RESHAPE → FULLY_CONNECTED → SOFTMAX over 5 classes; pooled features of 4 values.
/// `int8` gives INT8 tensors with per-channel weight scales (and the FULLY_CONNECTED weights
/// in an external buffer); otherwise UINT8 with per-tensor scales. About 1.5 KB.
pub fn tiny_model(int8: bool, mean: bool) -> Vec<u8> {
    let (dt, zp0): (u8, i64) = if int8 { (9, -128) } else { (3, 0) };
    let act = |scale: f32, zp: i64| Some((vec![scale], vec![zp + zp0], 0));
    let weights = |channels: usize, dim: i32| {
        if int8 {
            Some(((0..channels).map(|c| 0.01 + 0.002 * c as f32).collect(), vec![0; channels], dim))
        } else {
            Some((vec![0.02], vec![128], dim))
        }
    };
    let pool_code = if mean { MEAN } else { AVERAGE_POOL_2D };
    let codes = [QUANTIZE, CONV_2D, DEPTHWISE_CONV_2D, ADD, pool_code, RESHAPE, FULLY_CONNECTED, SOFTMAX].map(opcode).into();
    let fc_weights = pattern(20, 5);
    let mut buffers = vec![
        buffer(vec![]),
        buffer(pattern(4 * 3 * 3 * 3, 1)),
        buffer(int32s(&[100, -200, 300, 0])),
        buffer(pattern(3 * 3 * 4, 2)),
        buffer(int32s(&[-50, 60, 0, 7])),
        if int8 { external_buffer(fc_weights) } else { buffer(fc_weights) },
        buffer(int32s(&[1, -2, 3, -4, 5])),
        buffer(int32s(&[1, 2])),
    ];
    buffers.truncate(if mean { 8 } else { 7 });
    let mut tensors = vec![
        tensor("input", &[1, 4, 4, 3], dt, 0, act(0.007_812_5, 128)),
        tensor("quantized", &[1, 4, 4, 3], dt, 0, act(0.01, 120)),
        tensor("conv/filter", &[4, 3, 3, 3], dt, 1, weights(4, 0)),
        tensor("conv/bias", &[4], 2, 2, None),
        tensor("conv", &[1, 2, 2, 4], dt, 0, act(0.05, 0)),
        tensor("dw/filter", &[1, 3, 3, 4], dt, 3, weights(4, 3)),
        tensor("dw/bias", &[4], 2, 4, None),
        tensor("dw", &[1, 2, 2, 4], dt, 0, act(0.04, 3)),
        tensor("add", &[1, 2, 2, 4], dt, 0, act(0.08, 2)),
        tensor("pool", &[1, 1, 1, 4], dt, 0, if mean { act(0.06, 1) } else { act(0.08, 2) }),
        tensor("reshape", &[1, 4], dt, 0, if mean { act(0.06, 1) } else { act(0.08, 2) }),
        tensor("fc/weights", &[5, 4], dt, 5, weights(5, 0)),
        tensor("fc/bias", &[5], 2, 6, None),
        tensor("logits", &[1, 5], dt, 0, act(0.1, 130)),
        tensor("probabilities", &[1, 5], dt, 0, act(1.0 / 256.0, 0)),
    ];
    if mean {
        tensors.push(tensor("mean/axes", &[2], 2, 7, None));
    }
    let window = |padding: u8, stride: i32| vec![(0, F::U8(padding)), (1, F::I32(stride)), (2, F::I32(stride))];
    let mut conv = window(0, 2);
    conv.push((3, F::U8(3))); // RELU6
    let mut dw = window(0, 1);
    dw.extend([(3, F::I32(1)), (4, F::U8(1))]); // depth multiplier 1, RELU
    let mut pool = window(1, 2);
    pool.extend([(3, F::I32(2)), (4, F::I32(2))]); // 2x2 filter
    let operators = vec![
        operator(0, &[0], &[1], None),
        operator(1, &[1, 2, 3], &[4], Some((1, conv))),
        operator(2, &[4, 5, 6], &[7], Some((2, dw))),
        operator(3, &[4, 7], &[8], Some((11, vec![]))),
        if mean {
            operator(4, &[8, 15], &[9], Some((27, vec![(0, F::U8(1))])))
        } else {
            operator(4, &[8], &[9], Some((5, pool)))
        },
        operator(5, &[9], &[10], None),
        operator(6, &[10, 11, 12], &[13], Some((8, vec![]))),
        operator(7, &[13], &[14], Some((9, vec![(0, F::F32(1.0))]))),
    ];
    model(codes, tensors, &[0], &[14], operators, buffers)
}

/// A hostile model of 1 KB: a 1x1 CONV_2D whose filter declares 2^26 output channels (shape
/// `[2^26, 1, 1, 3]`, within the planner's 2^28-element limit) but whose buffer holds 3 bytes.
/// The planner must refuse it from the buffer's size, before allocating per-channel
/// parameters for 2^26 channels.
pub fn huge_channel_model() -> Vec<u8> {
    let c = 1 << 26;
    let act = |scale: f32| Some((vec![scale], vec![128], 0));
    let tensors = vec![
        tensor("input", &[1, 4, 4, 3], 3, 0, act(0.0078125)),
        tensor("filter", &[c, 1, 1, 3], 3, 1, Some((vec![0.02], vec![128], 0))),
        tensor("conv", &[1, 2, 2, c], 3, 0, act(0.05)),
        tensor("pool", &[1, 1, 1, c], 3, 0, act(0.05)),
    ];
    let conv = vec![(0, F::U8(0)), (1, F::I32(2)), (2, F::I32(2))];
    let pool = vec![(0, F::U8(1)), (1, F::I32(2)), (2, F::I32(2)), (3, F::I32(2)), (4, F::I32(2))];
    let operators = vec![operator(0, &[0, 1], &[2], Some((1, conv))), operator(1, &[2], &[3], Some((5, pool)))];
    model(
        vec![opcode(CONV_2D), opcode(AVERAGE_POOL_2D)],
        tensors,
        &[0],
        &[3],
        operators,
        vec![buffer(vec![]), buffer(vec![1, 2, 3])],
    )
}
