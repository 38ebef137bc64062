//! Scaled dot-product attention shared by the encoders, as Hugging Face's eager attention
//! computes it (additive mask with the dtype's lowest value at padded keys).

pub use adapters_runtime::nn::additive_mask;
use candle_core::{Result, Tensor};

/// `[batch, seq, heads * head_dim]` -> `[batch, heads, seq, head_dim]`.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (batch, seq, hidden) = x.dims3()?;
    x.reshape((batch, seq, heads, hidden / heads))?.transpose(1, 2)?.contiguous()
}

/// softmax(q k^T * scale + mask) v, heads merged back to `[batch, seq, hidden]`.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64, dropout: f64, ctx: &adapters_runtime::ForwardContext) -> Result<Tensor> {
    let probs = adapters_runtime::nn::scaled_masked_softmax(&adapters_runtime::nn::matmul_nt(q, k)?, mask, scale)?;
    let probs = adapters_runtime::nn::dropout(&probs, dropout, ctx)?;
    let context = adapters_runtime::nn::matmul(&probs, v)?;
    let (batch, heads, seq, head_dim) = context.dims4()?;
    context.transpose(1, 2)?.reshape((batch, seq, heads * head_dim))
}
