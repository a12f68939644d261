//! Runs a [`Plan`] on one image: the convolutions, pools and the head go through the layers of
//! [`crate::backbone::cnn`]; the few operators those do not cover (elementwise functions with
//! broadcasting, a standalone batch norm, average pooling, flatten, slice, pad) are here. Every
//! value's size is checked against [`MAX_ELEMS`] before its buffer is taken, since a hostile
//! graph can ask for a padding or a map far larger than its file.

use super::plan::{ConvKind, Op, Plan, Rhs, Unary};
use crate::backbone::cnn::{bottleneck, global_avg_pool, max_pool, softmax, Act, Fmap, Padding, Workspace};
use crate::error::{Error, Result};

/// Largest value (floats) a step may produce: 1 GiB.
pub const MAX_ELEMS: usize = 1 << 28;

/// A runtime value of batch 1: an NCHW map held NHWC, or a `[1, d]` row (`flat`, held as a
/// 1x1xd map).
#[derive(Debug)]
pub struct Val {
    pub map: Fmap,
    pub flat: bool,
}

/// For each slot, the last step reading it (`usize::MAX` for none), so that buffers return to the
/// workspace as soon as they are dead.
pub fn last_uses(plan: &Plan) -> Vec<usize> {
    let mut last = vec![usize::MAX; plan.slots];
    for (i, s) in plan.steps.iter().enumerate() {
        for r in s.reads() {
            last[r] = i;
        }
    }
    last
}

/// Runs steps `0..=stop` on the input map and returns the output of step `stop`.
///
/// # Shapes
/// `x`: `[h, w, 3]`; returns the step's value (`[1, d]` rows as `1 x 1 x d` maps).
pub fn run(plan: &Plan, last: &[usize], x: Fmap, stop: usize, ws: &mut Workspace, threads: usize) -> Result<Val> {
    let mut vals: Vec<Option<Val>> = (0..plan.slots).map(|_| None).collect();
    vals[0] = Some(Val { map: x, flat: false });
    for (i, s) in plan.steps.iter().enumerate().take(stop + 1) {
        let v = step(&s.op, s.input, &vals, ws, threads).map_err(|e| match e {
            Error::Shape { what, expected, found } => Error::shape(format!("{what} at ONNX {}", s.node), expected, found),
            e => e,
        })?;
        vals[s.output] = Some(v);
        for (slot, l) in last.iter().enumerate() {
            if *l == i && slot != plan.steps[stop].output {
                if let Some(v) = vals[slot].take() {
                    ws.recycle(v.map);
                }
            }
        }
    }
    let out = vals[plan.steps[stop].output].take().expect("the stop step ran");
    for v in vals.into_iter().flatten() {
        ws.recycle(v.map);
    }
    Ok(out)
}

fn get(vals: &[Option<Val>], slot: usize) -> &Val {
    vals[slot].as_ref().expect("a value is read before its last use")
}

fn map_input<'v>(v: &'v Val, what: &str) -> Result<&'v Fmap> {
    if v.flat {
        return Err(Error::shape(format!("{what} input"), "an [N, C, H, W] map", format!("a [1, {}] row", v.map.c)));
    }
    Ok(&v.map)
}

fn check_size(what: &str, h: usize, w: usize, c: usize) -> Result<()> {
    match h.checked_mul(w).and_then(|p| p.checked_mul(c)) {
        Some(n) if n <= MAX_ELEMS => Ok(()),
        _ => Err(Error::shape(format!("{what} output"), format!("at most {MAX_ELEMS} values"), format!("{h}x{w}x{c}"))),
    }
}

fn step(op: &Op, input: usize, vals: &[Option<Val>], ws: &mut Workspace, threads: usize) -> Result<Val> {
    let v = get(vals, input);
    let map = |m: Fmap| Ok(Val { map: m, flat: false });
    match op {
        Op::Conv { conv, act, residual } => {
            let x = map_input(v, "convolution")?;
            let res = residual.map(|r| get(vals, r));
            if let Some(r) = res {
                map_input(r, "residual")?;
            }
            match conv {
                ConvKind::Dense(c) => {
                    let (oh, ow) = c.out_size(x.h, x.w)?;
                    check_size("convolution", oh, ow, c.oc)?;
                    map(c.forward(x, res.map(|r| &r.map), *act, ws, threads)?)
                }
                ConvKind::Depthwise(d) => {
                    let (oh, ow) = d.out_size(x.h, x.w)?;
                    check_size("depthwise convolution", oh, ow, d.c)?;
                    let Some(r) = res else { return map(d.forward(x, *act, ws)?) };
                    let mut out = d.forward(x, Act::None, ws)?;
                    if (r.map.h, r.map.w, r.map.c) != (out.h, out.w, out.c) {
                        return Err(Error::shape("residual", format!("{}x{}x{}", out.h, out.w, out.c), format!("{}x{}x{}", r.map.h, r.map.w, r.map.c)));
                    }
                    let (lo, hi) = bounds(*act);
                    for (o, &rv) in out.data.iter_mut().zip(&r.map.data) {
                        *o = (*o + rv).max(lo).min(hi);
                    }
                    map(out)
                }
            }
        }
        Op::MbConv(b) => {
            let x = map_input(v, "MBConv")?;
            // The maps the steps would have made, though the block holds only bands of them.
            let (oh, ow) = b.depthwise.out_size(x.h, x.w)?;
            check_size("MBConv expansion", x.h, x.w, b.depthwise.c)?;
            check_size("MBConv depthwise convolution", oh, ow, b.depthwise.c)?;
            check_size("MBConv", oh, ow, b.project.oc)?;
            map(b.forward(x, ws, threads)?)
        }
        Op::Bottleneck(c) => {
            let x = map_input(v, "bottleneck")?;
            for conv in c.iter() {
                check_size("bottleneck", x.h, x.w, conv.oc)?;
            }
            map(bottleneck::forward(&c[0], &c[1], &c[2], x, ws, threads)?)
        }
        Op::Unary(u) => {
            let mut out = ws.fmap(v.map.h, v.map.w, v.map.c);
            match *u {
                Unary::Clip(lo, hi) => {
                    for (o, &x) in out.data.iter_mut().zip(&v.map.data) {
                        *o = x.max(lo).min(hi);
                    }
                }
                Unary::Sigmoid => {
                    for (o, &x) in out.data.iter_mut().zip(&v.map.data) {
                        *o = 1.0 / (1.0 + (-x).exp());
                    }
                }
            }
            Ok(Val { map: out, flat: v.flat })
        }
        Op::Binary { mul, rhs } => binary(v, rhs, *mul, vals, ws),
        Op::Affine { scale, shift } => {
            if v.map.c != scale.len() {
                return Err(Error::shape("batch norm channels", scale.len(), v.map.c));
            }
            let mut out = ws.fmap(v.map.h, v.map.w, v.map.c);
            for (o, x) in out.data.chunks_exact_mut(v.map.c).zip(v.map.data.chunks_exact(v.map.c)) {
                for (((o, &x), &s), &b) in o.iter_mut().zip(x).zip(scale).zip(shift) {
                    *o = x * s + b;
                }
            }
            Ok(Val { map: out, flat: v.flat })
        }
        Op::MaxPool { k, stride, pad } => map(max_pool(map_input(v, "max pool")?, *k, *stride, *pad, ws)?),
        Op::AvgPool { k, stride, pad, count_pad } => map(avg_pool(map_input(v, "average pool")?, *k, *stride, *pad, *count_pad, ws)?),
        Op::GlobalAvgPool { flat } => {
            let x = map_input(v, "global average pool")?;
            if x.pixels() == 0 {
                return Err(Error::shape("global average pool input", "at least one pixel", "0"));
            }
            let mut out = ws.fmap(1, 1, x.c);
            out.data.copy_from_slice(&global_avg_pool(x));
            Ok(Val { map: out, flat: *flat })
        }
        Op::Flatten { expect } => {
            let m = &v.map;
            let d = m.h * m.w * m.c;
            if let Some(e) = expect {
                if *e != d {
                    return Err(Error::shape("reshape to [1, d]", e, d));
                }
            }
            let mut out = ws.fmap(1, 1, d);
            if m.pixels() == 1 || v.flat {
                out.data.copy_from_slice(&m.data);
            } else {
                // NCHW order: channel-major.
                let p = m.pixels();
                for (px, src) in m.data.chunks_exact(m.c).enumerate() {
                    for (c, &x) in src.iter().enumerate() {
                        out.data[c * p + px] = x;
                    }
                }
            }
            Ok(Val { map: out, flat: true })
        }
        Op::Linear(l) => {
            if !(v.flat || v.map.pixels() == 1) {
                return Err(Error::shape("Gemm/MatMul input", format!("a [1, {}] row", l.inputs), format!("a {}x{}x{} map", v.map.c, v.map.h, v.map.w)));
            }
            if v.map.c != l.inputs {
                return Err(Error::shape("Gemm/MatMul input features", l.inputs, v.map.c));
            }
            let mut out = ws.fmap(1, 1, l.outputs);
            out.data.copy_from_slice(&l.forward(&v.map.data, 1));
            Ok(Val { map: out, flat: true })
        }
        Op::Softmax => {
            let mut out = ws.fmap(1, 1, v.map.c);
            out.data.copy_from_slice(&softmax(&v.map.data));
            Ok(Val { map: out, flat: true })
        }
        Op::Slice { starts, ends, steps } => {
            let x = map_input(v, "slice")?;
            let dims = [x.h, x.w, x.c];
            let mut r = [(0usize, 0usize, 1usize); 3];
            for a in 0..3 {
                let d = dims[a] as i64;
                let fix = |v: i64| (if v < 0 { v.saturating_add(d) } else { v }).clamp(0, d);
                let (s, e) = (fix(starts[a]), fix(ends[a]));
                let n = if e > s { (e - s - 1) / steps[a] + 1 } else { 0 };
                r[a] = (s as usize, n as usize, steps[a] as usize);
            }
            if r.iter().any(|a| a.1 == 0) {
                // Every later step assumes at least one pixel and one channel.
                return Err(Error::shape("slice output", "at least 1x1x1", format!("{}x{}x{}", r[0].1, r[1].1, r[2].1)));
            }
            let mut out = ws.fmap(r[0].1, r[1].1, r[2].1);
            let oc = out.c;
            for y in 0..out.h {
                for xx in 0..out.w {
                    let (iy, ix) = (r[0].0 + y * r[0].2, r[1].0 + xx * r[1].2);
                    let src = &x.data[(iy * x.w + ix) * x.c..(iy * x.w + ix + 1) * x.c];
                    let dst = &mut out.data[(y * out.w + xx) * oc..(y * out.w + xx + 1) * oc];
                    for (c, d) in dst.iter_mut().enumerate() {
                        *d = src[r[2].0 + c * r[2].2];
                    }
                }
            }
            map(out)
        }
        Op::Pad { before, after } => {
            let x = map_input(v, "pad")?;
            let (oh, ow, oc) = (x.h + before[0] + after[0], x.w + before[1] + after[1], x.c + before[2] + after[2]);
            check_size("pad", oh, ow, oc)?;
            let mut out = ws.fmap(oh, ow, oc);
            out.data.fill(0.0);
            for y in 0..x.h {
                for xx in 0..x.w {
                    let o = ((y + before[0]) * ow + xx + before[1]) * oc + before[2];
                    out.data[o..o + x.c].copy_from_slice(&x.data[(y * x.w + xx) * x.c..(y * x.w + xx + 1) * x.c]);
                }
            }
            map(out)
        }
    }
}

fn bounds(act: Act) -> (f32, f32) {
    match act {
        Act::None => (f32::NEG_INFINITY, f32::INFINITY),
        Act::Relu => (0.0, f32::INFINITY),
        Act::Relu6 => (0.0, 6.0),
    }
}

/// `Add`/`Mul` with the broadcasts CNNs use: equal shapes, a `[1, c, 1, 1]` value against a
/// `[1, c, h, w]` one (squeeze-and-excitation), a scalar, or a per-channel constant.
fn binary(v: &Val, rhs: &Rhs, mul: bool, vals: &[Option<Val>], ws: &mut Workspace) -> Result<Val> {
    let f = |a: f32, b: f32| if mul { a * b } else { a + b };
    let (a, b): (&Val, &[f32]) = match rhs {
        Rhs::Slot(s) => {
            let o = get(vals, *s);
            let (ma, mb) = (&v.map, &o.map);
            if v.flat != o.flat && !(ma.pixels() == 1 && mb.pixels() == 1) {
                return Err(Error::shape("Add/Mul operands", "two maps or two rows", "a map and a row"));
            }
            if (ma.h, ma.w, ma.c) == (mb.h, mb.w, mb.c) {
                let mut out = ws.fmap(ma.h, ma.w, ma.c);
                for ((o, &x), &y) in out.data.iter_mut().zip(&ma.data).zip(&mb.data) {
                    *o = f(x, y);
                }
                return Ok(Val { map: out, flat: v.flat });
            }
            // One side is [1, c, 1, 1]: it broadcasts over the other's pixels.
            if mb.pixels() == 1 && mb.c == ma.c {
                (v, &mb.data[..])
            } else if ma.pixels() == 1 && ma.c == mb.c {
                (o, &ma.data[..])
            } else {
                return Err(Error::shape("Add/Mul operands", format!("{}x{}x{} (HxWxC) or 1x1x{}", ma.h, ma.w, ma.c, ma.c), format!("{}x{}x{}", mb.h, mb.w, mb.c)));
            }
        }
        Rhs::Const { values, row } => {
            if *row && !(v.flat || v.map.pixels() == 1) {
                return Err(Error::shape("Add/Mul constant", "a [c, 1, 1] constant on a map", format!("a [{}] constant, broadcasting along W", values.len())));
            }
            if values.len() != 1 && values.len() != v.map.c {
                return Err(Error::shape("Add/Mul constant", format!("1 or {} values", v.map.c), values.len()));
            }
            (v, &values[..])
        }
    };
    let m = &a.map;
    let mut out = ws.fmap(m.h, m.w, m.c);
    for (o, x) in out.data.chunks_exact_mut(m.c).zip(m.data.chunks_exact(m.c)) {
        if b.len() == 1 {
            for (o, &x) in o.iter_mut().zip(x) {
                *o = f(x, b[0]);
            }
        } else {
            for ((o, &x), &y) in o.iter_mut().zip(x).zip(b) {
                *o = f(x, y);
            }
        }
    }
    Ok(Val { map: out, flat: a.flat })
}

/// Average pooling over a `k` x `k` window; `count_pad`: padding zeros count in the divisor
/// (ONNX's `count_include_pad`), else only the pixels inside do.
///
/// # Shapes
/// `x`: `[h, w, c]`; returns `[oh, ow, c]`.
fn avg_pool(x: &Fmap, k: usize, stride: usize, pad: usize, count_pad: bool, ws: &mut Workspace) -> Result<Fmap> {
    let p = Padding::Symmetric(pad);
    let (Some((oh, _)), Some((ow, _))) = (p.resolve(x.h, k, stride), p.resolve(x.w, k, stride)) else {
        return Err(Error::shape("average pool input", format!("at least {k}x{k}"), format!("{}x{}", x.h, x.w)));
    };
    let c = x.c;
    let mut out = ws.fmap(oh, ow, c);
    out.data.fill(0.0);
    for oy in 0..oh {
        for ox in 0..ow {
            let o = &mut out.data[(oy * ow + ox) * c..(oy * ow + ox + 1) * c];
            let mut n = 0usize;
            for ky in 0..k {
                let iy = (oy * stride + ky).wrapping_sub(pad);
                for kx in 0..k {
                    let ix = (ox * stride + kx).wrapping_sub(pad);
                    if iy >= x.h || ix >= x.w {
                        continue;
                    }
                    n += 1;
                    for (ov, &xv) in o.iter_mut().zip(&x.data[(iy * x.w + ix) * c..(iy * x.w + ix + 1) * c]) {
                        *ov += xv;
                    }
                }
            }
            // The window's part inside the padded input (what count_include_pad divides by).
            let span = |o: usize, size: usize| (o * stride + k).min(size + 2 * pad) - o * stride;
            let d = if count_pad { span(oy, x.h) * span(ox, x.w) } else { n.max(1) };
            for ov in o.iter_mut() {
                *ov /= d as f32;
            }
        }
    }
    Ok(out)
}
