//! `adapters train --task causal-lm`: an adapter trained on text (packed) or instruction pairs
//! (loss on the completions) with a decoder's own LM head; held-out loss and perplexity and
//! sample generations before and after, the seconds per step, the adapter saved.

use std::path::Path;

use adapters_models::{load_model_with, GgufWeights, LoadOptions};
use adapters_runtime::model::GenerateOptions;
use adapters_runtime::training::{evaluate_lm, train_causal_lm, LmData, LmEvaluation, LmSequence, LmTrainConfig};
use adapters_runtime::DynAdaptedModel;
use candle_core::{Device, Tensor};

use crate::continued::TrainedAdapter;
use crate::tokenizer::Tokenizer;
use crate::train::TrainArgs;

/// Held-out sequences evaluated before and after training (the rest are not read).
const EVAL_SEQUENCES: usize = 64;
/// Tokens generated per sample prompt.
const SAMPLE_TOKENS: usize = 40;

pub fn run(args: &TrainArgs) -> Result<(), String> {
    if !args.fuse.is_empty() || args.method == "full" {
        return Err("--task causal-lm trains an adapter (--method lora, seq_bn, ...); --fuse and full fine-tuning take classification data".into());
    }
    let trained = TrainedAdapter::from_args(args.adapter.as_deref(), &args.method)?;
    let tokenizer = Tokenizer::load(&args.model)?;
    let (encoder, eos_token_ids, pad_token_id) = (&tokenizer.encoder, &tokenizer.eos_token_ids, tokenizer.pad_token_id);
    let eos = *eos_token_ids.first().ok_or_else(|| format!("--model {}: no end-of-sequence token id (eos_token_id)", args.model.display()))?;
    let gguf = if args.dequantize { GgufWeights::Dequantized } else { GgufWeights::Quantized };
    let mut model = load_model_with(&args.model, LoadOptions { gguf, ..LoadOptions::default() }).map_err(|e| e.to_string())?;
    let read = |path: &Path| -> Result<Vec<LmSequence>, String> {
        let data = LmData::read(path).map_err(|e| e.to_string())?;
        data.sequences(encoder, args.max_length, eos).map_err(|e| format!("{}: {e}", path.display()))
    };
    let mut train = read(&args.train)?;
    if let Some(n) = args.limit {
        train.truncate(n);
    }
    let held_out_path = args.test.as_ref().or(args.dev.as_ref());
    let held_out: Option<Vec<LmSequence>> = held_out_path.map(|p| read(p).map(|s| s.into_iter().take(EVAL_SEQUENCES).collect())).transpose()?;
    let steps = args.max_steps.unwrap_or(args.epochs * train.len().div_ceil(args.batch_size.max(1)));
    println!(
        "causal-LM training of {} on {} ({} sequences of up to {} tokens), {steps} steps of {}",
        args.adapter.as_ref().map_or(args.method.clone(), |dir| format!("the adapter in {}", dir.display())),
        args.train.display(),
        train.len(),
        args.max_length,
        args.batch_size
    );
    let evaluate = |model: &mut DynAdaptedModel, label: &str| -> Result<Option<LmEvaluation>, String> {
        let Some(seqs) = &held_out else { return Ok(None) };
        let e = evaluate_lm(model, seqs, 8, pad_token_id).map_err(|e| e.to_string())?;
        println!("{label}: held-out loss {:.4}, perplexity {:.2} ({} tokens, {:.1} s)", e.loss, e.perplexity, e.tokens, e.seconds);
        Ok(Some(e))
    };
    let before = evaluate(model.as_mut(), "before")?;
    let samples_before = samples(model.as_ref(), &tokenizer, &args.sample, eos_token_ids)?;
    trained.add(model.as_mut(), &args.name)?;
    let method = trained.label(model.as_ref(), &args.name, &args.method);
    let vars = model.train_adapter(args.name.as_str()).map_err(|e| e.to_string())?;
    let lm_config = LmTrainConfig {
        steps,
        batch_size: args.batch_size,
        learning_rate: args.lr,
        warmup_ratio: args.warmup_ratio,
        weight_decay: args.weight_decay,
        max_grad_norm: args.max_grad_norm,
        seed: args.seed,
        pad_token_id,
        progress: !args.quiet,
    };
    let report = train_causal_lm(model.as_mut(), vars, &train, &lm_config).map_err(|e| e.to_string())?;
    println!(
        "trained {} parameters: {:.2} s per step, {:.0} tokens/s; loss by tenths {:?}",
        report.trainable_parameters,
        report.seconds_per_step,
        report.tokens_per_second,
        report.train_loss_curve.iter().map(|l| (l * 1000.0).round() / 1000.0).collect::<Vec<_>>()
    );
    let after = evaluate(model.as_mut(), "after")?;
    let samples_after = samples(model.as_ref(), &tokenizer, &args.sample, eos_token_ids)?;
    for ((prompt, b), (_, a)) in samples_before.iter().zip(&samples_after) {
        println!("sample {prompt:?}\n  before: {b:?}\n  after:  {a:?}");
    }
    trained.save(model.as_ref(), &args.out, &args.name)?;
    let summary = serde_json::json!({
        "task": "causal-lm",
        "method": method,
        "model": args.model.display().to_string(),
        "train": args.train.display().to_string(),
        "held_out": held_out_path.map(|p| p.display().to_string()),
        "held_out_sequences": held_out.as_ref().map(Vec::len),
        "before": before,
        "after": after,
        "report": report,
        "samples": samples_before.iter().zip(&samples_after).map(|((p, b), (_, a))| serde_json::json!({"prompt": p, "before": b, "after": a})).collect::<Vec<_>>(),
    });
    let path = args.out.join("train_report.json");
    let text = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
    adapters_runtime::io::write_atomic(&path, text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
    println!("saved the adapter and train_report.json to {}", args.out.display());
    Ok(())
}

/// Greedy continuations of each prompt.
fn samples(model: &DynAdaptedModel, tokenizer: &Tokenizer, prompts: &[String], eos: &[u32]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for prompt in prompts {
        let ids: Vec<i64> = tokenizer.encoder.ids(prompt, true).map_err(|e| e.to_string())?.into_iter().map(i64::from).collect();
        let ids = Tensor::new(ids.as_slice(), &Device::Cpu).and_then(|t| t.unsqueeze(0)).map_err(|e| e.to_string())?;
        let options = GenerateOptions { eos_token_ids: eos.to_vec(), pad_token_id: tokenizer.pad_token_id, ..GenerateOptions::greedy(SAMPLE_TOKENS) };
        let mut tokens = Vec::new();
        model
            .generate(&ids, None, &options, |t| {
                tokens.push(t[0]);
                Ok(())
            })
            .map_err(|e| e.to_string())?;
        tokens.retain(|t| !eos.contains(t));
        out.push((prompt.clone(), tokenizer.encoder.decode(&tokens).map_err(|e| e.to_string())?));
    }
    Ok(out)
}
