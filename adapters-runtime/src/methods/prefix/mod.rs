//! Prefix tuning: model-level modules that produce every layer's prefix (`pool`), and the slot in
//! each attention module that prepends them (`slot`).

mod pool;
mod slot;

pub use pool::{PrefixGroup, PrefixModule, PrefixShape, PrefixStates};
pub(crate) use slot::{split_pool_key, PrefixGate};
pub use slot::{PrefixPadding, PrefixSlot};
