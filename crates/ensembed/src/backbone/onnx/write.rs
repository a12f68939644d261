//! Writes ONNX models: the protobuf encoding of the messages [`super::proto`] reads, and a small
//! graph builder ([`OnnxWriter`]) on top. It exists so that a model loaded from a PyTorch
//! checkpoint can be exported ([`super::export`]) to run under onnxruntime or any other ONNX
//! runtime, and so that tests can build ONNX graphs with known answers without Python.
//! Weights are stored as `raw_data` (little-endian), as PyTorch's exporter does.

use std::path::Path;

use super::proto::{DT_FLOAT, DT_INT64};
use crate::error::{Error, Result};

/// Appends a varint.
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a varint field.
fn field_varint(out: &mut Vec<u8>, field: u32, v: u64) {
    varint(out, (field as u64) << 3);
    varint(out, v);
}

/// Appends a length-delimited field.
fn field_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    varint(out, ((field as u64) << 3) | 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// An attribute value to write.
#[derive(Clone, Debug)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    String(String),
}

/// Builds one ONNX graph (default domain, opset 13) and serialises it as a ModelProto.
///
/// ```
/// use ensembed::backbone::onnx::OnnxWriter;
/// let mut w = OnnxWriter::new("x", [Some(1), Some(3), Some(8), Some(8)]);
/// w.node("Relu", &["x"], &["y"], &[]);
/// w.output("y");
/// let bytes = w.finish();
/// assert_eq!(bytes[0], 0x08); // ir_version comes first
/// ```
#[derive(Debug)]
pub struct OnnxWriter {
    input: (String, [Option<usize>; 4]),
    nodes: Vec<u8>,
    initializers: Vec<u8>,
    outputs: Vec<String>,
    metadata: Vec<(String, String)>,
    names: usize,
}

impl OnnxWriter {
    /// A graph whose one input, a float NCHW tensor, is `name` with `shape` (`None`: symbolic).
    pub fn new(name: &str, shape: [Option<usize>; 4]) -> Self {
        OnnxWriter {
            input: (name.to_string(), shape),
            nodes: Vec::new(),
            initializers: Vec::new(),
            outputs: Vec::new(),
            metadata: Vec::new(),
            names: 0,
        }
    }

    /// A fresh tensor name starting with `prefix`.
    pub fn fresh(&mut self, prefix: &str) -> String {
        self.names += 1;
        format!("{prefix}_{}", self.names)
    }

    /// Adds a float initializer.
    ///
    /// # Shapes
    /// `data`: `dims` (row-major).
    pub fn init_f32(&mut self, name: &str, dims: &[usize], data: &[f32]) {
        assert_eq!(dims.iter().product::<usize>(), data.len(), "initializer {name}: dims do not match the data");
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, dims, DT_FLOAT, &raw);
    }

    /// Adds an int64 initializer (a shape, pads, slice bounds).
    pub fn init_i64(&mut self, name: &str, data: &[i64]) {
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(name, &[data.len()], DT_INT64, &raw);
    }

    /// Adds an initializer whose `raw_data` is `raw` as given, not checked against `dims` or
    /// `dtype` (an ONNX `TensorProto.DataType`): for building damaged files in tests.
    pub fn init_raw(&mut self, name: &str, dims: &[usize], dtype: i32, raw: &[u8]) {
        self.tensor(name, dims, dtype, raw);
    }

    fn tensor(&mut self, name: &str, dims: &[usize], dtype: i32, raw: &[u8]) {
        let mut t = Vec::new();
        for &d in dims {
            field_varint(&mut t, 1, d as u64);
        }
        field_varint(&mut t, 2, dtype as u64);
        field_bytes(&mut t, 8, name.as_bytes());
        field_bytes(&mut t, 9, raw);
        field_bytes(&mut self.initializers, 5, &t);
    }

    /// Adds a node of the default domain.
    pub fn node(&mut self, op: &str, inputs: &[&str], outputs: &[&str], attrs: &[(&str, Attr)]) {
        let mut n = Vec::new();
        for i in inputs {
            field_bytes(&mut n, 1, i.as_bytes());
        }
        for o in outputs {
            field_bytes(&mut n, 2, o.as_bytes());
        }
        field_bytes(&mut n, 3, format!("{op}_{}", self.names).as_bytes());
        self.names += 1;
        field_bytes(&mut n, 4, op.as_bytes());
        for (name, value) in attrs {
            let mut a = Vec::new();
            field_bytes(&mut a, 1, name.as_bytes());
            match value {
                Attr::Float(f) => {
                    varint(&mut a, (2 << 3) | 5);
                    a.extend_from_slice(&f.to_le_bytes());
                    field_varint(&mut a, 20, 1);
                }
                Attr::Int(i) => {
                    field_varint(&mut a, 3, *i as u64);
                    field_varint(&mut a, 20, 2);
                }
                Attr::String(s) => {
                    field_bytes(&mut a, 4, s.as_bytes());
                    field_varint(&mut a, 20, 3);
                }
                Attr::Ints(v) => {
                    for i in v {
                        field_varint(&mut a, 8, *i as u64);
                    }
                    field_varint(&mut a, 20, 7);
                }
            }
            field_bytes(&mut n, 5, &a);
        }
        field_bytes(&mut self.nodes, 1, &n);
    }

    /// Declares `name` a graph output (float, shape left to the runtime).
    pub fn output(&mut self, name: &str) {
        self.outputs.push(name.to_string());
    }

    /// Adds a `metadata_props` entry.
    pub fn metadata(&mut self, key: &str, value: &str) {
        self.metadata.push((key.to_string(), value.to_string()));
    }

    /// The serialised ModelProto (ir_version 7, opset 13).
    pub fn finish(self) -> Vec<u8> {
        let value_info = |name: &str, shape: Option<&[Option<usize>]>| {
            let mut shape_b = Vec::new();
            for d in shape.unwrap_or(&[]) {
                let mut dim = Vec::new();
                match d {
                    Some(v) => field_varint(&mut dim, 1, *v as u64),
                    None => field_bytes(&mut dim, 2, b"N"),
                }
                field_bytes(&mut shape_b, 1, &dim);
            }
            let mut tt = Vec::new();
            field_varint(&mut tt, 1, DT_FLOAT as u64);
            if shape.is_some() {
                field_bytes(&mut tt, 2, &shape_b);
            }
            let mut ty = Vec::new();
            field_bytes(&mut ty, 1, &tt);
            let mut vi = Vec::new();
            field_bytes(&mut vi, 1, name.as_bytes());
            field_bytes(&mut vi, 2, &ty);
            vi
        };
        let mut g = self.nodes;
        field_bytes(&mut g, 2, b"ensembed");
        g.extend_from_slice(&self.initializers);
        field_bytes(&mut g, 11, &value_info(&self.input.0, Some(&self.input.1)));
        for o in &self.outputs {
            field_bytes(&mut g, 12, &value_info(o, None));
        }
        let mut m = Vec::new();
        field_varint(&mut m, 1, 7);
        field_bytes(&mut m, 2, b"ensembed");
        field_bytes(&mut m, 3, env!("CARGO_PKG_VERSION").as_bytes());
        field_bytes(&mut m, 7, &g);
        let mut opset = Vec::new();
        field_bytes(&mut opset, 1, b"");
        field_varint(&mut opset, 2, 13);
        field_bytes(&mut m, 8, &opset);
        for (k, v) in &self.metadata {
            let mut e = Vec::new();
            field_bytes(&mut e, 1, k.as_bytes());
            field_bytes(&mut e, 2, v.as_bytes());
            field_bytes(&mut m, 14, &e);
        }
        m
    }

    /// Serialises and writes the model to `path`.
    pub fn write(self, path: &Path) -> Result<()> {
        std::fs::write(path, self.finish()).map_err(|e| Error::io(path, e))
    }
}
