//! `adapters train`, `adapters eval`, `adapters predict`: sequence classification on labelled
//! text with an adapter (or full fine-tuning) and a classification head.

use std::path::{Path, PathBuf};

use adapters_models::{load_model_with, BaseWeights, LoadOptions};
use adapters_runtime::training::{evaluate, train_classifier, Dataset, LabelledTexts, TextEncoder, TrainConfig, TOKENIZER_FILE};
use adapters_runtime::vision::ImageProcessor;
use adapters_runtime::{DynAdaptedModel, HeadConfig, HeadType, InputKind, ModelInputs};

use crate::continued::TrainedAdapter;
use candle_core::{Tensor, D};
use clap::Args;

/// What `adapters train` trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Task {
    /// An adapter and a classification head on labelled text.
    Classification,
    /// An adapter on text or instruction pairs, with a decoder's own LM head.
    CausalLm,
}

#[derive(Args)]
pub struct TrainArgs {
    /// Checkpoint folder: config.json, model.safetensors, tokenizer.json (causal-lm: a GGUF file
    /// too, its base kept quantized).
    #[arg(long, value_parser = crate::model_arg)]
    pub(crate) model: PathBuf,
    #[arg(long, value_enum, default_value_t = Task::Classification)]
    pub(crate) task: Task,
    /// Training data: TSV with a `label<TAB>text` header (causal-lm: its texts, packed; or a TSV
    /// with a `prompt<TAB>completion` header, the loss on completions; or plain lines of text).
    #[arg(long)]
    pub(crate) train: PathBuf,
    /// Development data, evaluated after each epoch; the best epoch's weights are kept.
    #[arg(long)]
    pub(crate) dev: Option<PathBuf>,
    /// Test data, evaluated once at the end with the kept weights.
    #[arg(long)]
    pub(crate) test: Option<PathBuf>,
    /// Adapter config string (`seq_bn`, `lora[r=8]`, `ia3`, ...) or `full` for full fine-tuning.
    #[arg(long, default_value = "seq_bn")]
    pub(crate) method: String,
    /// Continue training this adapter folder (AdapterHub, or PEFT) instead of a new `--method`
    /// adapter; it is saved in the folder's own format (with the head beside it).
    #[arg(long, conflicts_with = "fuse")]
    pub(crate) adapter: Option<PathBuf>,
    /// Head type; `classification` is the one text data trains.
    #[arg(long, default_value = "classification")]
    pub(crate) head: String,
    /// Name of the adapter and its head.
    #[arg(long, default_value = "task")]
    pub(crate) name: String,
    #[arg(long, default_value_t = 3)]
    pub(crate) epochs: usize,
    #[arg(long, default_value_t = 32)]
    pub(crate) batch_size: usize,
    #[arg(long, default_value_t = 1e-4)]
    pub(crate) lr: f64,
    #[arg(long, default_value_t = 0.06)]
    pub(crate) warmup_ratio: f64,
    #[arg(long, default_value_t = 0.0)]
    pub(crate) weight_decay: f64,
    /// Clip the gradient norm to this value (off by default).
    #[arg(long)]
    pub(crate) max_grad_norm: Option<f64>,
    #[arg(long, default_value_t = 64)]
    pub(crate) max_length: usize,
    #[arg(long, default_value_t = 42)]
    pub(crate) seed: u64,
    /// Use only the first N training examples (quick runs).
    #[arg(long)]
    pub(crate) limit: Option<usize>,
    /// Train AdapterFusion (dynamic) over these adapter folders instead of a new adapter: the
    /// fusion layer and a new head learn, the adapters stay fixed (repeat the option per adapter;
    /// `--method` is then ignored).
    #[arg(long)]
    pub(crate) fuse: Vec<PathBuf>,
    /// Output folder: the adapter with its head (or, for `full`, the whole checkpoint; with
    /// `--fuse`, the fusion layer and the head), and `train_report.json`.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// No progress bar.
    #[arg(long)]
    pub(crate) quiet: bool,
    /// causal-lm with a GGUF --model: dequantize the base to f32 instead of keeping it quantized
    /// (more memory; on CPUs without fast quantized kernels, faster for batches).
    #[arg(long)]
    pub(crate) dequantize: bool,
    /// causal-lm: train this many batches (default: --epochs passes over the data).
    #[arg(long)]
    pub(crate) max_steps: Option<usize>,
    /// causal-lm: a prompt to continue greedily before and after training (repeatable).
    #[arg(long)]
    pub(crate) sample: Vec<String>,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Checkpoint folder (with tokenizer.json); a fully fine-tuned output folder works too.
    #[arg(long, value_parser = crate::model_arg)]
    model: PathBuf,
    /// Adapter folder saved with its head (`adapters train --out`). Optional for a checkpoint
    /// that carries its own head.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Labelled TSV data.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value_t = 64)]
    max_length: usize,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
pub struct PredictArgs {
    #[arg(long, value_parser = crate::model_arg)]
    model: PathBuf,
    #[arg(long)]
    adapter: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    max_length: usize,
    /// Sentences to classify, or image files (PNG, JPEG) for a vision model (one line of output
    /// each: label, probability, text or file).
    #[arg(required = true)]
    texts: Vec<String>,
}

fn read_data(path: &Path) -> Result<Dataset, String> {
    Dataset::read_tsv(path).map_err(|e| e.to_string())
}

fn labelled<'a>(data: &'a Dataset, labels: &[String], path: &Path) -> Result<LabelledTexts<'a>, String> {
    let ids = data.label_ids(labels, &path.display().to_string()).map_err(|e| e.to_string())?;
    Ok(LabelledTexts { texts: data.examples.iter().map(|e| e.text.as_str()).collect(), labels: ids })
}

/// Loads a model and the head to classify with: the adapter folder's, or one saved in the
/// checkpoint itself (full fine-tuning output).
fn load_classifier(model_dir: &Path, adapter: Option<&Path>) -> Result<Box<DynAdaptedModel>, String> {
    let mut model = load_model_with(model_dir, LoadOptions::default()).map_err(|e| e.to_string())?;
    match adapter {
        Some(dir) => {
            let name = model.load_adapter(dir, None).map_err(|e| format!("--adapter {}: {e}", dir.display()))?;
            model.set_active_adapters(name.as_str()).map_err(|e| e.to_string())?;
        }
        // A task checkpoint's own classifier (converted when loaded), else a head saved beside
        // the weights (full fine-tuning output).
        None if model.active_head().is_some() => {}
        None => {
            model
                .load_head(model_dir, None)
                .map_err(|e| format!("--model {}: no --adapter given and no head in the model folder: {e}", model_dir.display()))?;
        }
    }
    let head = model.active_head().ok_or("the adapter folder holds no head (head_config.json); train with `adapters train`")?;
    let head_type = model.head(head).map(|h| h.config().head_type());
    if !matches!(head_type, Some(HeadType::Classification | HeadType::ImageClassification)) {
        return Err(format!("head `{head}` is not a classification head; eval and predict classify text or images"));
    }
    Ok(model)
}

/// PNG or JPEG files as one batch of `pixel_values`, resized and normalised as the model folder's
/// `preprocessor_config.json` says (Hugging Face's ViTImageProcessor, bit for bit on PNG).
fn read_images(model_dir: &Path, files: &[&str]) -> Result<Tensor, String> {
    let config = model_dir.join("preprocessor_config.json");
    let processor =
        ImageProcessor::from_file(&config).map_err(|e| format!("--model {}: {e} (vision models need it to prepare images)", model_dir.display()))?;
    let images = files.iter().map(|f| processor.preprocess_file(Path::new(f))).collect::<adapters_runtime::Result<Vec<_>>>().map_err(|e| e.to_string())?;
    Tensor::cat(&images, 0).map_err(|e| e.to_string())
}

fn head_labels(model: &DynAdaptedModel) -> Vec<String> {
    let Some(head) = model.active_head().and_then(|h| model.head(h).map(|h| h.config().clone())) else {
        return Vec::new();
    };
    (0..head.num_labels()).map(|i| head.label_name(i)).collect()
}

pub fn train(args: TrainArgs) -> Result<(), String> {
    if args.task == Task::CausalLm {
        return crate::train_lm::run(&args);
    }
    if args.head != "classification" {
        return Err(format!("--head {}: text data trains `classification` heads; other head types are built by the library API", args.head));
    }
    let mut train = read_data(&args.train)?;
    if let Some(n) = args.limit {
        train.examples.truncate(n);
    }
    let labels = train.labels();
    let dev = args.dev.as_deref().map(read_data).transpose()?;
    let test = args.test.as_deref().map(read_data).transpose()?;
    let fusion = !args.fuse.is_empty();
    let full = args.method == "full" && !fusion && args.adapter.is_none();
    let trained = if full || fusion { None } else { Some(TrainedAdapter::from_args(args.adapter.as_deref(), &args.method)?) };
    let base = if full { BaseWeights::Trainable } else { BaseWeights::Frozen };
    let mut model = load_model_with(&args.model, LoadOptions { base, ..LoadOptions::default() }).map_err(|e| e.to_string())?;
    let encoder = TextEncoder::from_model_dir(&args.model, args.max_length).map_err(|e| e.to_string())?;
    // A prompt initialised from text starts at the word embeddings of its tokens (with the
    // special tokens, as Python's tokenizer call gives them).
    let prompt_text = match &trained {
        Some(TrainedAdapter::New(config)) => config.prompt_tuning().filter(|c| c.prompt_init == "from_string").and_then(|c| c.prompt_init_text.clone()),
        _ => None,
    };
    match (&trained, prompt_text) {
        (Some(TrainedAdapter::New(config)), Some(text)) => {
            let encoded = encoder.encode(&[text.as_str()], &model.placement().device).map_err(|e| e.to_string())?;
            let ids: Vec<u32> =
                encoded.input_ids.flatten_all().and_then(|t| t.to_dtype(candle_core::DType::U32)).and_then(|t| t.to_vec1()).map_err(|e| e.to_string())?;
            model.add_prompt_adapter_from_ids(&args.name, (**config).clone(), &ids).map_err(|e| format!("--method {}: {e}", args.method))?;
        }
        (Some(trained), _) => trained.add(model.as_mut(), &args.name)?,
        (None, _) => {}
    }
    let fuse_setup = if fusion { Some(load_fused(model.as_mut(), &args.fuse)?) } else { None };
    // A continued AdapterHub folder may bring its head; it trains on.
    if model.head(&args.name).is_none() {
        model.add_head(&args.name, HeadConfig::classification(labels.len(), 2, "tanh", Some(&labels), false, false), false).map_err(|e| e.to_string())?;
    }
    let vars = match &fuse_setup {
        Some(setup) => model.train_adapter_fusion(setup.clone(), false),
        None if full => model.train_full(),
        None => model.train_adapter(args.name.as_str()),
    }
    .map_err(|e| e.to_string())?;
    if fusion {
        model.set_active_head(Some(&args.name)).map_err(|e| e.to_string())?;
    }
    let method = match (&fuse_setup, &trained) {
        (Some(setup), _) => format!("fusion {setup}"),
        (None, Some(trained)) => trained.label(model.as_ref(), &args.name, &args.method),
        (None, None) => args.method.clone(),
    };
    let train_set = labelled(&train, &labels, &args.train)?;
    let dev_set = match (&dev, &args.dev) {
        (Some(d), Some(p)) => Some(labelled(d, &labels, p)?),
        _ => None,
    };
    let cfg = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.lr,
        warmup_ratio: args.warmup_ratio,
        weight_decay: args.weight_decay,
        max_grad_norm: args.max_grad_norm,
        seed: args.seed,
        max_length: args.max_length,
        progress: !args.quiet,
    };
    println!(
        "training {} on {} ({} examples, labels {:?}): {} trainable parameters",
        method,
        args.train.display(),
        train.len(),
        labels,
        vars.iter().map(|v| v.elem_count()).sum::<usize>()
    );
    let report = train_classifier(model.as_mut(), vars, &encoder, &train_set, dev_set.as_ref(), &cfg).map_err(|e| e.to_string())?;
    // Without --quiet the trainer already printed each epoch as it ended.
    for e in report.epochs.iter().filter(|_| args.quiet) {
        println!(
            "epoch {}: train loss {:.4}, {:.1} s, {:.1} examples/s{}",
            e.epoch,
            e.train_loss,
            e.train_seconds,
            e.examples_per_second,
            e.dev_accuracy.map(|a| format!(", dev accuracy {:.2} %", 100.0 * a)).unwrap_or_default()
        );
    }
    if let Some(best) = report.best_epoch {
        println!("kept epoch {best} (best dev accuracy)");
    }
    let mut summary = serde_json::json!({ "method": method, "report": report });
    if let (Some(test), Some(path)) = (&test, &args.test) {
        let set = labelled(test, &labels, path)?;
        let e = evaluate(model.as_mut(), &encoder, &set, 64, !args.quiet).map_err(|e| e.to_string())?;
        println!("test accuracy {:.2} % ({} examples, {:.1} s)", 100.0 * e.accuracy, e.examples, e.seconds);
        summary["test"] = serde_json::to_value(&e).map_err(|e| e.to_string())?;
    }
    match &fuse_setup {
        Some(setup) => {
            let name = setup.fusion_name().unwrap_or_default();
            model.save_adapter_fusion(&args.out, &name).and_then(|()| model.save_head(&args.out, &args.name)).map_err(|e| e.to_string())?;
        }
        None => save_trained(model.as_ref(), &args, trained.as_ref())?,
    }
    let text = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
    adapters_runtime::io::write_atomic(&args.out.join("train_report.json"), text.as_bytes()).map_err(|e| e.to_string())?;
    println!("saved to {}", args.out.display());
    Ok(())
}

/// Loads the adapters to fuse (dropping heads saved with them, which would otherwise train too)
/// and adds a dynamic fusion layer over them; returns the `Fuse[...]` setup.
fn load_fused(model: &mut DynAdaptedModel, dirs: &[PathBuf]) -> Result<adapters_runtime::AdapterSetup, String> {
    if dirs.len() < 2 {
        return Err("--fuse needs at least two adapter folders".into());
    }
    let mut names = Vec::new();
    for dir in dirs {
        let name = model.load_adapter(dir, None).map_err(|e| format!("--fuse {}: {e}", dir.display()))?;
        if model.head(&name).is_some() {
            model.delete_head(&name).map_err(|e| e.to_string())?;
        }
        names.push(name);
    }
    let setup = adapters_runtime::AdapterSetup::Fuse { children: names.into_iter().map(adapters_runtime::AdapterSetup::Single).collect(), name: None };
    model.add_adapter_fusion(setup.clone(), adapters_runtime::config::FusionConfig::dynamic()).map_err(|e| e.to_string())?;
    Ok(setup)
}

/// Adapters: the adapter folder with its head (a continued PEFT adapter as PEFT). Full fine-tuning: a checkpoint folder (weights,
/// config, tokenizer) with the head beside it, usable as `--model` later.
fn save_trained(model: &DynAdaptedModel, args: &TrainArgs, trained: Option<&TrainedAdapter>) -> Result<(), String> {
    std::fs::create_dir_all(&args.out).map_err(|e| format!("--out {}: {e}", args.out.display()))?;
    if let Some(trained) = trained {
        return trained.save(model, &args.out, &args.name);
    }
    let tensors: std::collections::HashMap<String, Tensor> = model.base_vars().iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    adapters_runtime::io::save_safetensors(&args.out.join(adapters_models::MODEL_WEIGHTS), &tensors).map_err(|e| e.to_string())?;
    for file in ["config.json", TOKENIZER_FILE] {
        let bytes = std::fs::read(args.model.join(file)).map_err(|e| format!("{}: {e}", args.model.join(file).display()))?;
        adapters_runtime::io::write_atomic(&args.out.join(file), &bytes).map_err(|e| e.to_string())?;
    }
    model.save_head(&args.out, &args.name).map_err(|e| e.to_string())
}

pub fn eval(args: EvalArgs) -> Result<(), String> {
    let mut model = load_classifier(&args.model, args.adapter.as_deref())?;
    let encoder = TextEncoder::from_model_dir(&args.model, args.max_length).map_err(|e| e.to_string())?;
    let data = read_data(&args.data)?;
    let labels = head_labels(model.as_ref());
    let set = labelled(&data, &labels, &args.data)?;
    let e = evaluate(model.as_mut(), &encoder, &set, args.batch_size, !args.quiet).map_err(|e| e.to_string())?;
    println!("accuracy {:.2} % ({} examples), loss {:.4}, {:.1} s", 100.0 * e.accuracy, e.examples, e.loss, e.seconds);
    Ok(())
}

pub fn predict(args: PredictArgs) -> Result<(), String> {
    let model = load_classifier(&args.model, args.adapter.as_deref())?;
    let labels = head_labels(model.as_ref());
    let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
    let inputs = if model.base().accepts().0.contains(&InputKind::PixelValues) {
        ModelInputs::pixels(read_images(&args.model, &texts)?)
    } else {
        let encoder = TextEncoder::from_model_dir(&args.model, args.max_length).map_err(|e| e.to_string())?;
        let enc = encoder.encode(&texts, &model.placement().device).map_err(|e| e.to_string())?;
        ModelInputs::text(enc.input_ids, enc.attention_mask)
    };
    let out = model.forward_inputs_with_head(&inputs).map_err(|e| e.to_string())?;
    let logits = out.head.ok_or("no head is active")?.logits().clone();
    let probs = candle_nn::ops::softmax(&logits, D::Minus1).and_then(|p| p.to_vec2::<f32>()).map_err(|e| e.to_string())?;
    for (text, p) in texts.iter().zip(probs) {
        let (best, prob) = p.iter().enumerate().fold((0, f32::MIN), |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc });
        println!("{}\t{prob:.3}\t{text}", labels.get(best).cloned().unwrap_or_else(|| format!("LABEL_{best}")));
    }
    Ok(())
}
