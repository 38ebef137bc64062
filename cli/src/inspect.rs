//! `adapters inspect PATH [--json]`: what a folder or file holds, without loading a model: its
//! format (AdapterHub adapter, head or fusion; PEFT adapter; model checkpoint; GGUF file), the
//! method and config, the tensors with their shapes, the parameter count, and the model types it
//! fits.

use std::path::{Path, PathBuf};

use clap::Args;
use serde_json::{json, Value};

#[derive(Args)]
pub struct InspectArgs {
    /// A folder (adapter, head, fusion, PEFT adapter, checkpoint) or a `.gguf` file.
    path: PathBuf,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: InspectArgs) -> Result<(), String> {
    let report = inspect(&args.path)?;
    let text = if args.json { serde_json::to_string_pretty(&report).map_err(|e| e.to_string())? + "\n" } else { render_text(&report) };
    // A reader that stops early (`| head`) is not an error.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("<stdout>: {e}")),
        _ => Ok(()),
    }
}

/// The report as JSON: `format`, `method`, `config`, `fits`, `tensors` ([name, dtype, shape]),
/// `parameters`.
pub fn inspect(path: &Path) -> Result<Value, String> {
    if path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        return inspect_gguf(path);
    }
    if !path.is_dir() {
        return Err(format!("{}: not a folder or a .gguf file", path.display()));
    }
    // A PEFT adapter not named `default` sits in a subfolder named after it.
    if !path.join("adapter_config.json").is_file() {
        if let Some(sub) = adapters_runtime::model::peft_folder(path).map_err(|e| e.to_string())? {
            let mut report = inspect(&sub)?;
            report["folder"] = Value::from(sub.display().to_string());
            return Ok(report);
        }
    }
    let read = |file: &str| -> Result<Option<Value>, String> {
        let p = path.join(file);
        if !p.is_file() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        serde_json::from_str(&text).map(Some).map_err(|e| format!("{}: not valid JSON: {e}", p.display()))
    };
    let (format, method, config, fits, weights) = if let Some(c) = read("adapter_config.json")? {
        if let Some(peft_type) = c.get("peft_type").and_then(Value::as_str) {
            let weights = first_existing(path, &["adapter_model.safetensors", "adapter_model.bin"]);
            let tensors = weights.as_deref().map(tensor_list).transpose()?.unwrap_or_default();
            let fits = fits_by_module_names(&tensors);
            ("peft adapter".to_string(), peft_type.to_lowercase(), c, fits, tensors)
        } else {
            let method = c["config"]["architecture"].as_str().unwrap_or("bottleneck").to_string();
            let fits = c.get("model_type").and_then(Value::as_str).map(|t| vec![t.to_string()]).unwrap_or_default();
            let weights = first_existing(path, &["adapter.safetensors", "pytorch_adapter.bin"]);
            let mut tensors = weights.as_deref().map(tensor_list).transpose()?.unwrap_or_default();
            if let Some(head) = first_existing(path, &["model_head.safetensors", "pytorch_model_head.bin"]) {
                tensors.extend(tensor_list(&head)?);
            }
            ("adapterhub adapter".to_string(), method, c, fits, tensors)
        }
    } else if let Some(c) = read("head_config.json")? {
        let weights = first_existing(path, &["model_head.safetensors", "pytorch_model_head.bin"]);
        let tensors = weights.as_deref().map(tensor_list).transpose()?.unwrap_or_default();
        let fits = c.get("model_type").and_then(Value::as_str).map(|t| vec![t.to_string()]).unwrap_or_default();
        ("adapterhub head".to_string(), c["config"]["head_type"].as_str().unwrap_or("head").to_string(), c, fits, tensors)
    } else if let Some(c) = read("adapter_fusion_config.json")? {
        let weights = first_existing(path, &["model_adapter_fusion.safetensors", "pytorch_model_adapter_fusion.bin"]);
        let tensors = weights.as_deref().map(tensor_list).transpose()?.unwrap_or_default();
        let fits = c.get("model_type").and_then(Value::as_str).map(|t| vec![t.to_string()]).unwrap_or_default();
        ("adapterhub fusion".to_string(), "fusion".to_string(), c, fits, tensors)
    } else if let Some(c) = read("config.json")? {
        let weights = first_existing(path, &["model.safetensors"]);
        let tensors = weights.as_deref().map(tensor_list).transpose()?.unwrap_or_default();
        let model_type = c.get("model_type").and_then(Value::as_str).unwrap_or_default().to_string();
        let fits = if adapters_models::SUPPORTED_MODEL_TYPES.contains(&model_type.as_str()) { vec![model_type.clone()] } else { Vec::new() };
        ("model checkpoint".to_string(), model_type, c, fits, tensors)
    } else {
        return Err(format!("{}: no adapter_config.json, head_config.json, adapter_fusion_config.json or config.json", path.display()));
    };
    let parameters: usize = weights.iter().map(|(_, _, shape)| shape.iter().product::<usize>()).sum();
    Ok(json!({
        "path": path.display().to_string(),
        "format": format,
        "method": method,
        "config": config,
        "fits": fits,
        "parameters": parameters,
        "tensors": weights.iter().map(|(n, d, s)| json!([n, d, s])).collect::<Vec<_>>(),
    }))
}

fn first_existing(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

/// (name, dtype, shape) of every tensor in a safetensors or PyTorch pickle file, from its header.
fn tensor_list(path: &Path) -> Result<Vec<(String, String, Vec<usize>)>, String> {
    let origin = path.display();
    let mut out: Vec<(String, String, Vec<usize>)> = if path.extension().is_some_and(|e| e == "safetensors") {
        // SAFETY: mapped read-only for the header; the file is not modified meanwhile.
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }.map_err(|e| format!("{origin}: {e}"))?;
        st.tensors().into_iter().map(|(name, view)| (name, format!("{:?}", view.dtype()), view.shape().to_vec())).collect()
    } else {
        candle_core::pickle::read_pth_tensor_info(path, false, None)
            .map_err(|e| format!("{origin}: {e}"))?
            .into_iter()
            .map(|t| (t.name, format!("{:?}", t.dtype), t.layout.shape().dims().to_vec()))
            .collect()
    };
    out.sort();
    Ok(out)
}

/// The model types whose module names a PEFT file's tensors use.
fn fits_by_module_names(tensors: &[(String, String, Vec<usize>)]) -> Vec<String> {
    let has = |part: &str| tensors.iter().any(|(n, _, _)| n.contains(part));
    let families: [(&[&str], &[&str]); 4] = [
        (
            &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
            &["llama", "mistral", "qwen2", "qwen3", "gemma2"],
        ),
        (&["attention.self.", "intermediate.dense", "layer."], &["bert", "roberta"]),
        (&[".attention.q_lin", ".attention.k_lin", ".attention.v_lin", ".attention.out_lin", ".ffn.lin"], &["distilbert"]),
        (&[".attn.c_attn", ".attn.c_proj", ".mlp.c_fc", ".mlp.c_proj"], &["gpt2"]),
    ];
    families.iter().filter(|(parts, _)| parts.iter().any(|p| has(p))).flat_map(|(_, types)| types.iter().map(|t| t.to_string())).collect()
}

fn inspect_gguf(path: &Path) -> Result<Value, String> {
    let origin = path.display().to_string();
    let mut file = std::fs::File::open(path).map_err(|e| format!("{origin}: {e}"))?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).map_err(|e| format!("{origin}: not a readable GGUF file: {e}"))?;
    let arch = content.metadata.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    let mut config = serde_json::Map::new();
    for (key, value) in &content.metadata {
        if key.starts_with("tokenizer.ggml.") && !matches!(key.as_str(), "tokenizer.ggml.model" | "tokenizer.ggml.bos_token_id" | "tokenizer.ggml.eos_token_id")
        {
            continue;
        }
        let v = match value {
            candle_core::quantized::gguf_file::Value::String(s) => json!(s),
            other => other
                .to_f64()
                .map(|f| json!(f))
                .or_else(|_| other.to_u64().map(|u| json!(u)))
                .or_else(|_| other.to_bool().map(|b| json!(b)))
                .unwrap_or(Value::Null),
        };
        if !v.is_null() {
            config.insert(key.clone(), v);
        }
    }
    let mut tensors: Vec<(String, String, Vec<usize>)> =
        content.tensor_infos.iter().map(|(n, t)| (n.clone(), format!("{:?}", t.ggml_dtype), t.shape.dims().to_vec())).collect();
    tensors.sort();
    let parameters: usize = tensors.iter().map(|(_, _, s)| s.iter().product::<usize>()).sum();
    let fits = if adapters_models::gguf::SUPPORTED_GGUF_ARCHITECTURES.contains(&arch.as_str()) { vec![arch.clone()] } else { Vec::new() };
    Ok(json!({
        "path": origin,
        "format": "gguf",
        "method": arch,
        "config": Value::Object(config),
        "fits": fits,
        "parameters": parameters,
        "tensors": tensors.iter().map(|(n, d, s)| json!([n, d, s])).collect::<Vec<_>>(),
    }))
}

fn render_text(report: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    // One line of the report.
    macro_rules! push_line {
        ($($arg:tt)*) => {{ let _ = writeln!(out, $($arg)*); }};
    }
    push_line!(
        "{}: {} ({})",
        report["path"].as_str().unwrap_or_default(),
        report["format"].as_str().unwrap_or_default(),
        report["method"].as_str().unwrap_or_default()
    );
    let fits: Vec<&str> = report["fits"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    push_line!("fits: {}", if fits.is_empty() { "no model type built here".to_string() } else { fits.join(", ") });
    let tensors = report["tensors"].as_array().cloned().unwrap_or_default();
    push_line!("parameters: {} in {} tensors", report["parameters"], tensors.len());
    if let Some(config) = report["config"].as_object() {
        let inner = config.get("config").and_then(Value::as_object).unwrap_or(config);
        let shown: Vec<String> = inner.iter().filter(|(_, v)| !v.is_null() && !v.is_object()).map(|(k, v)| format!("{k}={v}")).collect();
        push_line!("config: {}", shown.join(" "));
    }
    for t in &tensors {
        push_line!("  {} {} {}", t[0].as_str().unwrap_or_default(), t[1].as_str().unwrap_or_default(), t[2]);
    }
    out
}
