//! Loading a Hugging Face checkpoint folder into an adapter-ready model, with or without the
//! task-model prefix (`bert.`, `roberta.`, `distilbert.`).

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use adapters_runtime::methods::init::Placement;
use adapters_runtime::{AdaptableModel, AdaptedModel, AdapterError, DynAdaptedModel, ModelForward, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use serde::de::DeserializeOwned;

use crate::{
    BartModel, Bert2BertModel, BertModel, DistilBertModel, Gemma2Model, Gpt2Model, LlamaModel, MBartModel, MT5Model, MistralModel, Qwen2Model, Qwen3Model,
    RobertaModel, T5Model, ViTModel,
};

/// The weight file of a checkpoint folder.
pub const MODEL_WEIGHTS: &str = "model.safetensors";

/// How the base weights are held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BaseWeights {
    /// Constants (memory-mapped): adapters train, the base never changes.
    #[default]
    Frozen,
    /// Variables, for full fine-tuning (`train_full`).
    Trainable,
}

/// How to load a checkpoint: the base weights' role, and the device and dtype to load them to
/// (adapters, heads and fusion layers follow the base).
///
/// ```no_run
/// use adapters_models::{load_model_with, LoadOptions};
/// use adapters_runtime::methods::init::Placement;
/// let gpu = Placement::new(candle_core::Device::new_cuda(0)?, candle_core::DType::BF16);
/// let model = load_model_with("path/to/model".as_ref(), LoadOptions { placement: gpu, ..LoadOptions::default() })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    pub base: BaseWeights,
    pub placement: Placement,
    /// A GGUF base: keep its linear weights quantized (the default: QLoRA-style, a fraction of
    /// the memory) or dequantize everything to `placement`'s dtype (exact f32 parity).
    pub gguf: GgufWeights,
}

/// How a GGUF file's quantized linear weights are held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GgufWeights {
    /// Quantized, multiplied with candle's quantized kernels (activations are quantized to 8
    /// bits on the way, so outputs differ from the dequantized model's by about 1 %).
    #[default]
    Quantized,
    /// Dequantized to the placement's dtype when loaded.
    Dequantized,
}

type VarList = Arc<Mutex<Vec<(String, Var)>>>;

/// A backend that counts the elements of every tensor the model takes, so the summary's
/// "% of base" uses what the model really holds (no unused heads), and that hands out
/// variables instead of constants when the base is to be trained.
struct CountingBackend {
    inner: Box<dyn SimpleBackend>,
    count: Arc<AtomicUsize>,
    vars: Option<VarList>,
}

impl SimpleBackend for CountingBackend {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.inner.get(s, name, h, dtype, dev)?;
        self.count.fetch_add(t.elem_count(), Ordering::Relaxed);
        match &self.vars {
            None => Ok(t),
            Some(vars) => {
                let var = Var::from_tensor(&t)?;
                let tensor = var.as_tensor().clone();
                vars.lock().map_err(|_| candle_core::Error::Msg("variable list poisoned".into()))?.push((name.to_string(), var));
                Ok(tensor)
            }
        }
    }
    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.inner.get_unchecked(name, dtype, dev)
    }
    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}

fn read_config(dir: &Path) -> Result<serde_json::Value> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| AdapterError::Io { path: path.clone(), source: e })?;
    serde_json::from_str(&text).map_err(|e| AdapterError::File { file: path.display().to_string(), reason: format!("not valid JSON: {e}") })
}

fn typed_config<C: DeserializeOwned>(dir: &Path, raw: serde_json::Value) -> Result<C> {
    serde_json::from_value(raw).map_err(|e| AdapterError::ConfigKey {
        file: dir.join("config.json").display().to_string(),
        key: "(model config)".into(),
        reason: e.to_string(),
    })
}

/// Where a checkpoint's base model sits: the task-model prefix it may carry (`bert`, `model`)
/// and a tensor of the base model that tells whether it does.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub prefix: &'static str,
    pub probe: &'static str,
}

/// BERT-family checkpoints: `<prefix>.embeddings.word_embeddings.weight`.
const fn encoder(prefix: &'static str) -> Layout {
    Layout { prefix, probe: "embeddings.word_embeddings.weight" }
}

/// Llama-family checkpoints: `model.embed_tokens.weight` in `*ForCausalLM` files.
pub const LLAMA_LAYOUT: Layout = Layout { prefix: "model", probe: "embed_tokens.weight" };

/// GPT-2 checkpoints: `transformer.wte.weight` in `GPT2LMHeadModel` files.
pub const GPT2_LAYOUT: Layout = Layout { prefix: "transformer", probe: "wte.weight" };

/// BART-family checkpoints: `model.shared.weight` in `*ForConditionalGeneration` files.
pub const BART_LAYOUT: Layout = Layout { prefix: "model", probe: "encoder.layernorm_embedding.weight" };

/// T5 checkpoints keep `shared`, `encoder`, `decoder` (and `lm_head`) at the root.
pub const T5_LAYOUT: Layout = Layout { prefix: "", probe: "shared.weight" };

/// `EncoderDecoderModel` checkpoints keep both halves at the root (`encoder.*`, `decoder.*`).
pub const ENCODER_DECODER_LAYOUT: Layout = Layout { prefix: "", probe: "encoder.embeddings.word_embeddings.weight" };

/// ViT checkpoints: `vit.embeddings.cls_token` in `ViTForImageClassification` files.
pub const VIT_LAYOUT: Layout = Layout { prefix: "vit", probe: "embeddings.cls_token" };

/// What builds a model: the `VarBuilder` at the base model, the one at the checkpoint root (for
/// weights outside the base model, such as an untied `lm_head`) and the config.
pub type Build<M, C> = fn(VarBuilder, &VarBuilder, &C) -> candle_core::Result<M>;

/// Loads one architecture, typed.
pub fn load_typed<M, C>(dir: &Path, layout: Layout, build: Build<M, C>) -> Result<AdaptedModel<M>>
where
    M: AdaptableModel + ModelForward,
    C: DeserializeOwned,
{
    load_with_config(dir, read_config(dir)?, layout, &LoadOptions::default(), build)
}

fn load_with_config<M, C>(dir: &Path, raw: serde_json::Value, layout: Layout, options: &LoadOptions, build: Build<M, C>) -> Result<AdaptedModel<M>>
where
    M: AdaptableModel + ModelForward,
    C: DeserializeOwned,
{
    let config: C = typed_config(dir, raw)?;
    let weights = dir.join(MODEL_WEIGHTS);
    let origin = weights.display().to_string();
    if !weights.is_file() {
        return Err(AdapterError::File { file: origin, reason: "missing (a checkpoint folder needs config.json and model.safetensors)".into() });
    }
    // SAFETY: the file is mapped read-only; a checkpoint is not modified while it is loaded.
    let inner = unsafe { MmapedSafetensors::new(&weights) }
        .map_err(|e| AdapterError::File { file: origin.clone(), reason: format!("not a readable safetensors file: {e}") })?;
    load_from_backend(origin, Box::new(inner), &config, layout, options, None, build)
}

/// Builds a model over any weight backend (a safetensors file, a GGUF file), counting what it
/// takes (and, from `quantized`, the weights a GGUF file hands out quantized) and holding the
/// base as options say.
fn load_from_backend<M, C>(
    origin: String,
    inner: Box<dyn SimpleBackend>,
    config: &C,
    layout: Layout,
    options: &LoadOptions,
    quantized: Option<&crate::gguf::GgufBackend>,
    build: impl FnOnce(VarBuilder, &VarBuilder, &C) -> candle_core::Result<M>,
) -> Result<AdaptedModel<M>>
where
    M: AdaptableModel + ModelForward,
{
    let count = Arc::new(AtomicUsize::new(0));
    let vars: Option<VarList> = (options.base == BaseWeights::Trainable).then(Default::default);
    let backend: Box<dyn SimpleBackend> = Box::new(CountingBackend { inner, count: count.clone(), vars: vars.clone() });
    let Placement { device, dtype } = options.placement.clone();
    let vb = VarBuilder::from_backend(backend, dtype, device);
    // A layout without a prefix (T5, EncoderDecoderModel) keeps its base at the root.
    let prefixed = !layout.prefix.is_empty() && vb.contains_tensor(&format!("{}.{}", layout.prefix, layout.probe));
    let root = if prefixed { layout.prefix } else { "" };
    let base_vb = if root.is_empty() { vb.clone() } else { vb.pp(root) };
    let model = build(base_vb, &vb, config).map_err(|e| AdapterError::File { file: origin, reason: format!("does not fit config.json: {e}") })?;
    let parameters = count.load(Ordering::Relaxed) + quantized.map_or(0, crate::gguf::GgufBackend::quantized_elements);
    let model = AdaptedModel::new(model, parameters, root, options.placement.clone());
    Ok(match vars {
        Some(vars) => model.with_base_vars(std::mem::take(&mut *vars.lock().map_err(|_| AdapterError::InvalidConfig("variable list poisoned".into()))?)),
        None => model,
    })
}

fn boxed<M: AdaptableModel + ModelForward + 'static>(m: AdaptedModel<M>) -> Box<DynAdaptedModel> {
    Box::new(m)
}

/// A model argument as a folder or file: itself when it exists; else, when it reads as a hub id
/// (`bert-base-uncased`, `Qwen/Qwen2.5-0.5B`), its snapshot folder in the local Hugging Face cache
/// (`$HF_HUB_CACHE`, or `$HF_HOME/hub`, or `~/.cache/huggingface/hub`), resolved offline by
/// hf-hub; an id that is not there is an error naming the cache path.
///
/// ```no_run
/// let dir = adapters_models::resolve_model_path("Qwen/Qwen2.5-0.5B".as_ref())?;
/// let model = adapters_models::load_model(&dir)?;
/// # Ok::<(), adapters_runtime::AdapterError>(())
/// ```
pub fn resolve_model_path(arg: &Path) -> Result<std::path::PathBuf> {
    let text = arg.to_string_lossy();
    let hub_id = !arg.exists()
        && !arg.is_absolute()
        && !text.starts_with('.')
        && text.split('/').count() <= 2
        && text.split('/').all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
    if !hub_id {
        return Ok(arg.to_path_buf());
    }
    let cache = hub_cache_dir().ok_or_else(|| AdapterError::File {
        file: text.to_string(),
        reason: "neither a path nor resolvable as a hub id: no HF_HUB_CACHE, HF_HOME or home folder to find the Hugging Face cache in".into(),
    })?;
    let repo = hf_hub::Cache::new(cache.clone()).model(text.to_string());
    match repo.get("config.json").as_deref().and_then(Path::parent) {
        Some(snapshot) => Ok(snapshot.to_path_buf()),
        None => Err(AdapterError::File {
            file: text.to_string(),
            reason: format!(
                "not a path, and not in the local Hugging Face cache at {} (no models--{}/refs/main snapshot with a config.json); download it there (e.g. `huggingface-cli download {text}`) or pass a folder",
                cache.display(),
                text.replace('/', "--")
            ),
        }),
    }
}

/// The Hugging Face hub cache folder, as `huggingface_hub` finds it.
fn hub_cache_dir() -> Option<std::path::PathBuf> {
    if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
        return Some(dir.into());
    }
    if let Some(home) = std::env::var_os("HF_HOME") {
        return Some(std::path::PathBuf::from(home).join("hub"));
    }
    std::env::var_os("HOME").map(|home| std::path::PathBuf::from(home).join(".cache").join("huggingface").join("hub"))
}

/// The `model_type`s [`load_model`] takes.
pub const SUPPORTED_MODEL_TYPES: &[&str] =
    &["bert", "roberta", "distilbert", "llama", "mistral", "qwen2", "qwen3", "gemma2", "gpt2", "vit", "bart", "mbart", "t5", "mt5", "encoder-decoder"];

/// Loads a checkpoint folder, choosing the architecture from `model_type` in `config.json`:
/// frozen base weights, f32 on the CPU.
pub fn load_model(dir: &Path) -> Result<Box<DynAdaptedModel>> {
    load_model_with(dir, LoadOptions::default())
}

/// [`load_model`], with the base weights held and placed as `options` say. A `.gguf` file stands
/// in for a folder where its architecture is supported (see [`crate::gguf`]).
pub fn load_model_with(dir: &Path, options: LoadOptions) -> Result<Box<DynAdaptedModel>> {
    let base = &options;
    if dir.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        let checkpoint = crate::gguf::read_gguf(dir)?;
        let origin = dir.display().to_string();
        let quantized = match options.gguf {
            GgufWeights::Quantized if options.base == BaseWeights::Trainable => {
                return Err(AdapterError::File {
                    file: origin,
                    reason: "a quantized base cannot be trained in full; load it dequantized (GgufWeights::Dequantized)".into(),
                })
            }
            GgufWeights::Quantized => Some(checkpoint.backend.clone()),
            GgufWeights::Dequantized => None,
        };
        let source = quantized.as_ref().map(|q| q as &dyn crate::QuantizedSource);
        let model = load_from_backend(origin, Box::new(checkpoint.backend), &checkpoint.config, LLAMA_LAYOUT, base, quantized.as_ref(), |vb, root, c| {
            LlamaModel::load_quantized(vb, root, c, source)
        })?;
        return Ok(boxed(model));
    }
    let path = dir.join("config.json");
    let raw = read_config(dir)?;
    let config = raw.clone();
    let model_type = raw.get("model_type").and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let mut model = match model_type.as_str() {
        "bert" => boxed(load_with_config(dir, raw, encoder("bert"), base, |vb, _, c| BertModel::load(vb, c))?),
        "roberta" => boxed(load_with_config(dir, raw, encoder("roberta"), base, |vb, _, c| RobertaModel::load(vb, c))?),
        "distilbert" => boxed(load_with_config(dir, raw, encoder("distilbert"), base, |vb, _, c| DistilBertModel::load(vb, c))?),
        "llama" => boxed(load_with_config(dir, raw, LLAMA_LAYOUT, base, LlamaModel::load)?),
        "mistral" => boxed(load_with_config(dir, raw, LLAMA_LAYOUT, base, MistralModel::load)?),
        "qwen2" => boxed(load_with_config(dir, raw, LLAMA_LAYOUT, base, Qwen2Model::load)?),
        "qwen3" => boxed(load_with_config(dir, raw, LLAMA_LAYOUT, base, Qwen3Model::load)?),
        "gemma2" => boxed(load_with_config(dir, raw, LLAMA_LAYOUT, base, Gemma2Model::load)?),
        "gpt2" => boxed(load_with_config(dir, raw, GPT2_LAYOUT, base, Gpt2Model::load)?),
        "bart" => boxed(load_with_config(dir, raw, BART_LAYOUT, base, BartModel::load)?),
        "mbart" => boxed(load_with_config(dir, raw, BART_LAYOUT, base, MBartModel::load)?),
        "t5" => boxed(load_with_config(dir, raw, T5_LAYOUT, base, T5Model::load)?),
        "mt5" => boxed(load_with_config(dir, raw, T5_LAYOUT, base, MT5Model::load)?),
        "encoder-decoder" => boxed(load_with_config(dir, raw, ENCODER_DECODER_LAYOUT, base, |vb, _, c| Bert2BertModel::load(vb, c))?),
        "vit" => boxed(load_with_config(dir, raw, VIT_LAYOUT, base, |vb, _, c| ViTModel::load(vb, c))?),
        other => {
            return Err(AdapterError::ConfigKey {
                file: path.display().to_string(),
                key: "model_type".into(),
                reason: format!("`{other}` is not supported; supported: {}", SUPPORTED_MODEL_TYPES.join(", ")),
            })
        }
    };
    // A task checkpoint's head becomes the flexible head `default`, as Python converts it.
    let origin = dir.join(MODEL_WEIGHTS).display().to_string();
    crate::static_heads::add_static_head(model.as_mut(), &config, &crate::static_heads::head_tensors(dir)?, &origin)?;
    Ok(model)
}
