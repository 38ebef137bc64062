//! Adapter configurations: the method configs, the shorthand strings with overrides, and the
//! `adapter_config.json` file that `save_adapter` writes.

mod bottleneck;
mod file;
mod fusion;
mod lora;
mod shorthand;

pub use bottleneck::{BnConfig, ReductionFactor, ResidualBeforeLn, Scaling};
pub use file::{AdapterFile, CONFIG_NAME};
pub use fusion::FusionConfig;
pub use lora::{LoRAConfig, LoraKind};

use serde_json::Value;

use crate::error::{AdapterError, Result};

/// A full adapter configuration, one variant per method family.
#[derive(Clone, Debug, PartialEq)]
pub enum AdapterConfig {
    Bottleneck(BnConfig),
    LoRA(LoRAConfig),
}

impl AdapterConfig {
    /// Parses a shorthand string such as `seq_bn`, `lora[r=16,alpha=32]` or
    /// `par_bn[reduction_factor=4, leave_out=[0, 1]]`.
    ///
    /// ```
    /// use adapters_runtime::AdapterConfig;
    /// let config = AdapterConfig::parse("lora[r=16,alpha=32]").unwrap();
    /// assert_eq!(config.method_name(), "lora");
    /// assert!(AdapterConfig::parse("lorra").is_err());
    /// ```
    pub fn parse(input: &str) -> Result<Self> {
        shorthand::parse(input)
    }

    /// Reads the inner `config` object of an `adapter_config.json` (or any config dict).
    pub fn from_json(value: &Value, origin: &str) -> Result<Self> {
        let object = value.as_object().ok_or_else(|| AdapterError::ConfigKey {
            file: origin.into(),
            key: "config".into(),
            reason: "expected a JSON object".into(),
        })?;
        let architecture = object.get("architecture").and_then(Value::as_str);
        let wrap = |e: serde_json::Error| AdapterError::ConfigKey {
            file: origin.into(),
            key: "config".into(),
            reason: e.to_string(),
        };
        let config = match architecture {
            None => AdapterConfig::Bottleneck(serde_json::from_value(value.clone()).map_err(wrap)?),
            Some("lora") => AdapterConfig::LoRA(serde_json::from_value(value.clone()).map_err(wrap)?),
            Some(other) => {
                return Err(AdapterError::ConfigKey {
                    file: origin.into(),
                    key: "config.architecture".into(),
                    reason: format!("`{other}` adapters are not supported by this version yet (bottleneck and lora are)"),
                })
            }
        };
        config.validate().map_err(|e| AdapterError::ConfigKey {
            file: origin.into(),
            key: "config".into(),
            reason: e.to_string(),
        })?;
        Ok(config)
    }

    /// The config as the JSON object the Python library writes.
    pub fn to_json(&self) -> Value {
        match self {
            AdapterConfig::Bottleneck(c) => serde_json::to_value(c),
            AdapterConfig::LoRA(c) => serde_json::to_value(c),
        }
        .expect("config structs always serialise")
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            AdapterConfig::Bottleneck(c) => c.validate(),
            AdapterConfig::LoRA(c) => c.validate(),
        }
    }

    /// A short method name for summaries: `bottleneck`, `lora`, `ia3` or `dora`.
    pub fn method_name(&self) -> &'static str {
        match self {
            AdapterConfig::Bottleneck(_) => "bottleneck",
            AdapterConfig::LoRA(c) => match c.kind() {
                LoraKind::LoRA => "lora",
                LoraKind::DoRA => "dora",
                LoraKind::IA3 => "ia3",
            },
        }
    }

    /// Layers the config leaves out.
    pub fn leave_out(&self) -> &[usize] {
        match self {
            AdapterConfig::Bottleneck(c) => &c.leave_out,
            AdapterConfig::LoRA(c) => &c.leave_out,
        }
    }
}
