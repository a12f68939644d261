//! A checked execution plan and running it on one image: the prepared operators ([`Step`]),
//! the activation tensors they read and write, and the interpreter loop. Operators run in file
//! order (TFLite's converter writes them topologically; [`super::plan`] refuses a read of a
//! tensor no earlier operator wrote), one image at a time, and intermediate tensors are freed
//! after their last reader.

use std::path::Path;

use super::conv::{Conv, Depthwise};
use super::ops::{Add, AvgPool, Mean, QType, Requantize, Softmax};
use super::tflite::Model;
use crate::error::Result;

/// A prepared operator.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    Conv(Conv),
    Depthwise(Depthwise),
    Add(Add),
    AvgPool(AvgPool),
    Mean(Mean),
    Requantize(Requantize),
    Softmax(Softmax),
    /// RESHAPE: the bytes are unchanged.
    Copy,
}

/// One operator of the plan: its step and the activation tensors it reads and writes.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub step: Step,
    pub inputs: Vec<usize>,
    pub output: usize,
}

/// An 8-bit activation tensor: element count, type and quantisation.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Act {
    pub len: usize,
    pub q: QType,
    pub scale: f32,
    pub zp: i32,
}

/// A checked, prepared graph.
#[derive(Clone, Debug)]
pub(crate) struct Graph {
    pub nodes: Vec<Node>,
    /// Per tensor index: the activation's description (`None` for constants and unused ones).
    pub acts: Vec<Option<Act>>,
    pub input: usize,
    /// (height, width) of the input image.
    pub input_hw: (usize, usize),
    /// Node computing the pooled features (the last global AVERAGE_POOL_2D or MEAN).
    pub pooled: usize,
    pub pooled_dim: usize,
    /// The SOFTMAX node, when the graph ends in a classifier.
    pub softmax: Option<usize>,
    /// Per node: tensors whose last reader it is.
    pub frees: Vec<Vec<usize>>,
}

impl Graph {
    /// Plans `m` (parsed from `data`, the file at `path`); see [`super::plan`].
    pub(crate) fn plan(m: &Model, data: &[u8], path: &Path) -> Result<Graph> {
        super::plan::plan(m, data, path)
    }

    /// Assembles checked nodes: finds the pooled features (the last AVERAGE_POOL_2D down to 1x1
    /// or MEAN; `None` when there is none) and the classifier's SOFTMAX, and when each tensor
    /// can be freed.
    pub(crate) fn new(
        nodes: Vec<Node>,
        acts: Vec<Option<Act>>,
        input: usize,
        input_hw: (usize, usize),
    ) -> Option<Graph> {
        let pooled = nodes.iter().rposition(|n| match &n.step {
            Step::AvgPool(a) => a.g.oh == 1 && a.g.ow == 1,
            Step::Mean(_) => true,
            _ => false,
        })?;
        let pooled_dim = acts[nodes[pooled].output].map_or(0, |a| a.len);
        let softmax = nodes
            .iter()
            .position(|n| matches!(n.step, Step::Softmax(_)));
        let mut last = vec![None; acts.len()];
        for (i, n) in nodes.iter().enumerate() {
            last[n.output] = Some(i);
            for &t in &n.inputs {
                last[t] = Some(i);
            }
        }
        let mut frees = vec![Vec::new(); nodes.len()];
        for (t, l) in last.iter().enumerate() {
            if let Some(i) = *l {
                frees[i].push(t);
            }
        }
        Some(Graph {
            nodes,
            acts,
            input,
            input_hw,
            pooled,
            pooled_dim,
            softmax,
            frees,
        })
    }

    /// The input activation's description.
    pub(crate) fn input_act(&self) -> Act {
        self.acts[self.input].expect("planned")
    }

    /// The description of activation tensor `t` (one the plan holds).
    pub(crate) fn act(&self, t: usize) -> Act {
        self.acts[t].expect("planned")
    }

    /// Runs nodes `0..=until` on one image's input bytes and returns the values of `keep`
    /// (tensor indices; each must be written by one of those nodes or be the input), in order.
    /// With `trace`, every node's output is kept and returned instead, in node order.
    ///
    /// # Shapes
    /// `input`: `[h, w, 3]` quantised input bytes.
    pub(crate) fn run(
        &self,
        input: Vec<u8>,
        until: usize,
        keep: &[usize],
        trace: bool,
    ) -> Vec<Vec<u8>> {
        let mut vals: Vec<Option<Vec<u8>>> = vec![None; self.acts.len()];
        vals[self.input] = Some(input);
        let mut traced = Vec::new();
        for (i, node) in self.nodes[..=until].iter().enumerate() {
            let mut out = vec![0u8; self.act(node.output).len];
            let x = vals[node.inputs[0]]
                .as_deref()
                .expect("planned: inputs are written before they are read");
            match &node.step {
                Step::Conv(c) => c.run(x, &mut out),
                Step::Depthwise(d) => d.run(x, &mut out),
                Step::Add(a) => a.run(
                    x,
                    vals[node.inputs[1]].as_deref().expect("planned"),
                    &mut out,
                ),
                Step::AvgPool(p) => p.run(x, &mut out),
                Step::Mean(m) => m.run(x, &mut out),
                Step::Requantize(r) => r.run(x, &mut out),
                Step::Softmax(s) => s.run(x, &mut out),
                Step::Copy => out.copy_from_slice(x),
            }
            if trace {
                traced.push(out.clone());
            }
            vals[node.output] = Some(out);
            for &t in &self.frees[i] {
                if !keep.contains(&t) {
                    vals[t] = None;
                }
            }
        }
        if trace {
            return traced;
        }
        keep.iter()
            .map(|&t| vals[t].take().unwrap_or_default())
            .collect()
    }
}
