//! Bottleneck adapters (`seq_bn`, `double_seq_bn`, `par_bn`, ...): the module and its slot.

mod module;
mod slot;

pub use module::BottleneckAdapter;
pub use slot::BottleneckSlot;
