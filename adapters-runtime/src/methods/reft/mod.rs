//! ReFT (LoReft, NoReft, DiReft): low-rank interventions on the hidden states a layer outputs,
//! at the first and last positions of each sequence. `unit` is one intervention, `slot` the
//! place at the end of a layer where they run, `orthogonal` LoReft's parametrization.

pub mod orthogonal;
mod slot;
mod unit;

pub(crate) use slot::check_positions;
pub use slot::{ReftModule, ReftSlot};
pub use unit::ReftUnit;
