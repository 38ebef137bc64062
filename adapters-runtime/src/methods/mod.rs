//! Adaptation methods, one folder each: the module, and the slot a model marks for it.

pub mod activation;
pub mod bottleneck;
pub mod init;
pub mod lora;
mod norm;

pub use norm::LayerNorm;

use candle_core::{Tensor, Var};

/// A trainable parameter of an adapter with its name relative to the adapter's module path
/// (`adapter_down.0.weight`, `lora_A`, ...).
pub struct NamedParam {
    pub name: String,
    pub var: Var,
}

impl NamedParam {
    pub fn new(name: impl Into<String>, tensor: Tensor) -> candle_core::Result<Self> {
        Ok(NamedParam { name: name.into(), var: Var::from_tensor(&tensor)? })
    }
}

/// `x W^T + b` for inputs of any rank (the last dimension is the feature dimension).
pub(crate) fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let out = x.broadcast_matmul(&weight.t()?)?;
    match bias {
        Some(b) => out.broadcast_add(b),
        None => Ok(out),
    }
}

/// Inverted dropout, active only in training.
pub fn dropout(x: &Tensor, p: f64, train: bool) -> candle_core::Result<Tensor> {
    if !train || p <= 0.0 {
        return Ok(x.clone());
    }
    candle_nn::ops::dropout(x, p as f32)
}
