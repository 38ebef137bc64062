//! Generic neural-network pieces that models and adapter methods share: activations, dropout
//! from the forward context's seeded generator, LayerNorm, and the fused kernels (linear on frozen
//! weights, softmax, GELU, LayerNorm) with their own backward passes.

pub mod activation;
mod attention;
mod bf16_bits;
pub mod bf16_matmul;
mod dropout;
pub mod elementwise;
mod fast_math;
pub mod fused;
mod mask;
mod norm;
pub mod quantized;
pub mod rope;
mod threads;

pub use attention::{matmul, matmul_nt, scaled_masked_softmax};
pub use dropout::dropout;
pub(crate) use fused::linear;
pub use mask::{additive_mask, causal_additive_mask_for, causal_additive_mask_windowed, mask_min};
pub use norm::{LayerNorm, Norm, RmsNorm};
pub use quantized::BaseWeight;
pub use threads::cache_thread_count;
