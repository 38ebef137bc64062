//! `adapters train --adapter DIR`: continue training an adapter folder (AdapterHub or PEFT)
//! instead of starting a new `--method` adapter, and save it in the format it came in.

use std::path::{Path, PathBuf};

use adapters_runtime::model::is_peft_folder;
use adapters_runtime::{AdapterConfig, DynAdaptedModel};

/// The adapter a training run trains.
pub enum TrainedAdapter {
    /// A new adapter of `--method`.
    New(Box<AdapterConfig>),
    /// An adapter folder, continued.
    Continued { dir: PathBuf, peft: bool },
}

impl TrainedAdapter {
    /// `--adapter DIR` when given, else `--method`.
    pub fn from_args(adapter: Option<&Path>, method: &str) -> Result<Self, String> {
        match adapter {
            Some(dir) => Ok(TrainedAdapter::Continued { dir: dir.to_path_buf(), peft: is_peft_folder(dir) }),
            None => AdapterConfig::parse(method).map(|c| TrainedAdapter::New(Box::new(c))).map_err(|e| format!("--method: {e}")),
        }
    }

    /// Adds the new adapter, or loads the folder, as `name` (an AdapterHub folder's head comes
    /// along under the same name).
    pub fn add(&self, model: &mut DynAdaptedModel, name: &str) -> Result<(), String> {
        match self {
            TrainedAdapter::New(config) => model.add_adapter(name, (**config).clone()).map_err(|e| format!("--method: {e}")),
            TrainedAdapter::Continued { dir, .. } => model.load_adapter(dir, Some(name)).map(|_| ()).map_err(|e| format!("--adapter {}: {e}", dir.display())),
        }
    }

    /// What the report calls the method: `--method`, or `lora (continued from DIR)`.
    pub fn label(&self, model: &DynAdaptedModel, name: &str, method: &str) -> String {
        match self {
            TrainedAdapter::New(_) => method.to_string(),
            TrainedAdapter::Continued { dir, .. } => {
                let kind = model.adapter_config(name).map(|c| c.method_name()).unwrap_or("adapter");
                format!("{kind} (continued from {})", dir.display())
            }
        }
    }

    /// Saves the adapter in the format it came in (a head named like it beside, as AdapterHub files keep it).
    pub fn save(&self, model: &DynAdaptedModel, out: &Path, name: &str) -> Result<(), String> {
        if let TrainedAdapter::Continued { peft: true, .. } = self {
            model.save_adapter_peft(out, name).map_err(|e| e.to_string())?;
            if model.head(name).is_some() {
                model.save_head(out, name).map_err(|e| e.to_string())?;
            }
            return Ok(());
        }
        model.save_adapter(out, name).map_err(|e| e.to_string())
    }
}
