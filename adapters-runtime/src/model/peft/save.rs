//! Writing an adapter as a PEFT folder: tensors under PEFT's names for this checkpoint
//! (`base_model.model.` + the module path the checkpoint uses), the config PEFT 0.21 reads.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::Tensor;
use serde_json::Value;

use super::{PeftParam, PEFT_WEIGHTS_SAFE};
use crate::body::BaseModel;
use crate::config::{AdapterConfig, LoraKind, PeftModule};
use crate::error::{AdapterError, Result};
use crate::mixin::{LoraLocation, SlotRef};
use crate::model::AdaptedModel;

impl<M: BaseModel + ?Sized> AdaptedModel<M> {
    /// Writes adapter `name` as a PEFT folder (`adapter_config.json` + `adapter_model.safetensors`,
    /// atomically), for LoRA and IA3 on the modules it adapts, and for adapters loaded from PEFT
    /// files (DoRA, IA3 on feed-forward inputs, per-module ranks and alphas included):
    /// `target_modules` is a regex of exactly the adapted modules, `rank_pattern` /
    /// `alpha_pattern` / `feedforward_modules` name the modules that differ. The Python library's
    /// DoRA (which computes differently from PEFT's), VeRA, gated modules and grouped q/k/v
    /// projections are refused.
    ///
    /// ```no_run
    /// # fn demo(model: &adapters_runtime::DynAdaptedModel) -> adapters_runtime::Result<()> {
    /// model.save_adapter_peft("out/lora_peft", "lora")?; // loads with PeftModel.from_pretrained
    /// # Ok(()) }
    /// ```
    pub fn save_adapter_peft(&self, dir: impl AsRef<Path>, name: &str) -> Result<()> {
        let dir = dir.as_ref();
        let refuse = |reason: String| AdapterError::Unsupported { adapter: name.into(), operation: "save as PEFT".into(), reason };
        let config = match self.configs.get(name) {
            None => return Err(AdapterError::NoSuchAdapter(name.into())),
            Some(AdapterConfig::LoRA(c)) => c.clone(),
            Some(other) => return Err(refuse(format!("PEFT files hold LoRA-family adapters; this is a {} adapter", other.method_name()))),
        };
        let kind = config.kind();
        if config.use_gating || config.is_vera() {
            return Err(refuse("VeRA and gated LoRA are not written as PEFT files; LoRA, IA3 and DoRA from PEFT files are".into()));
        }
        if kind == LoraKind::DoRA && config.peft.is_none() {
            return Err(refuse(
                "the Python library's DoRA differs from PEFT's (its norm leaves out the scaling, its magnitude scales the bias), so PEFT would compute other outputs; only DoRA loaded from PEFT files is written as PEFT".into(),
            ));
        }
        if config.peft.is_none() {
            let mut fused = None;
            self.each_slot(&mut |_, slot| {
                if let SlotRef::Lora(LoraLocation::SelfAttn, s) = slot {
                    if s.adapter_names().any(|n| n == name) {
                        fused = Some(s.path().to_string());
                    }
                }
            });
            if let Some(path) = fused {
                return Err(refuse(format!("`{path}` is a fused q/k/v projection, whose grouped LoRA has no PEFT equivalent")));
            }
        }
        let root = if self.root_prefix.is_empty() { String::new() } else { format!("{}.", self.root_prefix) };
        let uniform = PeftModule { r: config.r, alpha: config.alpha, scales_input: false };
        let suffix = format!(".loras.{name}.");
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        let mut modules: BTreeMap<String, PeftModule> = BTreeMap::new();
        for (key, var) in self.named_params(name)? {
            let Some((module, param)) = key.split_once(suffix.as_str()) else { continue };
            let (peft_param, tensor) = match (kind, param) {
                (LoraKind::IA3, "lora_B") => (PeftParam::Ia3, var.as_tensor().clone()),
                (_, "lora_A") => (PeftParam::A, var.as_tensor().clone()),
                (_, "lora_B") => (PeftParam::B, var.as_tensor().clone()),
                (LoraKind::DoRA, "m.weight") => (PeftParam::Magnitude, var.as_tensor().flatten_all()?),
                _ => return Err(refuse(format!("parameter `{key}` has no PEFT name"))),
            };
            let module = format!("{root}{module}");
            let spec = match &config.peft {
                Some(layout) => layout.modules.get(&module).cloned().ok_or_else(|| crate::error::internal("a PEFT module outside its layout"))?,
                None => uniform.clone(),
            };
            tensors.insert(format!("base_model.model.{module}.{}", peft_param.suffix()), tensor);
            modules.insert(module, spec);
        }
        if modules.is_empty() {
            return Err(refuse("the adapter has no modules".into()));
        }
        let escape = |m: &str| m.replace('.', "\\.");
        let target = format!("^({})$", modules.keys().map(|m| escape(m)).collect::<Vec<_>>().join("|"));
        // The most common rank and alpha are the config's; the others are patterns by module.
        let r = most_common(modules.values().map(|s| s.r)).unwrap_or(config.r);
        let alpha = most_common(modules.values().map(|s| s.alpha.to_bits())).map_or(config.alpha, f64::from_bits);
        let pattern = |differs: &dyn Fn(&PeftModule) -> Option<Value>| -> serde_json::Map<String, Value> {
            modules.iter().filter_map(|(m, s)| differs(s).map(|v| (escape(m), v))).collect()
        };
        let rank_pattern = pattern(&|s| (s.r != r).then(|| Value::from(s.r)));
        let alpha_pattern = pattern(&|s| (s.alpha != alpha).then(|| Value::from(s.alpha)));
        let feedforward: Vec<&String> = modules.iter().filter(|(_, s)| s.scales_input).map(|(m, _)| m).collect();
        let conv1d = self.model.mapping().stores_conv1d();
        let mut peft = serde_json::json!({
            "peft_type": if kind == LoraKind::IA3 { "IA3" } else { "LORA" },
            "target_modules": target,
            "base_model_name_or_path": null,
            "task_type": null,
            "inference_mode": true,
            "revision": null,
            "modules_to_save": null,
        });
        let extra = if kind == LoraKind::IA3 {
            serde_json::json!({"feedforward_modules": feedforward, "fan_in_fan_out": conv1d, "init_ia3_weights": true})
        } else {
            serde_json::json!({
                "r": r, "lora_alpha": alpha, "lora_dropout": config.dropout, "use_rslora": false, "use_dora": kind == LoraKind::DoRA,
                "bias": "none", "fan_in_fan_out": conv1d, "init_lora_weights": true, "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern,
                "layers_to_transform": null, "layers_pattern": null,
            })
        };
        if let (Some(p), Some(e)) = (peft.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        std::fs::create_dir_all(dir).map_err(|e| AdapterError::io(dir, e))?;
        let mut batch = crate::io::FileBatch::new();
        batch.add_safetensors(&dir.join(PEFT_WEIGHTS_SAFE), &tensors)?;
        let text = serde_json::to_string_pretty(&peft).map_err(|e| AdapterError::InvalidConfig(e.to_string()))?;
        batch.add(&dir.join(crate::config::CONFIG_NAME), text.as_bytes())?;
        batch.commit()
    }
}

/// The value that occurs most often (the largest of those tied).
fn most_common<T: Ord>(values: impl Iterator<Item = T>) -> Option<T> {
    let mut counts: BTreeMap<T, usize> = BTreeMap::new();
    for v in values {
        *counts.entry(v).or_default() += 1;
    }
    counts.into_iter().max_by_key(|(_, n)| *n).map(|(v, _)| v)
}
