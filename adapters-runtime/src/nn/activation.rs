//! Activation functions by the names Hugging Face configs use.

use candle_core::{Result, Tensor};

use crate::error::AdapterError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Relu,
    /// `swish` / `silu`.
    Silu,
    /// The exact erf GELU (`gelu`).
    Gelu,
    /// The tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    Tanh,
    Sigmoid,
    /// `leakyrelu`, slope 0.01 as `torch.nn.functional.leaky_relu`.
    LeakyRelu,
    Identity,
}

impl Activation {
    pub fn parse(name: &str) -> crate::error::Result<Self> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "relu" => Activation::Relu,
            "swish" | "silu" => Activation::Silu,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            "leakyrelu" => Activation::LeakyRelu,
            "linear" | "identity" => Activation::Identity,
            other => {
                return Err(AdapterError::InvalidConfig(format!(
                    "unknown activation `{other}`; known: relu, swish, silu, gelu, gelu_new, tanh, sigmoid, leakyrelu, linear"
                )))
            }
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Relu => x.relu(),
            Activation::Silu => x.silu(),
            // Ours: on the CPU a vectorised erf across threads; in training one graph node with
            // its own backward instead of candle's chain of erf/exp nodes.
            Activation::Gelu => super::gelu::gelu_erf(x),
            Activation::GeluTanh => x.gelu(),
            Activation::Tanh => x.tanh(),
            Activation::Sigmoid => candle_nn::ops::sigmoid(x),
            Activation::LeakyRelu => candle_nn::ops::leaky_relu(x, 0.01),
            Activation::Identity => Ok(x.clone()),
        }
    }
}
