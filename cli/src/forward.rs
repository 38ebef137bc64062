//! `adapters forward --model DIR --inputs FILE --out FILE [--adapter [NAME=]DIR]...
//! [--fusion DIR]... [--setup SETUP] [--merge NAME] [--dtype f32|f16|bf16] [--device cpu|cuda[:N]|metal]`

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use adapters_models::LoadOptions;

use adapters_runtime::{AdapterSetup, HeadOutput, ModelInputs};
use candle_core::{DType, Device, Tensor};
use clap::Args;

use crate::placement::PlacementArgs;

#[derive(Args)]
pub struct ForwardArgs {
    /// Checkpoint folder: config.json + model.safetensors (architecture from `model_type`), a GGUF
    /// file, or a hub id in the local Hugging Face cache.
    #[arg(long, value_parser = crate::model_arg)]
    model: PathBuf,
    /// safetensors file with `input_ids` and `attention_mask` (I64, [batch, seq]); for
    /// encoder-decoders also `decoder_input_ids` (and optional `decoder_attention_mask`); for
    /// vision models `pixel_values` (F32, [batch, channels, height, width]) instead.
    #[arg(long)]
    inputs: PathBuf,
    /// Output safetensors file; receives `last_hidden_state` (F32; an encoder-decoder's decoder
    /// output, with `encoder_last_hidden_state` beside it), and `logits` (F32) when an
    /// adapter folder carried a head that is active (`logits.<head>` per head under Parallel or
    /// BatchSplit setups).
    #[arg(long)]
    out: PathBuf,
    /// An adapter folder written by `save_adapter` (Python's or ours), as `[NAME=]DIR`. Repeatable.
    #[arg(long = "adapter", value_name = "[NAME=]DIR")]
    adapters: Vec<String>,
    /// An AdapterFusion folder (`save_adapter_fusion`, Python's or ours; load its adapters with
    /// --adapter). Repeatable.
    #[arg(long = "fusion", value_name = "DIR")]
    fusions: Vec<PathBuf>,
    /// Active adapters in the Python repr syntax (`a`, `Stack[a, b]`) or a path to an adapter_setup.json.
    #[arg(long)]
    setup: Option<String>,
    /// Merge this LoRA-family adapter into the weights before running.
    #[arg(long)]
    merge: Option<String>,
    #[command(flatten)]
    placement: PlacementArgs,
}

#[derive(Args)]
pub struct SummaryArgs {
    /// Checkpoint folder: config.json + model.safetensors.
    #[arg(long, value_parser = crate::model_arg)]
    model: PathBuf,
    /// An adapter folder, as `[NAME=]DIR`. Repeatable.
    #[arg(long = "adapter", value_name = "[NAME=]DIR")]
    adapters: Vec<String>,
}

pub fn summary(args: SummaryArgs) -> Result<(), String> {
    let (model, _) = load_with_adapters(&args.model, &args.adapters, LoadOptions::default())?;
    let mapping = model.mapping();
    println!("model: {} ({}), layers carry the {} mixin", mapping.model_class, mapping.model_type, mapping.layer_mixin.name);
    print!("{}", model.adapter_summary());
    Ok(())
}

pub(crate) fn load_with_adapters(dir: &Path, specs: &[String], options: LoadOptions) -> Result<(Box<adapters_runtime::DynAdaptedModel>, Vec<String>), String> {
    let mut model = adapters_models::load_model_with(dir, options).map_err(|e| e.to_string())?;
    let mut loaded = Vec::new();
    for spec in specs {
        let (name, dir) = split_adapter_arg(spec);
        let name = model.load_adapter(Path::new(dir), name).map_err(|e| format!("--adapter {spec}: {e}"))?;
        loaded.push(name);
    }
    Ok((model, loaded))
}

pub fn run(args: ForwardArgs) -> Result<(), String> {
    let options = args.placement.load_options()?;
    let (mut model, loaded) = load_with_adapters(&args.model, &args.adapters, options)?;
    for dir in &args.fusions {
        model.load_adapter_fusion(dir, None).map_err(|e| format!("--fusion {}: {e}", dir.display()))?;
    }
    activate(model.as_mut(), &loaded, args.setup.as_deref(), args.merge.as_deref())?;
    let inputs = read_inputs(&args.inputs)?;
    let output = model.forward_inputs_with_head(&inputs).map_err(|e| e.to_string())?;
    let mut tensors = HashMap::from([("last_hidden_state".to_string(), output.last_hidden_state)]);
    if let Some(encoder) = output.encoder_last_hidden_state {
        tensors.insert("encoder_last_hidden_state".to_string(), encoder);
    }
    // A loaded adapter folder that carries a head (head_config.json) makes that head active;
    // its output joins the file as `logits` (question answering: also start/end logits). Under
    // Parallel or BatchSplit, each active head's output is `logits.<head>`.
    let single = output.head.is_some();
    for result in output.heads {
        let suffix = if single { String::new() } else { format!(".{}", result.name) };
        match result.output {
            HeadOutput::Logits(logits) => {
                tensors.insert(format!("logits{suffix}"), logits);
            }
            HeadOutput::Span { start, end } => {
                let stacked = Tensor::stack(&[&start, &end], 2).map_err(|e| e.to_string())?;
                tensors.insert(format!("logits{suffix}"), stacked);
                tensors.insert(format!("start_logits{suffix}"), start);
                tensors.insert(format!("end_logits{suffix}"), end);
            }
        }
    }
    // The contract: outputs are f32 on the host, whatever the compute dtype and device.
    let tensors = tensors
        .into_iter()
        .map(|(name, t)| Ok((name, t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?)))
        .collect::<candle_core::Result<HashMap<_, _>>>()
        .map_err(|e| format!("--out: {e}"))?;
    adapters_runtime::io::save_safetensors(&args.out, &tensors).map_err(|e| format!("--out: {e}"))
}

/// Activates `--setup` (or the one loaded adapter) and merges `--merge`, as forward and generate
/// both take them.
pub(crate) fn activate(model: &mut adapters_runtime::DynAdaptedModel, loaded: &[String], setup: Option<&str>, merge: Option<&str>) -> Result<(), String> {
    let setup = match setup {
        Some(text) => Some(parse_setup(text)?),
        None => match loaded {
            [] => None,
            [one] => Some(AdapterSetup::from(one.as_str())),
            many => {
                return Err(format!(
                    "{} adapters loaded ({}); say which are active with --setup, e.g. --setup \"Stack[{}]\"",
                    many.len(),
                    many.join(", "),
                    many.join(", ")
                ))
            }
        },
    };
    if let Some(setup) = setup {
        model.set_active_adapters(setup).map_err(|e| format!("--setup: {e}"))?;
    }
    if let Some(name) = merge {
        model.merge_adapter(name).map_err(|e| format!("--merge {name}: {e}"))?;
    }
    Ok(())
}

/// `NAME=DIR` or `DIR`. A `=` inside a path with no name before it is kept as part of the path.
fn split_adapter_arg(spec: &str) -> (Option<&str>, &str) {
    match spec.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !name.contains(['/', '\\']) => (Some(name), dir),
        _ => (None, spec),
    }
}

fn parse_setup(text: &str) -> Result<AdapterSetup, String> {
    let path = Path::new(text);
    if text.ends_with(".json") || path.is_file() {
        let raw = std::fs::read_to_string(path).map_err(|e| format!("--setup {text}: {e}"))?;
        let value: serde_json::Value = serde_json::from_str(&raw).map_err(|e| format!("--setup {text}: not valid JSON: {e}"))?;
        return AdapterSetup::from_json(&value).map_err(|e| format!("--setup {text}: {e}"));
    }
    AdapterSetup::parse(text).map_err(|e| format!("--setup: {e}"))
}

/// The model inputs of an `--inputs` file: `pixel_values` (vision), or `input_ids` +
/// `attention_mask`, with `decoder_input_ids` (+ `decoder_attention_mask`) for encoder-decoders.
/// Whether the model takes what the file holds is checked by the forward, which names the input.
fn read_inputs(path: &Path) -> Result<ModelInputs<'static>, String> {
    let origin = path.display();
    let mut tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| format!("--inputs {origin}: {e}"))?;
    if let Some(pixels) = tensors.remove("pixel_values") {
        if pixels.dtype() != DType::F32 || pixels.rank() != 4 {
            return Err(format!(
                "--inputs {origin}: tensor `pixel_values` is {:?} {:?}, expected F32 [batch, channels, height, width]",
                pixels.dtype(),
                pixels.dims()
            ));
        }
        return Ok(ModelInputs::pixels(pixels));
    }
    let mut take = |key: &str| -> Result<Option<Tensor>, String> {
        let Some(t) = tensors.remove(key) else { return Ok(None) };
        if t.dtype() != DType::I64 {
            return Err(format!("--inputs {origin}: tensor `{key}` is {:?}, expected I64", t.dtype()));
        }
        if t.rank() != 2 {
            return Err(format!("--inputs {origin}: tensor `{key}` has shape {:?}, expected [batch, seq]", t.dims()));
        }
        Ok(Some(t))
    };
    let missing =
        |key: &str| format!("--inputs {origin}: tensor `{key}` is missing (text models take input_ids and attention_mask, vision models pixel_values)");
    let ids = take("input_ids")?.ok_or_else(|| missing("input_ids"))?;
    let mask = take("attention_mask")?.ok_or_else(|| missing("attention_mask"))?;
    let decoder_ids = take("decoder_input_ids")?;
    let decoder_mask = take("decoder_attention_mask")?;
    let same_shape = |a: &str, x: &Tensor, b: &str, y: &Tensor| -> Result<(), String> {
        if x.dims() != y.dims() {
            return Err(format!("--inputs {origin}: `{a}` {:?} and `{b}` {:?} differ in shape", x.dims(), y.dims()));
        }
        Ok(())
    };
    same_shape("input_ids", &ids, "attention_mask", &mask)?;
    let inputs = ModelInputs::text(ids, mask);
    Ok(match (decoder_ids, decoder_mask) {
        (Some(ids), mask) => {
            if let Some(mask) = &mask {
                same_shape("decoder_input_ids", &ids, "decoder_attention_mask", mask)?;
            }
            inputs.with_decoder_input_ids(ids, mask)
        }
        (None, Some(_)) => return Err(format!("--inputs {origin}: `decoder_attention_mask` without `decoder_input_ids`")),
        (None, None) => inputs,
    })
}

#[cfg(test)]
mod tests {
    use super::split_adapter_arg;

    #[test]
    fn adapter_arg_forms() {
        assert_eq!(split_adapter_arg("a=out/x"), (Some("a"), "out/x"));
        assert_eq!(split_adapter_arg("out/x"), (None, "out/x"));
        assert_eq!(split_adapter_arg("./dir=odd"), (None, "./dir=odd"));
    }
}
