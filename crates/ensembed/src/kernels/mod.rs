//! The arithmetic the hot loops are made of: one matrix-multiply entry point over the `gemm`
//! crate, a hand-written AVX-512 one for weights packed once at load (the CNN convolutions), and
//! the cheap elementwise passes fused so that each touches memory once. Nothing here allocates
//! (beyond packing) or does I/O.

mod activation;
mod matmul;
mod packed;

pub use activation::{bias_act_forward, relu_backward_bias, transpose};
pub use matmul::{matmul, Layout};
pub use packed::{
    available as packed_available, matmul_packed, matmul_packed_shifted,
    matmul_packed_shifted_uninit, matmul_packed_uninit, set_enabled as set_packing, Epilogue,
    PackedB, ShiftedRows, NR,
};
