//! PEFT adapter folders (`adapter_config.json` with `peft_type` + `adapter_model.safetensors` or
//! `.bin`), loaded into the same LoRA-family slots the AdapterHub files use. The modules a file
//! adapts are read from its tensors (`base_model.model.<module>.lora_A.weight`, `<module>.ia3_l`),
//! matched to the model's LoRA slots by module path, and expressed as the equivalent LoRA config
//! (locations and `leave_out`); what that cannot express is refused with the file, the key and
//! the reason, before anything is added.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use candle_core::Tensor;
use serde_json::Value;

use super::AdaptedModel;
use crate::body::BaseModel;
use crate::config::AdapterConfig;
use crate::error::{AdapterError, Result};
use crate::mixin::{LoraLocation, SlotRef};

/// The weight files of a PEFT folder.
pub const PEFT_WEIGHTS_SAFE: &str = "adapter_model.safetensors";
pub const PEFT_WEIGHTS_PICKLE: &str = "adapter_model.bin";
/// The PEFT methods loaded here.
pub const SUPPORTED_PEFT_TYPES: &[&str] = &["LORA", "IA3"];

/// Whether `dir` holds a PEFT adapter (its `adapter_config.json` names a `peft_type`).
pub fn is_peft_folder(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(crate::config::CONFIG_NAME))
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .is_some_and(|v| v.get("peft_type").is_some())
}

/// One PEFT tensor: the adapted module's path (without PEFT's `base_model.model.` wrapper) and
/// which parameter it is.
fn split_key(key: &str) -> Option<(&str, &'static str)> {
    let key = key.strip_prefix("base_model.model.").unwrap_or(key);
    for (suffix, param) in [(".lora_A.weight", "lora_A"), (".lora_B.weight", "lora_B"), (".ia3_l", "lora_B")] {
        if let Some(module) = key.strip_suffix(suffix) {
            return Some((module, param));
        }
    }
    None
}

/// `layers.3.self_attn.q_proj` -> (3, the rest): the layer index a module path carries.
fn layer_of(path: &str) -> Option<usize> {
    let parts: Vec<&str> = path.split('.').collect();
    parts.windows(2).find(|w| matches!(w[0], "layers" | "layer" | "h")).and_then(|w| w[1].parse().ok())
}

impl<M: BaseModel + ?Sized> AdaptedModel<M> {
    /// Loads a PEFT folder as adapter `load_as` (default: the folder's name). LoRA (`use_rslora`,
    /// `layers_to_transform`, list or regex `target_modules`) and IA3 without feed-forward
    /// modules, on the linears the model marks for LoRA. Either everything loads or nothing is
    /// added.
    pub(crate) fn load_peft_adapter(&mut self, dir: &Path, load_as: Option<&str>) -> Result<String> {
        let config_path = dir.join(crate::config::CONFIG_NAME);
        let origin = config_path.display().to_string();
        let text = std::fs::read_to_string(&config_path).map_err(|e| AdapterError::io(&config_path, e))?;
        let raw: Value = serde_json::from_str(&text).map_err(|e| AdapterError::file(&origin, format!("not valid JSON: {e}")))?;
        let key_error = |key: &str, reason: String| AdapterError::ConfigKey { file: origin.clone(), key: key.into(), reason };
        let peft_type = raw["peft_type"].as_str().unwrap_or_default().to_string();
        if !SUPPORTED_PEFT_TYPES.contains(&peft_type.as_str()) {
            return Err(key_error("peft_type", format!("`{peft_type}` is not supported; supported: {}", SUPPORTED_PEFT_TYPES.join(", "))));
        }
        // What the equivalent LoRA config cannot express yet is refused by key.
        let nonempty =
            |key: &str| !matches!(raw.get(key), None | Some(Value::Null)) && raw[key] != Value::Object(Default::default()) && raw[key] != Value::Array(vec![]);
        for key in ["rank_pattern", "alpha_pattern", "modules_to_save", "layer_replication", "trainable_token_indices"] {
            if nonempty(key) {
                return Err(key_error(key, format!("is set ({}); loading it is not supported yet", raw[key])));
            }
        }
        for key in ["use_dora", "fan_in_fan_out", "lora_bias"] {
            if raw[key] == Value::Bool(true) {
                return Err(key_error(key, "is true; loading it is not supported yet".into()));
            }
        }
        if raw.get("bias").and_then(Value::as_str).is_some_and(|b| b != "none") {
            return Err(key_error("bias", format!("is `{}`; only `none` (no trained biases) is supported", raw["bias"])));
        }
        if peft_type == "IA3" && nonempty("feedforward_modules") {
            return Err(key_error("feedforward_modules", "IA3 on a module's input (feed-forward modules) is not supported yet; IA3 on outputs is".into()));
        }
        let weights_path = crate::io::find_weights(dir, PEFT_WEIGHTS_SAFE, PEFT_WEIGHTS_PICKLE)?;
        let weights = crate::io::read_weights(&weights_path, &self.placement.device)?;
        let weights_origin = weights_path.display().to_string();

        // The model's LoRA slots by module path (without the checkpoint's root prefix).
        let mut slots: HashMap<String, (usize, LoraLocation)> = HashMap::new();
        self.each_slot(&mut |layer, slot| {
            if let SlotRef::Lora(location, s) = slot {
                slots.insert(self.strip_root(s.path()).to_string(), (layer, location));
            }
        });
        let find = |module: &str| -> Option<(String, usize, LoraLocation)> {
            // PEFT names modules by the wrapped model's path (`model.layers...` for *ForCausalLM).
            let stripped = module.split_once('.').map(|(_, rest)| rest);
            [Some(module), stripped].into_iter().flatten().find_map(|m| slots.get(m).map(|(l, loc)| (m.to_string(), *l, *loc)))
        };
        let mut adapted: BTreeMap<(usize, String), LoraLocation> = BTreeMap::new();
        let mut renamed_modules: HashMap<String, String> = HashMap::new();
        for key in weights.keys() {
            let (module, _) =
                split_key(key).ok_or_else(|| AdapterError::UnexpectedTensor { file: weights_origin.clone(), tensor: key.clone(), adapter: "PEFT".into() })?;
            let Some((path, layer, location)) = find(module) else {
                let mut known: Vec<&str> = slots.keys().filter(|p| layer_of(p) == Some(0)).map(String::as_str).collect();
                known.sort_unstable();
                return Err(AdapterError::file(
                    &weights_origin,
                    format!(
                        "tensor `{key}` adapts `{module}`, which takes no LoRA-family module in this {} model; the adaptable modules of layer 0 are {}",
                        self.model.mapping().model_type,
                        known.join(", ")
                    ),
                ));
            };
            if location == LoraLocation::SelfAttn {
                return Err(AdapterError::file(
                    &weights_origin,
                    format!("tensor `{key}`: PEFT adapts the fused q/k/v projection `{module}` as one matrix, which this library's grouped q/k/v slot does not take yet"),
                ));
            }
            adapted.insert((layer, path.clone()), location);
            renamed_modules.insert(module.to_string(), path);
        }
        // The config of those modules: its locations on its layers, when they are a product of the two.
        let locations: BTreeSet<&'static str> = adapted.values().map(|l| location_name(*l)).collect();
        let layers: BTreeSet<usize> = adapted.keys().map(|(l, _)| *l).collect();
        let expected = layers.len() * locations.len();
        if adapted.len() != expected {
            return Err(AdapterError::file(
                &weights_origin,
                format!(
                    "adapts {} modules, not every location ({}) on every adapted layer ({layers:?}); per-layer target sets are not supported yet",
                    adapted.len(),
                    locations.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        let layer_count = self.adapter_layer_count();
        let mut config = match peft_type.as_str() {
            "IA3" => AdapterConfig::parse("ia3")?,
            _ => AdapterConfig::parse("lora")?,
        };
        if let AdapterConfig::LoRA(c) = &mut config {
            let matrices: Vec<String> = ["q", "k", "v"].iter().filter(|m| locations.contains(*m)).map(|m| m.to_string()).collect();
            c.selfattn_lora = !matrices.is_empty();
            c.attn_matrices = matrices;
            c.intermediate_lora = locations.contains("intermediate");
            c.output_lora = locations.contains("output");
            c.leave_out = (0..layer_count).filter(|l| !layers.contains(l)).collect();
            if peft_type == "LORA" {
                let r = raw["r"].as_u64().ok_or_else(|| key_error("r", "needs a positive integer".into()))? as usize;
                let alpha = raw["lora_alpha"].as_f64().ok_or_else(|| key_error("lora_alpha", "needs a number".into()))?;
                c.r = r;
                // rsLoRA scales by alpha / sqrt(r): the same as alpha * sqrt(r) / r.
                c.alpha = if raw["use_rslora"] == Value::Bool(true) { alpha * (r as f64).sqrt() } else { alpha };
                c.dropout = raw["lora_dropout"].as_f64().unwrap_or(0.0);
            }
        }
        let name = load_as.map(str::to_string).unwrap_or_else(|| dir.file_name().and_then(|n| n.to_str()).unwrap_or("peft").to_string());
        let renamed: HashMap<String, Tensor> = weights
            .iter()
            .filter_map(|(key, t)| {
                let (module, param) = split_key(key)?;
                Some((format!("{}.loras.{name}.{param}", renamed_modules.get(module)?), t.clone()))
            })
            .collect();
        self.add_adapter_with(&name, config, None)?;
        match self.assign_weights(&name, &name, &renamed, &weights_path) {
            Ok(()) => Ok(name),
            Err(e) => {
                self.delete_adapter(&name)?;
                Err(e)
            }
        }
    }
}

impl<M: BaseModel + ?Sized> AdaptedModel<M> {
    /// Writes adapter `name` as a PEFT folder (`adapter_config.json` + `adapter_model.safetensors`,
    /// atomically), for LoRA and IA3 on the modules it adapts: tensors under PEFT's names for this
    /// checkpoint (`base_model.model.` + the module path the checkpoint uses), `target_modules` as
    /// a regex of exactly those modules. DoRA, VeRA, gated modules and fused q/k/v projections
    /// are refused.
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
        if kind == crate::config::LoraKind::DoRA || config.use_gating || config.vera_d.is_some() || config.vera_b.is_some() {
            return Err(refuse("DoRA, VeRA and gated LoRA are not written as PEFT files yet; LoRA and IA3 are".into()));
        }
        let root = if self.root_prefix.is_empty() { String::new() } else { format!("{}.", self.root_prefix) };
        let suffix = format!(".loras.{name}.");
        let mut tensors: HashMap<String, Tensor> = HashMap::new();
        let mut modules: BTreeSet<String> = BTreeSet::new();
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
        for (key, var) in self.named_params(name)? {
            let Some((module, param)) = key.split_once(suffix.as_str()) else { continue };
            let peft_param = match (kind, param) {
                (crate::config::LoraKind::IA3, "lora_B") => "ia3_l",
                (_, "lora_A") => "lora_A.weight",
                (_, "lora_B") => "lora_B.weight",
                _ => return Err(refuse(format!("parameter `{key}` has no PEFT name"))),
            };
            let module = format!("{root}{module}");
            tensors.insert(format!("base_model.model.{module}.{peft_param}"), var.as_tensor().clone());
            modules.insert(module);
        }
        if modules.is_empty() {
            return Err(refuse("the adapter has no modules".into()));
        }
        let escaped: Vec<String> = modules.iter().map(|m| m.replace('.', "\\.")).collect();
        let target = format!("^({})$", escaped.join("|"));
        let mut peft = serde_json::json!({
            "peft_type": if kind == crate::config::LoraKind::IA3 { "IA3" } else { "LORA" },
            "target_modules": target,
            "base_model_name_or_path": null,
            "task_type": null,
            "inference_mode": true,
            "revision": null,
            "modules_to_save": null,
        });
        let extra = if kind == crate::config::LoraKind::IA3 {
            serde_json::json!({"feedforward_modules": [], "fan_in_fan_out": false, "init_ia3_weights": true})
        } else {
            serde_json::json!({
                "r": config.r, "lora_alpha": config.alpha, "lora_dropout": config.dropout, "use_rslora": false, "use_dora": false,
                "bias": "none", "fan_in_fan_out": false, "init_lora_weights": true, "rank_pattern": {}, "alpha_pattern": {},
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

fn location_name(location: LoraLocation) -> &'static str {
    match location {
        LoraLocation::Query => "q",
        LoraLocation::Key => "k",
        LoraLocation::Value => "v",
        LoraLocation::SelfAttn => "qkv",
        LoraLocation::Intermediate => "intermediate",
        LoraLocation::Output => "output",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_into_module_and_parameter() {
        assert_eq!(split_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"), Some(("model.layers.0.self_attn.q_proj", "lora_A")));
        assert_eq!(split_key("base_model.model.encoder.layer.1.attention.self.value.lora_B.weight"), Some(("encoder.layer.1.attention.self.value", "lora_B")));
        assert_eq!(split_key("base_model.model.model.layers.2.self_attn.k_proj.ia3_l"), Some(("model.layers.2.self_attn.k_proj", "lora_B")));
        assert_eq!(split_key("base_model.model.lm_head.weight"), None);
        assert_eq!(layer_of("encoder.layer.11.output.dense"), Some(11));
        assert_eq!(layer_of("model.layers.3.mlp.up_proj"), Some(3));
    }
}
