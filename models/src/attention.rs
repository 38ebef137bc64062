//! Scaled dot-product attention shared by the encoders, as Hugging Face's eager attention
//! computes it (additive mask with the dtype's lowest value at padded keys).

pub use adapters_runtime::nn::additive_mask;
use candle_core::{Result, Tensor};

pub use adapters_runtime::nn::split_heads;

/// softmax(q k^T * scale + mask) v, heads merged back to `[batch, seq, hidden]`.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64, dropout: f64, ctx: &adapters_runtime::ForwardContext) -> Result<Tensor> {
    adapters_runtime::nn::merge_heads(&adapters_runtime::nn::attend_heads(q, k, v, mask, scale, dropout, ctx)?)
}
