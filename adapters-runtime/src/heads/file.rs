//! `head_config.json`: a head config plus the metadata Python's `PredictionHeadLoader` writes.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::config::HeadConfig;
use crate::error::{AdapterError, Result};

/// File names inside a folder saved with a head.
pub const HEAD_CONFIG_NAME: &str = "head_config.json";
pub const HEAD_WEIGHTS_SAFE: &str = "model_head.safetensors";
pub const HEAD_WEIGHTS_PICKLE: &str = "pytorch_model_head.bin";

/// The contents of a `head_config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadFile {
    pub config: HeadConfig,
    pub name: String,
    pub hidden_size: Option<usize>,
    pub model_type: Option<String>,
    /// `BertAdapterModel` etc.; Python refuses a head saved from another class.
    pub model_class: Option<String>,
    pub model_name: Option<String>,
    pub version: String,
    pub extra: Map<String, Value>,
}

impl HeadFile {
    /// Whether `dir` holds a saved head.
    pub fn exists(dir: &Path) -> bool {
        dir.join(HEAD_CONFIG_NAME).is_file()
    }

    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(HEAD_CONFIG_NAME);
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| AdapterError::io(&path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| AdapterError::file(&origin, format!("not valid JSON: {e}")))?;
        let key_err = |key: &str, reason: String| AdapterError::ConfigKey { file: origin.clone(), key: key.into(), reason };
        let Value::Object(mut object) = value else {
            return Err(key_err("(top level)", "expected a JSON object".into()));
        };
        let config = object.remove("config").ok_or_else(|| key_err("config", "missing".into()))?;
        let config = HeadConfig::from_value(config).map_err(|e| key_err("config", e.to_string()))?;
        let mut string = |key: &str| -> Result<Option<String>> {
            match object.remove(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(key_err(key, "expected a string".into())),
            }
        };
        let name = string("name")?.ok_or_else(|| key_err("name", "missing".into()))?;
        let model_type = string("model_type")?;
        let model_class = string("model_class")?;
        let model_name = string("model_name")?;
        let version = string("version")?.unwrap_or_default();
        let hidden_size = object.remove("hidden_size").and_then(|v| v.as_u64()).map(|v| v as usize);
        Ok(HeadFile { config, name, hidden_size, model_type, model_class, model_name, version, extra: object })
    }

    /// Writes `DIR/head_config.json` (sorted keys, indent 2) atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let mut batch = crate::io::FileBatch::new();
        self.stage(&mut batch, dir)?;
        batch.commit()
    }

    /// Adds `DIR/head_config.json` to a batch of files saved together.
    pub fn stage(&self, batch: &mut crate::io::FileBatch, dir: &Path) -> Result<()> {
        let mut object = self.extra.clone();
        for (k, v) in [
            ("config", self.config.to_value()),
            ("name", json!(self.name)),
            ("hidden_size", json!(self.hidden_size)),
            ("model_type", json!(self.model_type)),
            ("model_class", json!(self.model_class)),
            ("model_name", json!(self.model_name)),
            ("version", json!(self.version)),
        ] {
            object.insert(k.to_string(), v);
        }
        let text = serde_json::to_string_pretty(&Value::Object(object)).expect("JSON values always serialise");
        batch.add(&dir.join(HEAD_CONFIG_NAME), text.as_bytes())
    }
}
