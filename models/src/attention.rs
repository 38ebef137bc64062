//! Scaled dot-product attention shared by the encoders, as Hugging Face's eager attention
//! computes it (additive mask with `f32::MIN` at padded keys).

use candle_core::{DType, Result, Tensor};

/// `[batch, seq]` 0/1 mask to the additive `[batch, 1, 1, seq]` bias: 0 where attended,
/// `f32::MIN` where masked (what `transformers` adds in eager attention).
pub fn additive_mask(attention_mask: &Tensor) -> Result<Tensor> {
    let mask = attention_mask.to_dtype(DType::F32)?;
    let (batch, seq) = mask.dims2()?;
    ((1.0 - mask)? * f64::from(f32::MIN))?.reshape((batch, 1, 1, seq))
}

/// `[batch, seq, heads * head_dim]` -> `[batch, heads, seq, head_dim]`.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (batch, seq, hidden) = x.dims3()?;
    x.reshape((batch, seq, heads, hidden / heads))?.transpose(1, 2)?.contiguous()
}

/// softmax(q k^T * scale + mask) v, heads merged back to `[batch, seq, hidden]`.
pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64, dropout: f64, ctx: &adapters_runtime::ForwardContext) -> Result<Tensor> {
    let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
    // candle's fused softmax has no gradient: training (a tracked graph) takes ours, which has.
    let probs = if scores.track_op() { adapters_runtime::nn::fused::softmax_last_dim(&scores)? } else { candle_nn::ops::softmax_last_dim(&scores)? };
    let probs = adapters_runtime::nn::dropout(&probs, dropout, ctx)?;
    let context = probs.matmul(v)?;
    let (batch, heads, seq, head_dim) = context.dims4()?;
    context.transpose(1, 2)?.reshape((batch, seq, heads * head_dim))
}
