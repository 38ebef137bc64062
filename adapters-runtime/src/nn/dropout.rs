//! Dropout with masks from the forward context's seeded generator.

use candle_core::Tensor;

use crate::context::ForwardContext;

/// Inverted dropout, active only in training. Masks come from the context's seeded generator
/// (candle's own dropout draws from an unseedable thread RNG); without one, from candle's.
pub fn dropout(x: &Tensor, p: f64, ctx: &ForwardContext) -> candle_core::Result<Tensor> {
    if !ctx.train() || p <= 0.0 {
        return Ok(x.clone());
    }
    let Some(rng) = ctx.dropout_rng() else {
        return candle_nn::ops::dropout(x, p as f32);
    };
    let keep = 1.0 - p as f32;
    let scale = 1.0 / keep;
    let mask: Vec<f32> = {
        let mut rng = rng.lock().map_err(|_| crate::error::internal("dropout generator poisoned"))?;
        (0..x.elem_count()).map(|_| if rng.uniform() < keep { scale } else { 0.0 }).collect()
    };
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x.mul(&mask)
}
