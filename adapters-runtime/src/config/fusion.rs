//! AdapterFusion configs (`AdapterFusionConfig`): the `static` and `dynamic` presets and any
//! config dict Python writes in `adapter_fusion_config.json`.

use serde::{Deserialize, Serialize};

use crate::error::{AdapterError, Result};

/// Every field of Python's `AdapterFusionConfig`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FusionConfig {
    pub key: bool,
    pub query: bool,
    pub value: bool,
    pub query_before_ln: bool,
    pub regularization: bool,
    pub residual_before: bool,
    pub temperature: bool,
    pub value_before_softmax: bool,
    /// Python declares it a string but uses it as a flag (`True` in `dynamic`).
    #[serde(deserialize_with = "flag")]
    pub value_initialized: bool,
    pub dropout_prob: Option<f64>,
}

fn flag<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<bool, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Bool(b) => b,
        serde_json::Value::String(s) => !s.is_empty() && s != "false" && s != "False",
        serde_json::Value::Null => false,
        serde_json::Value::Number(n) => n.as_f64() != Some(0.0),
        _ => true,
    })
}

impl FusionConfig {
    /// `static`: query and key, no value matrix.
    pub fn static_() -> Self {
        FusionConfig {
            key: true,
            query: true,
            value: false,
            query_before_ln: false,
            regularization: false,
            residual_before: false,
            temperature: false,
            value_before_softmax: true,
            value_initialized: false,
            dropout_prob: None,
        }
    }

    /// `dynamic` (the default): query, key and an identity-initialised value matrix with
    /// regularisation towards the identity.
    pub fn dynamic() -> Self {
        FusionConfig { value: true, regularization: true, value_initialized: true, ..Self::static_() }
    }

    /// `static`, `dynamic`, or a JSON object.
    ///
    /// ```
    /// use adapters_runtime::config::FusionConfig;
    /// assert!(FusionConfig::parse("dynamic").unwrap().value);
    /// assert!(!FusionConfig::parse("static").unwrap().value);
    /// let custom = FusionConfig::parse(r#"{"key": true, "query": true, "value": true, "query_before_ln": false,
    ///   "regularization": false, "residual_before": true, "temperature": false,
    ///   "value_before_softmax": false, "value_initialized": true, "dropout_prob": null}"#).unwrap();
    /// assert!(custom.residual_before);
    /// ```
    pub fn parse(text: &str) -> Result<Self> {
        match text.trim() {
            "static" => Ok(Self::static_()),
            "dynamic" => Ok(Self::dynamic()),
            other if other.starts_with('{') => {
                let value: serde_json::Value =
                    serde_json::from_str(other).map_err(|e| AdapterError::InvalidConfig(format!("fusion config is not valid JSON: {e}")))?;
                Self::from_json(&value, "fusion config")
            }
            other => Err(AdapterError::InvalidConfig(format!("unknown fusion config `{other}`; known: static, dynamic, or a JSON object"))),
        }
    }

    pub fn from_json(value: &serde_json::Value, origin: &str) -> Result<Self> {
        serde_json::from_value(value.clone()).map_err(|e| AdapterError::ConfigKey { file: origin.into(), key: "config".into(), reason: e.to_string() })
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("fusion config serialises")
    }
}
