//! `adapters generate --model DIR [--adapter [NAME=]DIR]... [--setup SETUP] [--merge NAME]
//! --prompt TEXT --max-new-tokens N [--temperature T] [--top-k K] [--top-p P] [--seed S]`:
//! text after the prompt from a decoder with adapters, streamed to stdout as it is decoded.

use std::io::Write;
use std::path::PathBuf;

use adapters_runtime::model::GenerateOptions;
use candle_core::{Device, Tensor};
use clap::Args;

use crate::forward::{activate, load_with_adapters};
use crate::placement::PlacementArgs;
use crate::tokenizer::Tokenizer;

#[derive(Args)]
pub struct GenerateArgs {
    /// Checkpoint folder (config.json, model.safetensors and tokenizer.json), or a llama-architecture
    /// GGUF file (weights and tokenizer in one).
    #[arg(long, value_parser = crate::model_arg)]
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
    let Tokenizer { encoder, eos_token_ids, pad_token_id } = Tokenizer::load(&args.model)?;
    let options = args.placement.load_options()?;
    let (mut model, loaded) = load_with_adapters(&args.model, &args.adapters, options)?;
    activate(model.as_mut(), &loaded, args.setup.as_deref(), args.merge.as_deref())?;
    // A task checkpoint decodes with its own lm_head, as its `generate` does (BART's adds
    // final_logits_bias, which the converted `default` head, like Python's, leaves out); an
    // adapter folder's LM head stays active.
    let converted = adapters_models::static_heads::STATIC_HEAD_NAME;
    if model.active_head() == Some(converted) && !loaded.iter().any(|n| n == converted) && model.base().lm_head().is_some() {
        model.set_active_head(None).map_err(|e| e.to_string())?;
    }
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
    let start = std::time::Instant::now();
    let mut first_token = None;
    model
        .generate(&ids, None, &options, |tokens| {
            first_token.get_or_insert_with(|| start.elapsed());
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
    writeln!(stdout).map_err(|e| e.to_string())?;
    // The speed on stderr, so that stdout stays the text: the prompt pass (to the first token),
    // then the decoding steps after it.
    let total = start.elapsed();
    let first = first_token.unwrap_or(total);
    let steps = generated.len().saturating_sub(1);
    let per_second = if steps > 0 { steps as f64 / (total - first).as_secs_f64().max(1e-9) } else { 0.0 };
    eprintln!(
        "{} tokens in {:.2} s: prompt ({} tokens) to the first token {:.0} ms, then {per_second:.1} tokens/s",
        generated.len(),
        total.as_secs_f64(),
        prompt.len(),
        first.as_secs_f64() * 1000.0
    );
    Ok(())
}
