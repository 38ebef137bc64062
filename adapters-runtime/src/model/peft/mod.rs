//! PEFT adapter folders (`adapter_config.json` with `peft_type` + `adapter_model.safetensors` or
//! `.bin`): read into the same LoRA-family slots the AdapterHub files use ([`load`]), and written
//! from them ([`save`]). Module paths are the model's slot paths, so no per-model table is kept.

mod load;
mod save;

use std::path::Path;

use serde_json::Value;

use crate::mixin::LoraLocation;

/// The weight files of a PEFT folder.
pub const PEFT_WEIGHTS_SAFE: &str = "adapter_model.safetensors";
pub const PEFT_WEIGHTS_PICKLE: &str = "adapter_model.bin";
/// The PEFT methods loaded here.
pub const SUPPORTED_PEFT_TYPES: &[&str] = &["LORA", "IA3"];

/// Whether `dir` holds a PEFT adapter: its `adapter_config.json` names a `peft_type`, or it has
/// none and one subfolder does (PEFT saves an adapter not named `default` there).
pub fn is_peft_folder(dir: &Path) -> bool {
    peft_folder(dir).ok().flatten().is_some()
}

fn names_peft_type(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(crate::config::CONFIG_NAME))
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .is_some_and(|v| v.get("peft_type").is_some())
}

/// The folder of the PEFT adapter `dir` holds: `dir` itself, or its one subfolder with a PEFT
/// config when `dir` has no config (`save_pretrained` of a named adapter). Several such
/// subfolders are an error that names them; `None` when `dir` holds no PEFT adapter.
///
/// ```no_run
/// // `save_pretrained` of an adapter named `other` writes out/peft/other/adapter_config.json.
/// let folder = adapters_runtime::model::peft_folder(std::path::Path::new("out/peft"))?;
/// # Ok::<(), adapters_runtime::AdapterError>(())
/// ```
pub fn peft_folder(dir: &Path) -> crate::error::Result<Option<std::path::PathBuf>> {
    if dir.join(crate::config::CONFIG_NAME).is_file() {
        return Ok(names_peft_type(dir).then(|| dir.to_path_buf()));
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(None) };
    let mut found: Vec<std::path::PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir() && names_peft_type(p)).collect();
    found.sort();
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => {
            let names: Vec<String> = found.iter().filter_map(|p| p.file_name()).map(|n| format!("`{}`", n.to_string_lossy())).collect();
            Err(crate::error::AdapterError::file(
                dir.display(),
                format!("holds the PEFT adapters {} in subfolders; name one of them (e.g. {})", names.join(", "), found[0].display()),
            ))
        }
    }
}

/// A PEFT tensor's parameter, under the name the LoRA module here gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum PeftParam {
    /// `lora_A.weight` -> `lora_A`
    A,
    /// `lora_B.weight` -> `lora_B`
    B,
    /// `ia3_l` (`[out, 1]`, or `[1, in]` on a feed-forward module's input) -> `lora_B`
    Ia3,
    /// DoRA's `lora_magnitude_vector` (`[out]`) -> `m.weight` (`[out, 1]`)
    Magnitude,
}

impl PeftParam {
    const ALL: [(&'static str, PeftParam); 4] =
        [(".lora_A.weight", PeftParam::A), (".lora_B.weight", PeftParam::B), (".ia3_l", PeftParam::Ia3), (".lora_magnitude_vector", PeftParam::Magnitude)];

    fn name_here(self) -> &'static str {
        match self {
            PeftParam::A => "lora_A",
            PeftParam::B | PeftParam::Ia3 => "lora_B",
            PeftParam::Magnitude => "m.weight",
        }
    }

    fn suffix(self) -> &'static str {
        Self::ALL.iter().find(|(_, p)| *p == self).map_or("", |(s, _)| &s[1..])
    }
}

/// One PEFT tensor: the adapted module's path (without PEFT's `base_model.model.` wrapper) and
/// which parameter it is.
fn split_key(key: &str) -> Option<(&str, PeftParam)> {
    let key = key.strip_prefix("base_model.model.").unwrap_or(key);
    PeftParam::ALL.iter().find_map(|(suffix, param)| key.strip_suffix(suffix).map(|module| (module, *param)))
}

/// `layers.3.self_attn.q_proj` -> 3: the layer index a module path carries.
fn layer_of(path: &str) -> Option<usize> {
    let parts: Vec<&str> = path.split('.').collect();
    parts.windows(2).find(|w| matches!(w[0], "layers" | "layer" | "h")).and_then(|w| w[1].parse().ok())
}

/// The AdapterHub name of a location, for the locations AdapterHub configs can target.
fn adapterhub_location(location: LoraLocation) -> Option<&'static str> {
    match location {
        LoraLocation::Query => Some("q"),
        LoraLocation::Key => Some("k"),
        LoraLocation::Value => Some("v"),
        LoraLocation::Intermediate => Some("intermediate"),
        LoraLocation::Output => Some("output"),
        // A fused q/k/v projection takes PEFT's one matrix, not AdapterHub's grouped one.
        LoraLocation::SelfAttn | LoraLocation::AttnOutput | LoraLocation::Gate => None,
    }
}

/// PEFT's `get_pattern_key`: the first key of a `rank_pattern` / `alpha_pattern` whose regex
/// matches the end of the module path (`(.*\.)?(KEY)$`). Keys here are module names or path
/// ends (`v_proj`, `layers.0.self_attn.q_proj`, dots escaped or not), matched at a `.`
/// boundary; a key with other regex syntax is `Err(key)` (no regex engine is linked for this).
fn pattern_value<'a>(patterns: &'a serde_json::Map<String, Value>, module: &str) -> Result<Option<&'a Value>, String> {
    for (key, value) in patterns {
        let literal = key.replace("\\.", ".");
        if !literal.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-') {
            return Err(key.clone());
        }
        if module == literal || module.ends_with(&format!(".{literal}")) {
            return Ok(Some(value));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_into_module_and_parameter() {
        assert_eq!(split_key("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"), Some(("model.layers.0.self_attn.q_proj", PeftParam::A)));
        assert_eq!(
            split_key("base_model.model.encoder.layer.1.attention.self.value.lora_B.weight"),
            Some(("encoder.layer.1.attention.self.value", PeftParam::B))
        );
        assert_eq!(split_key("base_model.model.model.layers.2.self_attn.k_proj.ia3_l"), Some(("model.layers.2.self_attn.k_proj", PeftParam::Ia3)));
        assert_eq!(split_key("base_model.model.model.layers.2.mlp.up_proj.lora_magnitude_vector"), Some(("model.layers.2.mlp.up_proj", PeftParam::Magnitude)));
        assert_eq!(split_key("base_model.model.lm_head.weight"), None);
        assert_eq!(layer_of("encoder.layer.11.output.dense"), Some(11));
        assert_eq!(layer_of("model.layers.3.mlp.up_proj"), Some(3));
        assert_eq!(PeftParam::Magnitude.suffix(), "lora_magnitude_vector");
    }

    #[test]
    fn patterns_match_module_path_ends_in_order() {
        let patterns: serde_json::Map<String, Value> = serde_json::from_str(r#"{"v_proj": 2, "layers\\.1\\.self_attn\\.q_proj": 8, "q_proj": 6}"#).unwrap();
        assert_eq!(pattern_value(&patterns, "model.layers.0.self_attn.v_proj"), Ok(Some(&Value::from(2))));
        assert_eq!(pattern_value(&patterns, "model.layers.1.self_attn.q_proj"), Ok(Some(&Value::from(8))));
        assert_eq!(pattern_value(&patterns, "model.layers.0.self_attn.q_proj"), Ok(Some(&Value::from(6))));
        assert_eq!(pattern_value(&patterns, "model.layers.0.self_attn.xv_proj"), Ok(None));
        let regex: serde_json::Map<String, Value> = serde_json::from_str(r#"{"layers\\.[0-2]\\.q_proj": 2}"#).unwrap();
        assert!(pattern_value(&regex, "model.layers.0.q_proj").is_err());
    }
}
