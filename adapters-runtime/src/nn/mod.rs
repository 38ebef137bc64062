//! Generic neural-network pieces that models and adapter methods share: activations, dropout
//! from the forward context's seeded generator, LayerNorm, and the fused kernels (linear on frozen
//! weights, softmax, GELU, LayerNorm, dropout) with their own backward passes: in training each
//! is one graph node whose backward is one parallel pass.

pub mod activation;
mod attention;
mod attention_core;
mod bf16_bits;
pub mod bf16_matmul;
mod dropout;
pub mod elementwise;
pub mod f32_matmul;
mod fast_math;
pub mod fused;
mod gelu;
mod heads;
mod layer_norm_op;
mod linear_nodes;
mod mask;
mod norm;
pub mod quantized;
pub mod rope;
#[cfg(test)]
mod test_support;
mod threads;

pub use attention::{attend_heads, matmul, matmul_nt, scaled_masked_softmax};
pub use dropout::dropout;
pub(crate) use fused::linear;
pub use heads::{merge_heads, split_heads};
pub(crate) use layer_norm_op::layer_norm;
pub use mask::{additive_mask, causal_additive_mask_for, causal_additive_mask_windowed, mask_min};
pub use norm::{LayerNorm, Norm, RmsNorm};
pub use quantized::BaseWeight;
pub use threads::configure_threads;

/// Whether `t` is f32 on the CPU: what this module's own kernels compute on (other dtypes and
/// devices take candle's ops).
pub(crate) fn is_cpu_f32(t: &candle_core::Tensor) -> bool {
    t.dtype() == candle_core::DType::F32 && t.device().is_cpu()
}
