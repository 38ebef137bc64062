//! `PrefixTuningConfig` and `PromptTuningConfig`, every field as the Python dataclasses write them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{AdapterError, Result};

fn prefix_arch() -> String {
    "prefix_tuning".into()
}
fn prompt_arch() -> String {
    "prompt_tuning".into()
}
fn yes() -> bool {
    true
}
fn prefix_length() -> usize {
    30
}
fn bottleneck_size() -> usize {
    512
}
fn tanh() -> String {
    "tanh".into()
}
fn prompt_length() -> usize {
    10
}
fn random_uniform() -> String {
    "random_uniform".into()
}
fn prefix_combine() -> String {
    "prefix".into()
}

/// Prefix tuning (Li & Liang, 2021): a prefix of keys and values per attention layer, produced
/// by an embedding and an MLP (or stored directly with `flat`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefixTuningConfig {
    #[serde(default = "prefix_arch")]
    pub architecture: String,
    #[serde(default = "yes")]
    pub encoder_prefix: bool,
    #[serde(default = "yes")]
    pub cross_prefix: bool,
    #[serde(default)]
    pub leave_out: Vec<usize>,
    #[serde(default)]
    pub flat: bool,
    #[serde(default = "prefix_length")]
    pub prefix_length: usize,
    #[serde(default = "bottleneck_size")]
    pub bottleneck_size: usize,
    #[serde(default = "tanh")]
    pub non_linearity: String,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub use_gating: bool,
    #[serde(default = "yes")]
    pub shared_gating: bool,
    #[serde(default)]
    pub init_weights_seed: Option<u64>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl PrefixTuningConfig {
    pub fn validate(&self) -> Result<()> {
        if self.prefix_length == 0 {
            return Err(AdapterError::InvalidConfig("`prefix_length`: must be at least 1".into()));
        }
        if !self.flat && self.bottleneck_size == 0 {
            return Err(AdapterError::InvalidConfig("`bottleneck_size`: must be at least 1".into()));
        }
        crate::nn::activation::Activation::parse(&self.non_linearity).map_err(|e| AdapterError::InvalidConfig(format!("`non_linearity`: {e}")))?;
        Ok(())
    }
}

/// Prompt tuning (Lester et al., 2021): trainable embeddings inserted before (or after the first
/// token of) the embedded input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptTuningConfig {
    #[serde(default = "prompt_arch")]
    pub architecture: String,
    #[serde(default = "prompt_length")]
    pub prompt_length: usize,
    #[serde(default = "random_uniform")]
    pub prompt_init: String,
    #[serde(default)]
    pub prompt_init_text: Option<String>,
    #[serde(default = "prefix_combine")]
    pub combine: String,
    #[serde(default)]
    pub init_weights_seed: Option<u64>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Where the prompt goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PromptCombine {
    /// Before the first token.
    Prefix,
    /// After the first token (the BOS / CLS token keeps position 0).
    PrefixAfterBos,
}

impl PromptTuningConfig {
    /// The bound of the uniform initialisation (a class attribute in Python, not a config field,
    /// so files never carry it).
    pub const RANDOM_UNIFORM_SCALE: f64 = 0.5;

    pub fn combine(&self) -> Result<PromptCombine> {
        match self.combine.as_str() {
            "prefix" => Ok(PromptCombine::Prefix),
            "prefix_after_bos" => Ok(PromptCombine::PrefixAfterBos),
            other => {
                Err(AdapterError::InvalidConfig(format!("`combine`: unknown combination function `{other}`; must be one of 'prefix' or 'prefix_after_bos'")))
            }
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.prompt_length == 0 {
            return Err(AdapterError::InvalidConfig("`prompt_length`: must be at least 1".into()));
        }
        self.combine()?;
        match self.prompt_init.as_str() {
            "random_uniform" => Ok(()),
            "from_string" if self.prompt_init_text.is_none() => {
                Err(AdapterError::InvalidConfig("`prompt_init_text`: must be given when prompt_init is \"from_string\"".into()))
            }
            "from_string" => Ok(()),
            other => Err(AdapterError::InvalidConfig(format!(
                "`prompt_init`: unknown prompt initialization `{other}`; must be \"random_uniform\" or \"from_string\""
            ))),
        }
    }
}
