//! Exports a float CNN loaded from a PyTorch checkpoint as an ONNX model, in the form PyTorch's
//! own exporter gives it (Conv, Relu, Add, MaxPool, GlobalAveragePool, Flatten, Gemm; option-A
//! shortcuts as Slice + Pad), with batch norm already folded into the convolutions. The model
//! has two outputs, `logits` (when the checkpoint has a classifier) and `features` (the pooled
//! trunk output), so that onnxruntime users get the features without editing the graph, and it
//! records its preprocessing under [`super::PREPROCESS_KEY`].

use std::path::Path;

use super::write::{Attr, OnnxWriter};
use crate::backbone::cnn::{Act, CnnModel, Conv2d, Padding};
use crate::error::{Error, Result};

/// Writes `model` to `path` as ONNX (opset 13, batch dimension symbolic, input
/// `[N, 3, crop, crop]` named `input`).
pub fn export(model: &CnnModel, path: &Path) -> Result<()> {
    let p = model.preprocess();
    let mut w = OnnxWriter::new("input", [None, Some(3), Some(p.crop), Some(p.crop)]);
    let pooled = model.net().onnx_trunk(&mut w, "input")?;
    w.node("Flatten", &[&pooled], &["features"], &[("axis", Attr::Int(1))]);
    if let Some(head) = model.net().head() {
        w.init_f32("fc.weight", &[head.outputs, head.inputs], head.weight());
        w.init_f32("fc.bias", &[head.outputs], head.bias());
        w.node("Gemm", &["features", "fc.weight", "fc.bias"], &["logits"], &[("transB", Attr::Int(1))]);
        w.output("logits");
    }
    w.output("features");
    w.metadata(super::PREPROCESS_KEY, &super::format_preprocess(&p));
    w.metadata("ensembed.architecture", &model.architecture());
    w.write(path)
}

/// Writes `act(conv(x) + bias [+ residual])` and returns its output's name.
pub(crate) fn conv(w: &mut OnnxWriter, x: &str, c: &Conv2d, act: Act, residual: Option<&str>) -> Result<String> {
    let pad = match c.padding {
        Padding::Symmetric(p) => [p, p, p, p],
        Padding::Explicit { before, after } => [before, before, after, after],
        Padding::Same => {
            return Err(Error::config(
                "export",
                "ONNX",
                "TensorFlow-style SAME padding depends on the input size; exporting it is not implemented",
            ))
        }
    };
    let name = w.fresh("conv");
    let (wt, b) = (format!("{name}.weight"), format!("{name}.bias"));
    w.init_f32(&wt, &[c.oc, c.ic, c.kh, c.kw], &c.weight_oihw());
    w.init_f32(&b, &[c.oc], c.bias());
    let s = c.stride as i64;
    let attrs = [
        ("kernel_shape", Attr::Ints(vec![c.kh as i64, c.kw as i64])),
        ("strides", Attr::Ints(vec![s, s])),
        ("pads", Attr::Ints(pad.iter().map(|&v| v as i64).collect())),
    ];
    w.node("Conv", &[x, &wt, &b], &[&name], &attrs);
    let mut out = name;
    if let Some(r) = residual {
        let sum = w.fresh("add");
        w.node("Add", &[&out, r], &[&sum], &[]);
        out = sum;
    }
    match act {
        Act::None => {}
        Act::Relu => {
            let r = w.fresh("relu");
            w.node("Relu", &[&out], &[&r], &[]);
            out = r;
        }
        Act::Relu6 => {
            let (lo, hi, r) = (w.fresh("zero"), w.fresh("six"), w.fresh("relu6"));
            w.init_f32(&lo, &[], &[0.0]);
            w.init_f32(&hi, &[], &[6.0]);
            w.node("Clip", &[&out, &lo, &hi], &[&r], &[]);
            out = r;
        }
    }
    Ok(out)
}

/// Writes a max pool (PyTorch's `MaxPool2d(k, stride, pad)`) and returns its output.
pub(crate) fn max_pool(w: &mut OnnxWriter, x: &str, k: usize, stride: usize, pad: usize) -> String {
    let out = w.fresh("maxpool");
    let (k, s, p) = (k as i64, stride as i64, pad as i64);
    w.node(
        "MaxPool",
        &[x],
        &[&out],
        &[("kernel_shape", Attr::Ints(vec![k, k])), ("strides", Attr::Ints(vec![s, s])), ("pads", Attr::Ints(vec![p; 4]))],
    );
    out
}

/// Writes akamaster's option-A shortcut, `F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))`, as
/// PyTorch exports it: a strided Slice, then a Pad of the channel axis.
pub(crate) fn option_a(w: &mut OnnxWriter, x: &str, pad: usize) -> String {
    let (starts, ends, axes, steps, pads) = (w.fresh("starts"), w.fresh("ends"), w.fresh("axes"), w.fresh("steps"), w.fresh("pads"));
    w.init_i64(&starts, &[0, 0]);
    w.init_i64(&ends, &[i64::MAX, i64::MAX]);
    w.init_i64(&axes, &[2, 3]);
    w.init_i64(&steps, &[2, 2]);
    let p = pad as i64;
    w.init_i64(&pads, &[0, p, 0, 0, 0, p, 0, 0]);
    let (sliced, out) = (w.fresh("slice"), w.fresh("shortcut"));
    w.node("Slice", &[x, &starts, &ends, &axes, &steps], &[&sliced], &[]);
    w.node("Pad", &[&sliced, &pads], &[&out], &[("mode", Attr::String("constant".into()))]);
    out
}

/// Writes the global average pool and returns its `[N, C, 1, 1]` output.
pub(crate) fn global_pool(w: &mut OnnxWriter, x: &str) -> String {
    let out = w.fresh("pool");
    w.node("GlobalAveragePool", &[x], &[&out], &[]);
    out
}
