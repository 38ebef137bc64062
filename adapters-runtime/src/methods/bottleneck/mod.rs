//! Bottleneck adapters (`seq_bn`, `double_seq_bn`, `par_bn`, ...): the module and its slot.

mod fusion;
mod module;
mod slot;

pub use fusion::FusionLayer;
pub use module::BottleneckAdapter;
pub use slot::BottleneckSlot;
