//! Adaptation methods, one folder each: the module, and the slot a model marks for it.

pub mod activation;
pub mod bottleneck;
pub mod fused;
pub mod init;
pub mod invertible;
pub mod lora;
mod norm;
pub mod prefix;
pub mod prompt;
pub mod reft;
pub mod svd;

pub use norm::LayerNorm;

use candle_core::{Tensor, Var};

use crate::context::ForwardContext;

/// A trainable parameter of an adapter with its name relative to the adapter's module path
/// (`adapter_down.0.weight`, `lora_A`, ...).
pub struct NamedParam {
    pub name: String,
    pub var: Var,
    /// A buffer: saved and loaded with the adapter, never trained (ReFT's orthogonal `base`).
    pub frozen: bool,
}

impl NamedParam {
    pub fn new(name: impl Into<String>, tensor: Tensor) -> candle_core::Result<Self> {
        Ok(NamedParam { name: name.into(), var: Var::from_tensor(&tensor)?, frozen: false })
    }

    /// A saved tensor that training leaves alone.
    pub fn buffer(name: impl Into<String>, tensor: Tensor) -> candle_core::Result<Self> {
        Ok(NamedParam { name: name.into(), var: Var::from_tensor(&tensor)?, frozen: true })
    }
}

pub(crate) use fused::linear;

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
        let mut rng = rng.lock().map_err(|_| candle_core::Error::Msg("dropout generator poisoned".into()))?;
        (0..x.elem_count()).map(|_| if rng.uniform() < keep { scale } else { 0.0 }).collect()
    };
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x.mul(&mask)
}
