//! BERT as a candle model, annotated for adapters. The forward is written once; the slots it
//! calls (`LoRALinear`, `BottleneckSlot`) are plain linears and LayerNorms while no adapter is
//! active.

use adapters_runtime::nn::activation::Activation;
use adapters_runtime::nn::dropout;
use adapters_runtime::nn::fused::linear_module;
use adapters_runtime::{adapter_config, adapter_mixin, with_adapters};
use adapters_runtime::{BottleneckSlot, EmbeddingSlot, ForwardContext, LayerNorm, LoRALinear, PrefixPadding, PrefixSlot, ReftSlot};
use adapters_runtime::{InputKind, KvCache, ModelForward, ModelInputs, ModelOutputs};
use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, Linear, VarBuilder};
use serde::Deserialize;

use crate::attention::{additive_mask, attend, split_heads};
use adapters_runtime::nn::causal_additive_mask_for;

fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}

/// `config.json` of BERT and RoBERTa checkpoints.
#[adapter_config]
#[derive(Clone, Debug, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub hidden_dropout_prob: f64,
    #[serde(default)]
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default)]
    pub model_type: Option<String>,
}

pub(crate) struct BertEmbeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
    dropout: f64,
    /// Prompt tuning inserts its prompt into the embeddings output here.
    pub(crate) adapters: EmbeddingSlot,
}

impl BertEmbeddings {
    pub(crate) fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let word_embeddings = candle_nn::embedding(cfg.vocab_size, h, vb.pp("word_embeddings"))?;
        Ok(BertEmbeddings {
            adapters: EmbeddingSlot::new(word_embeddings.embeddings(), cfg.max_position_embeddings),
            word_embeddings,
            position_embeddings: candle_nn::embedding(cfg.max_position_embeddings, h, vb.pp("position_embeddings"))?,
            token_type_embeddings: candle_nn::embedding(cfg.type_vocab_size, h, vb.pp("token_type_embeddings"))?,
            layer_norm: LayerNorm::load(h, cfg.layer_norm_eps, vb.pp("LayerNorm"))?,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    /// The input embedding matrix `[vocab, hidden]`.
    pub(crate) fn word_embeddings(&self) -> &Tensor {
        self.word_embeddings.embeddings()
    }

    /// Word + position + token type (0) embeddings, LayerNorm, dropout.
    pub(crate) fn forward(&self, input_ids: &Tensor, position_ids: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        let words = self.word_embeddings.forward(input_ids)?;
        let positions = self.position_embeddings.forward(position_ids)?;
        let token_types = self.token_type_embeddings.forward(&input_ids.zeros_like()?)?;
        let sum = words.broadcast_add(&positions)?.add(&token_types)?;
        dropout(&self.layer_norm.forward(&sum)?, self.dropout, ctx)
    }
}

pub(crate) struct BertSelfAttention {
    pub(crate) query: LoRALinear,
    pub(crate) key: LoRALinear,
    pub(crate) value: LoRALinear,
    /// Prefix tuning prepends its keys and values here.
    pub(crate) prefix: PrefixSlot,
    heads: usize,
    dropout: f64,
}

impl BertSelfAttention {
    fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(BertSelfAttention {
            query: LoRALinear::load(h, h, vb.pp("query"))?,
            key: LoRALinear::load(h, h, vb.pp("key"))?,
            value: LoRALinear::load(h, h, vb.pp("value"))?,
            prefix: PrefixSlot::new(&vb, h, cfg.num_attention_heads, cfg.pad_token_id, PrefixPadding::InvertedMask),
            heads: cfg.num_attention_heads,
            dropout: cfg.attention_probs_dropout_prob,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, mask: &Tensor, cache: Option<(&KvCache, usize)>, ctx: &ForwardContext) -> Result<Tensor> {
        self.attend_to(x, x, mask, cache, ctx)
    }

    /// `x`'s queries over `source`'s keys and values (the encoder output in cross-attention).
    pub(crate) fn attend_to(&self, x: &Tensor, source: &Tensor, mask: &Tensor, cache: Option<(&KvCache, usize)>, ctx: &ForwardContext) -> Result<Tensor> {
        let q = split_heads(&self.query.forward(x, ctx)?, self.heads)?;
        let k = split_heads(&self.key.forward(source, ctx)?, self.heads)?;
        let v = split_heads(&self.value.forward(source, ctx)?, self.heads)?;
        // Earlier steps' keys and values come from the cache; prefixes are prepended after it,
        // as they are not part of the sequence.
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, &k, &v)?,
            None => (k, v),
        };
        let (k, v, mask) = self.prefix.forward(&k, &v, mask, x, ctx)?;
        let scale = 1.0 / (q.dim(3)? as f64).sqrt();
        attend(&q, &k, &v, &mask, scale, self.dropout, ctx)
    }
}

pub(crate) struct BertSelfOutput {
    pub(crate) dense: LoRALinear,
    pub(crate) layer_norm: BottleneckSlot,
    dropout: f64,
}

impl BertSelfOutput {
    fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(BertSelfOutput {
            dense: LoRALinear::load(h, h, vb.pp("dense"))?,
            // The Python library mixes the bottleneck layer into this module itself.
            layer_norm: BottleneckSlot::load(h, cfg.layer_norm_eps, vb.pp("LayerNorm"), &vb)?,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    pub(crate) fn forward(&self, hidden: &Tensor, input: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        let hidden = dropout(&self.dense.forward(hidden, ctx)?, self.dropout, ctx)?;
        self.layer_norm.forward(&hidden, input, ctx)
    }
}

pub(crate) struct BertAttention {
    pub(crate) self_attention: BertSelfAttention,
    pub(crate) output: BertSelfOutput,
}

impl BertAttention {
    pub(crate) fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        Ok(BertAttention { self_attention: BertSelfAttention::load(vb.pp("self"), cfg)?, output: BertSelfOutput::load(vb.pp("output"), cfg)? })
    }
}

pub(crate) struct BertIntermediate {
    pub(crate) dense: LoRALinear,
    pub(crate) activation: Activation,
}

pub(crate) struct BertOutput {
    pub(crate) dense: LoRALinear,
    pub(crate) layer_norm: BottleneckSlot,
    pub(crate) dropout: f64,
}

impl BertIntermediate {
    pub(crate) fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        let act = Activation::parse(&cfg.hidden_act).map_err(adapters_runtime::AdapterError::into_candle)?;
        Ok(BertIntermediate { dense: LoRALinear::load(cfg.hidden_size, cfg.intermediate_size, vb.pp("dense"))?, activation: act })
    }

    pub(crate) fn forward(&self, x: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        self.activation.forward(&self.dense.forward(x, ctx)?)
    }
}

impl BertOutput {
    pub(crate) fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        Ok(BertOutput {
            dense: LoRALinear::load(cfg.intermediate_size, cfg.hidden_size, vb.pp("dense"))?,
            layer_norm: BottleneckSlot::load(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("LayerNorm"), &vb)?,
            dropout: cfg.hidden_dropout_prob,
        })
    }

    /// `LayerNorm(dropout(dense(intermediate)) + input)` through the output bottleneck slot.
    pub(crate) fn forward(&self, intermediate: &Tensor, input: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        let out = dropout(&self.dense.forward(intermediate, ctx)?, self.dropout, ctx)?;
        self.layer_norm.forward(&out, input, ctx)
    }
}

/// One encoder layer. The marks below are the whole adapter integration of BERT (and of every
/// model that reuses this layer, such as RoBERTa).
#[adapter_mixin(
    lora(
        q = attention.self_attention.query,
        k = attention.self_attention.key,
        v = attention.self_attention.value,
        intermediate = intermediate.dense,
        output = output.dense,
        attn_output = attention.output.dense,
    ),
    bottleneck(mh_adapter = attention.output.layer_norm, output_adapter = output.layer_norm),
    prefix(self_prefix = attention.self_attention.prefix),
    reft(output = reft),
)]
pub struct BertLayer {
    attention: BertAttention,
    intermediate: BertIntermediate,
    output: BertOutput,
    /// ReFT intervenes on the layer's output here.
    reft: ReftSlot,
}

impl BertLayer {
    fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        Ok(BertLayer {
            attention: BertAttention::load(vb.pp("attention"), cfg)?,
            intermediate: BertIntermediate::load(vb.pp("intermediate"), cfg)?,
            output: BertOutput::load(vb.pp("output"), cfg)?,
            reft: ReftSlot::new(&vb, cfg.hidden_size),
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, cache: Option<(&KvCache, usize)>, ctx: &ForwardContext) -> Result<Tensor> {
        let attended = self.attention.self_attention.forward(x, mask, cache, ctx)?;
        let attention_out = self.attention.output.forward(&attended, x, ctx)?;
        let intermediate = self.intermediate.forward(&attention_out, ctx)?;
        self.reft.forward(&self.output.forward(&intermediate, &attention_out, ctx)?, ctx)
    }
}

/// `tanh(dense(first token))`, loaded only when the checkpoint has it (heads with
/// `use_pooler` need it; the bare encoder output does not). ViT's pooler is the same.
pub(crate) struct BertPooler {
    dense: Linear,
}

impl BertPooler {
    pub(crate) fn load_if_present(vb: VarBuilder, hidden_size: usize) -> Result<Option<Self>> {
        if !vb.contains_tensor("dense.weight") {
            return Ok(None);
        }
        Ok(Some(BertPooler { dense: candle_nn::linear(hidden_size, hidden_size, vb.pp("dense"))? }))
    }

    pub(crate) fn forward(&self, last_hidden_state: &Tensor) -> Result<Tensor> {
        linear_module(&last_hidden_state.narrow(1, 0, 1)?.squeeze(1)?, &self.dense)?.tanh()
    }
}

/// The stack of layers, shared by BERT and RoBERTa.
pub struct BertEncoder {
    pub(crate) layers: Vec<BertLayer>,
}

/// What BERT and RoBERTa take: Python's models take position ids, and as decoders are causal
/// and keep a KV cache.
pub(crate) const DECODER_INPUTS: &[InputKind] = &[InputKind::InputIds, InputKind::AttentionMask, InputKind::PositionIds, InputKind::Causal, InputKind::KvCache];

/// The pass BERT and RoBERTa share: embeddings at the given positions, or at those
/// `default_positions(ids, past)` numbers (after `past` cached ones), then the encoder.
pub(crate) fn forward_text(
    embeddings: &BertEmbeddings,
    encoder: &BertEncoder,
    inputs: &ModelInputs<'_>,
    ctx: &ForwardContext,
    default_positions: impl FnOnce(&Tensor, usize) -> Result<Tensor>,
) -> Result<ModelOutputs> {
    let input_ids = inputs.ids()?;
    let past = cached_positions(inputs)?;
    let positions = match &inputs.position_ids {
        Some(p) => p.clone(),
        None => default_positions(input_ids, past)?,
    };
    let hidden = embeddings.forward(input_ids, &positions, ctx)?;
    encoder.run(hidden, &embeddings.adapters, inputs, past, ctx)
}

/// The positions already in the pass's KV cache (0 without one); a cache needs a causal pass.
fn cached_positions(inputs: &ModelInputs<'_>) -> Result<usize> {
    match inputs.cache {
        Some(_) if !inputs.causal => {
            Err(adapters_runtime::AdapterError::InvalidInput("a KV cache is kept by a causal (decoder) pass; add `.causal()` to the inputs".into())
                .into_candle())
        }
        Some(cache) => Ok(cache.len()),
        None => Ok(0),
    }
}

impl BertEncoder {
    /// The layers over embedded tokens: the embedding slot (prompt tuning), then the stack.
    /// `past` positions are already in the inputs' cache.
    pub(crate) fn run(&self, embeddings: Tensor, slot: &EmbeddingSlot, inputs: &ModelInputs<'_>, past: usize, ctx: &ForwardContext) -> Result<ModelOutputs> {
        let new = embeddings.dim(1)?;
        let (embeddings, attention_mask) = slot.forward(&embeddings, &inputs.mask()?, ctx)?;
        if past > 0 && embeddings.dim(1)? != new {
            return Err(adapters_runtime::AdapterError::InvalidInput("prompt tuning prepends its prompt to every pass; it cannot extend a KV cache".into())
                .into_candle());
        }
        Ok(ModelOutputs::hidden(self.forward(&embeddings, &attention_mask, inputs.causal, inputs.cache, ctx)?))
    }

    pub(crate) fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers).map(|i| BertLayer::load(vb.pp("layer").pp(i), cfg)).collect::<Result<_>>()?;
        Ok(BertEncoder { layers })
    }

    /// `attention_mask` covers the cached positions too; `causal` with a cache masks each new
    /// position against everything before it.
    pub(crate) fn forward(&self, embeddings: &Tensor, attention_mask: &Tensor, causal: bool, cache: Option<&KvCache>, ctx: &ForwardContext) -> Result<Tensor> {
        let mask = if causal {
            causal_additive_mask_for(attention_mask, embeddings.dim(1)?, embeddings.dtype())?
        } else {
            additive_mask(attention_mask, embeddings.dtype())?
        };
        let mut hidden = embeddings.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            hidden = layer.forward(&hidden, &mask, cache.map(|c| (c, i)), ctx)?;
        }
        Ok(hidden)
    }
}

/// The BERT encoder: `last_hidden_state`, and the pooler output when the checkpoint has a pooler.
#[with_adapters(model_type = "bert", layers = encoder.layers, layer_mixin = BertLayer, config = config, embeddings = embeddings.adapters)]
pub struct BertModel {
    embeddings: BertEmbeddings,
    encoder: BertEncoder,
    pooler: Option<BertPooler>,
    config: BertConfig,
}

impl BertModel {
    /// Loads from a `VarBuilder` rooted at the base model (no `bert.` prefix).
    pub fn load(vb: VarBuilder, config: &BertConfig) -> Result<Self> {
        Ok(BertModel {
            embeddings: BertEmbeddings::load(vb.pp("embeddings"), config)?,
            encoder: BertEncoder::load(vb.pp("encoder"), config)?,
            pooler: BertPooler::load_if_present(vb.pp("pooler"), config.hidden_size)?,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }
}

impl ModelForward for BertModel {
    /// Python's `BertModel` takes position ids, and as a decoder (`is_decoder`) is causal and
    /// keeps a KV cache (`past_key_values`).
    const ACCEPTS: &'static [InputKind] = DECODER_INPUTS;

    fn forward_with(&self, inputs: &ModelInputs<'_>, ctx: &ForwardContext) -> Result<ModelOutputs> {
        forward_text(&self.embeddings, &self.encoder, inputs, ctx, |ids, past| {
            Tensor::arange(past as u32, (past + ids.dim(1)?) as u32, ids.device())?.unsqueeze(0)
        })
    }

    fn has_pooler(&self) -> bool {
        self.pooler.is_some()
    }

    fn pooled_output(&self, last_hidden_state: &Tensor) -> Option<Result<Tensor>> {
        self.pooler.as_ref().map(|p| p.forward(last_hidden_state))
    }

    fn input_embeddings(&self) -> Option<&Tensor> {
        Some(self.embeddings.word_embeddings())
    }

    fn layer_norm_eps(&self) -> f64 {
        self.config.layer_norm_eps
    }
}
