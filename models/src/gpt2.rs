//! GPT-2 as a candle model annotated for adapters: pre-norm blocks with LayerNorm, learned
//! positions, a fused q/k/v projection (`c_attn`) and Conv1D linears (weights stored `[in, out]`,
//! transposed to `[out, in]` here). The marks follow the Python library's
//! `GPT2AttentionAdaptersMixin` and `GPT2DecoderBlockAdaptersMixin`: LoRA `selfattn` on `c_attn`
//! (`LoRAMergedLinear`), `intermediate` on `mlp.c_fc` and `output` on `mlp.c_proj`; bottleneck
//! adapters after each sublayer with a plain residual sum; prefix tuning after the KV cache;
//! ReFT on the block output; invertible adapters after the embeddings' dropout (no prompt
//! tuning, as Python's `support_prompt_tuning = False`).

use adapters_runtime::nn::activation::Activation;
use adapters_runtime::nn::{dropout, mask_min};
use adapters_runtime::{adapter_config, adapter_mixin, with_adapters, AdapterError};
use adapters_runtime::{BottleneckSlot, EmbeddingSlot, ForwardContext, LayerNorm, LoRALinear, PrefixPadding, PrefixSlot, ReftSlot};
use adapters_runtime::{InputKind, KvCache, ModelForward, ModelInputs, ModelOutputs};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

use crate::attention::attend;
use crate::llama::{check_positions, decoder_positions, last_token, DECODER_ONLY_INPUTS};

fn default_vocab() -> usize {
    50257
}
fn default_positions() -> usize {
    1024
}
fn default_embd() -> usize {
    768
}
fn default_layers() -> usize {
    12
}
fn default_heads() -> usize {
    12
}
fn default_act() -> String {
    "gelu_new".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_pdrop() -> f64 {
    0.1
}
fn yes() -> bool {
    true
}

/// `config.json` of GPT-2 checkpoints (`transformers`' `GPT2Config` defaults where a key is
/// absent). Adapters read `n_embd`, `n_head`, `n_layer`, `resid_pdrop` and `attn_pdrop` under
/// their usual names.
#[adapter_config(
    hidden_size = n_embd,
    num_attention_heads = n_head,
    num_hidden_layers = n_layer,
    hidden_dropout_prob = resid_pdrop,
    attention_probs_dropout_prob = attn_pdrop,
)]
#[derive(Clone, Debug, Deserialize)]
pub struct Gpt2Config {
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    #[serde(default = "default_positions")]
    pub n_positions: usize,
    #[serde(default = "default_embd")]
    pub n_embd: usize,
    #[serde(default = "default_layers")]
    pub n_layer: usize,
    #[serde(default = "default_heads")]
    pub n_head: usize,
    /// The MLP's inner size (default `4 * n_embd`).
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "default_act")]
    pub activation_function: String,
    #[serde(default = "default_pdrop")]
    pub resid_pdrop: f64,
    #[serde(default = "default_pdrop")]
    pub embd_pdrop: f64,
    #[serde(default = "default_pdrop")]
    pub attn_pdrop: f64,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// Scores divided by `sqrt(head_dim)`.
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    /// Scores of layer `i` also divided by `i + 1`.
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub pad_token_id: Option<usize>,
}

impl Gpt2Config {
    pub fn inner_size(&self) -> usize {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }
}

/// A Conv1D weight `[in, out]` as a linear weight `[out, in]`.
fn conv1d_weight(vb: &VarBuilder, inp: usize, out: usize) -> Result<Tensor> {
    vb.get((inp, out), "weight")?.t()?.contiguous()
}

fn lora_conv1d(vb: VarBuilder, inp: usize, out: usize) -> Result<LoRALinear> {
    Ok(LoRALinear::new(conv1d_weight(&vb, inp, out)?, Some(vb.get(out, "bias")?), vb.prefix()))
}

/// The additive mask of GPT-2's eager attention, `where(causal, scores, min) + mask`: 0 where
/// attended, the dtype's lowest value at padded keys, and `-inf` at keys after the query
/// (`min + min` overflows there). `[batch, 1, queries, keys]` over the `keys` positions
/// `attention_mask` covers (the cached ones first).
fn gpt2_mask(attention_mask: &Tensor, queries: usize, dtype: DType) -> Result<Tensor> {
    let (batch, keys) = attention_mask.dims2()?;
    if queries > keys {
        candle_core::bail!("{queries} new positions but an attention mask over {keys}; with a KV cache the mask covers the cached positions too");
    }
    let past = keys - queries;
    let rows: Vec<Vec<f32>> = attention_mask.to_dtype(DType::F32)?.to_vec2()?;
    let min = mask_min(dtype) as f32;
    let mut values = Vec::with_capacity(batch * queries * keys);
    for row in &rows {
        for q in 0..queries {
            values.extend(row.iter().enumerate().map(|(k, &keep)| match (k <= q + past, keep != 0.0) {
                (false, _) => f32::NEG_INFINITY,
                (true, false) => min,
                (true, true) => 0.0,
            }));
        }
    }
    Tensor::from_vec(values, (batch, 1, queries, keys), attention_mask.device())?.to_dtype(dtype)
}

struct Gpt2Attention {
    /// The fused q/k/v projection (Python's `LoRAMergedLinear`).
    c_attn: LoRALinear,
    c_proj: LoRALinear,
    /// Prefix tuning prepends its keys and values here, after the KV cache.
    prefix: PrefixSlot,
    heads: usize,
    head_dim: usize,
    scale: f64,
    attn_dropout: f64,
    resid_dropout: f64,
}

impl Gpt2Attention {
    fn load(vb: VarBuilder, cfg: &Gpt2Config, layer: usize) -> Result<Self> {
        let (h, heads) = (cfg.n_embd, cfg.n_head);
        let head_dim = h / heads;
        let c_attn = vb.pp("c_attn");
        let c_proj = vb.pp("c_proj");
        let mut scale = if cfg.scale_attn_weights { 1.0 / (head_dim as f64).sqrt() } else { 1.0 };
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (layer + 1) as f64;
        }
        Ok(Gpt2Attention {
            c_attn: LoRALinear::merged_qkv(conv1d_weight(&c_attn, h, 3 * h)?, Some(c_attn.get(3 * h, "bias")?), c_attn.prefix())?,
            c_proj: LoRALinear::new(conv1d_weight(&c_proj, h, h)?, Some(c_proj.get(h, "bias")?), c_proj.prefix()),
            prefix: PrefixSlot::new(&vb, h, heads, cfg.pad_token_id.unwrap_or(0), PrefixPadding::InvertedMask),
            heads,
            head_dim,
            scale,
            attn_dropout: cfg.attn_pdrop,
            resid_dropout: cfg.resid_pdrop,
        })
    }

    fn split(&self, x: &Tensor) -> Result<Tensor> {
        adapters_runtime::nn::split_heads(x, self.heads)
    }

    /// As `GPT2AttentionWithAdapters`: q/k/v from `c_attn`, the KV cache, then the prefixes,
    /// attention, `c_proj` and the residual dropout.
    fn forward(&self, x: &Tensor, mask: &Tensor, cache: Option<(&KvCache, usize)>, ctx: &ForwardContext) -> Result<Tensor> {
        let qkv = self.c_attn.forward(x, ctx)?;
        let h = self.heads * self.head_dim;
        let q = self.split(&qkv.narrow(2, 0, h)?)?;
        let k = self.split(&qkv.narrow(2, h, h)?)?;
        let v = self.split(&qkv.narrow(2, 2 * h, h)?)?;
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, &k, &v)?,
            None => (k, v),
        };
        let (k, v, mask) = self.prefix.forward(&k, &v, mask, x, ctx)?;
        let context = attend(&q, &k.contiguous()?, &v.contiguous()?, &mask, self.scale, self.attn_dropout, ctx)?;
        dropout(&self.c_proj.forward(&context, ctx)?, self.resid_dropout, ctx)
    }
}

struct Gpt2Mlp {
    c_fc: LoRALinear,
    c_proj: LoRALinear,
    activation: Activation,
    dropout: f64,
}

impl Gpt2Mlp {
    fn load(vb: VarBuilder, cfg: &Gpt2Config) -> Result<Self> {
        let (h, i) = (cfg.n_embd, cfg.inner_size());
        Ok(Gpt2Mlp {
            c_fc: lora_conv1d(vb.pp("c_fc"), h, i)?,
            c_proj: lora_conv1d(vb.pp("c_proj"), i, h)?,
            activation: Activation::parse(&cfg.activation_function).map_err(AdapterError::into_candle)?,
            dropout: cfg.resid_pdrop,
        })
    }

    /// `dropout(c_proj(act(c_fc(x))))`.
    fn forward(&self, x: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        let hidden = self.activation.forward(&self.c_fc.forward(x, ctx)?)?;
        dropout(&self.c_proj.forward(&hidden, ctx)?, self.dropout, ctx)
    }
}

/// One GPT-2 block. Python calls its bottleneck layers with no LayerNorm
/// (`attention_adapters(attn_output, residual, None)`): each sublayer ends in a residual sum.
#[adapter_mixin(
    lora(selfattn = attn.c_attn, intermediate = mlp.c_fc, output = mlp.c_proj, attn_output = attn.c_proj),
    bottleneck(mh_adapter = attention_adapters, output_adapter = output_adapters),
    prefix(self_prefix = attn.prefix),
    reft(output = reft),
)]
pub struct Gpt2Block {
    ln_1: LayerNorm,
    attn: Gpt2Attention,
    attention_adapters: BottleneckSlot,
    ln_2: LayerNorm,
    mlp: Gpt2Mlp,
    output_adapters: BottleneckSlot,
    /// ReFT intervenes on the block's output here.
    reft: ReftSlot,
}

impl Gpt2Block {
    fn load(vb: VarBuilder, cfg: &Gpt2Config, layer: usize) -> Result<Self> {
        let (h, eps) = (cfg.n_embd, cfg.layer_norm_epsilon);
        Ok(Gpt2Block {
            ln_1: LayerNorm::load(h, eps, vb.pp("ln_1"))?,
            attn: Gpt2Attention::load(vb.pp("attn"), cfg, layer)?,
            attention_adapters: BottleneckSlot::residual_only(h, &vb.pp("attention_adapters")),
            ln_2: LayerNorm::load(h, eps, vb.pp("ln_2"))?,
            mlp: Gpt2Mlp::load(vb.pp("mlp"), cfg)?,
            output_adapters: BottleneckSlot::residual_only(h, &vb.pp("output_adapters")),
            reft: ReftSlot::new(&vb, h),
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, cache: Option<(&KvCache, usize)>, ctx: &ForwardContext) -> Result<Tensor> {
        let attended = self.attn.forward(&self.ln_1.forward(x)?, mask, cache, ctx)?;
        let hidden = self.attention_adapters.forward_parts(&attended, x, ctx)?;
        let projected = self.mlp.forward(&self.ln_2.forward(&hidden)?, ctx)?;
        let out = self.output_adapters.forward_parts(&projected, &hidden, ctx)?;
        self.reft.forward(&out, ctx)
    }
}

/// The GPT-2 decoder (`GPT2Model`, or the `transformer.` of a `GPT2LMHeadModel` checkpoint):
/// `last_hidden_state` after `ln_f`.
#[with_adapters(
    model_type = "gpt2",
    layers = h,
    layer_mixin = Gpt2Block,
    layer_type = "GPT2Block",
    config = config,
    embeddings = embedding_adapters,
    prompt_tuning = false
)]
pub struct Gpt2Model {
    wte: Embedding,
    wpe: Embedding,
    /// Invertible adapters act on the embeddings' output (after the dropout) here.
    embedding_adapters: EmbeddingSlot,
    h: Vec<Gpt2Block>,
    ln_f: LayerNorm,
    /// The checkpoint's language-model decoder: the input embeddings when tied (GPT-2's own),
    /// else an `lm_head.weight` the file carries.
    lm_head: Option<Tensor>,
    config: Gpt2Config,
}

impl Gpt2Model {
    /// Loads from `vb` rooted at the base model (`transformer.` of a `GPT2LMHeadModel`
    /// checkpoint already applied); `root` is the checkpoint's root (for an untied `lm_head`).
    pub fn load(vb: VarBuilder, root: &VarBuilder, config: &Gpt2Config) -> Result<Self> {
        let h = config.n_embd;
        let wte = candle_nn::embedding(config.vocab_size, h, vb.pp("wte"))?;
        let wpe = candle_nn::embedding(config.n_positions, h, vb.pp("wpe"))?;
        let blocks = (0..config.n_layer).map(|i| Gpt2Block::load(vb.pp("h").pp(i), config, i)).collect::<Result<_>>()?;
        let lm_head = if config.tie_word_embeddings {
            Some(wte.embeddings().clone())
        } else if root.contains_tensor("lm_head.weight") {
            Some(root.get((config.vocab_size, h), "lm_head.weight")?)
        } else {
            None
        };
        Ok(Gpt2Model {
            embedding_adapters: EmbeddingSlot::new(wte.embeddings(), config.n_positions),
            wte,
            wpe,
            h: blocks,
            ln_f: LayerNorm::load(h, config.layer_norm_epsilon, vb.pp("ln_f"))?,
            lm_head,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }
}

impl ModelForward for Gpt2Model {
    const ACCEPTS: &'static [InputKind] = DECODER_ONLY_INPUTS;

    fn forward_with(&self, inputs: &ModelInputs<'_>, ctx: &ForwardContext) -> Result<ModelOutputs> {
        let ids = inputs.ids()?;
        let seq = ids.dim(1)?;
        let past = inputs.cache.map_or(0, KvCache::len);
        check_positions(past, seq, self.config.n_positions)?;
        let positions = decoder_positions(inputs, seq, past)?;
        let embedded = self.wte.forward(ids)?.broadcast_add(&self.wpe.forward(&positions)?)?;
        let embedded = dropout(&embedded, self.config.embd_pdrop, ctx)?;
        let (mut hidden, mask) = self.embedding_adapters.forward(&embedded, &inputs.mask()?, ctx)?;
        let mask = gpt2_mask(&mask, seq, hidden.dtype())?;
        for (i, block) in self.h.iter().enumerate() {
            hidden = block.forward(&hidden, &mask, inputs.cache.map(|c| (c, i)), ctx)?;
        }
        Ok(ModelOutputs::hidden(self.ln_f.forward(&hidden)?))
    }

    fn input_embeddings(&self) -> Option<&Tensor> {
        Some(self.wte.embeddings())
    }

    fn tie_word_embeddings(&self) -> bool {
        self.config.tie_word_embeddings
    }

    fn lm_head(&self) -> Option<&Tensor> {
        self.lm_head.as_ref()
    }

    /// The last non-padding token, as `GPT2AdapterModel` picks the vector its heads read.
    fn sequence_output(&self, last_hidden_state: &Tensor, input_ids: Option<&Tensor>) -> Result<Tensor> {
        last_token(last_hidden_state, input_ids, self.config.pad_token_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn mask_is_minus_infinity_after_the_query_and_min_at_padding() {
        let mask = Tensor::new(&[[0i64, 1, 1]], &Device::Cpu).unwrap();
        let bias = gpt2_mask(&mask, 2, DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // queries at positions 1 and 2 (one cached); key 0 is padding.
        assert_eq!(bias, [f32::MIN, 0.0, f32::NEG_INFINITY, f32::MIN, 0.0, 0.0]);
    }
}
