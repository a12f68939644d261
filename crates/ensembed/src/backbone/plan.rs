//! From a parsed TFLite model to a checked execution plan. This is where a hostile file is
//! stopped: every tensor index, shape, element type, quantisation parameter and constant buffer
//! an operator touches is checked against what the operator needs (and sizes against fixed
//! limits) before anything is allocated, and each operator becomes a prepared [`Step`] whose
//! kernel can then index its slices without further checks. The rescaling constants are
//! computed here exactly as TFLite 2.14 computes them (the comments say where each comes from).

use std::path::Path;

use super::conv::{out_size, ChannelRequant, Conv, Depthwise, Geom};
use super::graph::{Act, Graph, Node, Step};
use super::ops::{Add, AvgPool, Mean, OutQ, QType, Requantize, Softmax, ADD_LEFT_SHIFT};
use super::quant::{activation_range, Requant, Rounding};
use super::tflite::{dtype, opcode, Activation, Model, Options, Padding, Tensor};
use crate::error::{Error, Result};

/// Largest number of elements in one tensor.
const MAX_TENSOR_ELEMS: usize = 1 << 28;
/// Largest spatial side, kernel side, stride or dilation.
const MAX_SIDE: usize = 1 << 16;

/// A constant 8-bit weight tensor and its per-output-channel quantisation.
struct Weights<'a> {
    q: QType,
    bytes: &'a [u8],
    zps: Vec<i32>,
    scales: Vec<f32>,
}

/// Planning context: the model, its file and the error helpers.
struct Planner<'a> {
    m: &'a Model,
    data: &'a [u8],
    path: &'a Path,
    acts: Vec<Option<Act>>,
    /// Index of the operator being planned, for messages.
    op: usize,
}

impl<'a> Planner<'a> {
    fn err(&self, field: impl Into<String>, message: impl Into<String>) -> Error {
        Error::format(self.path, field, message)
    }

    /// The error for operator `self.op`.
    fn op_err(&self, message: impl Into<String>) -> Error {
        let code = self.m.operators[self.op].code;
        self.err(
            format!("operators[{}] ({})", self.op, opcode::name(code)),
            message,
        )
    }

    fn tensor(&self, t: i32) -> Result<(usize, &'a Tensor)> {
        usize::try_from(t)
            .ok()
            .and_then(|i| self.m.tensors.get(i).map(|x| (i, x)))
            .ok_or_else(|| {
                self.op_err(format!(
                    "tensor index {t} is out of range ({} tensors)",
                    self.m.tensors.len()
                ))
            })
    }

    /// Operand `i` of the operator (`None` when absent or -1).
    fn operand(&self, i: usize) -> Result<Option<(usize, &'a Tensor)>> {
        match self.m.operators[self.op].inputs.get(i) {
            None | Some(-1) => Ok(None),
            Some(&t) => self.tensor(t).map(Some),
        }
    }

    fn required(&self, i: usize) -> Result<(usize, &'a Tensor)> {
        self.operand(i)?
            .ok_or_else(|| self.op_err(format!("input {i} is missing")))
    }

    /// The shape as sizes, with negative dimensions and oversized tensors refused.
    fn shape(&self, t: &Tensor) -> Result<Vec<usize>> {
        let mut n = 1usize;
        let mut dims = Vec::with_capacity(t.shape.len());
        for &d in &t.shape {
            let d = usize::try_from(d).map_err(|_| {
                self.err(
                    format!("tensor `{}`.shape", t.name),
                    format!("{:?} has a negative dimension", t.shape),
                )
            })?;
            n = n.saturating_mul(d);
            dims.push(d);
        }
        if n > MAX_TENSOR_ELEMS || t.shape.len() > 8 {
            return Err(self.err(
                format!("tensor `{}`.shape", t.name),
                format!("{:?} is larger than the {MAX_TENSOR_ELEMS} elements (8 dimensions) a tensor may have", t.shape),
            ));
        }
        Ok(dims)
    }

    /// A 4-D NHWC shape with batch 1.
    fn nhwc(&self, t: &Tensor) -> Result<[usize; 4]> {
        let s = self.shape(t)?;
        match s[..] {
            [1, h, w, c] if h > 0 && w > 0 && c > 0 && h <= MAX_SIDE && w <= MAX_SIDE => {
                Ok([1, h, w, c])
            }
            _ => Err(self.op_err(format!(
                "tensor `{}` has shape {:?}; expected [1, height, width, channels]",
                t.name, t.shape
            ))),
        }
    }

    /// Per-tensor quantisation of an 8-bit tensor: (type, scale, zero point).
    fn qparams(&self, t: &Tensor) -> Result<(QType, f32, i32)> {
        let q = match t.dtype {
            dtype::UINT8 => QType::U8,
            dtype::INT8 => QType::I8,
            d => {
                return Err(self.op_err(format!(
                    "tensor `{}` is {}; ensembed runs 8-bit quantised models (UINT8 or INT8 activations)",
                    t.name,
                    dtype::name(d)
                )))
            }
        };
        let field = format!("tensor `{}`.quantization", t.name);
        let Some(qp) = &t.quant else {
            return Err(self.err(
                field,
                "missing: an 8-bit activation needs a scale and a zero point",
            ));
        };
        if qp.scale.len() != 1 || qp.zero_point.len() != 1 {
            return Err(self.err(
                field,
                format!(
                    "{} scales and {} zero points; an activation needs exactly one of each",
                    qp.scale.len(),
                    qp.zero_point.len()
                ),
            ));
        }
        let (scale, zp) = (qp.scale[0], qp.zero_point[0]);
        let (lo, hi) = q.range();
        if !(scale.is_finite() && scale > 0.0) {
            return Err(self.err(
                format!("{field}.scale"),
                format!("{scale} is not a positive finite number"),
            ));
        }
        if zp < lo as i64 || zp > hi as i64 {
            return Err(self.err(
                format!("{field}.zero_point"),
                format!("{zp} is outside the range [{lo}, {hi}] of its type"),
            ));
        }
        Ok((q, scale, zp as i32))
    }

    /// The activation an operator reads: it must be the graph input or written by an earlier
    /// operator.
    fn act(&self, t: usize) -> Result<Act> {
        self.acts[t].ok_or_else(|| {
            let name = &self.m.tensors[t].name;
            if self.m.tensors[t].buffer != 0 {
                self.op_err(format!(
                    "tensor `{name}` is a constant where an activation is expected"
                ))
            } else {
                self.op_err(format!(
                    "tensor `{name}` is read before any operator writes it"
                ))
            }
        })
    }

    /// Declares operator output `t` (8-bit, per-tensor), checking that nothing wrote it before.
    fn output(&mut self, t: usize, tensor: &Tensor) -> Result<Act> {
        if self.acts[t].is_some() {
            return Err(self.op_err(format!("tensor `{}` is written twice", tensor.name)));
        }
        let len = self.shape(tensor)?.iter().product();
        let (q, scale, zp) = self.qparams(tensor)?;
        let a = Act { len, q, scale, zp };
        self.acts[t] = Some(a);
        Ok(a)
    }

    /// The bytes of a constant tensor, which must hold exactly `shape × element size` bytes.
    fn constant(&self, t: &Tensor, elem: usize) -> Result<&'a [u8]> {
        let field = format!("tensor `{}`.buffer", t.name);
        let n: usize = self.shape(t)?.iter().product();
        let range = self.m.buffers.get(t.buffer).ok_or_else(|| {
            self.err(
                &field,
                format!(
                    "buffer {} is out of range ({} buffers)",
                    t.buffer,
                    self.m.buffers.len()
                ),
            )
        })?;
        let want = n * elem;
        if range.len() != want {
            return Err(self.err(
                field,
                format!(
                    "buffer {} holds {} bytes; shape {:?} of {} needs {want}",
                    t.buffer,
                    range.len(),
                    t.shape,
                    dtype::name(t.dtype)
                ),
            ));
        }
        Ok(&self.data[range.clone()])
    }

    /// 8-bit weights with one zero point and scale per output channel (repeated when the file
    /// has one per tensor). `axis` is the dimension whose slices may carry their own parameters.
    fn weights(&self, t: &Tensor, channels: usize, axis: i32) -> Result<Weights<'a>> {
        let q = match t.dtype {
            dtype::UINT8 => QType::U8,
            dtype::INT8 => QType::I8,
            d => {
                return Err(self.op_err(format!(
                    "weights `{}` are {}; expected UINT8 or INT8",
                    t.name,
                    dtype::name(d)
                )))
            }
        };
        let field = format!("tensor `{}`.quantization", t.name);
        let qp = t.quant.as_ref().ok_or_else(|| {
            self.err(
                &field,
                "missing: quantised weights need scales and zero points",
            )
        })?;
        let per = qp.scale.len();
        if !(per == 1 || (per == channels && qp.dim == axis)) || qp.zero_point.len() != per {
            return Err(self.err(
                &field,
                format!(
                    "{per} scales and {} zero points along dimension {}; expected 1, or {channels} along dimension {axis}",
                    qp.zero_point.len(),
                    qp.dim
                ),
            ));
        }
        let (lo, hi) = q.range();
        if let Some(s) = qp.scale.iter().find(|s| !(s.is_finite() && **s >= 0.0)) {
            return Err(self.err(
                format!("{field}.scale"),
                format!("{s} is not a finite non-negative number"),
            ));
        }
        if let Some(z) = qp
            .zero_point
            .iter()
            .find(|&&z| z < lo as i64 || z > hi as i64)
        {
            return Err(self.err(
                format!("{field}.zero_point"),
                format!("{z} is outside the range [{lo}, {hi}] of its type"),
            ));
        }
        // The bytes first: `channels` comes from a declared shape (up to 2^28 elements), and
        // only a buffer present in the file that holds the weights of that many channels (the
        // callers check that `channels` is a dimension of `t`) justifies allocating two vectors
        // of that length.
        let bytes = self.constant(t, 1)?;
        let pick = |i: usize| if per == 1 { 0 } else { i };
        let zps = (0..channels)
            .map(|i| qp.zero_point[pick(i)] as i32)
            .collect();
        let scales = (0..channels).map(|i| qp.scale[pick(i)]).collect();
        Ok(Weights {
            q,
            bytes,
            zps,
            scales,
        })
    }

    /// The int32 bias of `channels` outputs (zeros when absent).
    fn bias(&self, operand: usize, channels: usize) -> Result<Vec<i32>> {
        let Some((_, t)) = self.operand(operand)? else {
            return Ok(vec![0; channels]);
        };
        if t.dtype != dtype::INT32 || self.shape(t)?.iter().product::<usize>() != channels {
            return Err(self.op_err(format!(
                "bias `{}` is {} of shape {:?}; expected INT32 of {channels} values",
                t.name,
                dtype::name(t.dtype),
                t.shape
            )));
        }
        let b = self.constant(t, 4)?;
        Ok(b.chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
            .collect())
    }

    /// Requantisation of `channels` accumulators with scale `in_scale * w_scale[c]` to `out`.
    fn channel_requant(
        &self,
        in_scale: f32,
        w_scales: &[f32],
        bias: Vec<i32>,
        out: Act,
        act: Activation,
        rounding: Rounding,
    ) -> Result<ChannelRequant> {
        let mut rq = ChannelRequant {
            bias,
            multiplier: Vec::with_capacity(w_scales.len()),
            left: Vec::with_capacity(w_scales.len()),
            right: Vec::with_capacity(w_scales.len()),
            out: out_q(out, act),
            rounding,
        };
        // TFLite 2.14 computes the uint8 (per-tensor) multiplier from the f32 product of the
        // scales (`GetQuantizedConvolutionMultipler`) and the int8 (per-channel) ones from the
        // f64 product (`PopulateConvolutionQuantizationParams`); the last bit of the multiplier
        // decides near-ties, so both are reproduced (each checked bit-exact on the coral models).
        let f32_product = self.acts[self.m.operators[self.op].inputs[0] as usize]
            .is_some_and(|a| a.q == QType::U8);
        for &ws in w_scales {
            let product = if f32_product {
                (in_scale * ws) as f64
            } else {
                in_scale as f64 * ws as f64
            };
            let real = product / out.scale as f64;
            if !real.is_finite() {
                return Err(self.op_err(format!("rescaling factor {real} (input scale {in_scale} × weight scale {ws} / output scale {}) is not finite", out.scale)));
            }
            let r = Requant::new(real);
            rq.multiplier.push(r.multiplier);
            rq.left.push(r.left);
            rq.right.push(r.right);
        }
        Ok(rq)
    }

    /// Checks window parameters and computes the output geometry, which must match the output
    /// tensor's declared size.
    #[allow(clippy::too_many_arguments)]
    fn geom(
        &self,
        input: [usize; 4],
        output: [usize; 4],
        filter: (usize, usize),
        stride: (i32, i32),
        dilation: (i32, i32),
        padding: Padding,
    ) -> Result<Geom> {
        let pos = |v: i32, what: &str| -> Result<usize> {
            usize::try_from(v)
                .ok()
                .filter(|&v| (1..=MAX_SIDE).contains(&v))
                .ok_or_else(|| {
                    self.op_err(format!(
                        "{what} is {v}; it must be between 1 and {MAX_SIDE}"
                    ))
                })
        };
        let (sh, sw) = (pos(stride.0, "stride_h")?, pos(stride.1, "stride_w")?);
        let (dh, dw) = (
            pos(dilation.0, "dilation_h_factor")?,
            pos(dilation.1, "dilation_w_factor")?,
        );
        let (kh, kw) = (
            pos(filter.0 as i32, "filter height")?,
            pos(filter.1 as i32, "filter width")?,
        );
        let same = padding == Padding::Same;
        let (oh, pt) = out_size(same, input[1], kh, sh, dh)
            .ok_or_else(|| self.op_err("the filter is taller than the padded input"))?;
        let (ow, pl) = out_size(same, input[2], kw, sw, dw)
            .ok_or_else(|| self.op_err("the filter is wider than the padded input"))?;
        if (oh, ow) != (output[1], output[2]) || oh == 0 || ow == 0 {
            return Err(self.op_err(format!(
                "output is declared {}x{} but the window gives {oh}x{ow} on a {}x{} input",
                output[1], output[2], input[1], input[2]
            )));
        }
        Ok(Geom {
            ih: input[1],
            iw: input[2],
            ic: input[3],
            oh,
            ow,
            oc: output[3],
            kh,
            kw,
            sh,
            sw,
            dh,
            dw,
            pt,
            pl,
        })
    }

    /// Plans operator `self.op`.
    fn node(&mut self) -> Result<Node> {
        let op = &self.m.operators[self.op];
        if !SUPPORTED.contains(&op.code) {
            return Err(self.op_err(format!(
                "operator {} (version {}) is not supported: ensembed runs {}",
                opcode::name(op.code),
                op.version,
                SUPPORTED.map(opcode::name).join(", ")
            )));
        }
        let Some(&out_t) = op.outputs.first() else {
            return Err(self.op_err("the operator has no output"));
        };
        let (out_i, out_t) = self.tensor(out_t)?;
        // Outputs are declared before the operands beyond the first are checked, so an
        // operator reading its own output (found by the fuzzer: an ADD whose second input was
        // its output) would pass the "written before read" check and read nothing when run.
        if op.inputs.iter().any(|&t| usize::try_from(t) == Ok(out_i)) {
            return Err(self.op_err(format!(
                "tensor `{}` is both an input and the output",
                out_t.name
            )));
        }
        let (in_i, in_t) = self.required(0)?;
        let io = Io {
            input: self.act(in_i)?,
            in_t,
            out: self.output(out_i, out_t)?,
            out_t,
        };
        let step = match (op.code, &op.options) {
            (
                opcode::CONV_2D,
                &Options::Conv {
                    padding,
                    stride,
                    dilation,
                    act,
                },
            ) => self.conv(&io, padding, stride, dilation, act)?,
            (opcode::DEPTHWISE_CONV_2D, o @ Options::Depthwise { .. }) => self.depthwise(&io, o)?,
            (
                opcode::FULLY_CONNECTED,
                &Options::FullyConnected {
                    act,
                    weights_format,
                    ..
                },
            ) => self.fully_connected(&io, act, weights_format)?,
            (opcode::ADD, &Options::Add { act }) => self.add(&io, act)?,
            (
                opcode::AVERAGE_POOL_2D,
                &Options::Pool {
                    padding,
                    stride,
                    filter,
                    act,
                },
            ) => {
                let (i4, o4) = (self.nhwc(io.in_t)?, self.nhwc(io.out_t)?);
                let (input, out) = (io.input, io.out);
                if i4[3] != o4[3]
                    || input.q != out.q
                    || input.scale != out.scale
                    || input.zp != out.zp
                {
                    return Err(self
                        .op_err("input and output must have the same channels and quantisation"));
                }
                let pos = |v: i32| usize::try_from(v).unwrap_or(0);
                let filter = (pos(filter.0), pos(filter.1));
                let g = self.geom(i4, o4, filter, stride, (1, 1), padding)?;
                Step::AvgPool(AvgPool {
                    g,
                    q: input.q,
                    out: out_q(out, act),
                })
            }
            (opcode::MEAN, &Options::Reducer { keep_dims }) => self.mean(&io, keep_dims)?,
            (opcode::RESHAPE | opcode::SQUEEZE, _) => {
                if io.input.len != io.out.len || io.input.q != io.out.q {
                    return Err(self.op_err(format!(
                        "reshapes {:?} into {:?} of another size or type",
                        io.in_t.shape, io.out_t.shape
                    )));
                }
                Step::Copy
            }
            (opcode::QUANTIZE, _) => {
                if io.input.len != io.out.len {
                    return Err(self.op_err("input and output sizes differ"));
                }
                Step::Requantize(Requantize {
                    in_q: io.input.q,
                    in_zp: io.input.zp,
                    rq: Requant::new(io.input.scale as f64 / io.out.scale as f64),
                    out: out_q(io.out, Activation::None),
                })
            }
            (opcode::SOFTMAX, &Options::Softmax { beta }) => {
                let classes = self.shape(io.in_t)?.last().copied().unwrap_or(0);
                if classes == 0 || io.input.len != io.out.len || !beta.is_finite() {
                    return Err(self.op_err(format!(
                        "input shape {:?}, output shape {:?}, beta {beta}",
                        io.in_t.shape, io.out_t.shape
                    )));
                }
                Step::Softmax(Softmax {
                    in_q: io.input.q,
                    in_scale: io.input.scale,
                    in_zp: io.input.zp,
                    beta,
                    classes,
                    out_scale: io.out.scale,
                    out: out_q(io.out, Activation::None),
                })
            }
            _ => return Err(self.op_err("its builtin options are missing or of another operator")),
        };
        let mut inputs = vec![in_i];
        if op.code == opcode::ADD {
            inputs.push(self.required(1)?.0);
        }
        Ok(Node {
            step,
            inputs,
            output: out_i,
        })
    }

    fn conv(
        &self,
        io: &Io<'a>,
        padding: Padding,
        stride: (i32, i32),
        dilation: (i32, i32),
        act: Activation,
    ) -> Result<Step> {
        let (i4, o4) = (self.nhwc(io.in_t)?, self.nhwc(io.out_t)?);
        let (_, f) = self.required(1)?;
        let fs = self.shape(f)?;
        if fs.len() != 4 || fs[0] != o4[3] || fs[3] != i4[3] {
            return Err(self.op_err(format!(
                "filter shape {:?} does not fit input {i4:?} and output {o4:?}",
                f.shape
            )));
        }
        let g = self.geom(i4, o4, (fs[1], fs[2]), stride, dilation, padding)?;
        let w = self.weights(f, g.oc, 0)?;
        let bias = self.bias(2, g.oc)?;
        let rounding = gemm_rounding(io.input.q);
        let rq = self.channel_requant(io.input.scale, &w.scales, bias, io.out, act, rounding)?;
        Ok(Step::Conv(Conv::new(
            g,
            io.input.q,
            io.input.zp,
            w.bytes,
            w.q,
            &w.zps,
            rq,
        )))
    }

    fn depthwise(&self, io: &Io<'a>, options: &Options) -> Result<Step> {
        let &Options::Depthwise {
            padding,
            stride,
            dilation,
            depth_multiplier,
            act,
        } = options
        else {
            unreachable!("matched by the caller")
        };
        let (i4, o4) = (self.nhwc(io.in_t)?, self.nhwc(io.out_t)?);
        let (_, f) = self.required(1)?;
        let fs = self.shape(f)?;
        let mult = o4[3] / i4[3];
        let declared = depth_multiplier == 0 || depth_multiplier as usize == mult;
        if fs.len() != 4 || fs[0] != 1 || fs[3] != o4[3] || mult * i4[3] != o4[3] || !declared {
            return Err(self.op_err(format!(
                "filter shape {:?} (depth multiplier {depth_multiplier}) does not fit input {i4:?} and output {o4:?}",
                f.shape
            )));
        }
        let g = self.geom(i4, o4, (fs[1], fs[2]), stride, dilation, padding)?;
        let w = self.weights(f, g.oc, 3)?;
        let bias = self.bias(2, g.oc)?;
        // TFLite's depthwise kernels are its own, with gemmlowp's rounding.
        let rq = self.channel_requant(
            io.input.scale,
            &w.scales,
            bias,
            io.out,
            act,
            Rounding::Gemmlowp,
        )?;
        let (q, zp) = (io.input.q, io.input.zp);
        Ok(Step::Depthwise(Depthwise::new(
            g, mult, q, zp, w.bytes, w.q, &w.zps, rq,
        )))
    }

    fn fully_connected(&self, io: &Io<'a>, act: Activation, weights_format: u8) -> Result<Step> {
        let (input, out) = (io.input, io.out);
        let (_, f) = self.required(1)?;
        let fs = self.shape(f)?;
        let [units, depth] = fs[..] else {
            return Err(self.op_err(format!("weights shape {:?} is not [units, depth]", f.shape)));
        };
        if weights_format != 0
            || depth == 0
            || input.len % depth != 0
            || out.len != input.len / depth * units
        {
            return Err(self.op_err(format!(
                "weights {:?} (format {weights_format}) do not fit an input of {} and an output of {} values",
                f.shape, input.len, out.len
            )));
        }
        let rows = input.len / depth;
        // A fully connected layer is a 1x1 convolution over `rows` pixels.
        let g = Geom {
            ih: rows,
            iw: 1,
            ic: depth,
            oh: rows,
            ow: 1,
            oc: units,
            kh: 1,
            kw: 1,
            sh: 1,
            sw: 1,
            dh: 1,
            dw: 1,
            pt: 0,
            pl: 0,
        };
        let w = self.weights(f, units, 0)?;
        let bias = self.bias(2, units)?;
        let rq = self.channel_requant(
            input.scale,
            &w.scales,
            bias,
            out,
            act,
            gemm_rounding(input.q),
        )?;
        Ok(Step::Conv(Conv::new(
            g, input.q, input.zp, w.bytes, w.q, &w.zps, rq,
        )))
    }

    fn add(&self, io: &Io<'a>, act: Activation) -> Result<Step> {
        let (input, out) = (io.input, io.out);
        let (b_i, b_t) = self.required(1)?;
        let b = self.act(b_i)?;
        let same =
            self.shape(io.in_t)? == self.shape(b_t)? && b.len == out.len && input.len == out.len;
        if !same || input.q != out.q || b.q != out.q {
            return Err(self.op_err(format!(
                "inputs {:?} and {:?} and output {:?} must have one shape and type (no broadcasting)",
                io.in_t.shape, b_t.shape, io.out_t.shape
            )));
        }
        // TFLite's `PrepareGeneralSubOp`: f32 max and product, f64 quotients.
        let twice_max = 2.0 * input.scale.max(b.scale) as f64;
        let out_real = twice_max / ((1 << ADD_LEFT_SHIFT) as f32 * out.scale) as f64;
        Ok(Step::Add(Add {
            a_q: input.q,
            a_zp: input.zp,
            a_rq: Requant::new(input.scale as f64 / twice_max),
            b_q: b.q,
            b_zp: b.zp,
            b_rq: Requant::new(b.scale as f64 / twice_max),
            out_rq: Requant::new(out_real),
            out: out_q(out, act),
        }))
    }

    fn mean(&self, io: &Io<'a>, keep_dims: bool) -> Result<Step> {
        let (input, out) = (io.input, io.out);
        let i4 = self.nhwc(io.in_t)?;
        let (_, axis_t) = self.required(1)?;
        let raw = if axis_t.dtype == dtype::INT32 {
            self.constant(axis_t, 4)?
        } else {
            &[]
        };
        let mut axes: Vec<i32> = raw
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()))
            .map(|a| if a < 0 { a + 4 } else { a })
            .collect();
        axes.sort_unstable();
        if !keep_dims || axes != [1, 2] || out.len != i4[3] || input.q != out.q {
            return Err(self.op_err(format!(
                "only a MEAN over height and width with keep_dims is supported (axes {axes:?}, keep_dims {keep_dims}, output {:?})",
                io.out_t.shape
            )));
        }
        let count = i4[1] * i4[2];
        Ok(Step::Mean(Mean::new(
            input.q,
            count,
            i4[3],
            input.scale,
            input.zp,
            out.scale,
            out.zp,
        )))
    }
}

/// The operators a plan may hold.
const SUPPORTED: [i32; 10] = [
    opcode::CONV_2D,
    opcode::DEPTHWISE_CONV_2D,
    opcode::FULLY_CONNECTED,
    opcode::ADD,
    opcode::AVERAGE_POOL_2D,
    opcode::MEAN,
    opcode::RESHAPE,
    opcode::SQUEEZE,
    opcode::SOFTMAX,
    opcode::QUANTIZE,
];

/// An operator's first input and its output: activations and their tensors.
struct Io<'a> {
    input: Act,
    in_t: &'a Tensor,
    out: Act,
    out_t: &'a Tensor,
}

/// The rounding of TFLite 2.14's 8-bit GEMM on x86 (CONV_2D, FULLY_CONNECTED): uint8 goes
/// through gemmlowp, int8 through ruy (gemmlowp has no int8 x86 path).
fn gemm_rounding(q: QType) -> Rounding {
    match q {
        QType::U8 => Rounding::Gemmlowp,
        QType::I8 => Rounding::Ruy,
    }
}

/// The store rule of an operator's output with a fused activation.
fn out_q(out: Act, act: Activation) -> OutQ {
    let (qmin, qmax) = out.q.range();
    let (lo, hi) = activation_range(act, out.scale, out.zp, qmin, qmax);
    OutQ { zp: out.zp, lo, hi }
}

/// Plans `m` (parsed from `data`, the file at `path`).
pub(super) fn plan(m: &Model, data: &[u8], path: &Path) -> Result<Graph> {
    let mut p = Planner {
        m,
        data,
        path,
        acts: vec![None; m.tensors.len()],
        op: 0,
    };
    let [input] = m.inputs[..] else {
        return Err(p.err(
            "subgraphs[0].inputs",
            format!(
                "{} inputs; an image backbone has exactly one",
                m.inputs.len()
            ),
        ));
    };
    let (input, in_t) = usize::try_from(input)
        .ok()
        .and_then(|i| m.tensors.get(i).map(|t| (i, t)))
        .ok_or_else(|| {
            p.err(
                "subgraphs[0].inputs",
                format!("tensor index {input} is out of range"),
            )
        })?;
    let s = p.shape(in_t)?;
    let (&[1, h, w, 3], Some((q, scale, zp))) = (&s[..], p.qparams(in_t).ok()) else {
        return Err(p.err(
            format!("input tensor `{}`", in_t.name),
            format!(
                "shape {:?} of {}: expected a quantised [1, height, width, 3] image",
                in_t.shape,
                dtype::name(in_t.dtype)
            ),
        ));
    };
    if h == 0 || w == 0 || h > MAX_SIDE || w > MAX_SIDE {
        return Err(p.err(
            format!("input tensor `{}`", in_t.name),
            format!("{h}x{w} is not a valid image size"),
        ));
    }
    p.acts[input] = Some(Act {
        len: h * w * 3,
        q,
        scale,
        zp,
    });

    let mut nodes = Vec::with_capacity(m.operators.len());
    for i in 0..m.operators.len() {
        p.op = i;
        nodes.push(p.node()?);
    }

    Graph::new(nodes, p.acts, input, (h, w)).ok_or_else(|| {
        Error::format(
            path,
            "operators",
            "no AVERAGE_POOL_2D or MEAN reduces the feature map to 1x1: there is no pooled feature to extract",
        )
    })
}
