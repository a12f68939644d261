//! The arithmetic the hot loops are made of: one matrix-multiply entry point over the `gemm`
//! crate, and the cheap elementwise passes fused so that each touches memory once. Nothing here
//! allocates or does I/O.

mod activation;
mod matmul;

pub use activation::{bias_act_forward, relu_backward_bias, transpose};
pub use matmul::{matmul, Layout};
