//! The Llama family (Llama, Mistral) as a candle model annotated for adapters: pre-norm decoder
//! layers with RMSNorm, rotary positions, grouped-query attention and a gated SiLU MLP. The marks
//! follow the Python library's `LlamaAttentionMixin` and `LlamaDecoderLayerMixin`.

use adapters_runtime::nn::activation::Activation;
use adapters_runtime::nn::rope::{apply_rotary, repeat_kv, RopeScaling, RotaryEmbedding};
use adapters_runtime::nn::{causal_additive_mask_windowed, BaseWeight, RmsNorm};
use adapters_runtime::{adapter_config, adapter_mixin, with_adapters, AdapterError};
use adapters_runtime::{BottleneckSlot, EmbeddingSlot, ForwardContext, LoRALinear, PrefixPadding, PrefixSlot, ReftSlot};
use adapters_runtime::{InputKind, KvCache, ModelForward, ModelInputs, ModelOutputs};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

use crate::attention::attend;

/// A source of quantized weights by module path (a GGUF file kept quantized). Linear weights it
/// has stay quantized; everything else loads dense from the `VarBuilder`.
pub trait QuantizedSource {
    /// The quantized `[out, in]` weight named `name` (`model.layers.0.self_attn.q_proj.weight`),
    /// if the source keeps it quantized.
    fn quantized(&self, name: &str) -> Option<Result<candle_core::quantized::QTensor>>;
}

/// `Option<&dyn QuantizedSource>`, passed down while a model loads.
type Quantized<'a> = Option<&'a dyn QuantizedSource>;

/// A linear layer's frozen weight `[out, in]`: quantized when the source keeps it so, else dense.
fn base_weight(vb: &VarBuilder, out: usize, inp: usize, quantized: Quantized<'_>) -> Result<BaseWeight> {
    let name = format!("{}.weight", vb.prefix());
    if let Some(q) = quantized.and_then(|q| q.quantized(&name)) {
        let q = q?;
        if q.shape().dims() != [out, inp] {
            candle_core::bail!("`{name}` has shape {:?}, the model expects [{out}, {inp}]", q.shape().dims());
        }
        return Ok(BaseWeight::Quantized(std::sync::Arc::new(q)));
    }
    Ok(BaseWeight::Dense(vb.get((out, inp), "weight")?))
}

fn lora_linear(vb: VarBuilder, inp: usize, out: usize, bias: bool, quantized: Quantized<'_>) -> Result<LoRALinear> {
    let weight = base_weight(&vb, out, inp, quantized)?;
    let bias = if bias { Some(vb.get(out, "bias")?) } else { None };
    Ok(LoRALinear::over(weight, bias, vb.prefix()))
}

fn default_rms_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10000.0
}
fn default_max_positions() -> usize {
    2048
}
fn default_act() -> String {
    "silu".into()
}

/// `config.json` of Llama and Mistral checkpoints. Llama has no hidden dropout, so
/// `hidden_dropout_prob` is 0 unless the file names one.
#[adapter_config(attention_probs_dropout_prob = attention_dropout)]
#[derive(Clone, Debug, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Grouped-query attention: fewer key/value heads than query heads (default: as many).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head size when not `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default)]
    pub hidden_dropout_prob: f64,
    #[serde(default)]
    pub pad_token_id: Option<usize>,
    /// Mistral: each position attends to at most this many positions (itself included).
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Gemma 2: attention scores are scaled by `query_pre_attn_scalar^-0.5` instead of
    /// `head_dim^-0.5`, soft-capped (`tanh(s / cap) * cap`) before the mask, and the LM logits too.
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f64>,
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    /// Gemma names its MLP activation `hidden_activation` (and leaves `hidden_act` out).
    #[serde(default)]
    pub hidden_activation: Option<String>,
    /// Qwen2: whether `sliding_window` applies at all (Mistral configs leave it out).
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    /// Per layer `full_attention` or `sliding_attention` (Qwen2, Qwen3, Gemma 2 configs list them).
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub model_type: Option<String>,
}

impl LlamaConfig {
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_size(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Layer `layer`'s attention window: its `layer_types` entry where the config lists them,
    /// else `sliding_window` unless `use_sliding_window` is off (Mistral: every layer; Llama
    /// configs have none).
    pub fn window(&self, layer: usize) -> Option<usize> {
        match &self.layer_types {
            Some(types) => self.sliding_window.filter(|_| types.get(layer).is_some_and(|t| t == "sliding_attention")),
            None => self.sliding_window.filter(|_| self.use_sliding_window != Some(false)),
        }
    }
}

pub(crate) struct LlamaAttention {
    /// Qwen3 normalises each query and key head (RMSNorm over the head dimension) before RoPE.
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    pub(crate) q_proj: LoRALinear,
    pub(crate) k_proj: LoRALinear,
    pub(crate) v_proj: LoRALinear,
    pub(crate) o_proj: LoRALinear,
    /// Prefix tuning prepends its keys and values here (as many heads as keys and values).
    prefix: PrefixSlot,
    heads: usize,
    kv_heads: usize,
    scale: f64,
    softcap: Option<f64>,
    dropout: f64,
}

impl LlamaAttention {
    pub(crate) fn load(vb: VarBuilder, cfg: &LlamaConfig, q: Quantized<'_>) -> Result<Self> {
        let (h, heads, kv_heads, d) = (cfg.hidden_size, cfg.num_attention_heads, cfg.kv_heads(), cfg.head_size());
        // Qwen2's q/k/v carry biases whatever its config says; `attention_bias` covers the rest.
        let bias = |name: &str| cfg.attention_bias || vb.contains_tensor(&format!("{name}.bias"));
        let head_norm = |name: &str| -> Result<Option<RmsNorm>> {
            if vb.contains_tensor(&format!("{name}.weight")) {
                Ok(Some(RmsNorm::load(d, cfg.rms_norm_eps, vb.pp(name))?))
            } else {
                Ok(None)
            }
        };
        Ok(LlamaAttention {
            q_norm: head_norm("q_norm")?,
            k_norm: head_norm("k_norm")?,
            q_proj: lora_linear(vb.pp("q_proj"), h, heads * d, bias("q_proj"), q)?,
            k_proj: lora_linear(vb.pp("k_proj"), h, kv_heads * d, bias("k_proj"), q)?,
            v_proj: lora_linear(vb.pp("v_proj"), h, kv_heads * d, bias("v_proj"), q)?,
            o_proj: lora_linear(vb.pp("o_proj"), heads * d, h, bias("o_proj"), q)?,
            prefix: PrefixSlot::grouped(&vb, h, kv_heads, d, cfg.pad_token_id.unwrap_or(0), PrefixPadding::InvertedMask),
            heads,
            kv_heads,
            scale: 1.0 / cfg.query_pre_attn_scalar.unwrap_or(d as f64).sqrt(),
            softcap: cfg.attn_logit_softcapping,
            dropout: cfg.attention_dropout,
        })
    }

    fn split(&self, x: &Tensor, heads: usize) -> Result<Tensor> {
        adapters_runtime::nn::split_heads(x, heads)
    }

    /// As the Python library's `LlamaAttentionWithAdapters`: rotary positions, then the KV cache,
    /// then the prefixes (not part of the sequence, so neither rotated nor cached), then the
    /// key/value heads repeated for the query heads.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        rope: (&Tensor, &Tensor),
        mask: &Tensor,
        cache: Option<(&KvCache, usize)>,
        ctx: &ForwardContext,
    ) -> Result<Tensor> {
        let q = self.split(&self.q_proj.forward(x, ctx)?, self.heads)?;
        let k = self.split(&self.k_proj.forward(x, ctx)?, self.kv_heads)?;
        let q = match &self.q_norm {
            Some(norm) => norm.forward(&q)?,
            None => q,
        };
        let k = match &self.k_norm {
            Some(norm) => norm.forward(&k)?,
            None => k,
        };
        let v = self.split(&self.v_proj.forward(x, ctx)?, self.kv_heads)?;
        let (cos, sin) = rope;
        let (q, k) = (apply_rotary(&q, cos, sin)?, apply_rotary(&k, cos, sin)?);
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, &k, &v)?,
            None => (k, v),
        };
        let (k, v, mask) = self.prefix.forward(&k, &v, mask, x, ctx)?;
        let groups = self.heads / self.kv_heads;
        let (k, v) = (repeat_kv(&k, groups)?, repeat_kv(&v, groups)?);
        let (k, v) = (k.contiguous()?, v.contiguous()?);
        let context = match self.softcap {
            None => attend(&q, &k, &v, &mask, self.scale, self.dropout, ctx)?,
            Some(cap) => attend_softcapped(&q, &k, &v, &mask, self.scale, cap, self.dropout, ctx)?,
        };
        self.o_proj.forward(&context, ctx)
    }
}

/// Gemma 2's attention: `softmax(tanh(q k^T * scale / cap) * cap + mask) v`.
#[allow(clippy::too_many_arguments)]
fn attend_softcapped(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64, cap: f64, dropout: f64, ctx: &ForwardContext) -> Result<Tensor> {
    let scores = ((q.matmul(&k.t()?)? * scale)? / cap)?.tanh()?;
    let probs = adapters_runtime::nn::scaled_masked_softmax(&scores, mask, cap)?;
    let probs = adapters_runtime::nn::dropout(&probs, dropout, ctx)?;
    adapters_runtime::nn::merge_heads(&probs.matmul(v)?)
}

pub(crate) struct LlamaMlp {
    pub(crate) gate_proj: LoRALinear,
    pub(crate) up_proj: LoRALinear,
    pub(crate) down_proj: LoRALinear,
    activation: Activation,
}

impl LlamaMlp {
    pub(crate) fn load(vb: VarBuilder, cfg: &LlamaConfig, q: Quantized<'_>) -> Result<Self> {
        let (h, i, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        Ok(LlamaMlp {
            gate_proj: lora_linear(vb.pp("gate_proj"), h, i, bias, q)?,
            up_proj: lora_linear(vb.pp("up_proj"), h, i, bias, q)?,
            down_proj: lora_linear(vb.pp("down_proj"), i, h, bias, q)?,
            activation: Activation::parse(cfg.hidden_activation.as_deref().unwrap_or(&cfg.hidden_act)).map_err(AdapterError::into_candle)?,
        })
    }

    /// `down(act(gate(x)) * up(x))`.
    pub(crate) fn forward(&self, x: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        let gate = self.activation.forward(&self.gate_proj.forward(x, ctx)?)?;
        self.down_proj.forward(&(gate * self.up_proj.forward(x, ctx)?)?, ctx)
    }
}

/// One decoder layer. Python wraps `down_proj` as LoRA's `intermediate` location and `up_proj`
/// as `output` (the names are the library's, not the layers' roles), and calls its bottleneck
/// layers with no LayerNorm: each sublayer ends in a plain residual sum.
#[adapter_mixin(
    lora(
        q = self_attn.q_proj,
        k = self_attn.k_proj,
        v = self_attn.v_proj,
        intermediate = mlp.down_proj,
        output = mlp.up_proj,
        attn_output = self_attn.o_proj,
        gate = mlp.gate_proj,
    ),
    bottleneck(mh_adapter = attention_adapters, output_adapter = output_adapters),
    prefix(self_prefix = self_attn.prefix),
    reft(output = reft),
)]
pub struct LlamaDecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: LlamaAttention,
    attention_adapters: BottleneckSlot,
    post_attention_layernorm: RmsNorm,
    mlp: LlamaMlp,
    output_adapters: BottleneckSlot,
    /// ReFT intervenes on the layer's output here.
    reft: ReftSlot,
}

/// What the decoder stack needs of a layer type (Llama's, Qwen's): building one from its
/// `VarBuilder`, and one pass with the rotary tables and its own attention mask.
pub trait DecoderLayer: Sized {
    /// Gemma scales the embeddings by `sqrt(hidden_size)` (after the embedding slot, as Python's
    /// invertible-adapter hook sits on `embed_tokens`).
    const SCALES_EMBEDDINGS: bool = false;
    /// The model's final norm (Gemma's stores `weight - 1`).
    fn load_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<RmsNorm> {
        RmsNorm::load(size, eps, vb)
    }
    fn load(vb: VarBuilder, cfg: &LlamaConfig, q: Quantized<'_>) -> Result<Self>;
    fn forward(&self, x: &Tensor, rope: (&Tensor, &Tensor), mask: &Tensor, cache: Option<(&KvCache, usize)>, ctx: &ForwardContext) -> Result<Tensor>;
}

impl DecoderLayer for LlamaDecoderLayer {
    fn load(vb: VarBuilder, cfg: &LlamaConfig, q: Quantized<'_>) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(LlamaDecoderLayer {
            input_layernorm: RmsNorm::load(h, eps, vb.pp("input_layernorm"))?,
            self_attn: LlamaAttention::load(vb.pp("self_attn"), cfg, q)?,
            attention_adapters: BottleneckSlot::residual_only(h, &vb.pp("attention_adapters")),
            post_attention_layernorm: RmsNorm::load(h, eps, vb.pp("post_attention_layernorm"))?,
            mlp: LlamaMlp::load(vb.pp("mlp"), cfg, q)?,
            output_adapters: BottleneckSlot::residual_only(h, &vb.pp("output_adapters")),
            reft: ReftSlot::new(&vb, h),
        })
    }

    fn forward(&self, x: &Tensor, rope: (&Tensor, &Tensor), mask: &Tensor, cache: Option<(&KvCache, usize)>, ctx: &ForwardContext) -> Result<Tensor> {
        let attended = self.self_attn.forward(&self.input_layernorm.forward(x)?, rope, mask, cache, ctx)?;
        let hidden = self.attention_adapters.forward_parts(&attended, x, ctx)?;
        let projected = self.mlp.forward(&self.post_attention_layernorm.forward(&hidden)?, ctx)?;
        let out = self.output_adapters.forward_parts(&projected, &hidden, ctx)?;
        self.reft.forward(&out, ctx)
    }
}

/// Everything of a Llama-family decoder but its config: embeddings, layers, final norm, rotary
/// frequencies and the checkpoint's LM decoder. Llama and Mistral differ only in the config they
/// read (Mistral's sliding window) and in the names they carry.
pub struct LlamaStack<L = LlamaDecoderLayer> {
    embed_tokens: Embedding,
    pub(crate) embedding_adapters: EmbeddingSlot,
    pub(crate) layers: Vec<L>,
    norm: RmsNorm,
    rotary: RotaryEmbedding,
    /// The checkpoint's language-model decoder: its `lm_head`, or the input embeddings when tied.
    lm_head: Option<Tensor>,
}

impl<L: DecoderLayer> LlamaStack<L> {
    /// Loads from `vb` rooted at the base model (`model.` of a `*ForCausalLM` checkpoint
    /// already applied); `root` is the checkpoint's root, where an untied `lm_head` lives.
    /// Linear weights `quantized` has stay quantized.
    pub fn load(vb: VarBuilder, root: &VarBuilder, config: &LlamaConfig, quantized: Option<&dyn QuantizedSource>) -> Result<Self> {
        let embed_tokens = candle_nn::embedding(config.vocab_size, config.hidden_size, vb.pp("embed_tokens"))?;
        let layers = (0..config.num_hidden_layers).map(|i| L::load(vb.pp("layers").pp(i), config, quantized)).collect::<Result<_>>()?;
        let lm_head = if config.tie_word_embeddings {
            Some(embed_tokens.embeddings().clone())
        } else if root.contains_tensor("lm_head.weight") {
            Some(root.get((config.vocab_size, config.hidden_size), "lm_head.weight")?)
        } else {
            None
        };
        Ok(LlamaStack {
            embedding_adapters: EmbeddingSlot::new(embed_tokens.embeddings(), config.max_position_embeddings),
            embed_tokens,
            layers,
            norm: L::load_norm(config.hidden_size, config.rms_norm_eps, vb.pp("norm"))?,
            rotary: RotaryEmbedding::new(config.head_size(), config.rope_theta, config.rope_scaling.as_ref(), vb.device())?,
            lm_head,
        })
    }

    pub(crate) fn embeddings(&self) -> &Tensor {
        self.embed_tokens.embeddings()
    }

    pub(crate) fn lm_head(&self) -> Option<&Tensor> {
        self.lm_head.as_ref()
    }

    pub(crate) fn forward(&self, config: &LlamaConfig, inputs: &ModelInputs<'_>, ctx: &ForwardContext) -> Result<ModelOutputs> {
        let ids = inputs.ids()?;
        let seq = ids.dim(1)?;
        let past = inputs.cache.map_or(0, KvCache::len);
        check_positions(past, seq, config.max_position_embeddings)?;
        let embedded = self.embed_tokens.forward(ids)?;
        let (hidden, mask) = self.embedding_adapters.forward(&embedded, &inputs.mask()?, ctx)?;
        // `torch.tensor(hidden_size ** 0.5, dtype)`: the square root rounded to the dtype once.
        let hidden = if L::SCALES_EMBEDDINGS { (hidden * f64::from((config.hidden_size as f64).sqrt() as f32))? } else { hidden };
        let positions = decoder_positions(inputs, seq, past)?;
        let (cos, sin) = self.rotary.cos_sin(&positions, hidden.dtype())?;
        // One mask per distinct window among the layers (full attention: none).
        let mut masks: Vec<(Option<usize>, Tensor)> = Vec::new();
        let mut hidden = hidden;
        for (i, layer) in self.layers.iter().enumerate() {
            let window = config.window(i);
            if !masks.iter().any(|(w, _)| *w == window) {
                masks.push((window, causal_additive_mask_windowed(&mask, seq, window, hidden.dtype())?));
            }
            let layer_mask = masks.iter().find(|(w, _)| *w == window).map(|(_, m)| m).ok_or_else(|| candle_core::Error::Msg("mask".into()))?;
            hidden = layer.forward(&hidden, (&cos, &sin), layer_mask, inputs.cache.map(|c| (c, i)), ctx)?;
        }
        Ok(ModelOutputs::hidden(self.norm.forward(&hidden)?))
    }
}

/// The Llama decoder: `last_hidden_state` after the final norm. Python's Llama takes no prompt
/// tuning; its embedding output takes invertible adapters.
#[with_adapters(
    model_type = "llama",
    layers = stack.layers,
    layer_mixin = LlamaDecoderLayer,
    layer_type = "LlamaDecoderLayer",
    config = config,
    embeddings = stack.embedding_adapters,
    prompt_tuning = false
)]
pub struct LlamaModel {
    stack: LlamaStack,
    config: LlamaConfig,
}

/// Mistral: Llama's layers (and so Llama's mixin, as in Python) with a sliding attention window.
#[with_adapters(
    model_type = "mistral",
    layers = stack.layers,
    layer_mixin = LlamaDecoderLayer,
    layer_type = "MistralDecoderLayer",
    config = config,
    embeddings = stack.embedding_adapters,
    prompt_tuning = false
)]
pub struct MistralModel {
    stack: LlamaStack,
    config: LlamaConfig,
}

/// Mistral checkpoints use Llama's config keys (plus `sliding_window`).
pub type MistralConfig = LlamaConfig;

/// `load`, `load_quantized`, `config` and `ModelForward` of a decoder over a [`LlamaStack`].
macro_rules! llama_family {
    ($model:ident) => {
        llama_family!($model, false);
    };
    ($model:ident, $reverses_invertible:expr) => {
        impl $model {
            /// Loads from `vb` rooted at the base model; `root` is the checkpoint root (for an
            /// untied `lm_head`).
            pub fn load(vb: VarBuilder, root: &VarBuilder, config: &LlamaConfig) -> Result<Self> {
                Self::load_quantized(vb, root, config, None)
            }

            /// [`Self::load`], keeping the linear weights `quantized` has quantized (QLoRA).
            pub fn load_quantized(vb: VarBuilder, root: &VarBuilder, config: &LlamaConfig, quantized: Option<&dyn QuantizedSource>) -> Result<Self> {
                Ok($model { stack: LlamaStack::load(vb, root, config, quantized)?, config: config.clone() })
            }

            pub fn config(&self) -> &LlamaConfig {
                &self.config
            }
        }

        impl ModelForward for $model {
            const ACCEPTS: &'static [InputKind] = DECODER_ONLY_INPUTS;

            fn forward_with(&self, inputs: &ModelInputs<'_>, ctx: &ForwardContext) -> Result<ModelOutputs> {
                self.stack.forward(&self.config, inputs, ctx)
            }

            fn input_embeddings(&self) -> Option<&Tensor> {
                Some(self.stack.embeddings())
            }

            fn tie_word_embeddings(&self) -> bool {
                self.config.tie_word_embeddings
            }

            fn lm_head(&self) -> Option<&Tensor> {
                self.stack.lm_head()
            }

            fn sequence_output(&self, last_hidden_state: &Tensor, input_ids: Option<&Tensor>) -> Result<Tensor> {
                last_token(last_hidden_state, input_ids, self.config.pad_token_id)
            }

            fn lm_head_reverses_invertible(&self) -> bool {
                $reverses_invertible
            }

            fn final_logit_softcapping(&self) -> Option<f64> {
                self.config.final_logit_softcapping
            }
        }
    };
}

pub(crate) use llama_family;

llama_family!(LlamaModel);
llama_family!(MistralModel);

/// A pass may not run past the position limit (the rotary table has no meaning beyond it for a
/// checkpoint trained to it; `transformers` fails there too for learned positions).
pub(crate) fn check_positions(past: usize, seq: usize, limit: usize) -> Result<()> {
    if past + seq > limit {
        return Err(
            AdapterError::InvalidInput(format!("{} positions ({past} cached + {seq} new) exceed max_position_embeddings {limit}", past + seq)).into_candle()
        );
    }
    Ok(())
}

/// What decoder-only models take: ids, a padding mask, position ids and a KV cache. They are
/// causal whether or not the inputs say so.
pub(crate) const DECODER_ONLY_INPUTS: &[InputKind] =
    &[InputKind::InputIds, InputKind::AttentionMask, InputKind::PositionIds, InputKind::Causal, InputKind::KvCache];

/// The positions of this pass: the given ones, or `past..past + seq` (`transformers` numbers
/// positions by cache position in a plain forward).
pub(crate) fn decoder_positions(inputs: &ModelInputs<'_>, seq: usize, past: usize) -> Result<Tensor> {
    match &inputs.position_ids {
        Some(p) => Ok(p.clone()),
        None => Tensor::arange(past as u32, (past + seq) as u32, inputs.ids()?.device())?.unsqueeze(0),
    }
}

/// The last non-padding token of each row, as Python's decoder models pick the vector that
/// classification heads read (`pad_token_id` unset, or no ids: the last position).
pub(crate) fn last_token(last_hidden_state: &Tensor, input_ids: Option<&Tensor>, pad_token_id: Option<usize>) -> Result<Tensor> {
    let (batch, seq, _) = last_hidden_state.dims3()?;
    let lengths: Vec<u32> = match (pad_token_id, input_ids) {
        (None, _) | (_, None) => vec![(seq - 1) as u32; batch],
        (Some(pad), Some(input_ids)) => {
            let rows: Vec<Vec<i64>> = input_ids.to_dtype(DType::I64)?.to_vec2()?;
            // Python's `(ids != pad).sum(-1) - 1`, which wraps to the last position at -1.
            rows.iter().map(|r| (r.iter().filter(|&&id| id != pad as i64).count() as i64 - 1).rem_euclid(seq as i64) as u32).collect()
        }
    };
    let index = Tensor::new(lengths, last_hidden_state.device())?.reshape((batch, 1, 1))?;
    let index = index.broadcast_as((batch, 1, last_hidden_state.dim(2)?))?.contiguous()?;
    last_hidden_state.gather(&index, 1)?.squeeze(1)
}
