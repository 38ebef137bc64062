//! GGUF files as base models: a llama-architecture GGUF (llama.cpp's format; read with candle's
//! `gguf_file`) becomes a [`LlamaModel`] whose weights are the file's tensors dequantized to the
//! requested dtype, under the names a Hugging Face checkpoint gives them, so adapters saved
//! against the HF model (Python's or ours) load onto it unchanged.
//!
//! ```no_run
//! use adapters_models::{load_model_with, LoadOptions};
//! let model = load_model_with("SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), LoadOptions::default())?;
//! # Ok::<(), adapters_runtime::AdapterError>(())
//! ```

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;
use std::sync::Mutex;

use adapters_runtime::{AdapterError, Result};
use std::sync::Arc;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::Init;

use crate::llama::QuantizedSource;
use crate::LlamaConfig;

/// The GGUF architectures [`read_gguf`] builds.
pub const SUPPORTED_GGUF_ARCHITECTURES: &[&str] = &["llama"];

/// A GGUF file opened for loading: its metadata as a Llama config, and a weight backend.
pub struct GgufCheckpoint {
    pub config: LlamaConfig,
    pub backend: GgufBackend,
}

/// Serves a GGUF file's tensors under Hugging Face names (`model.layers.0.self_attn.q_proj.weight`),
/// dequantized, with llama.cpp's row permutation of the query and key projections undone; as a
/// [`QuantizedSource`], the linear weights still quantized (rows reordered block by block).
#[derive(Clone)]
pub struct GgufBackend {
    file: Arc<GgufFile>,
    /// Elements of the weights handed out quantized (the summary counts them with the base).
    quantized_elements: Arc<std::sync::atomic::AtomicUsize>,
}

struct GgufFile {
    origin: String,
    content: Content,
    reader: Mutex<BufReader<File>>,
    heads: usize,
    kv_heads: usize,
}

/// Opens `path`, checks its architecture and reads the Llama config from its metadata.
pub fn read_gguf(path: &Path) -> Result<GgufCheckpoint> {
    let origin = path.display().to_string();
    let file = File::open(path).map_err(|e| AdapterError::Io { path: path.to_path_buf(), source: e })?;
    let mut reader = BufReader::new(file);
    let content = Content::read(&mut reader).map_err(|e| AdapterError::File { file: origin.clone(), reason: format!("not a readable GGUF file: {e}") })?;
    let meta = Metadata { origin: &origin, values: &content.metadata };
    let arch = meta.string("general.architecture")?;
    if !SUPPORTED_GGUF_ARCHITECTURES.contains(&arch.as_str()) {
        return Err(AdapterError::ConfigKey {
            file: origin,
            key: "general.architecture".into(),
            reason: format!("`{arch}` is not supported; supported: {}", SUPPORTED_GGUF_ARCHITECTURES.join(", ")),
        });
    }
    if content.tensor_infos.contains_key("rope_freqs.weight") {
        return Err(AdapterError::ConfigKey {
            file: origin,
            key: "rope_freqs.weight".into(),
            reason: "per-frequency rope factors (llama3-style scaling stored as a tensor) are not supported yet".into(),
        });
    }
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = meta.usize(&key("embedding_length"))?;
    let heads = meta.usize(&key("attention.head_count"))?;
    let kv_heads = meta.usize_or(&key("attention.head_count_kv"), heads)?;
    let vocab = match meta.usize(&key("vocab_size")) {
        Ok(v) => v,
        Err(_) => content.metadata.get("tokenizer.ggml.tokens").and_then(|t| t.to_vec().ok()).map(Vec::len).ok_or_else(|| meta.missing(&key("vocab_size")))?,
    };
    let config = LlamaConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: meta.usize(&key("feed_forward_length"))?,
        num_hidden_layers: meta.usize(&key("block_count"))?,
        num_attention_heads: heads,
        num_key_value_heads: Some(kv_heads),
        head_dim: Some(meta.usize_or(&key("rope.dimension_count"), hidden / heads)?),
        rms_norm_eps: meta.f64(&key("attention.layer_norm_rms_epsilon"))?,
        rope_theta: meta.f64_or(&key("rope.freq_base"), 10000.0)?,
        rope_scaling: None,
        max_position_embeddings: meta.usize_or(&key("context_length"), 2048)?,
        // No `output.weight`: the decoder is the token embedding matrix.
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        attention_bias: content.tensor_infos.contains_key("blk.0.attn_q.bias"),
        mlp_bias: false,
        hidden_act: "silu".into(),
        attention_dropout: 0.0,
        hidden_dropout_prob: 0.0,
        pad_token_id: meta.usize("tokenizer.ggml.padding_token_id").ok(),
        sliding_window: None,
        use_sliding_window: None,
        layer_types: None,
        query_pre_attn_scalar: None,
        attn_logit_softcapping: None,
        final_logit_softcapping: None,
        hidden_activation: None,
        model_type: Some("llama".into()),
    };
    let file = GgufFile { origin, content, reader: Mutex::new(reader), heads, kv_heads };
    Ok(GgufCheckpoint { config, backend: GgufBackend { file: Arc::new(file), quantized_elements: Arc::default() } })
}

/// The tokenizer a GGUF file carries: `tokenizer.ggml.*` (a byte-level BPE, `model = "gpt2"`).
#[derive(Clone, Debug)]
pub struct GgufTokenizer {
    pub tokens: Vec<String>,
    pub merges: Vec<String>,
    /// Ids of control tokens (`token_type` 3), kept whole when tokenizing.
    pub special_ids: Vec<u32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub pad: Option<u32>,
    /// `tokenizer.ggml.add_bos_token` (false when absent).
    pub add_bos: bool,
    pub chat_template: Option<String>,
}

/// Reads the tokenizer of a GGUF file; only byte-level BPE (`gpt2`) vocabularies are built.
pub fn read_gguf_tokenizer(path: &Path) -> Result<GgufTokenizer> {
    let origin = path.display().to_string();
    let file = File::open(path).map_err(|e| AdapterError::Io { path: path.to_path_buf(), source: e })?;
    let content =
        Content::read(&mut BufReader::new(file)).map_err(|e| AdapterError::File { file: origin.clone(), reason: format!("not a readable GGUF file: {e}") })?;
    let meta = Metadata { origin: &origin, values: &content.metadata };
    let kind = meta.string("tokenizer.ggml.model")?;
    if kind != "gpt2" {
        return Err(AdapterError::ConfigKey {
            file: origin,
            key: "tokenizer.ggml.model".into(),
            reason: format!("`{kind}` tokenizers are not supported; supported: gpt2 (byte-level BPE)"),
        });
    }
    let strings = |key: &str| -> Result<Vec<String>> {
        meta.get(key)?.to_vec().map_err(|e| meta.wrong(key, e))?.iter().map(|v| v.to_string().cloned().map_err(|e| meta.wrong(key, e))).collect()
    };
    let types: Vec<i32> = match content.metadata.get("tokenizer.ggml.token_type") {
        Some(v) => v.to_vec().map_err(|e| meta.wrong("tokenizer.ggml.token_type", e))?.iter().map(|t| t.to_i32().unwrap_or(1)).collect(),
        None => Vec::new(),
    };
    let id = |key: &str| meta.usize(key).ok().map(|v| v as u32);
    Ok(GgufTokenizer {
        tokens: strings("tokenizer.ggml.tokens")?,
        merges: strings("tokenizer.ggml.merges")?,
        special_ids: types.iter().enumerate().filter(|(_, t)| **t == 3).map(|(i, _)| i as u32).collect(),
        bos: id("tokenizer.ggml.bos_token_id"),
        eos: id("tokenizer.ggml.eos_token_id"),
        pad: id("tokenizer.ggml.padding_token_id"),
        add_bos: content.metadata.get("tokenizer.ggml.add_bos_token").and_then(|v| v.to_bool().ok()).unwrap_or(false),
        chat_template: meta.string("tokenizer.chat_template").ok(),
    })
}

/// Typed reads of GGUF metadata, with errors that name the file and key.
struct Metadata<'a> {
    origin: &'a str,
    values: &'a HashMap<String, Value>,
}

impl Metadata<'_> {
    fn missing(&self, key: &str) -> AdapterError {
        AdapterError::ConfigKey { file: self.origin.into(), key: key.into(), reason: "missing from the GGUF metadata".into() }
    }

    fn get(&self, key: &str) -> Result<&Value> {
        self.values.get(key).ok_or_else(|| self.missing(key))
    }

    fn wrong(&self, key: &str, e: candle_core::Error) -> AdapterError {
        AdapterError::ConfigKey { file: self.origin.into(), key: key.into(), reason: e.to_string() }
    }

    fn string(&self, key: &str) -> Result<String> {
        self.get(key)?.to_string().cloned().map_err(|e| self.wrong(key, e))
    }

    fn usize(&self, key: &str) -> Result<usize> {
        let value = self.get(key)?;
        value.to_u64().or_else(|_| value.to_u32().map(u64::from)).map(|v| v as usize).map_err(|e| self.wrong(key, e))
    }

    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        if self.values.contains_key(key) {
            self.usize(key)
        } else {
            Ok(default)
        }
    }

    fn f64(&self, key: &str) -> Result<f64> {
        let value = self.get(key)?;
        value.to_f32().map(f64::from).or_else(|_| value.to_f64()).map_err(|e| self.wrong(key, e))
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        if self.values.contains_key(key) {
            self.f64(key)
        } else {
            Ok(default)
        }
    }
}

/// A Hugging Face tensor name's GGUF name, and whether its rows carry llama.cpp's rotary
/// permutation (`Some(heads)`).
fn gguf_name(hf: &str, heads: usize, kv_heads: usize) -> Option<(String, Option<usize>)> {
    let hf = hf.strip_prefix("model.").unwrap_or(hf);
    let fixed = match hf {
        "embed_tokens.weight" => Some("token_embd.weight"),
        "norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some((name.to_string(), None));
    }
    let rest = hf.strip_prefix("layers.")?;
    let (layer, module) = rest.split_once('.')?;
    let (module, kind) = module.rsplit_once('.')?;
    let (name, permuted) = match module {
        "input_layernorm" => ("attn_norm", None),
        "post_attention_layernorm" => ("ffn_norm", None),
        "self_attn.q_proj" => ("attn_q", Some(heads)),
        "self_attn.k_proj" => ("attn_k", Some(kv_heads)),
        "self_attn.v_proj" => ("attn_v", None),
        "self_attn.o_proj" => ("attn_output", None),
        "mlp.gate_proj" => ("ffn_gate", None),
        "mlp.up_proj" => ("ffn_up", None),
        "mlp.down_proj" => ("ffn_down", None),
        _ => return None,
    };
    // Biases are permuted like their weight's rows.
    Some((format!("blk.{layer}.{name}.{kind}"), permuted))
}

/// llama.cpp stores the query and key rows of each head with the two rotary halves interleaved
/// (`[heads, half, 2]`); Hugging Face keeps them as `[heads, 2, half]`.
fn unpermute(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let dims = t.dims().to_vec();
    let rows = dims[0];
    let rest: Vec<usize> = dims[1..].to_vec();
    let mut shape = vec![heads, rows / heads / 2, 2];
    shape.extend(&rest);
    t.reshape(shape)?.transpose(1, 2)?.contiguous()?.reshape(dims)
}

impl GgufFile {
    /// The GGUF tensor behind a Hugging Face name, as stored, and its permutation's head count.
    fn read(&self, name: &str, device: &Device) -> candle_core::Result<(QTensor, Option<usize>)> {
        let (gguf, permuted) = gguf_name(name, self.heads, self.kv_heads)
            .ok_or_else(|| candle_core::Error::Msg(format!("{}: no GGUF tensor corresponds to `{name}`", self.origin)))?;
        let mut reader = self.reader.lock().map_err(|_| candle_core::Error::Msg("GGUF reader poisoned".into()))?;
        let q = self.content.tensor(&mut *reader, &gguf, device).map_err(|e| candle_core::Error::Msg(format!("{}: tensor `{gguf}`: {e}", self.origin)))?;
        Ok((q, permuted))
    }
}

impl GgufBackend {
    fn load(&self, name: &str, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let (q, permuted) = self.file.read(name, &Device::Cpu)?;
        let t = q.dequantize(&Device::Cpu)?;
        let t = match permuted {
            Some(heads) => unpermute(&t, heads)?,
            None => t,
        };
        t.to_dtype(dtype)?.to_device(device)
    }
}

impl SimpleBackend for GgufBackend {
    fn get(&self, s: Shape, name: &str, _h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = self.load(name, dtype, dev)?;
        if t.shape() != &s {
            candle_core::bail!("{}: `{name}` has shape {:?}, the model expects {:?}", self.file.origin, t.dims(), s.dims());
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        let f = &self.file;
        gguf_name(name, f.heads, f.kv_heads).is_some_and(|(gguf, _)| f.content.tensor_infos.contains_key(&gguf))
    }
}

impl QuantizedSource for GgufBackend {
    /// The quantized projection weights of the decoder layers (`blk.N.attn_*`, `blk.N.ffn_*`);
    /// embeddings, norms and the LM head load dense.
    fn quantized(&self, name: &str) -> Option<candle_core::Result<QTensor>> {
        let (gguf, _) = gguf_name(name, self.file.heads, self.file.kv_heads)?;
        let info = self.file.content.tensor_infos.get(&gguf)?;
        let is_projection = gguf.starts_with("blk.") && gguf.ends_with(".weight") && info.shape.rank() == 2;
        if !is_projection || matches!(info.ggml_dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
            return None;
        }
        let q = self.file.read(name, &Device::Cpu).and_then(|(q, permuted)| match permuted {
            Some(heads) => unpermute_rows(&q, heads),
            None => Ok(q),
        });
        if let Ok(q) = &q {
            self.quantized_elements.fetch_add(q.shape().elem_count(), std::sync::atomic::Ordering::Relaxed);
        }
        Some(q)
    }
}

impl GgufBackend {
    /// The elements of the weights this backend has handed out quantized so far.
    pub fn quantized_elements(&self) -> usize {
        self.quantized_elements.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// [`unpermute`] on quantized rows: each row is whole blocks, so rows move as bytes.
fn unpermute_rows(q: &QTensor, heads: usize) -> candle_core::Result<QTensor> {
    let (rows, cols) = q.shape().dims2()?;
    let dtype = q.dtype();
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    let data = q.data()?;
    let half = rows / heads / 2;
    let mut out = Vec::with_capacity(data.len());
    // HF row (h, j, i) (j: rotary half, i: pair index) is stored at GGUF row (h, i, j).
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let from = (h * half * 2 + i * 2 + j) * row_bytes;
                out.extend_from_slice(&data[from..from + row_bytes]);
            }
        }
    }
    candle_core::quantized::ggml_file::qtensor_from_ggml(dtype, &out, vec![rows, cols], &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_llama_cpp_names() {
        assert_eq!(gguf_name("model.layers.3.self_attn.q_proj.weight", 9, 3), Some(("blk.3.attn_q.weight".into(), Some(9))));
        assert_eq!(gguf_name("layers.0.self_attn.k_proj.weight", 9, 3), Some(("blk.0.attn_k.weight".into(), Some(3))));
        assert_eq!(gguf_name("model.embed_tokens.weight", 9, 3), Some(("token_embd.weight".into(), None)));
        assert_eq!(gguf_name("lm_head.weight", 9, 3), Some(("output.weight".into(), None)));
        assert_eq!(gguf_name("model.layers.0.mlp.down_proj.weight", 9, 3), Some(("blk.0.ffn_down.weight".into(), None)));
        assert_eq!(gguf_name("model.layers.0.unknown.weight", 9, 3), None);
    }

    /// The inverse of llama.cpp's `permute(w, n_head)`: `w.reshape(h, 2, d/2, in).swapaxes(1, 2)`.
    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        let (heads, rows, cols) = (2, 8, 3);
        let hf = Tensor::arange(0f32, (rows * cols) as f32, &Device::Cpu).unwrap().reshape((rows, cols)).unwrap();
        let permuted = hf.reshape((heads, 2, rows / heads / 2, cols)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap().reshape((rows, cols)).unwrap();
        let back = unpermute(&permuted, heads).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), hf.to_vec2::<f32>().unwrap());
        assert_ne!(permuted.to_vec2::<f32>().unwrap(), hf.to_vec2::<f32>().unwrap());
        // The same on quantized rows (Q8_0: blocks of 32 along a row).
        let wide = Tensor::arange(0f32, (rows * 32) as f32, &Device::Cpu).unwrap().reshape((rows, 32)).unwrap();
        let wide_permuted = wide.reshape((heads, 2, rows / heads / 2, 32)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap().reshape((rows, 32)).unwrap();
        let q = QTensor::quantize(&wide_permuted, GgmlDType::Q8_0).unwrap();
        let back = unpermute_rows(&q, heads).unwrap().dequantize(&Device::Cpu).unwrap();
        let expected = unpermute(&q.dequantize(&Device::Cpu).unwrap(), heads).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), expected.to_vec2::<f32>().unwrap());
    }
}
