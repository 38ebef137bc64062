//! Config unions: several methods under one adapter name, with the Python library's pairwise
//! rule for which methods may be combined.

use serde_json::{Map, Value};

use super::AdapterConfig;
use crate::error::{AdapterError, Result};

/// `{"architecture": "union", "configs": [...]}`.
pub(super) fn from_json(object: &Map<String, Value>, origin: &str) -> Result<AdapterConfig> {
    let configs = object.get("configs").and_then(Value::as_array).ok_or_else(|| AdapterError::ConfigKey {
        file: origin.into(),
        key: "config.configs".into(),
        reason: "a union needs a list of configs".into(),
    })?;
    let members = configs.iter().map(|c| AdapterConfig::from_json(c, origin)).collect::<Result<Vec<_>>>()?;
    let union = AdapterConfig::Union(members);
    union.validate().map_err(|e| AdapterError::ConfigKey { file: origin.into(), key: "config.configs".into(), reason: e.to_string() })?;
    Ok(union)
}

fn architecture(config: &AdapterConfig) -> &'static str {
    match config {
        AdapterConfig::Bottleneck(_) => "bottleneck",
        AdapterConfig::LoRA(_) => "lora",
        AdapterConfig::PrefixTuning(_) => "prefix_tuning",
        AdapterConfig::PromptTuning(_) => "prompt_tuning",
        AdapterConfig::Reft(_) => "reft",
        AdapterConfig::Union(_) => "union",
    }
}

/// Python's `ConfigUnion.validate`: no nested unions; two members of one architecture only when
/// one of them leaves layers out (decided later) or, for bottlenecks, when they sit at different
/// locations (one `mh_adapter`, the other `output_adapter`).
pub(super) fn validate(configs: &[AdapterConfig]) -> Result<()> {
    if configs.is_empty() {
        return Err(AdapterError::InvalidConfig("a config union needs at least one config".into()));
    }
    if configs.iter().any(|c| matches!(c, AdapterConfig::Union(_))) {
        return Err(AdapterError::InvalidConfig("a config union cannot contain another union; list its members instead".into()));
    }
    for (i, a) in configs.iter().enumerate() {
        for (j, b) in configs[..i].iter().enumerate() {
            if architecture(a) != architecture(b) || !a.leave_out().is_empty() || !b.leave_out().is_empty() {
                continue;
            }
            if let (AdapterConfig::Bottleneck(x), AdapterConfig::Bottleneck(y)) = (a, b) {
                if x.mh_adapter != y.mh_adapter && x.output_adapter != y.output_adapter {
                    continue;
                }
                return Err(AdapterError::InvalidConfig(format!(
                    "union members {} and {} cannot be combined: two bottleneck configs must sit at different locations (one mh_adapter, the other output_adapter)",
                    j + 1,
                    i + 1
                )));
            }
            return Err(AdapterError::InvalidConfig(format!(
                "union members have the same adapter architecture (`{}`) and cannot be combined",
                architecture(a)
            )));
        }
    }
    Ok(())
}
