//! Bottleneck adapters (`seq_bn`, `double_seq_bn`, `par_bn`, ...): the module and its slot.

mod fusion;
mod module;
mod phm;
mod slot;

pub use fusion::FusionLayer;
pub use module::BottleneckAdapter;
pub use phm::SharedPhm;
pub use slot::{BottleneckInputs, BottleneckSlot};
