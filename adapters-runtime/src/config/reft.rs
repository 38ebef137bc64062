//! `ReftConfig` (LoReft, NoReft, DiReft): interventions on layer outputs at prefix and suffix
//! positions, every field as the Python dataclass writes it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{AdapterError, Result};

fn reft_arch() -> String {
    "reft".into()
}
fn yes() -> bool {
    true
}
fn reft_dropout() -> f64 {
    0.05
}

/// `"all"` or a list of layer indices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReftLayers {
    All(String),
    Some(Vec<usize>),
}

impl ReftLayers {
    pub fn contains(&self, layer: usize) -> bool {
        match self {
            ReftLayers::All(_) => true,
            ReftLayers::Some(layers) => layers.contains(&layer),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReftConfig {
    pub layers: ReftLayers,
    pub prefix_positions: usize,
    pub suffix_positions: usize,
    pub r: usize,
    pub orthogonality: bool,
    #[serde(default)]
    pub tied_weights: bool,
    /// A class attribute in Python, not a config field: files never carry it, so a saved DiReft
    /// reloads as NoReft there. Kept out of files here too, so both libraries read them alike.
    #[serde(skip, default = "yes")]
    pub subtract_projection: bool,
    #[serde(default = "reft_dropout")]
    pub dropout: f64,
    #[serde(default)]
    pub non_linearity: Option<String>,
    #[serde(default)]
    pub dtype: Option<String>,
    #[serde(default = "reft_arch")]
    pub architecture: String,
    #[serde(default = "yes")]
    pub output_reft: bool,
    #[serde(default)]
    pub init_weights_seed: Option<u64>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl ReftConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, reason: &str| Err(AdapterError::InvalidConfig(format!("`{key}`: {reason}")));
        if self.r == 0 {
            return bad("r", "must be at least 1");
        }
        if self.prefix_positions == 0 && self.suffix_positions == 0 {
            return bad("prefix_positions", "prefix_positions or suffix_positions must be at least 1");
        }
        if let ReftLayers::All(s) = &self.layers {
            if s != "all" {
                return bad("layers", &format!("`{s}` is neither \"all\" nor a list of layer indices"));
            }
        }
        if let Some(act) = &self.non_linearity {
            crate::nn::activation::Activation::parse(act).map_err(|e| AdapterError::InvalidConfig(format!("`non_linearity`: {e}")))?;
        }
        if !matches!(self.dtype.as_deref(), None | Some("float32")) {
            return bad("dtype", "only float32 interventions are supported");
        }
        Ok(())
    }
}
