//! One backbone's MLP, phi_j: R^d -> R^{d_j}, with its forward and backward written by hand over
//! [`crate::kernels`]. Hand-written because the whole training step is three GEMMs per layer plus
//! fused elementwise passes: an autodiff framework adds allocation and dispatch per op and was
//! measured 1.2-3x slower on this shape (see the README); the gradients are proven by
//! finite-difference tests instead.

use crate::kernels::{bias_act_forward, matmul, relu_backward_bias, transpose, Layout};

/// A linear layer in PyTorch's layout: `y = x · Wᵀ + b`.
#[derive(Clone, Debug, PartialEq)]
pub struct Linear {
    /// `[fan_out, fan_in]`
    pub weight: Vec<f32>,
    /// `[fan_out]`
    pub bias: Vec<f32>,
    pub fan_in: usize,
    pub fan_out: usize,
}

/// A stack of linear layers with a ReLU after each hidden layer and, when `final_relu`, after
/// the last one too.
#[derive(Clone, Debug, PartialEq)]
pub struct Mlp {
    pub layers: Vec<Linear>,
    pub final_relu: bool,
}

/// Gradients of every parameter of one MLP, in the same layout as the parameters.
#[derive(Clone, Debug)]
pub struct MlpGrads {
    pub weight: Vec<Vec<f32>>,
    pub bias: Vec<Vec<f32>>,
}

/// Activations and scratch for one batch of up to `capacity` rows, allocated once per run so
/// that the training loop never allocates.
#[derive(Clone, Debug)]
pub struct Tape {
    capacity: usize,
    rows: usize,
    /// Post-activation output of each layer, feature-major. `[fan_out_l, capacity]`
    acts: Vec<Vec<f32>>,
    /// Ping-pong gradient buffers, feature-major. `[max width, capacity]`
    grad: [Vec<f32>; 2],
}

impl Mlp {
    /// Input dimension.
    pub fn input_dim(&self) -> usize {
        self.layers[0].fan_in
    }

    /// Output dimension.
    pub fn output_dim(&self) -> usize {
        self.layers.last().unwrap().fan_out
    }

    fn relu_at(&self, l: usize) -> bool {
        l + 1 < self.layers.len() || self.final_relu
    }

    /// Zero gradients shaped like this MLP's parameters.
    pub fn zero_grads(&self) -> MlpGrads {
        MlpGrads {
            weight: self.layers.iter().map(|l| vec![0.0; l.weight.len()]).collect(),
            bias: self.layers.iter().map(|l| vec![0.0; l.bias.len()]).collect(),
        }
    }

    /// A tape for batches of up to `capacity` rows.
    pub fn tape(&self, capacity: usize) -> Tape {
        let width = self
            .layers
            .iter()
            .map(|l| l.fan_in.max(l.fan_out))
            .max()
            .unwrap_or(0);
        Tape {
            capacity,
            rows: 0,
            acts: self.layers.iter().map(|l| vec![0.0; capacity * l.fan_out]).collect(),
            grad: [vec![0.0; capacity * width], vec![0.0; capacity * width]],
        }
    }

    /// Runs the MLP on the feature-major batch `xt`, keeping the activations on `tape` for
    /// [`Mlp::backward`].
    ///
    /// # Shapes
    /// `xt`: `[input_dim, b]`; returns `[output_dim, b]`.
    pub fn forward<'t>(&self, xt: &[f32], b: usize, tape: &'t mut Tape, threads: usize) -> &'t [f32] {
        assert!(b <= tape.capacity, "batch {b} exceeds tape capacity {}", tape.capacity);
        tape.rows = b;
        for (l, layer) in self.layers.iter().enumerate() {
            let (before, after) = tape.acts.split_at_mut(l);
            let input: &[f32] = if l == 0 { xt } else { &before[l - 1][..layer.fan_in * b] };
            let y = &mut after[0][..layer.fan_out * b];
            // [out, b] = [out, in] · [in, b]
            matmul(y, &layer.weight, Layout::N, input, Layout::N, layer.fan_out, b, layer.fan_in, false, threads);
            bias_act_forward(y, &layer.bias, self.relu_at(l));
        }
        self.output(tape)
    }

    /// The last forward's output. `[output_dim, b]`
    pub fn output<'t>(&self, tape: &'t Tape) -> &'t [f32] {
        &tape.acts[self.layers.len() - 1][..self.output_dim() * tape.rows]
    }

    /// The last forward's output (`[output_dim, b]`) beside the buffer into which the caller
    /// writes d loss / d output before [`Mlp::backward`] (same shape).
    pub fn output_and_grad<'t>(&self, tape: &'t mut Tape) -> (&'t [f32], &'t mut [f32]) {
        let n = tape.rows * self.output_dim();
        (&tape.acts[self.layers.len() - 1][..n], &mut tape.grad[0][..n])
    }

    /// Back-propagates the gradient in [`Mlp::output_and_grad`] through the last forward on
    /// `xt`. Writes parameter gradients into `grads` when given (overwriting), and the input
    /// gradient into `dxt` when given (adding to it when `accumulate_dx`, so that several MLPs
    /// can sum their contributions to one representation). The output gradient is consumed.
    ///
    /// # Shapes
    /// `xt`, `dxt`: `[input_dim, b]`.
    pub fn backward(
        &self,
        xt: &[f32],
        tape: &mut Tape,
        mut grads: Option<&mut MlpGrads>,
        dxt: Option<&mut [f32]>,
        accumulate_dx: bool,
        threads: usize,
    ) {
        let b = tape.rows;
        let n_layers = self.layers.len();
        let mut cur = 0usize;
        let mut bias_scratch = Vec::new();
        for l in (0..n_layers).rev() {
            let layer = &self.layers[l];
            let [g0, g1] = &mut tape.grad;
            let (dcur, dnext) = if cur == 0 { (g0, g1) } else { (g1, g0) };
            let dz = &mut dcur[..layer.fan_out * b];
            let db: &mut [f32] = match grads.as_deref_mut() {
                Some(g) => &mut g.bias[l],
                None => {
                    bias_scratch.resize(layer.fan_out, 0.0);
                    &mut bias_scratch
                }
            };
            relu_backward_bias(dz, &tape.acts[l][..layer.fan_out * b], self.relu_at(l), db);
            let input: &[f32] = if l == 0 { xt } else { &tape.acts[l - 1][..layer.fan_in * b] };
            if let Some(g) = grads.as_deref_mut() {
                // dW [out, in] = dz [out, b] · inputᵀ [b, in]
                matmul(&mut g.weight[l], dz, Layout::N, input, Layout::T, layer.fan_out, layer.fan_in, b, false, threads);
            }
            if l > 0 {
                // d input [in, b] = Wᵀ [in, out] · dz [out, b]
                let dprev = &mut dnext[..layer.fan_in * b];
                matmul(dprev, &layer.weight, Layout::T, dz, Layout::N, layer.fan_in, b, layer.fan_out, false, threads);
                cur ^= 1;
            } else if let Some(dxt) = dxt {
                matmul(dxt, &layer.weight, Layout::T, dz, Layout::N, layer.fan_in, b, layer.fan_out, accumulate_dx, threads);
                break;
            }
        }
    }

    /// Floating-point operations of one forward over `b` rows (multiply-adds count 2).
    pub fn forward_flops(&self, b: usize) -> f64 {
        self.layers
            .iter()
            .map(|l| 2.0 * b as f64 * l.fan_in as f64 * l.fan_out as f64)
            .sum()
    }

    /// Runs the MLP on many rows in chunks, without keeping a tape (for diagnostics).
    ///
    /// # Shapes
    /// `x`: `[n, input_dim]` (sample-major); returns `[n, output_dim]`.
    pub fn apply(&self, x: &[f32], n: usize, threads: usize) -> Vec<f32> {
        let chunk = 1024.min(n.max(1));
        let mut tape = self.tape(chunk);
        let (d_in, d_out) = (self.input_dim(), self.output_dim());
        let mut xt = vec![0.0; chunk * d_in];
        let mut out = vec![0.0; n * d_out];
        for (xs, ys) in x.chunks(chunk * d_in).zip(out.chunks_mut(chunk * d_out)) {
            let rows = xs.len() / d_in;
            transpose(xs, rows, d_in, &mut xt[..rows * d_in]);
            let yt = self.forward(&xt[..rows * d_in], rows, &mut tape, threads);
            transpose(yt, d_out, rows, ys);
        }
        out
    }
}
