//! AdapterFusion on an adapted model: add, train, save and load fusion layers in AdapterHub's
//! files (`adapter_fusion_config.json`, `model_adapter_fusion.safetensors` / `.bin`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{Tensor, Var};
use serde_json::{json, Value};

use super::{AdaptedModel, PYTHON_ADAPTERS_VERSION};
use crate::body::BaseModel;
use crate::config::{AdapterConfig, FusionConfig};
use crate::context::FusionAttention;
use crate::error::{AdapterError, Result};
use crate::methods::bottleneck::FusionLayer;
use crate::mixin::{BottleneckLocation, SlotMut, SlotRef};
use crate::model_io::ModelInputs;
use crate::setup::AdapterSetup;
use crate::state_dict::{with_or_without_root, Expected, Resolved};

pub const FUSION_CONFIG_NAME: &str = "adapter_fusion_config.json";
pub const FUSION_WEIGHTS_SAFE: &str = "model_adapter_fusion.safetensors";
pub const FUSION_WEIGHTS_PICKLE: &str = "pytorch_model_adapter_fusion.bin";

/// The adapters of a Fuse block (its children must be adapter names) and its fusion name.
fn fuse_members(setup: &AdapterSetup) -> Result<(String, Vec<String>)> {
    let children = match setup {
        AdapterSetup::Fuse { children, .. } => children,
        other => {
            return Err(AdapterError::Setup { setup: other.to_string(), reason: "add_adapter_fusion takes a Fuse block, e.g. Fuse[a, b]".into() });
        }
    };
    let names = children
        .iter()
        .map(|c| match c {
            AdapterSetup::Single(n) => Ok(n.clone()),
            other => Err(AdapterError::Setup { setup: setup.to_string(), reason: format!("a fusion layer fuses adapters by name, not `{other}`") }),
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((setup.fusion_name().unwrap_or_default(), names))
}

impl<M: BaseModel + ?Sized> AdaptedModel<M> {
    /// Adds an AdapterFusion layer over bottleneck adapters (`Fuse[a, b]`) at every slot where
    /// all of them are placed, as Python's `add_adapter_fusion`. The adapters must agree on
    /// `mh_adapter` and `output_adapter`.
    ///
    /// ```no_run
    /// # fn demo(model: &mut adapters_runtime::DynAdaptedModel) -> adapters_runtime::Result<()> {
    /// use adapters_runtime::{config::FusionConfig, AdapterSetup};
    /// let fuse = AdapterSetup::parse("Fuse[sst2, mnli]")?;
    /// model.add_adapter_fusion(fuse.clone(), FusionConfig::dynamic())?;
    /// let trainable = model.train_adapter_fusion(fuse, false)?; // fusion layers (and heads) only
    /// # Ok(()) }
    /// ```
    pub fn add_adapter_fusion(&mut self, setup: AdapterSetup, config: FusionConfig) -> Result<()> {
        let (name, members) = fuse_members(&setup)?;
        if self.fusions.contains_key(&name) {
            return Err(AdapterError::AdapterExists(format!("fusion {name}")));
        }
        let mut wants = (None, None, None);
        for member in &members {
            let c = match self.configs.get(member) {
                Some(AdapterConfig::Bottleneck(c)) => c,
                Some(_) => {
                    return Err(AdapterError::Setup {
                        setup: setup.to_string(),
                        reason: format!("`{member}` is not a bottleneck adapter; AdapterFusion fuses bottleneck adapters"),
                    })
                }
                None => return Err(AdapterError::NoSuchAdapter(member.clone())),
            };
            for (slot, value, attribute) in [
                (&mut wants.0, c.mh_adapter, "mh_adapter"),
                (&mut wants.1, c.output_adapter, "output_adapter"),
                (&mut wants.2, c.cross_adapter, "cross_adapter"),
            ] {
                match slot {
                    Some(v) if *v != value => {
                        return Err(AdapterError::Setup {
                            setup: setup.to_string(),
                            reason: format!("all fused adapters must define the same value for config attribute {attribute}"),
                        })
                    }
                    _ => *slot = Some(value),
                }
            }
        }
        let dims = self.model.dims();
        let mut init = self.init_for(&name, 0x4655_5345);
        let mut failure = None;
        self.each_slot_mut(&mut |_, slot| {
            if let SlotMut::Bottleneck(location, s) = slot {
                let wanted = match location {
                    BottleneckLocation::MhAdapter => wants.0,
                    BottleneckLocation::OutputAdapter => wants.1,
                    BottleneckLocation::CrossAdapter => wants.2,
                };
                if wanted == Some(true) && failure.is_none() {
                    match FusionLayer::new(config.clone(), s.hidden_size(), dims.attention_probs_dropout_prob, &mut init) {
                        Ok(layer) => {
                            s.fusions.insert(name.clone(), layer);
                        }
                        Err(e) => failure = Some(e),
                    }
                }
            }
        });
        if let Some(e) = failure {
            self.remove_fusion_layers(&name);
            return Err(e.into());
        }
        self.fusions.insert(name, (config, members));
        Ok(())
    }

    fn remove_fusion_layers(&mut self, name: &str) {
        self.each_slot_mut(&mut |_, slot| {
            if let SlotMut::Bottleneck(_, s) = slot {
                s.fusions.remove(name);
            }
        });
    }

    /// Removes a fusion layer (`a,b`) from every slot.
    pub fn delete_adapter_fusion(&mut self, name: &str) -> Result<()> {
        if self.fusions.remove(name).is_none() {
            return Err(AdapterError::InvalidConfig(format!("no fusion layer named `{name}` in this model")));
        }
        self.remove_fusion_layers(name);
        Ok(())
    }

    pub fn fusion_names(&self) -> impl Iterator<Item = &str> {
        self.fusions.keys().map(String::as_str)
    }

    /// Fusion parameters under Python's names (`encoder.layer.0.output.adapter_fusion_layer.a,b.query.weight`).
    pub fn fusion_params(&self, name: &str) -> Result<Vec<(String, Var)>> {
        if !self.fusions.contains_key(name) {
            return Err(AdapterError::InvalidConfig(format!("no fusion layer named `{name}` in this model")));
        }
        Ok(self.fusion_params_named_as(name, name))
    }

    fn fusion_params_named_as(&self, name: &str, file_name: &str) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        self.each_slot(&mut |_, slot| {
            if let SlotRef::Bottleneck(_, s) = slot {
                if let Some(layer) = s.fusions.get(name) {
                    for p in layer.params() {
                        out.push((format!("{}.adapter_fusion_layer.{file_name}.{}", self.strip_root(s.path()), p.name), p.var.clone()));
                    }
                }
            }
        });
        out
    }

    /// Activates `setup` for training AdapterFusion and returns exactly the trainable
    /// variables: every fusion layer of a Fuse block in the setup, the fused adapters too when
    /// `unfreeze_adapters`, and every head (Python's `train_adapter_fusion`).
    pub fn train_adapter_fusion(&mut self, setup: AdapterSetup, unfreeze_adapters: bool) -> Result<Vec<Var>> {
        self.set_active_adapters(setup.clone())?;
        self.training = true;
        self.grad_enabled = true;
        let mut fuses = Vec::new();
        collect_fuses(&setup, &mut fuses);
        let mut vars = Vec::new();
        for name in fuses {
            vars.extend(self.fusion_params(&name)?.into_iter().map(|(_, v)| v));
        }
        if unfreeze_adapters {
            for name in setup.flatten() {
                vars.extend(self.named_params(name)?.into_iter().map(|(_, v)| v));
            }
        }
        vars.extend(self.head_vars());
        Ok(vars)
    }

    /// Python's `get_fusion_regularization_loss`: `0.01 * sum((I - V)^2)` over the value matrix
    /// of every fusion layer that has one; `None` without such layers. Add it to the task loss
    /// when training a `dynamic` fusion.
    pub fn fusion_regularization_loss(&self) -> Result<Option<Tensor>> {
        let mut total: Option<Tensor> = None;
        let mut failure = None;
        self.each_slot(&mut |_, slot| {
            if let SlotRef::Bottleneck(_, s) = slot {
                for layer in s.fusions.values() {
                    let Some(v) = layer.value_weight() else { continue };
                    let term = (|| -> candle_core::Result<Tensor> {
                        let n = v.dim(0)?;
                        let eye = Tensor::eye(n, v.dtype(), v.device())?;
                        (eye - v.as_tensor())?.sqr()?.sum_all()? * 0.01
                    })();
                    match (term, total.take()) {
                        (Ok(t), None) => total = Some(t),
                        (Ok(t), Some(acc)) => match acc + t {
                            Ok(sum) => total = Some(sum),
                            Err(e) => failure = Some(e),
                        },
                        (Err(e), acc) => {
                            total = acc;
                            failure = Some(e);
                        }
                    }
                }
            }
        });
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(total),
        }
    }

    /// Writes `adapter_fusion_config.json` and `model_adapter_fusion.safetensors`.
    pub fn save_adapter_fusion(&self, dir: impl AsRef<Path>, name: &str) -> Result<()> {
        let dir = dir.as_ref();
        let (config, members) = self.fusions.get(name).ok_or_else(|| AdapterError::InvalidConfig(format!("no fusion layer named `{name}` in this model")))?;
        std::fs::create_dir_all(dir).map_err(|e| AdapterError::io(dir, e))?;
        let tensors: HashMap<String, Tensor> = self.fusion_params(name)?.into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
        let mut batch = crate::io::FileBatch::new();
        batch.add_safetensors(&dir.join(FUSION_WEIGHTS_SAFE), &tensors)?;
        let mapping = self.model.mapping();
        let file = json!({
            "adapter_names": members,
            "config": config.to_json(),
            "hidden_size": self.model.dims().hidden_size,
            "model_class": mapping.model_class,
            "model_name": Value::Null,
            "model_type": mapping.model_type,
            "name": name,
            "version": format!("adapters.{PYTHON_ADAPTERS_VERSION}"),
        });
        let text = serde_json::to_string_pretty(&file).expect("JSON values always serialise");
        batch.add(&dir.join(FUSION_CONFIG_NAME), text.as_bytes())?;
        batch.commit()
    }

    /// Loads a fusion folder written here or by Python, under its name or `load_as` (the fused
    /// adapters must be loaded first). All tensors load or nothing is added. Returns the name.
    pub fn load_adapter_fusion(&mut self, dir: impl AsRef<Path>, load_as: Option<&str>) -> Result<String> {
        let dir = dir.as_ref();
        let path = dir.join(FUSION_CONFIG_NAME);
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| AdapterError::io(&path, e))?;
        let value: Value = serde_json::from_str(&text).map_err(|e| AdapterError::file(&origin, format!("not valid JSON: {e}")))?;
        let key_err = |key: &str, reason: &str| AdapterError::ConfigKey { file: origin.clone(), key: key.into(), reason: reason.into() };
        let config = FusionConfig::from_json(value.get("config").ok_or_else(|| key_err("config", "missing"))?, &origin)?;
        let file_name = value.get("name").and_then(Value::as_str).ok_or_else(|| key_err("name", "missing"))?.to_string();
        let members: Vec<String> = match value.get("adapter_names") {
            Some(Value::Array(items)) => {
                items.iter().map(|v| v.as_str().map(String::from).ok_or_else(|| key_err("adapter_names", "expected names"))).collect::<Result<_>>()?
            }
            Some(Value::String(s)) => s.split(',').map(String::from).collect(),
            _ => file_name.split(',').map(String::from).collect(),
        };
        let name = load_as.unwrap_or(&file_name).to_string();
        let children = members.iter().map(|m| AdapterSetup::Single(m.clone())).collect();
        let explicit = (name != members.join(",")).then(|| name.clone());
        self.add_adapter_fusion(AdapterSetup::Fuse { children, name: explicit }, config)?;
        if let Err(e) = self.assign_fusion_weights(dir, &name, &file_name) {
            self.delete_adapter_fusion(&name)?;
            return Err(e);
        }
        Ok(name)
    }

    fn assign_fusion_weights(&self, dir: &Path, name: &str, file_name: &str) -> Result<()> {
        let weights_path = crate::io::find_weights(dir, FUSION_WEIGHTS_SAFE, FUSION_WEIGHTS_PICKLE)?;
        let weights = crate::io::read_weights(&weights_path, &self.placement.device)?;
        let origin = weights_path.display().to_string();
        let expected =
            Expected { origin: &origin, owner: format!("fusion {file_name}"), params: self.fusion_params_named_as(name, file_name).into_iter().collect() };
        let resolve = |key: &str| with_or_without_root(key, |k| expected.params.contains_key(k)).map_or(Resolved::Unknown, Resolved::Param);
        expected.load(&weights, resolve, |tensor| AdapterError::MissingTensor { file: origin.clone(), tensor: tensor.into() })
    }
}

impl<M: BaseModel + ?Sized> AdaptedModel<M> {
    /// `last_hidden_state` and the attention of every fusion layer over its adapters
    /// (`[batch, seq, adapters]`), by fusion, layer and location, as Python returns them with
    /// `output_adapter_fusion_attentions=True`.
    pub fn forward_with_fusion_attentions(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<(Tensor, Vec<FusionAttention>)> {
        let sink = Arc::new(Mutex::new(Vec::new()));
        let (inputs, ctx) = self.prepare(&ModelInputs::text(input_ids.clone(), attention_mask.clone()))?;
        let ctx = ctx.with_fusion_attentions(sink.clone());
        let hidden = self.model.forward_with(&inputs, &ctx)?.last_hidden_state;
        let mut attentions = sink.lock().map(|v| v.clone()).unwrap_or_default();
        let mut places: HashMap<String, (usize, &'static str)> = HashMap::new();
        self.each_slot(&mut |layer, slot| {
            if let SlotRef::Bottleneck(location, s) = slot {
                places.insert(s.path().to_string(), (layer, location.key()));
            }
        });
        for a in &mut attentions {
            if let Some((layer, location)) = places.get(&a.slot) {
                a.layer = *layer;
                a.location = location;
            }
        }
        Ok((hidden, attentions))
    }
}

fn collect_fuses(setup: &AdapterSetup, out: &mut Vec<String>) {
    if let Some(name) = setup.fusion_name() {
        out.push(name);
    }
    for child in setup.children() {
        collect_fuses(child, out);
    }
}
