//! MLP initialisation as PyTorch's `nn.Linear` does it (kaiming-uniform with a = sqrt(5), which
//! works out to U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for the weights, and the same bound for the
//! bias), drawn from the run's seeded stream so that the same seed gives the same MLPs.

use rand::Rng;

use crate::config::BiasInit;
use crate::model::mlp::{Linear, Mlp};

/// A freshly initialised MLP with layer widths `widths[0] -> widths[1] -> ... -> widths[L]`.
pub fn init_mlp(widths: &[usize], final_relu: bool, last_bias: BiasInit, rng: &mut impl Rng) -> Mlp {
    let n_layers = widths.len() - 1;
    let layers = (0..n_layers)
        .map(|l| {
            let (fan_in, fan_out) = (widths[l], widths[l + 1]);
            let bound = 1.0 / (fan_in as f32).sqrt();
            let mut draw = |len: usize| -> Vec<f32> {
                (0..len).map(|_| (rng.random::<f32>() * 2.0 - 1.0) * bound).collect()
            };
            let weight = draw(fan_in * fan_out);
            let mut bias = draw(fan_out);
            if l + 1 == n_layers && last_bias == BiasInit::Zero {
                bias.fill(0.0);
            }
            Linear {
                weight,
                bias,
                fan_in,
                fan_out,
            }
        })
        .collect();
    Mlp { layers, final_relu }
}
