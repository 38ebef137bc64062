//! Adapter parameters by their Python names, and saving and loading adapter folders.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var};

use crate::body::BaseModel;
use crate::config::{AdapterConfig, AdapterFile};
use crate::error::{AdapterError, Result};
use crate::mixin::SlotRef;
use crate::state_dict::{with_or_without_root, Expected, Resolved};

use super::{AdaptedModel, ADAPTER_WEIGHTS_PICKLE, ADAPTER_WEIGHTS_SAFE, PYTHON_ADAPTERS_VERSION};

impl<M: BaseModel + ?Sized> AdaptedModel<M> {
    /// Every parameter of an adapter under the name the Python library gives it on the bare
    /// base model (`encoder.layer.0.output.adapters.NAME.adapter_up.weight`).
    pub fn named_params(&self, name: &str) -> Result<Vec<(String, Var)>> {
        if !self.configs.contains_key(name) {
            return Err(AdapterError::NoSuchAdapter(name.into()));
        }
        Ok(self.params_named_as(name, name))
    }

    /// The parameters of adapter `name`, named as if the adapter were called `file_name`.
    pub(super) fn params_named_as(&self, name: &str, file_name: &str) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        self.each_slot(&mut |_, slot| {
            if let Some((path, params)) = slot.adapter_slot().adapter_params(name) {
                out.extend(params.iter().map(|p| (format!("{}.{file_name}.{}", self.strip_root(&path), p.name), p.var.clone())));
            }
        });
        if let Some(group) = self.prefixes.get(name) {
            for (key, module) in &group.modules {
                let (pool, location) = crate::methods::prefix::split_pool_key(key);
                let holder = self.module_prefix(pool);
                for p in module.params() {
                    out.push((format!("{holder}prefix_tuning.prefix_tunings.{file_name}.{location}.{}", p.name), p.var.clone()));
                }
            }
        }
        for p in self.shared.get(name).into_iter().flatten() {
            out.push((format!("shared_parameters.{file_name}.{}", p.name), p.var.clone()));
        }
        if let Some(prompt) = self.model.embedding_slot().and_then(|s| s.prompts.get(name)) {
            for p in prompt.params() {
                out.push((format!("prompt_tuning.prompt_tunings.{file_name}.{}", p.name), p.var.clone()));
            }
        }
        if let Some(slot) = self.model.embedding_slot() {
            if let Some(invertible) = slot.invertibles.get(name) {
                let holder = self.module_prefix(slot.invertible_path());
                for p in invertible.params() {
                    out.push((format!("{holder}invertible_adapters.{file_name}.{}", p.name), p.var.clone()));
                }
            }
        }
        out
    }

    /// Buffers of an adapter (saved, never trained), by tensor id.
    pub(super) fn frozen_params(&self, name: &str) -> Vec<candle_core::TensorId> {
        let mut out = Vec::new();
        self.each_slot(&mut |_, slot| {
            if let Some((_, params)) = slot.adapter_slot().adapter_params(name) {
                out.extend(params.iter().filter(|p| p.frozen).map(|p| p.var.id()));
            }
        });
        if let Some(shared) = self.shared.get(name) {
            out.extend(shared.iter().filter(|p| p.frozen).map(|p| p.var.id()));
        }
        out
    }

    /// `path.` of a module below the root (`encoder.`), or nothing for the root itself: what
    /// names of the modules a submodel holds (prefix pools, invertible adapters) start with.
    fn module_prefix(&self, path: &str) -> String {
        match self.strip_root(path) {
            "" => String::new(),
            path => format!("{path}."),
        }
    }

    /// (alias, parameter) full names of the parameters the Python module registers twice.
    pub(super) fn aliases(&self, name: &str, file_name: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let pool = self.prefixes.get(name);
        self.each_slot(&mut |_, slot| {
            let adapter_slot = slot.adapter_slot();
            if let Some((module, _)) = adapter_slot.adapter_params(name) {
                let base = format!("{}.{file_name}", self.strip_root(&module));
                out.extend(adapter_slot.param_aliases(name).into_iter().map(|(alias, p)| (format!("{base}.{alias}"), format!("{base}.{p}"))));
            }
            // Every attention module holding a prefix also registers the whole pool (`.bin` files
            // from Python carry these copies).
            if let SlotRef::Prefix(_, s) = slot {
                // The pool of the slot's own (sub)model.
                for (key, module) in pool.map(|g| &g.modules).into_iter().flatten() {
                    let (holder, location) = crate::methods::prefix::split_pool_key(key);
                    if holder != s.pool() {
                        continue;
                    }
                    let holder = self.module_prefix(holder);
                    for p in module.params() {
                        let module = format!("prefix_tunings.{file_name}.{location}.{}", p.name);
                        out.push((format!("{}.prefix_tuning.pool.{module}", self.strip_root(s.path())), format!("{holder}prefix_tuning.{module}")));
                    }
                }
            }
        });
        out
    }

    /// Writes `DIR/adapter_config.json` and `DIR/adapter.safetensors`, readable by the Python
    /// library's `load_adapter`; a head named like the adapter is saved beside it
    /// (`head_config.json`, `model_head.safetensors`), as Python's `with_head=True` does.
    pub fn save_adapter(&self, dir: impl AsRef<Path>, name: &str) -> Result<()> {
        let dir = dir.as_ref();
        let config = self.configs.get(name).ok_or_else(|| AdapterError::NoSuchAdapter(name.into()))?;
        if config.lora().and_then(|c| c.peft.as_ref()).is_some_and(|layout| !layout.expressible) {
            return Err(AdapterError::Unsupported {
                adapter: name.into(),
                operation: "save_adapter".into(),
                reason: "it came from a PEFT file whose modules (ranks, alphas, targets such as o_proj or gate_proj, IA3 on inputs, or PEFT's DoRA) AdapterHub's config cannot express; save it as PEFT (save_adapter_peft, `adapters convert --to peft`)".into(),
            });
        }
        std::fs::create_dir_all(dir).map_err(|e| AdapterError::io(dir, e))?;
        let mut tensors: HashMap<String, Tensor> = self.named_params(name)?.into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
        // Written under both names, as Python's state dict has them (separate copies, since
        // safetensors refuses shared storage).
        // (Prefix pool copies are left out: Python's own safetensors file has only the pool.)
        for (alias, original) in self.aliases(name, name).into_iter().filter(|(a, _)| !a.contains(".prefix_tuning.pool.")) {
            if let Some(t) = tensors.get(&original) {
                let copy = t.copy()?;
                tensors.insert(alias, copy);
            }
        }
        // Weights, config and head are written together: a failure on any leaves the folder's
        // previous files as they were.
        let mut batch = crate::io::FileBatch::new();
        batch.add_safetensors(&dir.join(ADAPTER_WEIGHTS_SAFE), &tensors)?;
        let mapping = self.model.mapping();
        AdapterFile {
            config: config.clone(),
            name: name.to_string(),
            hidden_size: Some(self.model.dims().hidden_size),
            model_type: Some(mapping.model_type.into()),
            model_class: Some(mapping.model_class.into()),
            model_name: None,
            version: format!("adapters.{PYTHON_ADAPTERS_VERSION}"),
            extra: direft_marker(config),
        }
        .stage(&mut batch, dir)?;
        if self.heads.contains_key(name) {
            self.stage_head(&mut batch, dir, name)?;
        }
        batch.commit()
    }

    /// Loads the adapter of a folder (not its head; see `load_adapter`). Either every tensor
    /// loads or nothing is added.
    pub(crate) fn load_adapter_only(&mut self, dir: impl AsRef<Path>, load_as: Option<&str>) -> Result<String> {
        let dir = dir.as_ref();
        if let Some(peft) = super::peft::peft_folder(dir)? {
            return self.load_peft_adapter(&peft, load_as);
        }
        let file = AdapterFile::read(dir)?;
        let weights_path = crate::io::find_weights(dir, ADAPTER_WEIGHTS_SAFE, ADAPTER_WEIGHTS_PICKLE)?;
        let weights = crate::io::read_weights(&weights_path, &self.placement.device)?;
        let name = load_as.unwrap_or(&file.name).to_string();
        let mut config = file.config.clone();
        apply_direft_marker(&mut config, &file.extra);
        // Files from versions before 1.1.0 ignored alpha; the Python library loads them with alpha = r.
        if let AdapterConfig::LoRA(c) = &mut config {
            if version_before(&file.version, (1, 1, 0)) {
                c.alpha = c.r as f64;
            }
        }
        if let (Some(h), dims) = (file.hidden_size, self.model.dims()) {
            if h != dims.hidden_size {
                return Err(AdapterError::ConfigKey {
                    file: dir.join(crate::config::CONFIG_NAME).display().to_string(),
                    key: "hidden_size".into(),
                    reason: format!("the adapter was saved for hidden size {h}, this model has {}", dims.hidden_size),
                });
            }
        }
        self.add_adapter_with(&name, config, None)?;
        match self.assign_weights(&name, &file.name, &weights, &weights_path) {
            Ok(()) => Ok(name),
            Err(e) => {
                self.delete_adapter(&name)?;
                Err(e)
            }
        }
    }

    pub(super) fn assign_weights(&self, name: &str, file_name: &str, weights: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
        let origin = path.display().to_string();
        let expected = Expected { origin: &origin, owner: file_name.into(), params: self.params_named_as(name, file_name).into_iter().collect() };
        let aliases: HashMap<String, String> = self.aliases(name, file_name).into_iter().collect();
        let resolve = |key: &str| match with_or_without_root(key, |k| expected.params.contains_key(k)) {
            Some(k) => Resolved::Param(k),
            // A second name of a parameter loaded under its first name.
            None if with_or_without_root(key, |k| aliases.contains_key(k)).is_some() => Resolved::Ignored,
            None => Resolved::Unknown,
        };
        let missing = |tensor: &str| {
            if !tensor.starts_with("shared_parameters.") {
                return AdapterError::MissingTensor { file: origin.clone(), tensor: tensor.into() };
            }
            // adapters 1.3.0 leaves these out when it saves from a bare model (its filter wants a
            // `.` before `shared_parameters`); loading them fresh would silently change the
            // adapter, so this is an error that says where they went.
            AdapterError::file(
                &origin,
                format!(
                    "tensor `{tensor}` is missing: the parameters shared by all layers (Compacter's PHM rule, VeRA's A and B) are not in this file. \
                     The Python library does not save them from a bare model (BertModel); save the adapter from an AdapterModel class \
                     (BertAdapterModel), or add the `shared_parameters.*` tensors to the file"
                ),
            )
        };
        expected.load(weights, resolve, missing)
    }
}

/// DiReft differs from NoReft by a Python class attribute that `adapter_config.json` cannot hold
/// (Python reloads a saved DiReft as NoReft). This library writes a top-level marker, which
/// Python ignores, so that its own files reload as what was saved.
pub(super) const DIREFT_MARKER: &str = "reft_subtract_projection";

pub(super) fn direft_marker(config: &AdapterConfig) -> serde_json::Map<String, serde_json::Value> {
    let mut extra = serde_json::Map::new();
    if config.reft().is_some_and(|c| !c.subtract_projection) {
        extra.insert(DIREFT_MARKER.into(), serde_json::Value::Bool(false));
    }
    extra
}

pub(super) fn apply_direft_marker(config: &mut AdapterConfig, extra: &serde_json::Map<String, serde_json::Value>) {
    if extra.get(DIREFT_MARKER) == Some(&serde_json::Value::Bool(false)) {
        match config {
            AdapterConfig::Reft(c) => c.subtract_projection = false,
            AdapterConfig::Union(members) => members.iter_mut().for_each(|m| apply_direft_marker(m, extra)),
            _ => {}
        }
    }
}

pub(super) fn version_before(version: &str, (major, minor, patch): (u64, u64, u64)) -> bool {
    let mut parts = version.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty()).map(|p| p.parse::<u64>().unwrap_or(0));
    let v = (parts.next(), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    match v {
        (Some(a), b, c) => (a, b, c) < (major, minor, patch),
        (None, _, _) => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_compare() {
        assert!(super::version_before("1.0.1", (1, 1, 0)));
        assert!(!super::version_before("1.3.0", (1, 1, 0)));
        assert!(!super::version_before("", (1, 1, 0)));
    }
}
