//! Flexible prediction heads, AdapterHub-compatible: the head types of the Python library's
//! `*AdapterModel` classes, their configs, files and losses.

mod config;
mod file;
mod head;
mod loss;
mod setup;

pub use config::{HeadConfig, HeadType};
pub use file::{HeadFile, HEAD_CONFIG_NAME, HEAD_WEIGHTS_PICKLE, HEAD_WEIGHTS_SAFE};
pub use head::{HeadDims, HeadOutput, PredictionHead};
pub use loss::{bce_with_logits, cross_entropy, head_loss, IGNORE_INDEX};
pub use setup::HeadSetup;
