//! Turns a decoded ONNX graph into a list of steps over the NHWC layers of [`crate::backbone::cnn`],
//! checking every node before anything runs: operator and domain, attribute values, the rank and
//! type of each constant. Along the way it does what a PyTorch checkpoint's loader does by
//! construction: batch norm is folded into the convolution before it, and a ReLU/ReLU6 or a
//! residual `Add` that follows a convolution becomes that convolution's epilogue (one pass over
//! the output instead of three). A fusion only happens when the convolution's output has no other
//! reader, so the result is the graph's, up to float rounding.
//!
//! The batch dimension is always 1 here: images run one at a time (in parallel), so every
//! runtime value is an NCHW tensor of one image (held NHWC as an [`Fmap`]) or a `[1, d]` row.

use std::collections::{HashMap, VecDeque};
use std::path::Path;

use super::attrs::Attrs;
use super::proto::{AttrValue, Graph, Node, Tensor, TensorData, DT_FLOAT};
use crate::backbone::cnn::{bottleneck, fold_batch_norm, Act, BatchNorm, Conv2d, DepthwiseConv2d, Linear, MbConv, Padding};
use crate::error::{Error, Result};

/// Largest padding accepted on any side (far beyond what any CNN uses; bounds the maps a
/// hostile file can ask for).
pub const MAX_PAD: usize = 1024;

/// The operators the executor runs, for `ensembed backbones` and errors.
pub const OPS: &[&str] = &[
    "Conv", "BatchNormalization", "Relu", "Clip", "Sigmoid", "Add", "Mul", "GlobalAveragePool",
    "ReduceMean", "AveragePool", "MaxPool", "Flatten", "Reshape", "Gemm", "MatMul", "Slice", "Pad",
    "Softmax", "Identity", "Dropout", "Constant",
];

/// A convolution, dense or depthwise.
#[derive(Debug)]
pub enum ConvKind {
    Dense(Conv2d),
    Depthwise(DepthwiseConv2d),
}

/// An elementwise function of one input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Unary {
    Clip(f32, f32),
    Sigmoid,
}

/// The second operand of `Add`/`Mul`.
#[derive(Debug)]
pub enum Rhs {
    /// Another runtime value (same shape, or `[1, c, 1, 1]` against `[1, c, h, w]`).
    Slot(usize),
    /// A constant: one value, or one per channel (`[c, 1, 1]`/`[1, c, 1, 1]` on a map); `row`:
    /// it had shape `[d]`, which broadcasts along the last axis, so only onto a `[1, d]` row.
    Const { values: Vec<f32>, row: bool },
}

/// One executable step.
#[derive(Debug)]
pub enum Op {
    /// `act(conv(x) + bias [+ residual])`.
    Conv { conv: ConvKind, act: Act, residual: Option<usize> },
    /// A pointwise -> depthwise -> pointwise chain (MobileNetV2's and EfficientNet's block),
    /// run in bands of rows.
    MbConv(Box<MbConv>),
    /// ResNet's bottleneck with an identity shortcut (1x1, 3x3, 1x1, ReLU after each, the input
    /// added before the last), run in bands of rows ([`crate::backbone::cnn::bottleneck`]).
    Bottleneck(Box<[Conv2d; 3]>),
    Unary(Unary),
    /// `Add` (`mul == false`) or `Mul`.
    Binary { mul: bool, rhs: Rhs },
    /// Per-channel `x * scale + shift` (a batch norm with no convolution before it).
    Affine { scale: Vec<f32>, shift: Vec<f32> },
    MaxPool { k: usize, stride: usize, pad: usize },
    AvgPool { k: usize, stride: usize, pad: usize, count_pad: bool },
    /// Mean over the pixels; `flat`: the result is a `[1, c]` row (`keepdims=0`).
    GlobalAvgPool { flat: bool },
    /// `[1, c, h, w]` -> `[1, c*h*w]` in NCHW order; `expect`: the length a `Reshape` asked for.
    Flatten { expect: Option<usize> },
    Linear(Linear),
    /// A strided slice: per axis (h, w, c) start, end and step as ONNX gives them (negative
    /// starts/ends count from the end; resolved against the runtime shape).
    Slice { starts: [i64; 3], ends: [i64; 3], steps: [i64; 3] },
    /// Zero padding per axis (h, w, c): before, after.
    Pad { before: [usize; 3], after: [usize; 3] },
    Softmax,
}

/// One step: `output = op(input)`.
#[derive(Debug)]
pub struct Step {
    pub op: Op,
    pub input: usize,
    pub output: usize,
    /// The ONNX node, for errors ("Conv node 'conv1' (graph.node[0])").
    pub node: String,
}

impl Step {
    /// The slots this step reads: its input, and a residual or a second operand.
    pub fn reads(&self) -> impl Iterator<Item = usize> {
        let other = match &self.op {
            Op::Conv { residual: Some(r), .. } | Op::Binary { rhs: Rhs::Slot(r), .. } => Some(*r),
            _ => None,
        };
        std::iter::once(self.input).chain(other)
    }
}

/// A planned graph.
#[derive(Debug)]
pub struct Plan {
    pub steps: Vec<Step>,
    /// Number of value slots; slot 0 is the graph input.
    pub slots: usize,
    /// The step whose output is the pooled feature (the last global average pool).
    pub pooled: usize,
    /// The classifier: the last `Gemm`/`MatMul` after the pool, when there is one.
    pub head: Option<usize>,
    /// The graph input's name and NCHW shape (`None`: symbolic).
    pub input_name: String,
    pub input_shape: [Option<usize>; 4],
}

/// A convolution not built yet, so that a batch norm can still be folded into it.
struct PendingConv {
    /// `[oc, ic/group, kh, kw]`
    weight: Vec<f32>,
    dims: [usize; 4],
    bias: Vec<f32>,
    depthwise: bool,
    stride: usize,
    padding: Padding,
    act: Act,
    residual: Option<String>,
}

enum POp {
    Conv(PendingConv),
    Ready(Op),
    /// `Binary` with a runtime second operand, by name until slots are numbered.
    BinarySlot { mul: bool, other: String },
}

struct PStep {
    op: POp,
    input: String,
    output: String,
    node: String,
}

struct Planner<'a> {
    path: &'a Path,
    consts: HashMap<String, Tensor>,
    alias: HashMap<String, String>,
    steps: Vec<PStep>,
    /// Value name -> the step producing it.
    producer: HashMap<String, usize>,
    /// Readers of each value (node inputs, and 1 for being a graph output).
    uses: HashMap<String, usize>,
    opset: i64,
    input: String,
}

/// Plans `graph` (with the default domain at `opset`); `path` names the file in errors.
pub fn plan(graph: &Graph, opset: i64, path: &Path) -> Result<Plan> {
    let consts: HashMap<String, Tensor> =
        graph.initializers.iter().map(|t| (t.name.clone(), t.clone())).collect();
    let real: Vec<_> = graph.inputs.iter().filter(|i| !consts.contains_key(&i.name)).collect();
    let [input] = real.as_slice() else {
        let names: Vec<&str> = real.iter().map(|i| i.name.as_str()).collect();
        return Err(Error::format(
            path,
            "graph.input",
            format!("has {} inputs that are not initializers ({names:?}); an image model has exactly one", real.len()),
        ));
    };
    if input.elem_type != DT_FLOAT {
        return Err(Error::format(
            path,
            format!("graph.input ({})", input.name),
            format!("has element type {} ({}); ensembed feeds FLOAT images", input.elem_type, super::proto::dtype_name(input.elem_type)),
        ));
    }
    let mut input_shape = [None; 4];
    if let Some(s) = &input.shape {
        if s.len() != 4 || s[1].is_some_and(|c| c != 3) {
            return Err(Error::format(
                path,
                format!("graph.input ({})", input.name),
                format!("has shape {s:?}; ensembed feeds [N, 3, H, W] images"),
            ));
        }
        input_shape.copy_from_slice(s);
    }
    let mut uses: HashMap<String, usize> = HashMap::new();
    for n in &graph.nodes {
        for i in n.inputs.iter().filter(|i| !i.is_empty()) {
            *uses.entry(i.clone()).or_default() += 1;
        }
    }
    for o in &graph.outputs {
        *uses.entry(o.name.clone()).or_default() += 1;
    }
    let mut p = Planner {
        path,
        consts,
        alias: HashMap::new(),
        steps: Vec::new(),
        producer: HashMap::new(),
        uses,
        opset,
        input: input.name.clone(),
    };
    for (i, n) in graph.nodes.iter().enumerate() {
        p.node(i, n)?;
    }
    p.finish(input_shape)
}

/// The name of a node for errors.
fn describe(i: usize, n: &Node) -> String {
    if n.name.is_empty() {
        format!("graph.node[{i}] ({})", n.op_type)
    } else {
        format!("graph.node[{i}] ({} '{}')", n.op_type, n.name)
    }
}

impl Planner<'_> {
    fn resolve<'s>(&'s self, name: &'s str) -> &'s str {
        let mut n = name;
        // Alias chains are acyclic: an alias is only ever made to an earlier value.
        while let Some(a) = self.alias.get(n) {
            n = a;
        }
        n
    }

    /// Whether a runtime value of this name exists yet.
    fn is_value(&self, name: &str) -> bool {
        let n = self.resolve(name);
        n == self.input || self.producer.contains_key(n)
    }

    /// The pending convolution producing `name` when only one node reads `name`, which can
    /// therefore absorb the reader.
    fn sole_conv(&mut self, name: &str) -> Option<&mut PendingConv> {
        let n = self.resolve(name).to_string();
        if self.uses.get(name).copied() != Some(1) || n != name {
            return None;
        }
        let s = *self.producer.get(&n)?;
        match &mut self.steps[s].op {
            POp::Conv(c) => Some(c),
            _ => None,
        }
    }

    fn push(&mut self, op: POp, input: &str, output: &str, node: String) {
        let input = self.resolve(input).to_string();
        self.producer.insert(output.to_string(), self.steps.len());
        self.steps.push(PStep { op, input, output: output.to_string(), node });
    }

    /// Re-labels the output of the step producing `from` as `to` (a fused reader).
    fn rename(&mut self, from: &str, to: &str) {
        let s = self.producer.remove(from).expect("renamed value has a producer");
        self.steps[s].output = to.to_string();
        self.producer.insert(to.to_string(), s);
    }

    fn node(&mut self, i: usize, n: &Node) -> Result<()> {
        let at = describe(i, n);
        let path = self.path;
        let err = |m: String| Error::format(path, at.clone(), m);
        if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            return Err(err(format!("operator domain '{}' is not supported (only the default ONNX domain)", n.domain)));
        }
        let a = Attrs::new(n, self.path, &at);
        let op = n.op_type.as_str();
        if op == "Constant" {
            let t = match n.attributes.first().map(|x| (&x.name[..], &x.value)) {
                Some(("value", AttrValue::Tensor(t))) => t.clone(),
                Some(("value_ints", AttrValue::Ints(v))) => Tensor { name: String::new(), dims: vec![v.len()], data: TensorData::I64(v.clone()) },
                Some(("value_int", AttrValue::Int(v))) => Tensor { name: String::new(), dims: vec![], data: TensorData::I64(vec![*v]) },
                Some(("value_float", AttrValue::Float(v))) => Tensor { name: String::new(), dims: vec![], data: TensorData::F32(vec![*v]) },
                _ => return Err(err("a Constant needs a `value`, `value_ints`, `value_int` or `value_float` attribute".into())),
            };
            let out = n.outputs.first().ok_or_else(|| err("has no output".into()))?;
            self.consts.insert(out.clone(), t);
            return Ok(());
        }
        if !OPS.contains(&op) {
            return Err(err(format!("unsupported operator '{op}'; ensembed runs {}", OPS.join(", "))));
        }
        let x = n.inputs.first().filter(|s| !s.is_empty()).ok_or_else(|| err("has no input".into()))?;
        let out = n.outputs.first().filter(|s| !s.is_empty()).ok_or_else(|| err("has no output".into()))?.clone();
        if self.producer.contains_key(&out) || self.alias.contains_key(&out) || out == self.input || self.consts.contains_key(&out) {
            return Err(err(format!("output '{out}' is already defined (a graph must be in SSA form)")));
        }
        for (k, o) in n.outputs.iter().enumerate().skip(1) {
            if !o.is_empty() && self.uses.contains_key(o) {
                return Err(err(format!("output {k} ('{o}') is read, but ensembed only computes the first output of {op}")));
            }
        }
        if !self.is_value(x) {
            return Err(err(format!(
                "input '{x}' is {} (nodes must come in topological order, operating on the image)",
                if self.consts.contains_key(x) { "a constant" } else { "not defined before this node" }
            )));
        }
        let x = x.clone();
        match op {
            "Identity" | "Dropout" => {
                self.alias.insert(out, x);
            }
            "Conv" => {
                let c = self.conv(&a, n)?;
                self.push(POp::Conv(c), &x, &out, at);
            }
            "BatchNormalization" => {
                if a.int("training_mode", 0)? != 0 {
                    return Err(err("training_mode=1: only inference batch norm is supported".into()));
                }
                let eps = a.float("epsilon", 1e-5)? as f64;
                let ch = self.const_f32(n, 1, &at)?.len();
                let v: Vec<Vec<f32>> = (1..5).map(|k| self.const_f32(n, k, &at)).collect::<Result<_>>()?;
                if v.iter().any(|t| t.len() != ch) {
                    return Err(err(format!("scale, B, mean and var must have one value per channel ({ch}); found lengths {:?}", v.iter().map(Vec::len).collect::<Vec<_>>())));
                }
                let bn = BatchNorm { gamma: &v[0], beta: &v[1], mean: &v[2], var: &v[3], eps };
                if let Some(c) = self.sole_conv(&x).filter(|c| c.act == Act::None && c.residual.is_none()) {
                    if c.dims[0] != ch {
                        return Err(err(format!("has {ch} channels after a convolution with {}", c.dims[0])));
                    }
                    c.bias = fold_batch_norm(&mut c.weight, &c.bias, &bn);
                    self.rename(&x, &out);
                } else {
                    let (mut scale, mut shift) = (Vec::new(), Vec::new());
                    for o in 0..ch {
                        let s = bn.gamma[o] as f64 / (bn.var[o] as f64 + eps).sqrt();
                        scale.push(s as f32);
                        shift.push((bn.beta[o] as f64 - s * bn.mean[o] as f64) as f32);
                    }
                    self.push(POp::Ready(Op::Affine { scale, shift }), &x, &out, at);
                }
            }
            "Relu" | "Clip" => {
                let (lo, hi) = if op == "Relu" { (0.0, f32::INFINITY) } else { self.clip_bounds(&a, n, &at)? };
                let act = match (lo, hi) {
                    (0.0, f32::INFINITY) => Some(Act::Relu),
                    (0.0, 6.0) => Some(Act::Relu6),
                    _ => None,
                };
                if let Some(act) = act {
                    if let Some(c) = self.sole_conv(&x).filter(|c| c.act == Act::None) {
                        c.act = act;
                        self.rename(&x, &out);
                        return Ok(());
                    }
                }
                self.push(POp::Ready(Op::Unary(Unary::Clip(lo, hi))), &x, &out, at);
            }
            "Sigmoid" => self.push(POp::Ready(Op::Unary(Unary::Sigmoid)), &x, &out, at),
            "Softmax" => {
                let axis = a.int("axis", if self.opset >= 13 { -1 } else { 1 })?;
                if axis != -1 && axis != 1 {
                    return Err(err(format!("axis {axis}: only the class axis of a [N, classes] row is supported")));
                }
                self.push(POp::Ready(Op::Softmax), &x, &out, at);
            }
            "Add" | "Mul" => self.binary(n, &x, &out, at)?,
            "GlobalAveragePool" => self.push(POp::Ready(Op::GlobalAvgPool { flat: false }), &x, &out, at),
            "ReduceMean" => {
                let axes = match n.inputs.get(1).filter(|s| !s.is_empty()) {
                    Some(_) => self.const_i64(n, 1, &at)?,
                    None => a.ints("axes")?.unwrap_or_default(),
                };
                let mut sorted: Vec<i64> = axes.iter().map(|&v| if v < 0 { v + 4 } else { v }).collect();
                sorted.sort_unstable();
                if sorted != [2, 3] {
                    return Err(err(format!("axes {axes:?}: only the mean over the spatial axes [2, 3] is supported")));
                }
                let keep = a.int("keepdims", 1)?;
                self.push(POp::Ready(Op::GlobalAvgPool { flat: keep == 0 }), &x, &out, at);
            }
            "MaxPool" | "AveragePool" => {
                let (k, stride, pad) = self.pool_geometry(&a)?;
                let o = if op == "MaxPool" {
                    if a.int("storage_order", 0)? != 0 {
                        return Err(err("storage_order=1 is not supported".into()));
                    }
                    Op::MaxPool { k, stride, pad }
                } else {
                    Op::AvgPool { k, stride, pad, count_pad: a.int("count_include_pad", 0)? != 0 }
                };
                self.push(POp::Ready(o), &x, &out, at);
            }
            "Flatten" => {
                let axis = a.int("axis", 1)?;
                if axis != 1 && axis != -3 {
                    return Err(err(format!("axis {axis}: only flattening to [N, -1] (axis 1) is supported")));
                }
                self.push(POp::Ready(Op::Flatten { expect: None }), &x, &out, at);
            }
            "Reshape" => {
                let shape = self.const_i64(n, 1, &at)?;
                let expect = match shape.as_slice() {
                    [0 | 1 | -1, -1] => None,
                    [0 | 1, d] if *d > 0 => Some(*d as usize),
                    _ => return Err(err(format!("shape {shape:?}: only reshapes to [N, -1] (a flatten) are supported"))),
                };
                self.push(POp::Ready(Op::Flatten { expect }), &x, &out, at);
            }
            "Gemm" | "MatMul" => {
                let lin = self.linear(&a, n, op == "Gemm", &at)?;
                self.push(POp::Ready(Op::Linear(lin)), &x, &out, at);
            }
            "Slice" => {
                let o = self.slice(&a, n, &at)?;
                self.push(POp::Ready(o), &x, &out, at);
            }
            "Pad" => {
                let o = self.pad(&a, n, &at)?;
                self.push(POp::Ready(o), &x, &out, at);
            }
            _ => unreachable!("{op} is listed in OPS"),
        }
        Ok(())
    }

    /// Constant input `k` of `n` as floats.
    fn const_f32(&self, n: &Node, k: usize, at: &str) -> Result<Vec<f32>> {
        match self.constant(n, k, at)?.data {
            TensorData::F32(ref v) => Ok(v.clone()),
            TensorData::I64(_) => Err(Error::format(self.path, at, format!("input {k} ('{}') must be a FLOAT tensor, found INT64", n.inputs[k]))),
        }
    }

    /// Constant input `k` of `n` as int64s.
    fn const_i64(&self, n: &Node, k: usize, at: &str) -> Result<Vec<i64>> {
        match self.constant(n, k, at)?.data {
            TensorData::I64(ref v) => Ok(v.clone()),
            TensorData::F32(_) => Err(Error::format(self.path, at, format!("input {k} ('{}') must be an INT64 tensor, found FLOAT", n.inputs[k]))),
        }
    }

    fn constant(&self, n: &Node, k: usize, at: &str) -> Result<&Tensor> {
        let name = n.inputs.get(k).filter(|s| !s.is_empty()).ok_or_else(|| {
            Error::format(self.path, at, format!("has no input {k} ({} inputs)", n.inputs.len()))
        })?;
        self.consts.get(self.resolve(name)).ok_or_else(|| {
            Error::format(self.path, at, format!("input {k} ('{name}') must be a constant (an initializer or a Constant node)"))
        })
    }

    fn conv(&self, a: &Attrs, n: &Node) -> Result<PendingConv> {
        let path = self.path;
        let err = |m: String| Error::format(path, a.at, m);
        let w = self.constant(n, 1, a.at)?;
        let TensorData::F32(weight) = &w.data else {
            return Err(err("weight must be FLOAT".into()));
        };
        let [oc, icg, kh, kw] = w.dims[..] else {
            return Err(err(format!("weight has dims {:?}; a 2-D convolution's are [oc, ic/group, kh, kw]", w.dims)));
        };
        if oc == 0 || icg == 0 || kh == 0 || kw == 0 {
            return Err(err(format!("weight has dims {:?}: empty", w.dims)));
        }
        if let Some(ks) = a.ints("kernel_shape")? {
            if ks != [kh as i64, kw as i64] {
                return Err(err(format!("kernel_shape {ks:?} does not match the weight's [{kh}, {kw}]")));
            }
        }
        let bias = match n.inputs.get(2).filter(|s| !s.is_empty()) {
            Some(_) => self.const_f32(n, 2, a.at)?,
            None => vec![0.0; oc],
        };
        if bias.len() != oc {
            return Err(err(format!("bias has {} values for {oc} output channels", bias.len())));
        }
        if let Some(d) = a.ints("dilations")? {
            if d.iter().any(|&v| v != 1) {
                return Err(err(format!("dilations {d:?}: only 1 is supported")));
            }
        }
        let stride = a.stride()?;
        let group = a.int("group", 1)?;
        let depthwise = group != 1;
        if depthwise && !(group as usize == oc && icg == 1 && kh == kw) {
            return Err(err(format!(
                "group {group} with weight {:?}: only dense (group 1) and depthwise (group = channels, square kernel) convolutions are supported",
                w.dims
            )));
        }
        let padding = a.padding()?;
        Ok(PendingConv { weight: weight.clone(), dims: [oc, icg, kh, kw], bias, depthwise, stride, padding, act: Act::None, residual: None })
    }

    fn clip_bounds(&self, a: &Attrs, n: &Node, at: &str) -> Result<(f32, f32)> {
        if self.opset < 11 {
            return Ok((a.float("min", f32::NEG_INFINITY)?, a.float("max", f32::INFINITY)?));
        }
        let scalar = |k: usize, dflt: f32| -> Result<f32> {
            if n.inputs.get(k).is_none_or(|s| s.is_empty()) {
                return Ok(dflt);
            }
            match self.const_f32(n, k, at)?.as_slice() {
                [v] => Ok(*v),
                v => Err(Error::format(self.path, at, format!("bound {k} has {} values; a scalar is expected", v.len()))),
            }
        };
        Ok((scalar(1, f32::NEG_INFINITY)?, scalar(2, f32::INFINITY)?))
    }

    fn binary(&mut self, n: &Node, x: &str, out: &str, at: String) -> Result<()> {
        let mul = n.op_type == "Mul";
        let path = self.path;
        let err = |m: String| Error::format(path, &at, m);
        let [_, y] = &n.inputs[..] else {
            return Err(err(format!("needs 2 inputs, has {}", n.inputs.len())));
        };
        if self.is_value(y) {
            // Two runtime values: a residual sum, fused into the convolution producing one of
            // them when the other is ready before that convolution runs.
            if !mul {
                for (c, other) in [(x, y.as_str()), (y.as_str(), x)] {
                    let other_r = self.resolve(other).to_string();
                    let ready_at = if other_r == self.input { Some(0) } else { self.producer.get(&other_r).map(|s| s + 1) };
                    let conv_step = self.producer.get(self.resolve(c)).copied();
                    let (Some(ready_at), Some(cs)) = (ready_at, conv_step) else { continue };
                    if ready_at > cs {
                        continue;
                    }
                    if let Some(conv) = self.sole_conv(c).filter(|p| p.act == Act::None && p.residual.is_none()) {
                        conv.residual = Some(other_r);
                        self.rename(c, out);
                        return Ok(());
                    }
                }
            }
            let other = self.resolve(y).to_string();
            self.push(POp::BinarySlot { mul, other }, x, out, at);
            return Ok(());
        }
        let c = self.consts.get(self.resolve(y)).ok_or_else(|| err(format!("input '{y}' is not defined before this node")))?;
        let TensorData::F32(v) = &c.data else {
            return Err(err(format!("constant '{y}' must be FLOAT")));
        };
        // Leading 1s do not change how a constant broadcasts against [1, c, h, w] or [1, d].
        let dims: Vec<usize> = c.dims.iter().copied().skip_while(|&d| d == 1).collect();
        let ok = v.len() == 1 || matches!(dims[..], [_, 1, 1]) || dims.len() == 1;
        if !ok {
            return Err(err(format!("constant '{y}' has dims {:?}: only a scalar, one value per channel ([c, 1, 1]) or one per feature ([d]) broadcasts here", c.dims)));
        }
        let (v, row) = (v.clone(), dims.len() == 1 && v.len() > 1);
        // A bias added after a MatMul joins the linear layer.
        if !mul && dims.len() == 1 && self.uses.get(x).copied() == Some(1) && self.resolve(x) == x {
            if let Some(&s) = self.producer.get(x) {
                if let POp::Ready(Op::Linear(l)) = &mut self.steps[s].op {
                    if l.outputs == v.len() {
                        let bias: Vec<f32> = l.bias().iter().zip(&v).map(|(a, b)| a + b).collect();
                        *l = Linear::new(l.weight().to_vec(), bias, l.outputs, l.inputs);
                        self.rename(x, out);
                        return Ok(());
                    }
                }
            }
        }
        self.push(POp::Ready(Op::Binary { mul, rhs: Rhs::Const { values: v, row } }), x, out, at);
        Ok(())
    }

    fn pool_geometry(&self, a: &Attrs) -> Result<(usize, usize, usize)> {
        let path = self.path;
        let err = |m: String| Error::format(path, a.at, m);
        let k = match a.ints("kernel_shape")?.as_deref() {
            Some(&[kh, kw]) if kh == kw && kh >= 1 && kh as usize <= MAX_PAD => kh as usize,
            other => return Err(err(format!("kernel_shape {other:?}: a square 2-D window is supported"))),
        };
        if a.int("ceil_mode", 0)? != 0 {
            return Err(err("ceil_mode=1 is not supported".into()));
        }
        if let Some(d) = a.ints("dilations")? {
            if d.iter().any(|&v| v != 1) {
                return Err(err(format!("dilations {d:?}: only 1 is supported")));
            }
        }
        let stride = a.stride()?;
        let pad = match a.padding()? {
            Padding::Symmetric(p) => p,
            other => return Err(err(format!("padding {other:?}: pools support the same padding on every side"))),
        };
        Ok((k, stride, pad))
    }

    fn linear(&self, a: &Attrs, n: &Node, gemm: bool, at: &str) -> Result<Linear> {
        let path = self.path;
        let err = |m: String| Error::format(path, at, m);
        let b = self.constant(n, 1, at)?;
        let TensorData::F32(bw) = &b.data else {
            return Err(err("weight must be FLOAT".into()));
        };
        let [r, c] = b.dims[..] else {
            return Err(err(format!("weight has dims {:?}; a 2-D matrix is expected", b.dims)));
        };
        let (trans_b, alpha, beta) = if gemm {
            if a.int("transA", 0)? != 0 {
                return Err(err("transA=1 is not supported".into()));
            }
            (a.int("transB", 0)? != 0, a.float("alpha", 1.0)?, a.float("beta", 1.0)?)
        } else {
            (false, 1.0, 1.0)
        };
        // Linear holds [outputs, inputs]: Gemm's B with transB, else B's transpose.
        let (outputs, inputs) = if trans_b { (r, c) } else { (c, r) };
        if outputs == 0 || inputs == 0 {
            return Err(err(format!("weight has dims {:?}: empty", b.dims)));
        }
        let mut w = vec![0.0; bw.len()];
        for o in 0..outputs {
            for i in 0..inputs {
                let v = if trans_b { bw[o * inputs + i] } else { bw[i * outputs + o] };
                w[o * inputs + i] = alpha * v;
            }
        }
        let bias = match n.inputs.get(2).filter(|s| gemm && !s.is_empty()) {
            Some(_) => {
                let v = self.const_f32(n, 2, at)?;
                match v.len() {
                    1 => vec![beta * v[0]; outputs],
                    l if l == outputs => v.iter().map(|x| beta * x).collect(),
                    l => return Err(err(format!("bias C has {l} values for {outputs} outputs"))),
                }
            }
            None => vec![0.0; outputs],
        };
        Ok(Linear::new(w, bias, outputs, inputs))
    }

    /// Maps ONNX axes 1, 2, 3 (c, h, w; negative from the end) to (h, w, c) positions.
    fn axis_index(&self, axis: i64, at: &str) -> Result<Option<usize>> {
        match if axis < 0 { axis + 4 } else { axis } {
            0 => Ok(None),
            1 => Ok(Some(2)),
            2 => Ok(Some(0)),
            3 => Ok(Some(1)),
            _ => Err(Error::format(self.path, at, format!("axis {axis} is out of range for a [N, C, H, W] tensor"))),
        }
    }

    fn slice(&self, a: &Attrs, n: &Node, at: &str) -> Result<Op> {
        let path = self.path;
        let err = |m: String| Error::format(path, at, m);
        let (starts, ends, axes, steps) = if self.opset < 10 {
            let s = a.ints("starts")?.unwrap_or_default();
            let e = a.ints("ends")?.unwrap_or_default();
            let ax = a.ints("axes")?.unwrap_or_else(|| (0..s.len() as i64).collect());
            (s, e, ax, Vec::new())
        } else {
            let s = self.const_i64(n, 1, at)?;
            let e = self.const_i64(n, 2, at)?;
            let has = |k: usize| n.inputs.get(k).is_some_and(|s| !s.is_empty());
            let ax = if has(3) { self.const_i64(n, 3, at)? } else { (0..s.len() as i64).collect() };
            let st = if has(4) { self.const_i64(n, 4, at)? } else { Vec::new() };
            (s, e, ax, st)
        };
        if ends.len() != starts.len() || axes.len() != starts.len() || !(steps.is_empty() || steps.len() == starts.len()) {
            return Err(err(format!("starts {starts:?}, ends {ends:?}, axes {axes:?}, steps {steps:?} differ in length")));
        }
        let mut o = ([0i64; 3], [i64::MAX; 3], [1i64; 3]);
        for k in 0..starts.len() {
            let step = steps.get(k).copied().unwrap_or(1);
            if step <= 0 {
                return Err(err(format!("step {step}: only positive steps are supported")));
            }
            match self.axis_index(axes[k], at)? {
                None => {
                    if starts[k] != 0 || ends[k] < 1 || step != 1 {
                        return Err(err("slicing the batch axis is not supported".into()));
                    }
                }
                Some(i) => {
                    o.0[i] = starts[k];
                    o.1[i] = ends[k];
                    o.2[i] = step;
                }
            }
        }
        Ok(Op::Slice { starts: o.0, ends: o.1, steps: o.2 })
    }

    fn pad(&self, a: &Attrs, n: &Node, at: &str) -> Result<Op> {
        let path = self.path;
        let err = |m: String| Error::format(path, at, m);
        let mode = a.string("mode")?.unwrap_or_else(|| "constant".into());
        if mode != "constant" {
            return Err(err(format!("mode '{mode}': only constant (zero) padding is supported")));
        }
        let (pads, value) = if self.opset < 11 {
            (a.ints("pads")?.unwrap_or_default(), a.float("value", 0.0)?)
        } else {
            let v = match n.inputs.get(2).filter(|s| !s.is_empty()) {
                Some(_) => match self.const_f32(n, 2, at)?.as_slice() {
                    [v] => *v,
                    v => return Err(err(format!("constant_value has {} values", v.len()))),
                },
                None => 0.0,
            };
            if n.inputs.get(3).is_some_and(|s| !s.is_empty()) {
                return Err(err("the `axes` input is not supported".into()));
            }
            (self.const_i64(n, 1, at)?, v)
        };
        if value != 0.0 {
            return Err(err(format!("constant_value {value}: only zero padding is supported")));
        }
        if pads.len() != 8 || pads[0] != 0 || pads[4] != 0 || pads.iter().any(|&p| p < 0 || p as usize > MAX_PAD) {
            return Err(err(format!("pads {pads:?}: 8 values between 0 and {MAX_PAD}, none on the batch axis, are supported")));
        }
        // ONNX order: [n, c, h, w] before, then after; ours is (h, w, c).
        let p = |v: &[i64]| [v[2] as usize, v[3] as usize, v[1] as usize];
        Ok(Op::Pad { before: p(&pads[..4]), after: p(&pads[4..]) })
    }

    /// Numbers the values, builds the convolutions and finds the pooled feature and the head.
    fn finish(self, input_shape: [Option<usize>; 4]) -> Result<Plan> {
        let mut slot: HashMap<String, usize> = HashMap::new();
        slot.insert(self.input.clone(), 0);
        let mut steps = Vec::with_capacity(self.steps.len());
        for (i, s) in self.steps.into_iter().enumerate() {
            let get = |n: &str| *slot.get(n).expect("inputs are checked to be defined before use");
            let op = match s.op {
                POp::Ready(op) => op,
                POp::BinarySlot { mul, other } => Op::Binary { mul, rhs: Rhs::Slot(get(&other)) },
                POp::Conv(c) => {
                    let [oc, icg, kh, _] = c.dims;
                    let conv = if c.depthwise {
                        ConvKind::Depthwise(DepthwiseConv2d::from_oihw(&c.weight, c.bias, oc, kh, c.stride, c.padding))
                    } else {
                        ConvKind::Dense(Conv2d::from_oihw(&c.weight, c.bias, [oc, icg, kh, c.dims[3]], c.stride, c.padding))
                    };
                    Op::Conv { conv, act: c.act, residual: c.residual.as_deref().map(get) }
                }
            };
            let input = get(&s.input);
            slot.insert(s.output, i + 1);
            steps.push(Step { op, input, output: i + 1, node: s.node });
        }
        let slots = steps.len() + 1;
        let steps = fuse_runs(steps, slots, |run, readers| [3, 2].into_iter().find(|&n| run.len() >= n && is_mbconv(&run[..n], readers)), mbconv_of);
        let steps = fuse_runs(steps, slots, |run, readers| (run.len() >= 3 && is_bottleneck(&run[..3], readers)).then_some(3), bottleneck_of);
        let pooled = steps
            .iter()
            .rposition(|s| matches!(s.op, Op::GlobalAvgPool { .. }))
            .ok_or_else(|| Error::format(self.path, "graph", "has no GlobalAveragePool (or ReduceMean over H and W): ensembed takes the pooled feature there"))?;
        let head = steps.iter().rposition(|s| matches!(s.op, Op::Linear(_))).filter(|&h| h > pooled);
        Ok(Plan { slots, steps, pooled, head, input_name: self.input, input_shape })
    }
}

/// Rebuilds `steps` with each run of consecutive steps that `run_len` recognises at the front of
/// what is left (it sees the readers of every slot) replaced by one step, whose op `fuse` makes
/// from the run's ops, reading the run's first input and writing its last output: the block then
/// runs in bands of rows, with the same bits as step by step. The dropped steps' slots are
/// simply never written.
fn fuse_runs(
    steps: Vec<Step>,
    slots: usize,
    run_len: impl Fn(&[Step], &[usize]) -> Option<usize>,
    fuse: impl Fn(Vec<Op>) -> Op,
) -> Vec<Step> {
    let mut readers = vec![0usize; slots];
    for r in steps.iter().flat_map(Step::reads) {
        readers[r] += 1;
    }
    let mut rest = VecDeque::from(steps);
    let mut out = Vec::with_capacity(rest.len());
    while !rest.is_empty() {
        match run_len(rest.make_contiguous(), &readers) {
            Some(n) => {
                let run: Vec<Step> = rest.drain(..n).collect();
                let node = run.iter().map(|s| s.node.as_str()).collect::<Vec<_>>().join(" + ");
                let (input, output) = (run[0].input, run[n - 1].output);
                out.push(Step { op: fuse(run.into_iter().map(|s| s.op).collect()), input, output, node });
            }
            None => out.extend(rest.pop_front()),
        }
    }
    out
}

/// A convolution step as (convolution, activation, residual).
fn conv_of(s: &Step) -> Option<(&ConvKind, Act, Option<usize>)> {
    match &s.op {
        Op::Conv { conv, act, residual } => Some((conv, *act, *residual)),
        _ => None,
    }
}

/// Whether `run` is `pointwise conv -> depthwise conv -> pointwise conv` (the expansion
/// optional) that makes an [`MbConv`], whose intermediate values have no other reader, and whose
/// residual, if any, is the run's input.
fn is_mbconv(run: &[Step], readers: &[usize]) -> bool {
    let (expand, ds, ps) = match run {
        [e, d, p] => (Some(e), d, p),
        [d, p] => (None, d, p),
        _ => return false,
    };
    let (Some((ConvKind::Depthwise(dw), _, None)), Some((ConvKind::Dense(p), _, res))) = (conv_of(ds), conv_of(ps)) else {
        return false;
    };
    let (input, e) = match expand {
        Some(es) => {
            let Some((ConvKind::Dense(e), _, None)) = conv_of(es) else { return false };
            if ds.input != es.output || readers[es.output] != 1 {
                return false;
            }
            (es.input, Some(e))
        }
        None => (ds.input, None),
    };
    let linked = ps.input == ds.output && readers[ds.output] == 1 && res.is_none_or(|r| r == input);
    linked && MbConv::fits(e, dw, p, res.is_some())
}

/// The [`Op::MbConv`] of a run [`is_mbconv`] recognised.
fn mbconv_of(ops: Vec<Op>) -> Op {
    let mut parts: Vec<(ConvKind, Act, bool)> = ops
        .into_iter()
        .map(|op| match op {
            Op::Conv { conv, act, residual } => (conv, act, residual.is_some()),
            _ => unreachable!("recognised as convolutions"),
        })
        .collect();
    let Some((ConvKind::Dense(p), pa, skip)) = parts.pop() else { unreachable!("recognised as dense") };
    let Some((ConvKind::Depthwise(dw), da, _)) = parts.pop() else { unreachable!("recognised as depthwise") };
    let expand = parts.pop().map(|(c, a, _)| match c {
        ConvKind::Dense(e) => (e, a),
        ConvKind::Depthwise(_) => unreachable!("recognised as dense"),
    });
    let acts = [expand.as_ref().map_or(Act::None, |e| e.1), da, pa];
    let block = MbConv::new(expand.map(|e| e.0), dw, p, skip, acts).expect("checked by MbConv::fits in is_mbconv");
    Op::MbConv(Box::new(block))
}

/// Whether `run` is three dense convolution steps that [`bottleneck::fits`] (1x1, 3x3 stride 1,
/// 1x1), each with a ReLU, the last adding the run's input, whose intermediate values have no
/// other reader.
fn is_bottleneck(run: &[Step], readers: &[usize]) -> bool {
    fn relu(s: &Step) -> Option<(&Conv2d, Option<usize>)> {
        match conv_of(s) {
            Some((ConvKind::Dense(c), Act::Relu, res)) => Some((c, res)),
            _ => None,
        }
    }
    let [a, b, c] = run else { return false };
    let (Some((c1, None)), Some((c2, None)), Some((c3, Some(r)))) = (relu(a), relu(b), relu(c)) else { return false };
    let linked = b.input == a.output && c.input == b.output && r == a.input;
    let sole = readers[a.output] == 1 && readers[b.output] == 1;
    linked && sole && bottleneck::fits(c1, c2, c3)
}

/// The [`Op::Bottleneck`] of a run [`is_bottleneck`] recognised.
fn bottleneck_of(ops: Vec<Op>) -> Op {
    let convs: Vec<Conv2d> = ops
        .into_iter()
        .map(|op| match op {
            Op::Conv { conv: ConvKind::Dense(c), .. } => c,
            _ => unreachable!("recognised as dense convolutions"),
        })
        .collect();
    Op::Bottleneck(Box::new(convs.try_into().unwrap_or_else(|_| unreachable!("recognised as three steps"))))
}

impl ConvKind {
    /// Output channels.
    pub fn out_channels(&self) -> usize {
        match self {
            ConvKind::Dense(c) => c.oc,
            ConvKind::Depthwise(d) => d.c,
        }
    }
}
