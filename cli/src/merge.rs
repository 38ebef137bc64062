//! `adapters merge --model DIR --adapter [NAME=]DIR [--setup SETUP] --out DIR`: a standalone
//! checkpoint with the adapter merged into the weights (PEFT's `merge_and_unload`): the model's
//! config and tokenizer files copied, `model.safetensors` rewritten with the merged linears.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use adapters_models::{LoadOptions, MODEL_WEIGHTS};
use candle_core::{Device, Tensor};
use clap::Args;

use crate::forward::load_with_adapters;

#[derive(Args)]
pub struct MergeArgs {
    /// Checkpoint folder: config.json + model.safetensors (tokenizer files are copied along).
    #[arg(long, value_parser = crate::model_arg)]
    model: PathBuf,
    /// The adapter folder to merge (AdapterHub or PEFT), as `[NAME=]DIR`.
    #[arg(long = "adapter", value_name = "[NAME=]DIR")]
    adapter: String,
    /// The output folder (created; existing files of the same names are replaced atomically).
    #[arg(long)]
    out: PathBuf,
}

/// Files of a checkpoint folder that describe, not weigh, the model.
const COPIED: &[&str] =
    &["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json", "merges.txt"];

pub fn run(args: MergeArgs) -> Result<(), String> {
    if !args.model.is_dir() {
        return Err(format!("--model {}: merge writes a checkpoint folder and needs one as input (not a GGUF file)", args.model.display()));
    }
    let (mut model, loaded) = load_with_adapters(&args.model, std::slice::from_ref(&args.adapter), LoadOptions::default())?;
    let name = loaded.first().cloned().ok_or("no adapter loaded")?;
    model.merge_adapter(&name).map_err(|e| format!("--adapter {}: {e}", args.adapter))?;
    let mut merged: HashMap<String, Tensor> = model.lora_linear_weights().map_err(|e| e.to_string())?.into_iter().collect();
    merged.extend(model.lora_linear_biases());
    let conv1d = model.mapping().stores_conv1d();
    let source = args.model.join(MODEL_WEIGHTS);
    let mut tensors = candle_core::safetensors::load(&source, &Device::Cpu).map_err(|e| format!("{}: {e}", source.display()))?;
    // The checkpoint may carry the task model's prefix (`model.`, `bert.`): merged weights are
    // named on the bare model.
    let mut replaced = 0;
    for (key, tensor) in tensors.iter_mut() {
        let bare = merged.get(key.as_str()).or_else(|| key.split_once('.').and_then(|(_, rest)| merged.get(rest)));
        if let Some(weight) = bare {
            let weight = if conv1d && weight.rank() == 2 { weight.t().map_err(|e| e.to_string())? } else { weight.clone() };
            if weight.dims() != tensor.dims() {
                return Err(format!("{}: `{key}` has shape {:?}, the merged weight {:?}", source.display(), tensor.dims(), weight.dims()));
            }
            *tensor = weight.to_dtype(tensor.dtype()).map_err(|e| e.to_string())?;
            replaced += 1;
        }
    }
    if replaced != merged.len() {
        return Err(format!("{}: {} of {} merged tensors found in the checkpoint", source.display(), replaced, merged.len()));
    }
    std::fs::create_dir_all(&args.out).map_err(|e| format!("--out {}: {e}", args.out.display()))?;
    adapters_runtime::io::save_safetensors(&args.out.join(MODEL_WEIGHTS), &tensors).map_err(|e| format!("--out: {e}"))?;
    for file in COPIED {
        copy_if_present(&args.model, &args.out, file)?;
    }
    println!("merged `{name}` into {replaced} weights and biases; wrote {}", args.out.display());
    Ok(())
}

fn copy_if_present(from: &Path, to: &Path, file: &str) -> Result<(), String> {
    let source = from.join(file);
    if !source.is_file() {
        return Ok(());
    }
    let bytes = std::fs::read(&source).map_err(|e| format!("{}: {e}", source.display()))?;
    adapters_runtime::io::write_atomic(&to.join(file), &bytes).map_err(|e| format!("--out: {e}"))
}
