//! Loading a PEFT folder. The modules a file adapts are read from its tensors
//! (`base_model.model.<module>.lora_A.weight`, `<module>.ia3_l`, `<module>.lora_magnitude_vector`),
//! matched to the model's LoRA slots by module path, and become a [`PeftLayout`]: each module
//! with its rank (from its tensors), alpha (`lora_alpha`, `alpha_pattern`, rsLoRA) and, for IA3,
//! whether it scales the input. When the same modules are AdapterHub's locations x layers with
//! one rank, the config's AdapterHub fields say so too. What cannot load is refused with the
//! file, the key and the reason, before anything is added.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use candle_core::Tensor;
use serde_json::Value;

use super::{adapterhub_location, layer_of, pattern_value, split_key, PeftParam, PEFT_WEIGHTS_PICKLE, PEFT_WEIGHTS_SAFE, SUPPORTED_PEFT_TYPES};
use crate::body::BaseModel;
use crate::config::{AdapterConfig, PeftLayout, PeftModule};
use crate::error::{AdapterError, Result};
use crate::mixin::{LoraLocation, SlotRef};
use crate::model::AdaptedModel;

/// A model's LoRA slot, as a PEFT module path finds it.
struct Slot {
    /// The slot's own path (what a [`PeftLayout`] is keyed by).
    path: String,
    /// The path without the checkpoint's root prefix (what the adapter's parameters are named by).
    stripped: String,
    layer: usize,
    location: LoraLocation,
}

impl<M: BaseModel + ?Sized> AdaptedModel<M> {
    /// Loads a PEFT folder as adapter `load_as` (default: the folder's name): LoRA (rsLoRA, list
    /// or regex `target_modules`, `layers_to_transform`, `rank_pattern`, `alpha_pattern`,
    /// `fan_in_fan_out`), DoRA and IA3 (with `feedforward_modules`), on any linear the model
    /// marks for LoRA-family modules. Either everything loads or nothing is added.
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
        // What changes the base model beyond the adapted linears is refused by key.
        let nonempty =
            |key: &str| !matches!(raw.get(key), None | Some(Value::Null)) && raw[key] != Value::Object(Default::default()) && raw[key] != Value::Array(vec![]);
        for key in ["modules_to_save", "layer_replication", "trainable_token_indices", "target_parameters"] {
            if nonempty(key) {
                return Err(key_error(key, format!("is set ({}); loading it is not supported", raw[key])));
            }
        }
        if raw["lora_bias"] == Value::Bool(true) {
            return Err(key_error("lora_bias", "is true (a trained bias on lora_B); loading it is not supported".into()));
        }
        if raw.get("bias").and_then(Value::as_str).is_some_and(|b| b != "none") {
            return Err(key_error("bias", format!("is `{}` (trained base biases); only `none` is supported", raw["bias"])));
        }
        let dora = raw["use_dora"] == Value::Bool(true);
        let weights_path = crate::io::find_weights(dir, PEFT_WEIGHTS_SAFE, PEFT_WEIGHTS_PICKLE)?;
        let weights = crate::io::read_weights(&weights_path, &self.placement.device)?;
        let weights_origin = weights_path.display().to_string();

        // The model's LoRA slots by module path (without the checkpoint's root prefix).
        let mut slots: HashMap<String, Slot> = HashMap::new();
        self.each_slot(&mut |layer, slot| {
            if let SlotRef::Lora(location, s) = slot {
                let stripped = self.strip_root(s.path()).to_string();
                slots.insert(stripped.clone(), Slot { path: s.path().to_string(), stripped, layer, location });
            }
        });
        let find = |module: &str| -> Option<&Slot> {
            // PEFT names modules by the wrapped model's path (`model.layers...` for *ForCausalLM).
            let stripped = module.split_once('.').map(|(_, rest)| rest);
            [Some(module), stripped].into_iter().flatten().find_map(|m| slots.get(m))
        };
        // Every tensor's module, in file order of modules.
        let mut modules: BTreeMap<&str, (&Slot, HashMap<PeftParam, &Tensor>)> = BTreeMap::new();
        for (key, tensor) in &weights {
            let (module, param) =
                split_key(key).ok_or_else(|| AdapterError::UnexpectedTensor { file: weights_origin.clone(), tensor: key.clone(), adapter: "PEFT".into() })?;
            let Some(slot) = find(module) else {
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
            modules.entry(module).or_insert_with(|| (slot, HashMap::new())).1.insert(param, tensor);
        }

        if modules.is_empty() {
            return Err(AdapterError::file(&weights_origin, format!("holds no {peft_type} tensors")));
        }
        // Each module's rank, alpha and kind, from its tensors and the config.
        let lora_alpha = raw["lora_alpha"].as_f64();
        let rslora = raw["use_rslora"] == Value::Bool(true);
        let alpha_pattern = raw["alpha_pattern"].as_object().cloned().unwrap_or_default();
        let mut layout = PeftLayout::default();
        for (module, (slot, params)) in &modules {
            let tensor_error = |param: PeftParam, reason: String| AdapterError::file(&weights_origin, format!("`{module}.{}`: {reason}", param.suffix()));
            let spec = match peft_type.as_str() {
                "IA3" => {
                    let l = params.get(&PeftParam::Ia3).ok_or_else(|| tensor_error(PeftParam::Ia3, "missing".into()))?;
                    // `[1, in]` scales the input (a feed-forward module), `[out, 1]` the output.
                    let scales_input = l.dims().first() == Some(&1) && l.dims().get(1).is_some_and(|d| *d > 1);
                    PeftModule { r: 1, alpha: 1.0, scales_input }
                }
                _ => {
                    let a = params.get(&PeftParam::A).ok_or_else(|| tensor_error(PeftParam::A, "missing".into()))?;
                    if !params.contains_key(&PeftParam::B) {
                        return Err(tensor_error(PeftParam::B, "missing".into()));
                    }
                    if dora != params.contains_key(&PeftParam::Magnitude) {
                        let reason = if dora { "missing (the config sets use_dora)" } else { "present, but the config does not set use_dora" };
                        return Err(tensor_error(PeftParam::Magnitude, reason.into()));
                    }
                    let r = a.dim(0)?;
                    let alpha = match pattern_value(&alpha_pattern, module)
                        .map_err(|k| key_error("alpha_pattern", format!("key `{k}` is a regex beyond a module path; name the modules")))?
                    {
                        Some(v) => v.as_f64().ok_or_else(|| key_error("alpha_pattern", format!("`{v}` for `{module}` is not a number")))?,
                        None => lora_alpha.ok_or_else(|| key_error("lora_alpha", "needs a number".into()))?,
                    };
                    // rsLoRA scales by alpha / sqrt(r): the same as (alpha * sqrt(r)) / r.
                    let alpha = if rslora { alpha * (r as f64).sqrt() } else { alpha };
                    PeftModule { r, alpha, scales_input: false }
                }
            };
            layout.modules.insert(slot.path.clone(), spec);
        }

        // The AdapterHub fields, and whether they say the same.
        let layer_count = self.adapter_layer_count();
        let mut config = match peft_type.as_str() {
            "IA3" => AdapterConfig::parse("ia3")?,
            _ => AdapterConfig::parse("lora")?,
        };
        let AdapterConfig::LoRA(c) = &mut config else { return Err(AdapterError::InvalidConfig("lora and ia3 are LoRA configs".into())) };
        let locations: BTreeSet<Option<&'static str>> = modules.values().map(|(s, _)| adapterhub_location(s.location)).collect();
        let layers: BTreeSet<usize> = modules.values().map(|(s, _)| s.layer).collect();
        let specs: Vec<&PeftModule> = layout.modules.values().collect();
        let uniform = specs.windows(2).all(|w| w[0] == w[1]);
        layout.expressible =
            !dora && uniform && specs.iter().all(|s| !s.scales_input) && !locations.contains(&None) && modules.len() == layers.len() * locations.len();
        let locations: BTreeSet<&str> = locations.into_iter().flatten().collect();
        let matrices: Vec<String> = ["q", "k", "v"].iter().filter(|m| locations.contains(*m)).map(|m| m.to_string()).collect();
        c.selfattn_lora = !matrices.is_empty();
        c.attn_matrices = matrices;
        c.intermediate_lora = locations.contains("intermediate");
        c.output_lora = locations.contains("output");
        c.leave_out = (0..layer_count).filter(|l| !layers.contains(l)).collect();
        if let (true, Some(first)) = (peft_type == "LORA", specs.first()) {
            c.r = first.r;
            c.alpha = first.alpha;
            c.use_dora = dora;
            c.dropout = raw["lora_dropout"].as_f64().unwrap_or(0.0);
        }
        c.peft = Some(layout);

        let name = load_as.map(str::to_string).unwrap_or_else(|| dir.file_name().and_then(|n| n.to_str()).unwrap_or("peft").to_string());
        let mut renamed: HashMap<String, Tensor> = HashMap::new();
        for (slot, params) in modules.values() {
            for (param, tensor) in params {
                let tensor = match param {
                    PeftParam::Magnitude => tensor.unsqueeze(1)?,
                    _ => (*tensor).clone(),
                };
                renamed.insert(format!("{}.loras.{name}.{}", slot.stripped, param.name_here()), tensor);
            }
        }
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
