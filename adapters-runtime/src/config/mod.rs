//! Adapter configurations: the method configs, the shorthand strings with overrides, and the
//! `adapter_config.json` file that `save_adapter` writes.

mod bottleneck;
mod file;
mod fusion;
mod lora;
mod prefix;
mod reft;
mod shorthand;
mod union;

pub use bottleneck::{BnConfig, ReductionFactor, ResidualBeforeLn, Scaling};
pub use file::{AdapterFile, CONFIG_NAME};
pub use fusion::FusionConfig;
pub use lora::{LoRAConfig, LoraKind, PeftLayout, PeftModule};
pub use prefix::{PrefixTuningConfig, PromptCombine, PromptTuningConfig};
pub use reft::{ReftConfig, ReftLayers};

use serde_json::Value;

use crate::error::{AdapterError, Result};

/// A full adapter configuration, one variant per method family.
#[derive(Clone, Debug, PartialEq)]
pub enum AdapterConfig {
    Bottleneck(BnConfig),
    LoRA(LoRAConfig),
    PrefixTuning(PrefixTuningConfig),
    PromptTuning(PromptTuningConfig),
    Reft(ReftConfig),
    /// Several methods under one adapter name (`mam`, `unipelt`, `a|b`), Python's `ConfigUnion`.
    Union(Vec<AdapterConfig>),
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
    /// // Unions: several methods under one name (Python's ConfigUnion), and their presets.
    /// let union = AdapterConfig::parse("prefix_tuning[prefix_length=10]|par_bn").unwrap();
    /// assert_eq!(union.members().len(), 2);
    /// assert_eq!(AdapterConfig::parse("unipelt").unwrap().members().len(), 3);
    /// assert!(AdapterConfig::parse("seq_bn|seq_bn").is_err()); // two bottlenecks at one place
    /// ```
    pub fn parse(input: &str) -> Result<Self> {
        shorthand::parse(input)
    }

    /// Reads the inner `config` object of an `adapter_config.json` (or any config dict).
    pub fn from_json(value: &Value, origin: &str) -> Result<Self> {
        let object =
            value.as_object().ok_or_else(|| AdapterError::ConfigKey { file: origin.into(), key: "config".into(), reason: "expected a JSON object".into() })?;
        let architecture = object.get("architecture").and_then(Value::as_str);
        let wrap = |e: serde_json::Error| AdapterError::ConfigKey { file: origin.into(), key: "config".into(), reason: e.to_string() };
        let config = match architecture {
            None => AdapterConfig::Bottleneck(serde_json::from_value(value.clone()).map_err(wrap)?),
            Some("lora") => AdapterConfig::LoRA(serde_json::from_value(value.clone()).map_err(wrap)?),
            Some("prefix_tuning") => AdapterConfig::PrefixTuning(serde_json::from_value(value.clone()).map_err(wrap)?),
            Some("prompt_tuning") => AdapterConfig::PromptTuning(serde_json::from_value(value.clone()).map_err(wrap)?),
            Some("reft") => AdapterConfig::Reft(serde_json::from_value(value.clone()).map_err(wrap)?),
            Some("union") => union::from_json(object, origin)?,
            Some("bottleneck") => AdapterConfig::Bottleneck(serde_json::from_value(value.clone()).map_err(wrap)?),
            Some(other) => {
                return Err(AdapterError::ConfigKey {
                    file: origin.into(),
                    key: "config.architecture".into(),
                    reason: format!(
                        "`{other}` adapters are not supported by this version yet (bottleneck, lora, prefix_tuning, prompt_tuning, reft and union are)"
                    ),
                })
            }
        };
        config.validate().map_err(|e| AdapterError::ConfigKey { file: origin.into(), key: "config".into(), reason: e.to_string() })?;
        Ok(config)
    }

    /// The config as the JSON object the Python library writes.
    pub fn to_json(&self) -> Value {
        match self {
            AdapterConfig::Bottleneck(c) => serde_json::to_value(c),
            AdapterConfig::LoRA(c) => serde_json::to_value(c),
            AdapterConfig::PrefixTuning(c) => serde_json::to_value(c),
            AdapterConfig::PromptTuning(c) => serde_json::to_value(c),
            AdapterConfig::Reft(c) => serde_json::to_value(c),
            AdapterConfig::Union(configs) => {
                Ok(serde_json::json!({"architecture": "union", "configs": configs.iter().map(AdapterConfig::to_json).collect::<Vec<_>>()}))
            }
        }
        .expect("config structs always serialise")
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            AdapterConfig::Bottleneck(c) => c.validate(),
            AdapterConfig::LoRA(c) => c.validate(),
            AdapterConfig::PrefixTuning(c) => c.validate(),
            AdapterConfig::PromptTuning(c) => c.validate(),
            AdapterConfig::Reft(c) => c.validate(),
            AdapterConfig::Union(configs) => {
                union::validate(configs)?;
                configs.iter().try_for_each(AdapterConfig::validate)
            }
        }
    }

    /// The single-method configs: the members of a union, or the config itself.
    pub fn members(&self) -> Vec<&AdapterConfig> {
        match self {
            AdapterConfig::Union(configs) => configs.iter().flat_map(AdapterConfig::members).collect(),
            other => vec![other],
        }
    }

    /// The first member a picker accepts (`members` flattens unions).
    fn member<'a, T>(&'a self, pick: impl Fn(&'a AdapterConfig) -> Option<&'a T>) -> Option<&'a T> {
        self.members().into_iter().find_map(pick)
    }

    /// The LoRA-family member, if any.
    pub fn lora(&self) -> Option<&LoRAConfig> {
        self.member(|c| if let AdapterConfig::LoRA(c) = c { Some(c) } else { None })
    }

    /// The bottleneck member, if any.
    pub fn bottleneck(&self) -> Option<&BnConfig> {
        self.member(|c| if let AdapterConfig::Bottleneck(c) = c { Some(c) } else { None })
    }

    /// The prefix tuning member, if any.
    pub fn prefix_tuning(&self) -> Option<&PrefixTuningConfig> {
        self.member(|c| if let AdapterConfig::PrefixTuning(c) = c { Some(c) } else { None })
    }

    /// The ReFT member, if any.
    pub fn reft(&self) -> Option<&ReftConfig> {
        self.member(|c| if let AdapterConfig::Reft(c) = c { Some(c) } else { None })
    }

    /// The prompt tuning member, if any.
    pub fn prompt_tuning(&self) -> Option<&PromptTuningConfig> {
        self.member(|c| if let AdapterConfig::PromptTuning(c) = c { Some(c) } else { None })
    }

    /// A short method name for summaries: `bottleneck`, `lora`, `ia3`, `dora`, `prefix_tuning`,
    /// `prompt_tuning` or `union`.
    pub fn method_name(&self) -> &'static str {
        match self {
            AdapterConfig::Bottleneck(_) => "bottleneck",
            AdapterConfig::PrefixTuning(_) => "prefix_tuning",
            AdapterConfig::PromptTuning(_) => "prompt_tuning",
            AdapterConfig::Reft(c) if c.orthogonality => "loreft",
            AdapterConfig::Reft(c) if c.subtract_projection => "noreft",
            AdapterConfig::Reft(_) => "direft",
            AdapterConfig::Union(_) => "union",
            AdapterConfig::LoRA(c) => match c.kind() {
                LoraKind::LoRA => "lora",
                LoraKind::DoRA => "dora",
                LoraKind::IA3 => "ia3",
            },
        }
    }

    /// Layers a single-method config leaves out (a union's members each have their own).
    pub fn leave_out(&self) -> &[usize] {
        match self {
            AdapterConfig::Bottleneck(c) => &c.leave_out,
            AdapterConfig::LoRA(c) => &c.leave_out,
            AdapterConfig::PrefixTuning(c) => &c.leave_out,
            AdapterConfig::PromptTuning(_) | AdapterConfig::Reft(_) | AdapterConfig::Union(_) => &[],
        }
    }
}
