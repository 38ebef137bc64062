//! Shorthand strings (`ADAPTER_CONFIG_MAP` names) and their `[key=value, ...]` overrides.

use serde_json::{json, Map, Value};

use super::AdapterConfig;
use crate::error::{AdapterError, Result};

/// Names the Python library knows, with the ones this version builds first.
const SUPPORTED: &[&str] = &[
    "seq_bn",
    "pfeiffer",
    "double_seq_bn",
    "houlsby",
    "par_bn",
    "parallel",
    "scaled_par_bn",
    "scaled_parallel",
    "lora",
    "ia3",
    "dora",
    "prefix_tuning",
    "prefix_tuning_flat",
    "prompt_tuning",
    "mam",
    "unipelt",
    "loreft",
    "noreft",
    "direft",
    "compacter",
    "compacter++",
    "adapterplus",
    "vera",
    "dvora",
    "seq_bn_inv",
    "double_seq_bn_inv",
    "pfeiffer+inv",
    "houlsby+inv",
];
const LATER: &[&str] = &["mtl_lora"];

fn bn_base() -> Map<String, Value> {
    let value = json!({
        "mh_adapter": false, "output_adapter": true, "reduction_factor": 16,
        "non_linearity": "relu", "original_ln_before": false, "original_ln_after": true,
        "ln_before": false, "ln_after": false, "init_weights": "bert", "init_weights_seed": null,
        "is_parallel": false, "scaling": 1.0, "use_gating": false, "residual_before_ln": true,
        "adapter_residual_before_ln": false, "inv_adapter": null,
        "inv_adapter_reduction_factor": null, "cross_adapter": false, "leave_out": [],
        "dropout": 0.0, "phm_layer": false, "phm_dim": 4, "factorized_phm_W": true,
        "shared_W_phm": false, "shared_phm_rule": true, "factorized_phm_rule": false,
        "phm_c_init": "normal", "phm_init_range": 0.0001, "learn_phm": true,
        "hypercomplex_nonlinearity": "glorot-uniform", "phm_rank": 1, "phm_bias": true,
        "stochastic_depth": 0.0
    });
    value.as_object().cloned().unwrap_or_default()
}

fn lora_base() -> Map<String, Value> {
    let value = json!({
        "architecture": "lora", "selfattn_lora": true, "intermediate_lora": false,
        "output_lora": false, "leave_out": [], "r": 8, "alpha": 8, "dropout": 0.0,
        "attn_matrices": ["q", "v"], "composition_mode": "add", "init_weights": "lora",
        "init_weights_seed": null, "use_gating": false, "use_dora": false, "vera_d": null,
        "vera_b": null, "dtype": null
    });
    value.as_object().cloned().unwrap_or_default()
}

fn prefix_base() -> Map<String, Value> {
    let value = json!({
        "architecture": "prefix_tuning", "encoder_prefix": true, "cross_prefix": true,
        "leave_out": [], "flat": false, "prefix_length": 30, "bottleneck_size": 512,
        "non_linearity": "tanh", "dropout": 0.0, "use_gating": false, "shared_gating": true,
        "init_weights_seed": null
    });
    value.as_object().cloned().unwrap_or_default()
}

fn prompt_base() -> Map<String, Value> {
    let value = json!({
        "architecture": "prompt_tuning", "prompt_length": 10, "prompt_init": "random_uniform",
        "prompt_init_text": null, "combine": "prefix", "init_weights_seed": null
    });
    value.as_object().cloned().unwrap_or_default()
}

/// The member dicts of the union presets (`mam`, `unipelt`).
fn union_preset(name: &str) -> Option<Vec<Map<String, Value>>> {
    let gated = json!({"use_gating": true});
    Some(match name {
        "mam" => vec![with(prefix_base(), json!({"bottleneck_size": 800})), preset("par_bn")?],
        "unipelt" => vec![
            with(with(prefix_base(), json!({"prefix_length": 10})), gated.clone()),
            with(preset("seq_bn")?, gated.clone()),
            with(with(lora_base(), json!({"r": 8, "alpha": 2})), gated),
        ],
        _ => return None,
    })
}

fn with(mut base: Map<String, Value>, changes: Value) -> Map<String, Value> {
    if let Value::Object(changes) = changes {
        base.extend(changes);
    }
    base
}

/// The full config dict of a preset name, as the Python dataclass defaults give it.
fn preset(name: &str) -> Option<Map<String, Value>> {
    Some(match name {
        "seq_bn" | "pfeiffer" => with(bn_base(), json!({"original_ln_before": true})),
        "double_seq_bn" | "houlsby" => with(bn_base(), json!({"mh_adapter": true, "non_linearity": "swish"})),
        "par_bn" | "parallel" => with(bn_base(), json!({"reduction_factor": 2, "init_weights": "mam_adapter", "is_parallel": true, "scaling": 4.0})),
        "scaled_par_bn" | "scaled_parallel" => {
            with(bn_base(), json!({"reduction_factor": 2, "init_weights": "mam_adapter", "is_parallel": true, "scaling": "learned"}))
        }
        "lora" => lora_base(),
        "ia3" => with(
            lora_base(),
            json!({"intermediate_lora": true, "r": 1, "alpha": 1, "attn_matrices": ["k", "v"],
                   "composition_mode": "scale", "init_weights": "ia3"}),
        ),
        "dora" => with(lora_base(), json!({"use_dora": true})),
        "vera" => with(lora_base(), json!({"vera_d": 0.1, "vera_b": 0.0, "init_weights": "vera"})),
        "dvora" => with(lora_base(), json!({"vera_d": 0.1, "vera_b": 0.0, "init_weights": "vera", "use_dora": true})),
        "seq_bn_inv" | "pfeiffer+inv" => with(preset("seq_bn")?, json!({"inv_adapter": "nice", "inv_adapter_reduction_factor": 2})),
        "double_seq_bn_inv" | "houlsby+inv" => with(preset("double_seq_bn")?, json!({"inv_adapter": "nice", "inv_adapter_reduction_factor": 2})),
        "compacter++" => with(preset("seq_bn")?, json!({"phm_layer": true, "reduction_factor": 32, "non_linearity": "gelu"})),
        "compacter" => with(preset("double_seq_bn")?, json!({"phm_layer": true, "reduction_factor": 32, "non_linearity": "gelu"})),
        // Python has the class AdapterPlusConfig but no string for it; this name is ours.
        "adapterplus" => with(
            bn_base(),
            json!({"original_ln_after": false, "original_ln_before": true, "residual_before_ln": false,
                   "stochastic_depth": 0.1, "init_weights": "houlsby", "scaling": "channel",
                   "reduction_factor": 96, "non_linearity": "gelu"}),
        ),
        "prefix_tuning" => prefix_base(),
        "prefix_tuning_flat" => with(prefix_base(), json!({"flat": true})),
        "prompt_tuning" => prompt_base(),
        "loreft" | "noreft" | "direft" => with(
            json!({
                "architecture": "reft", "layers": "all", "prefix_positions": 3, "suffix_positions": 0,
                "r": 1, "tied_weights": false, "dropout": 0.05, "non_linearity": null, "dtype": null,
                "output_reft": true, "init_weights_seed": null
            })
            .as_object()
            .cloned()
            .unwrap_or_default(),
            json!({"orthogonality": name == "loreft"}),
        ),
        _ => return None,
    })
}

/// `a|b|c`: each part a preset with overrides; more than one part makes a union.
pub(super) fn parse(input: &str) -> Result<AdapterConfig> {
    let parts = split_top_level(input, '|');
    if parts.len() == 1 {
        return parse_one(input, input);
    }
    let mut members = Vec::new();
    for part in parts {
        if part.trim().is_empty() {
            return Err(AdapterError::ConfigString { input: input.into(), reason: "empty part in a `|` union".into() });
        }
        // A preset that is itself a union (mam, unipelt) stays one member, which validate
        // refuses as Python's ConfigUnion does ("not supported in a config union").
        members.push(parse_one(part, input)?);
    }
    let union = AdapterConfig::Union(members);
    union.validate().map_err(|e| AdapterError::ConfigString { input: input.into(), reason: e.to_string() })?;
    Ok(union)
}

fn parse_one(text: &str, input: &str) -> Result<AdapterConfig> {
    let err = |reason: String| AdapterError::ConfigString { input: input.into(), reason };
    let text = text.trim();
    let (name, overrides) = match text.find('[') {
        Some(open) => {
            let close =
                text.rfind(']').filter(|&c| c == text.len() - 1).ok_or_else(|| err("an override list must end with `]`, e.g. lora[r=16,alpha=32]".into()))?;
            (text[..open].trim(), Some(&text[open + 1..close]))
        }
        None => (text, None),
    };
    let mut dicts = match (preset(name), union_preset(name)) {
        (Some(dict), _) => vec![dict],
        (None, Some(dicts)) => dicts,
        (None, None) if LATER.contains(&name) => {
            return Err(err(format!("`{name}` is not supported by this version yet")));
        }
        (None, None) => {
            let hint = nearest(name, SUPPORTED).map(|n| format!("; did you mean `{n}`?")).unwrap_or_default();
            return Err(AdapterError::UnknownMethod { name: format!("{name}{hint}"), known: SUPPORTED.join(", ") });
        }
    };
    if let Some(overrides) = overrides {
        for item in split_top_level(overrides, ',') {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let (key, value) = item.split_once('=').ok_or_else(|| err(format!("`{item}` is not of the form key=value")))?;
            let key = key.trim();
            // A union preset takes only options every member has (Python replaces them in each).
            if let Some(dict) = dicts.iter().find(|d| !d.contains_key(key)) {
                let keys: Vec<&str> = dict.keys().map(String::as_str).collect();
                let hint = nearest(key, &keys).map(|n| format!("; did you mean `{n}`?")).unwrap_or_default();
                if dicts.len() > 1 {
                    return Err(err(format!(
                        "not every member of the union `{name}` has the option `{key}`; a union preset takes only options all its members have (as in Python). Write the members with `|` instead, e.g. `prefix_tuning[{key}=...]|par_bn`"
                    )));
                }
                return Err(err(format!("`{name}` has no option `{key}`{hint}")));
            }
            let value = python_literal(value.trim()).map_err(|e| match e {
                AdapterError::ConfigString { input, reason } => err(format!("value of `{key}`: `{input}` is {reason}")),
                other => other,
            })?;
            for dict in &mut dicts {
                dict.insert(key.to_string(), value.clone());
            }
        }
    }
    let origin = format!("config string `{input}`");
    let mut configs = dicts.into_iter().map(|d| AdapterConfig::from_json(&Value::Object(d), &origin)).collect::<Result<Vec<_>>>()?;
    // DiReft differs from NoReft only by a class attribute that no file carries.
    if name == "direft" {
        if let Some(AdapterConfig::Reft(c)) = configs.first_mut() {
            c.subtract_projection = false;
        }
    }
    if configs.len() == 1 {
        return Ok(configs.remove(0));
    }
    let union = AdapterConfig::Union(configs);
    union.validate().map_err(|e| err(e.to_string()))?;
    Ok(union)
}

/// Splits on `separator` where it is not inside brackets, braces or quotes.
fn split_top_level(text: &str, separator: char) -> Vec<&str> {
    let (mut depth, mut quote, mut start, mut parts) = (0i32, None, 0, Vec::new());
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '[' | '{' | '(') => depth += 1,
            (None, ']' | '}' | ')') => depth -= 1,
            (None, c) if c == separator && depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// Reads a Python literal (numbers, True/False/None, quoted strings, lists, dicts) as JSON.
fn python_literal(text: &str) -> Result<Value> {
    let mut json = String::with_capacity(text.len());
    let mut quote = None;
    let mut word = String::new();
    let flush = |word: &mut String, json: &mut String| {
        match word.as_str() {
            "True" => json.push_str("true"),
            "False" => json.push_str("false"),
            "None" => json.push_str("null"),
            _ => json.push_str(word),
        }
        word.clear();
    };
    for c in text.chars() {
        match quote {
            Some(q) if c == q => {
                json.push('"');
                quote = None;
            }
            Some(_) if c == '"' => json.push_str("\\\""),
            Some(_) => json.push(c),
            None if c == '\'' || c == '"' => {
                flush(&mut word, &mut json);
                json.push('"');
                quote = Some(c);
            }
            None if c.is_alphanumeric() || c == '_' || c == '.' || c == '-' || c == '+' => word.push(c),
            None => {
                flush(&mut word, &mut json);
                json.push(c);
            }
        }
    }
    flush(&mut word, &mut json);
    match serde_json::from_str::<Value>(&json) {
        Ok(value) => Ok(value),
        // A bare word such as `gelu` is a string, as users write it in shorthand strings.
        Err(_) if text.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '-') => Ok(Value::String(text.into())),
        Err(e) => Err(AdapterError::ConfigString { input: text.into(), reason: format!("not a Python literal ({e})") }),
    }
}

/// The closest candidate by edit distance, if it is close enough to be a likely typo.
pub(crate) fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates.iter().map(|c| (edit_distance(word, c), *c)).filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1)).min_by_key(|(d, _)| *d).map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}
