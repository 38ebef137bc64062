//! `adapter_config.json`: the method config plus the metadata `save_adapter` writes beside it.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::AdapterConfig;
use crate::error::{AdapterError, Result};

/// The contents of an `adapter_config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterFile {
    pub config: AdapterConfig,
    pub name: String,
    pub hidden_size: Option<usize>,
    pub model_type: Option<String>,
    pub model_class: Option<String>,
    pub model_name: Option<String>,
    pub version: String,
    /// Top-level keys this version does not interpret, written back unchanged.
    pub extra: Map<String, Value>,
}

/// The file name inside an adapter folder.
pub const CONFIG_NAME: &str = "adapter_config.json";

impl AdapterFile {
    /// Reads and validates `DIR/adapter_config.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_NAME);
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| AdapterError::io(&path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| AdapterError::file(&origin, format!("not valid JSON: {e}")))?;
        Self::from_json(value, &origin)
    }

    pub fn from_json(value: Value, origin: &str) -> Result<Self> {
        let key_err = |key: &str, reason: &str| AdapterError::ConfigKey { file: origin.into(), key: key.into(), reason: reason.into() };
        let Value::Object(mut object) = value else {
            return Err(key_err("(top level)", "expected a JSON object"));
        };
        let config = object.remove("config").ok_or_else(|| key_err("config", "missing"))?;
        let config = AdapterConfig::from_json(&config, origin)?;
        let mut string = |key: &str| -> Result<Option<String>> {
            match object.remove(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(key_err(key, "expected a string")),
            }
        };
        let name = string("name")?.ok_or_else(|| key_err("name", "missing"))?;
        let model_type = string("model_type")?;
        let model_class = string("model_class")?;
        let model_name = string("model_name")?;
        let version = string("version")?.unwrap_or_default();
        let hidden_size = match object.remove("hidden_size") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_u64().ok_or_else(|| key_err("hidden_size", "expected a positive integer"))? as usize),
        };
        Ok(AdapterFile { config, name, hidden_size, model_type, model_class, model_name, version, extra: object })
    }

    pub fn to_json(&self) -> Value {
        let mut object = self.extra.clone();
        let mut put = |k: &str, v: Value| {
            object.insert(k.to_string(), v);
        };
        put("config", self.config.to_json());
        put("name", json!(self.name));
        put("hidden_size", json!(self.hidden_size));
        put("model_type", json!(self.model_type));
        put("model_class", json!(self.model_class));
        put("model_name", json!(self.model_name));
        put("version", json!(self.version));
        Value::Object(object)
    }

    /// Writes `DIR/adapter_config.json` (sorted keys, indent 2, as Python does) atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let mut batch = crate::io::FileBatch::new();
        self.stage(&mut batch, dir)?;
        batch.commit()
    }

    /// Adds `DIR/adapter_config.json` to a batch of files saved together.
    pub fn stage(&self, batch: &mut crate::io::FileBatch, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(&self.to_json()).expect("JSON values always serialise");
        batch.add(&dir.join(CONFIG_NAME), text.as_bytes())
    }
}
