//! The LoRA family (LoRA, IA3, DoRA): the module and the linear layer that carries it.

mod linear;
mod module;

pub use linear::LoRALinear;
pub use module::{LoraModule, SharedVera};
