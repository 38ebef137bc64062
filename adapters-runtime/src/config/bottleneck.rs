//! `BnConfig`: bottleneck adapters, field for field as AdapterHub writes them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

use crate::error::{AdapterError, Result};

/// Reduction factor: one number for every layer, or a map from layer index (and `"default"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ReductionFactor {
    Scalar(Number),
    PerLayer(BTreeMap<String, Number>),
}

impl ReductionFactor {
    /// The factor in force for `layer`, as the Python library resolves it.
    pub fn for_layer(&self, layer: usize) -> Result<f64> {
        let number = match self {
            ReductionFactor::Scalar(n) => n,
            ReductionFactor::PerLayer(map) => map.get(&layer.to_string()).or_else(|| map.get("default")).ok_or_else(|| {
                AdapterError::InvalidConfig(format!(
                    "reduction_factor gives no value for layer {layer} and no \"default\"; \
                         write e.g. {{\"{layer}\": 16, \"default\": 16}}"
                ))
            })?,
        };
        let value = number.as_f64().unwrap_or(f64::NAN);
        if value.is_nan() || value <= 0.0 {
            return Err(AdapterError::InvalidConfig(format!("reduction_factor must be > 0, got {number}")));
        }
        Ok(value)
    }
}

/// How the adapter output is scaled: a fixed number, or a learned scalar / per-channel vector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scaling {
    Fixed(f64),
    /// `"learned"` (one parameter) or `"channel"` (one per hidden unit).
    Mode(String),
}

/// `residual_before_ln`: `true`, `false` or `"post_add"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ResidualBeforeLn {
    Flag(bool),
    Mode(String),
}

fn default_true() -> bool {
    true
}
fn default_phm_dim() -> u64 {
    4
}
fn default_phm_c_init() -> Option<String> {
    Some("normal".into())
}
fn default_phm_init_range() -> Option<f64> {
    Some(0.0001)
}
fn default_hypercomplex() -> Option<String> {
    Some("glorot-uniform".into())
}
fn default_phm_rank() -> Option<u64> {
    Some(1)
}
fn default_init() -> String {
    "bert".into()
}
fn default_scaling() -> Scaling {
    Scaling::Fixed(1.0)
}
fn default_residual() -> ResidualBeforeLn {
    ResidualBeforeLn::Flag(true)
}
fn some_true() -> Option<bool> {
    Some(true)
}
fn some_false() -> Option<bool> {
    Some(false)
}
fn some_zero() -> Option<f64> {
    Some(0.0)
}

/// Every field of the Python `BnConfig`, with its defaults. Keys this version does not know are
/// kept in `extra` and written back unchanged, as the Python library does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[allow(non_snake_case)] // two field names are the Python ones, kept for the files
pub struct BnConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    pub mh_adapter: bool,
    pub output_adapter: bool,
    pub reduction_factor: ReductionFactor,
    pub non_linearity: String,
    #[serde(default)]
    pub original_ln_before: bool,
    #[serde(default = "default_true")]
    pub original_ln_after: bool,
    #[serde(default)]
    pub ln_before: bool,
    #[serde(default)]
    pub ln_after: bool,
    #[serde(default = "default_init")]
    pub init_weights: String,
    #[serde(default)]
    pub init_weights_seed: Option<u64>,
    #[serde(default)]
    pub is_parallel: bool,
    #[serde(default = "default_scaling")]
    pub scaling: Scaling,
    #[serde(default)]
    pub use_gating: bool,
    #[serde(default = "default_residual")]
    pub residual_before_ln: ResidualBeforeLn,
    #[serde(default)]
    pub adapter_residual_before_ln: bool,
    #[serde(default)]
    pub inv_adapter: Option<String>,
    #[serde(default)]
    pub inv_adapter_reduction_factor: Option<Number>,
    #[serde(default)]
    pub cross_adapter: bool,
    #[serde(default)]
    pub leave_out: Vec<usize>,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub phm_layer: bool,
    #[serde(default = "default_phm_dim")]
    pub phm_dim: u64,
    #[serde(default = "some_true")]
    pub factorized_phm_W: Option<bool>,
    #[serde(default = "some_false")]
    pub shared_W_phm: Option<bool>,
    #[serde(default = "some_true")]
    pub shared_phm_rule: Option<bool>,
    #[serde(default = "some_false")]
    pub factorized_phm_rule: Option<bool>,
    #[serde(default = "default_phm_c_init")]
    pub phm_c_init: Option<String>,
    #[serde(default = "default_phm_init_range")]
    pub phm_init_range: Option<f64>,
    #[serde(default = "some_true")]
    pub learn_phm: Option<bool>,
    #[serde(default = "default_hypercomplex")]
    pub hypercomplex_nonlinearity: Option<String>,
    #[serde(default = "default_phm_rank")]
    pub phm_rank: Option<u64>,
    #[serde(default = "some_true")]
    pub phm_bias: Option<bool>,
    #[serde(default = "some_zero")]
    pub stochastic_depth: Option<f64>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl BnConfig {
    /// Checks the values that the forward pass depends on; names the field at fault.
    pub fn validate(&self) -> Result<()> {
        let bad = |key: &str, reason: String| Err(AdapterError::InvalidConfig(format!("`{key}`: {reason}")));
        match &self.scaling {
            Scaling::Fixed(_) => {}
            Scaling::Mode(m) if m == "learned" || m == "channel" => {}
            Scaling::Mode(m) => return bad("scaling", format!("`{m}` is not a number, \"learned\" or \"channel\"")),
        }
        if let ResidualBeforeLn::Mode(m) = &self.residual_before_ln {
            if m != "post_add" {
                return bad("residual_before_ln", format!("`{m}` is not true, false or \"post_add\""));
            }
        }
        if !["bert", "mam_adapter", "houlsby"].contains(&self.init_weights.as_str()) {
            return bad("init_weights", format!("`{}` is not bert, mam_adapter or houlsby", self.init_weights));
        }
        crate::nn::activation::Activation::parse(&self.non_linearity)?;
        if self.phm_layer {
            if self.phm_dim == 0 {
                return bad("phm_dim", "must be at least 1".into());
            }
            if self.shared_W_phm == Some(true) && self.factorized_phm_W == Some(false) {
                return bad("shared_W_phm", "a shared W must be factorized (factorized_phm_W = true); the Python library fails on this combination too".into());
            }
            if self.shared_W_phm == Some(true) && !matches!(self.reduction_factor, ReductionFactor::Scalar(_)) {
                return bad("shared_W_phm", "a shared W needs one reduction_factor for every layer, not a mapping".into());
            }
        }
        if let Some(rf) = self.inv_adapter_reduction_factor.as_ref().and_then(Number::as_f64) {
            if rf <= 0.0 {
                return bad("inv_adapter_reduction_factor", format!("{rf} must be greater than 0"));
            }
        }
        if let Some(p) = self.stochastic_depth {
            if !(0.0..1.0).contains(&p) {
                return bad("stochastic_depth", format!("{p} is not a probability in [0, 1)"));
            }
        }
        match self.inv_adapter.as_deref() {
            None | Some("nice") => {}
            Some("glow") => {
                return bad(
                    "inv_adapter",
                    "\"glow\" is not supported: the Python library's GLOW block splits the sequence axis and fails on every [batch, seq, hidden] input, so there is no behaviour to match; use \"nice\"".into(),
                )
            }
            Some(other) => return bad("inv_adapter", format!("`{other}` is not \"nice\" or \"glow\"")),
        }
        Ok(())
    }
}
