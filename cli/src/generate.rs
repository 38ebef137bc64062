//! `adapters generate --model DIR [--adapter [NAME=]DIR]... [--setup SETUP] [--merge NAME]
//! --prompt TEXT --max-new-tokens N [--temperature T] [--top-k K] [--top-p P] [--seed S]`:
//! text after the prompt from a decoder with adapters, streamed to stdout as it is decoded.

use std::io::Write;
use std::path::{Path, PathBuf};

use adapters_runtime::model::GenerateOptions;
use adapters_runtime::training::{ByteLevelBpe, TextEncoder};
use candle_core::{Device, Tensor};
use clap::Args;

use crate::forward::{activate, load_with_adapters};
use crate::placement::PlacementArgs;

#[derive(Args)]
pub struct GenerateArgs {
    /// Checkpoint folder (config.json, model.safetensors and tokenizer.json), or a llama-architecture
    /// GGUF file (weights and tokenizer in one).
    #[arg(long)]
    model: PathBuf,
    /// An adapter folder, as `[NAME=]DIR` (a folder with a causal LM head makes it the decoder).
    /// Repeatable.
    #[arg(long = "adapter", value_name = "[NAME=]DIR")]
    adapters: Vec<String>,
    /// Active adapters in the Python repr syntax (`a`, `Stack[a, b]`) or a path to an adapter_setup.json.
    #[arg(long)]
    setup: Option<String>,
    /// Merge this LoRA-family adapter into the weights first.
    #[arg(long)]
    merge: Option<String>,
    /// The text to continue.
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 64)]
    max_new_tokens: usize,
    /// Sampling temperature; 0 or absent: greedy.
    #[arg(long)]
    temperature: Option<f64>,
    /// Sample among the k most likely tokens (with --temperature).
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample among the most likely tokens holding this much probability (with --temperature).
    #[arg(long)]
    top_p: Option<f64>,
    #[arg(long, default_value_t = 299792458)]
    seed: u64,
    #[command(flatten)]
    placement: PlacementArgs,
}

pub fn run(args: GenerateArgs) -> Result<(), String> {
    if let Some(t) = args.temperature.filter(|t| *t < 0.0 || !t.is_finite()) {
        return Err(format!("--temperature {t}: must be 0 (greedy) or positive"));
    }
    if let Some(p) = args.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
        return Err(format!("--top-p {p}: must be in (0, 1]"));
    }
    let gguf = args.model.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
    let (encoder, (eos_token_ids, pad_token_id)) = if gguf {
        gguf_tokenizer(&args.model)?
    } else {
        (TextEncoder::from_model_dir(&args.model, usize::MAX).map_err(|e| e.to_string())?, special_ids(&args.model)?)
    };
    let options = args.placement.load_options()?;
    let (mut model, loaded) = load_with_adapters(&args.model, &args.adapters, options)?;
    activate(model.as_mut(), &loaded, args.setup.as_deref(), args.merge.as_deref())?;
    let prompt: Vec<i64> = encoder.ids(&args.prompt, true).map_err(|e| e.to_string())?.into_iter().map(i64::from).collect();
    if prompt.is_empty() {
        return Err("--prompt: tokenizes to no tokens".into());
    }
    let ids = Tensor::new(prompt.as_slice(), &Device::Cpu).and_then(|t| t.unsqueeze(0)).map_err(|e| e.to_string())?;
    let options = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        eos_token_ids,
        pad_token_id,
        use_cache: true,
    };
    // Decoding the whole continuation at each step and printing what is new keeps multi-token
    // characters (byte-level BPE) whole.
    let mut generated: Vec<u32> = Vec::new();
    let mut printed = 0;
    let mut stdout = std::io::stdout().lock();
    model
        .generate(&ids, None, &options, |tokens| {
            generated.push(tokens[0]);
            let text = encoder.decode(&generated)?;
            if text.len() > printed && text.is_char_boundary(printed) && !text.ends_with('\u{fffd}') {
                stdout
                    .write_all(&text.as_bytes()[printed..])
                    .and_then(|_| stdout.flush())
                    .map_err(|e| adapters_runtime::AdapterError::Io { path: PathBuf::from("<stdout>"), source: e })?;
                printed = text.len();
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    writeln!(stdout).map_err(|e| e.to_string())
}

/// The tokenizer a GGUF file carries, and its end-of-sequence and padding ids.
fn gguf_tokenizer(path: &Path) -> Result<(TextEncoder, (Vec<u32>, u32)), String> {
    let t = adapters_models::gguf::read_gguf_tokenizer(path).map_err(|e| e.to_string())?;
    let spec = ByteLevelBpe { tokens: t.tokens, merges: t.merges, special_ids: t.special_ids, add_bos: t.bos.filter(|_| t.add_bos) };
    let encoder = TextEncoder::from_byte_level_bpe(&spec, &path.display().to_string()).map_err(|e| e.to_string())?;
    let eos: Vec<u32> = t.eos.into_iter().collect();
    Ok((encoder, (eos.clone(), t.pad.or(t.eos).unwrap_or(0))))
}

/// End-of-sequence ids (config.json's `eos_token_id`, one or a list, and generation_config.json's
/// when present) and the padding id for rows that ended.
fn special_ids(dir: &Path) -> Result<(Vec<u32>, u32), String> {
    let mut eos = Vec::new();
    let mut pad = None;
    for file in ["config.json", "generation_config.json"] {
        let path = dir.join(file);
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?;
        match &value["eos_token_id"] {
            serde_json::Value::Number(n) => eos.extend(n.as_u64().map(|v| v as u32)),
            serde_json::Value::Array(items) => eos.extend(items.iter().filter_map(|v| v.as_u64()).map(|v| v as u32)),
            _ => {}
        }
        pad = pad.or(value["pad_token_id"].as_u64().map(|v| v as u32));
    }
    eos.sort_unstable();
    eos.dedup();
    let pad = pad.or(eos.first().copied()).unwrap_or(0);
    Ok((eos, pad))
}
