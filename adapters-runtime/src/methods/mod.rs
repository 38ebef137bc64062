//! Adaptation methods, one folder each: the module, and the slot a model marks for it.

pub mod bottleneck;
pub mod init;
pub mod invertible;
pub mod lora;
pub mod prefix;
pub mod prompt;
pub mod reft;
pub mod svd;

use candle_core::{Tensor, Var};

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
