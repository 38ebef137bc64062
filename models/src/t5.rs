//! T5 (v1.0, v1.1 / Flan-T5 and MT5) as a candle model annotated for adapters: pre-norm blocks
//! with RMS-style LayerNorms, unscaled attention with a relative position bias (computed by
//! each stack's first block, reused by the others), a ReLU or gated-GELU feed-forward block.
//! The marks follow the Python library's T5 mixins: every bottleneck location ends in a plain
//! residual sum (`layer_norm=None`), LoRA's `intermediate` is `wi` (`wi_1` when gated).

use adapters_runtime::nn::activation::Activation;
use adapters_runtime::nn::{causal_additive_mask_for, dropout, RmsNorm};
use adapters_runtime::{adapter_config, adapter_mixin, with_adapters, AdapterError};
use adapters_runtime::{BottleneckSlot, EmbeddingSlot, ForwardContext, LoRALinear, PrefixPadding, PrefixSlot, ReftSlot};
use adapters_runtime::{InputKind, KvCache, ModelForward, ModelInputs, ModelOutputs};
use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

use crate::attention::additive_mask;
use crate::seq2seq::{decoder_inputs, encoder_decoder_mask, encoder_mask, encoder_states, ENCODER_DECODER_INPUTS};

fn default_eps() -> f64 {
    1e-6
}
fn default_ff() -> String {
    "relu".into()
}
fn default_true() -> bool {
    true
}
fn default_buckets() -> usize {
    32
}
fn default_distance() -> usize {
    128
}
fn default_dropout() -> f64 {
    0.1
}

/// `config.json` of T5 and MT5 checkpoints.
#[adapter_config(
    hidden_size = d_model,
    num_attention_heads = num_heads,
    num_hidden_layers = num_layers,
    hidden_dropout_prob = dropout_rate,
    attention_probs_dropout_prob = dropout_rate,
)]
#[derive(Clone, Debug, Deserialize)]
pub struct T5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    #[serde(default)]
    pub num_decoder_layers: Option<usize>,
    pub num_heads: usize,
    #[serde(default = "default_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "default_distance")]
    pub relative_attention_max_distance: usize,
    #[serde(default = "default_dropout")]
    pub dropout_rate: f64,
    #[serde(default = "default_eps")]
    pub layer_norm_epsilon: f64,
    /// `relu` (T5 v1.0) or `gated-gelu` (v1.1, Flan-T5, MT5); `gated-<act>` in general.
    #[serde(default = "default_ff")]
    pub feed_forward_proj: String,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default)]
    pub decoder_start_token_id: Option<usize>,
    #[serde(default)]
    pub eos_token_id: Option<usize>,
    #[serde(default)]
    pub model_type: Option<String>,
}

impl T5Config {
    /// Whether the feed-forward block is gated, and its activation (`gated-gelu` runs
    /// `gelu_new`, as `transformers` maps it).
    fn feed_forward(&self) -> Result<(bool, Activation)> {
        let (gated, name) = match self.feed_forward_proj.strip_prefix("gated-") {
            Some(act) => (true, if act == "gelu" { "gelu_new" } else { act }),
            None => (false, self.feed_forward_proj.as_str()),
        };
        Ok((gated, Activation::parse(name).map_err(AdapterError::into_candle)?))
    }
}

/// The relative position bias table of a stack's first block, and how positions fall into its
/// buckets.
struct RelativeBias {
    table: Embedding,
    bidirectional: bool,
    buckets: usize,
    max_distance: usize,
}

impl RelativeBias {
    /// `transformers`' `_relative_position_bucket`, in its float32 arithmetic.
    fn bucket(&self, relative: i64) -> u32 {
        let mut buckets = self.buckets as i64;
        let mut bucket = 0i64;
        let distance = if self.bidirectional {
            buckets /= 2;
            if relative > 0 {
                bucket += buckets;
            }
            relative.abs()
        } else {
            (-relative).max(0)
        };
        let max_exact = buckets / 2;
        let value = if distance < max_exact {
            distance
        } else {
            let scale = ((self.max_distance as f64) / (max_exact as f64)).ln() as f32;
            let large = ((distance as f32 / max_exact as f32).ln() / scale * (buckets - max_exact) as f32) as i64;
            (max_exact + large).min(buckets - 1)
        };
        (bucket + value) as u32
    }

    /// `[1, heads, queries, keys]` for queries at positions `past..past + queries` over keys at
    /// `0..keys` (prefix keys first, as Python numbers them).
    fn forward(&self, past: usize, queries: usize, keys: usize, dtype: DType) -> Result<Tensor> {
        let device = self.table.embeddings().device();
        let buckets: Vec<u32> = (0..queries).flat_map(|q| (0..keys).map(move |k| k as i64 - (past + q) as i64)).map(|r| self.bucket(r)).collect();
        let buckets = Tensor::from_vec(buckets, (queries, keys), device)?;
        self.table.forward(&buckets)?.permute((2, 0, 1))?.unsqueeze(0)?.to_dtype(dtype)
    }
}

/// T5's attention: no scaling, a position bias (plus the mask) added to the scores.
pub(crate) struct T5Attention {
    q: LoRALinear,
    k: LoRALinear,
    v: LoRALinear,
    o: LoRALinear,
    relative: Option<RelativeBias>,
    /// Prefix tuning prepends its keys and values here.
    prefix: PrefixSlot,
    heads: usize,
    dropout: f64,
}

impl T5Attention {
    fn load(vb: VarBuilder, cfg: &T5Config, relative: Option<bool>) -> Result<Self> {
        let (h, inner) = (cfg.d_model, cfg.num_heads * cfg.d_kv);
        // T5's linears have no biases.
        let linear = |name: &str, inp: usize, out: usize| LoRALinear::load_with_bias(inp, out, false, vb.pp(name));
        let relative = match relative {
            Some(bidirectional) => Some(RelativeBias {
                table: candle_nn::embedding(cfg.relative_attention_num_buckets, cfg.num_heads, vb.pp("relative_attention_bias"))?,
                bidirectional,
                buckets: cfg.relative_attention_num_buckets,
                max_distance: cfg.relative_attention_max_distance,
            }),
            None => None,
        };
        Ok(T5Attention {
            q: linear("q", h, inner)?,
            k: linear("k", h, inner)?,
            v: linear("v", h, inner)?,
            o: linear("o", inner, h)?,
            relative,
            prefix: PrefixSlot::grouped(&vb, h, cfg.num_heads, cfg.d_kv, cfg.pad_token_id, PrefixPadding::InvertedMask),
            heads: cfg.num_heads,
            dropout: cfg.dropout_rate,
        })
    }

    fn split(&self, x: &Tensor) -> Result<Tensor> {
        adapters_runtime::nn::split_heads(x, self.heads)
    }

    /// `x` attends to `source`. `bias` is the stack's position bias with the mask folded in:
    /// computed here when absent or when this layer's key count differs (then, as in Python,
    /// without relative positions unless this attention has the table), and kept for the next
    /// layers.
    fn forward(&self, x: &Tensor, source: &Tensor, mask: &Tensor, bias: &mut Option<Tensor>, step: Step<'_>, ctx: &ForwardContext) -> Result<Tensor> {
        let Step { past, cache } = step;
        let q = self.split(&self.q.forward(x, ctx)?)?;
        let k = self.split(&self.k.forward(source, ctx)?)?;
        let v = self.split(&self.v.forward(source, ctx)?)?;
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, &k, &v)?,
            None => (k, v),
        };
        let (k, v, mask) = self.prefix.forward(&k, &v, mask, x, ctx)?;
        let (queries, keys) = (q.dim(2)?, k.dim(2)?);
        let reuse = bias.as_ref().is_some_and(|b| b.dim(3).ok() == Some(keys));
        if !reuse {
            let positions = match &self.relative {
                Some(relative) => relative.forward(past, queries, keys, q.dtype())?,
                None => Tensor::zeros((1, self.heads, queries, keys), q.dtype(), q.device())?,
            };
            *bias = Some(positions.broadcast_add(&mask)?);
        }
        let bias = bias.as_ref().ok_or_else(|| candle_core::Error::Msg("position bias".into()))?;
        let scores = adapters_runtime::nn::matmul_nt(&q, &k)?;
        // Per head and row: the position bias (per head) plus the mask (per row).
        let bias = bias.broadcast_as(scores.shape())?.contiguous()?;
        let probs = adapters_runtime::nn::scaled_masked_softmax(&scores, &bias, 1.0)?;
        let probs = dropout(&probs, self.dropout, ctx)?;
        let context = adapters_runtime::nn::matmul(&probs, &v)?;
        self.o.forward(&adapters_runtime::nn::merge_heads(&context)?, ctx)
    }
}

/// Where a pass stands in generation: the positions already cached, and the cache with this
/// layer's index (decoder self-attention); `Step::NONE` elsewhere.
#[derive(Clone, Copy)]
struct Step<'a> {
    past: usize,
    cache: Option<(&'a KvCache, usize)>,
}

impl Step<'_> {
    const NONE: Step<'static> = Step { past: 0, cache: None };
}

/// A sublayer: its RMS norm first, its output added to the input through a bottleneck slot.
struct Sublayer {
    layer_norm: RmsNorm,
    adapters: BottleneckSlot,
}

impl Sublayer {
    fn load(vb: &VarBuilder, cfg: &T5Config) -> Result<Self> {
        Ok(Sublayer {
            layer_norm: RmsNorm::load(cfg.d_model, cfg.layer_norm_epsilon, vb.pp("layer_norm"))?,
            adapters: BottleneckSlot::residual_only(cfg.d_model, vb),
        })
    }
}

struct T5FeedForward {
    /// `wi` (ungated) or `wi_1` (the gated block's linear branch): LoRA's `intermediate`.
    intermediate: LoRALinear,
    /// `wi_0`, the gated block's activated branch (not adapted by the Python library).
    gate: Option<LoRALinear>,
    wo: LoRALinear,
    activation: Activation,
    dropout: f64,
}

impl T5FeedForward {
    fn load(vb: VarBuilder, cfg: &T5Config) -> Result<Self> {
        let (h, ff) = (cfg.d_model, cfg.d_ff);
        let (gated, activation) = cfg.feed_forward()?;
        let linear = |name: &str, inp: usize, out: usize| LoRALinear::load_with_bias(inp, out, false, vb.pp(name));
        let (intermediate, gate) = if gated { (linear("wi_1", h, ff)?, Some(linear("wi_0", h, ff)?)) } else { (linear("wi", h, ff)?, None) };
        Ok(T5FeedForward { intermediate, gate, wo: linear("wo", ff, h)?, activation, dropout: cfg.dropout_rate })
    }

    /// `wo(act(wi(x)))`, or `wo(act(wi_0(x)) * wi_1(x))` when gated.
    fn forward(&self, x: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        let hidden = match &self.gate {
            Some(gate) => (self.activation.forward(&gate.forward(x, ctx)?)? * self.intermediate.forward(x, ctx)?)?,
            None => self.activation.forward(&self.intermediate.forward(x, ctx)?)?,
        };
        self.wo.forward(&dropout(&hidden, self.dropout, ctx)?, ctx)
    }
}

/// The position biases a stack's blocks share, one per attention kind.
#[derive(Default)]
struct Biases {
    self_attention: Option<Tensor>,
    cross_attention: Option<Tensor>,
}

/// One encoder block (`block.N.layer.0` self-attention with its `encoder_prefix`, `layer.1` the
/// feed-forward block).
#[adapter_mixin(
    lora(
        q = attention.q,
        k = attention.k,
        v = attention.v,
        attn_output = attention.o,
        intermediate = ffn.intermediate,
        output = ffn.wo,
    ),
    bottleneck(mh_adapter = attention_sublayer.adapters, output_adapter = ffn_sublayer.adapters),
    prefix(encoder_prefix = attention.prefix),
    reft(output = reft),
)]
pub struct T5EncoderBlock {
    attention_sublayer: Sublayer,
    attention: T5Attention,
    ffn_sublayer: Sublayer,
    ffn: T5FeedForward,
    /// ReFT intervenes on the block's output here.
    reft: ReftSlot,
    dropout: f64,
}

impl T5EncoderBlock {
    fn load(vb: VarBuilder, cfg: &T5Config, first: bool) -> Result<Self> {
        let (attention_vb, ffn_vb) = (vb.pp("layer").pp(0), vb.pp("layer").pp(1));
        Ok(T5EncoderBlock {
            attention_sublayer: Sublayer::load(&attention_vb, cfg)?,
            attention: T5Attention::load(attention_vb.pp("SelfAttention"), cfg, first.then_some(true))?,
            ffn_sublayer: Sublayer::load(&ffn_vb, cfg)?,
            ffn: T5FeedForward::load(ffn_vb.pp("DenseReluDense"), cfg)?,
            reft: ReftSlot::new(&vb, cfg.d_model),
            dropout: cfg.dropout_rate,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, biases: &mut Biases, ctx: &ForwardContext) -> Result<Tensor> {
        let normed = self.attention_sublayer.layer_norm.forward(x)?;
        let attended = self.attention.forward(&normed, &normed, mask, &mut biases.self_attention, Step::NONE, ctx)?;
        let hidden = self.attention_sublayer.adapters.forward_parts(&dropout(&attended, self.dropout, ctx)?, x, ctx)?;
        let projected = self.ffn.forward(&self.ffn_sublayer.layer_norm.forward(&hidden)?, ctx)?;
        self.reft.forward(&self.ffn_sublayer.adapters.forward_parts(&dropout(&projected, self.dropout, ctx)?, &hidden, ctx)?, ctx)
    }
}

/// One decoder block: causal self-attention (`self_prefix`), cross-attention (`layer.1`,
/// `cross_prefix`, the `cross_adapter` bottleneck, LoRA on its q/k/v) and the feed-forward block.
#[adapter_mixin(
    lora(
        q = attention.q,
        k = attention.k,
        v = attention.v,
        attn_output = attention.o,
        cross_q = cross_attention.q,
        cross_k = cross_attention.k,
        cross_v = cross_attention.v,
        cross_attn_output = cross_attention.o,
        intermediate = ffn.intermediate,
        output = ffn.wo,
    ),
    bottleneck(mh_adapter = attention_sublayer.adapters, cross_adapter = cross_sublayer.adapters, output_adapter = ffn_sublayer.adapters),
    prefix(self_prefix = attention.prefix, cross_prefix = cross_attention.prefix),
    reft(output = reft),
)]
pub struct T5DecoderBlock {
    attention_sublayer: Sublayer,
    attention: T5Attention,
    cross_sublayer: Sublayer,
    cross_attention: T5Attention,
    ffn_sublayer: Sublayer,
    ffn: T5FeedForward,
    /// ReFT intervenes on the block's output here.
    reft: ReftSlot,
    dropout: f64,
}

/// What a decoder pass attends to beyond itself: the encoder output and its additive mask, and
/// the positions already in the cache.
struct DecoderContext<'a> {
    encoded: &'a Tensor,
    cross_mask: &'a Tensor,
    past: usize,
}

impl T5DecoderBlock {
    fn load(vb: VarBuilder, cfg: &T5Config, first: bool) -> Result<Self> {
        let layer = |i: usize| vb.pp("layer").pp(i);
        Ok(T5DecoderBlock {
            attention_sublayer: Sublayer::load(&layer(0), cfg)?,
            attention: T5Attention::load(layer(0).pp("SelfAttention"), cfg, first.then_some(false))?,
            cross_sublayer: Sublayer::load(&layer(1), cfg)?,
            cross_attention: T5Attention::load(layer(1).pp("EncDecAttention"), cfg, None)?,
            ffn_sublayer: Sublayer::load(&layer(2), cfg)?,
            ffn: T5FeedForward::load(layer(2).pp("DenseReluDense"), cfg)?,
            reft: ReftSlot::new(&vb, cfg.d_model),
            dropout: cfg.dropout_rate,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        source: &DecoderContext<'_>,
        biases: &mut Biases,
        cache: Option<(&KvCache, usize)>,
        ctx: &ForwardContext,
    ) -> Result<Tensor> {
        let normed = self.attention_sublayer.layer_norm.forward(x)?;
        let attended = self.attention.forward(&normed, &normed, mask, &mut biases.self_attention, Step { past: source.past, cache }, ctx)?;
        let hidden = self.attention_sublayer.adapters.forward_parts(&dropout(&attended, self.dropout, ctx)?, x, ctx)?;
        let normed = self.cross_sublayer.layer_norm.forward(&hidden)?;
        let crossed = self.cross_attention.forward(&normed, source.encoded, source.cross_mask, &mut biases.cross_attention, Step::NONE, ctx)?;
        let hidden = self.cross_sublayer.adapters.forward_parts(&dropout(&crossed, self.dropout, ctx)?, &hidden, ctx)?;
        let projected = self.ffn.forward(&self.ffn_sublayer.layer_norm.forward(&hidden)?, ctx)?;
        self.reft.forward(&self.ffn_sublayer.adapters.forward_parts(&dropout(&projected, self.dropout, ctx)?, &hidden, ctx)?, ctx)
    }
}

/// Everything of T5 and MT5 but their names: the shared embeddings, both stacks with their final
/// norms, and an untied `lm_head`.
pub struct T5Stack {
    shared: Embedding,
    /// Invertible adapters run on the encoder's embeddings; T5 takes no prompt tuning.
    embedding_adapters: EmbeddingSlot,
    encoder: Vec<T5EncoderBlock>,
    encoder_final_norm: RmsNorm,
    decoder: Vec<T5DecoderBlock>,
    decoder_final_norm: RmsNorm,
    /// An untied `lm_head` (T5 v1.1); tied checkpoints decode with `shared`.
    lm_head: Option<Tensor>,
}

/// T5: `last_hidden_state` of the decoder (after its final norm) and `encoder_last_hidden_state`.
#[with_adapters(
    model_type = "t5",
    layers = stack.encoder,
    layer_mixin = T5EncoderBlock,
    layer_type = "T5Block",
    decoder_layers = stack.decoder,
    decoder_mixin = T5DecoderBlock,
    config = config,
    embeddings = stack.embedding_adapters,
    prompt_tuning = false
)]
pub struct T5Model {
    stack: T5Stack,
    config: T5Config,
}

/// MT5: T5 v1.1's architecture (and T5's mixins) under its own `model_type`.
#[with_adapters(
    model_type = "mt5",
    layers = stack.encoder,
    layer_mixin = T5EncoderBlock,
    layer_type = "MT5Block",
    decoder_layers = stack.decoder,
    decoder_mixin = T5DecoderBlock,
    config = config,
    embeddings = stack.embedding_adapters,
    prompt_tuning = false
)]
pub struct MT5Model {
    stack: T5Stack,
    config: T5Config,
}

impl T5Stack {
    /// Loads from `vb` at the checkpoint root (T5 keeps `shared`, `encoder`, `decoder` and an
    /// untied `lm_head` side by side).
    pub fn load(vb: VarBuilder, root: &VarBuilder, config: &T5Config) -> Result<Self> {
        let shared = candle_nn::embedding(config.vocab_size, config.d_model, vb.pp("shared"))?;
        let (encoder, decoder) = (vb.pp("encoder"), vb.pp("decoder"));
        let decoder_layers = config.num_decoder_layers.unwrap_or(config.num_layers);
        let lm_head = if !config.tie_word_embeddings && root.contains_tensor("lm_head.weight") {
            Some(root.get((config.vocab_size, config.d_model), "lm_head.weight")?)
        } else {
            None
        };
        Ok(T5Stack {
            embedding_adapters: EmbeddingSlot::new(shared.embeddings(), usize::MAX).with_invertible_path(encoder.prefix()),
            shared,
            encoder: (0..config.num_layers).map(|i| T5EncoderBlock::load(encoder.pp("block").pp(i), config, i == 0)).collect::<Result<_>>()?,
            encoder_final_norm: RmsNorm::load(config.d_model, config.layer_norm_epsilon, encoder.pp("final_layer_norm"))?,
            decoder: (0..decoder_layers).map(|i| T5DecoderBlock::load(decoder.pp("block").pp(i), config, i == 0)).collect::<Result<_>>()?,
            decoder_final_norm: RmsNorm::load(config.d_model, config.layer_norm_epsilon, decoder.pp("final_layer_norm"))?,
            lm_head,
        })
    }

    fn encode(&self, config: &T5Config, input_ids: &Tensor, attention_mask: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        let embedded = dropout(&self.shared.forward(input_ids)?, config.dropout_rate, ctx)?;
        let (mut hidden, _) = self.embedding_adapters.forward(&embedded, attention_mask, ctx)?;
        let mask = additive_mask(attention_mask, hidden.dtype())?;
        let mut biases = Biases::default();
        for block in &self.encoder {
            hidden = block.forward(&hidden, &mask, &mut biases, ctx)?;
        }
        dropout(&self.encoder_final_norm.forward(&hidden)?, config.dropout_rate, ctx)
    }

    fn forward(&self, config: &T5Config, inputs: &ModelInputs<'_>, ctx: &ForwardContext) -> Result<ModelOutputs> {
        let (decoder_ids, past, decoder_mask) = decoder_inputs(inputs)?;
        let encoded = encoder_states(inputs, |ids, mask| self.encode(config, ids, mask, ctx))?;
        let cross_mask = additive_mask(&encoder_mask(inputs, &encoded)?, encoded.dtype())?;
        let mut hidden = dropout(&self.shared.forward(decoder_ids)?, config.dropout_rate, ctx)?;
        let mask = causal_additive_mask_for(&decoder_mask, decoder_ids.dim(1)?, hidden.dtype())?;
        let source = DecoderContext { encoded: &encoded, cross_mask: &cross_mask, past };
        let mut biases = Biases::default();
        for (i, block) in self.decoder.iter().enumerate() {
            hidden = block.forward(&hidden, &mask, &source, &mut biases, inputs.cache.map(|c| (c, i)), ctx)?;
        }
        let hidden = dropout(&self.decoder_final_norm.forward(&hidden)?, config.dropout_rate, ctx)?;
        Ok(ModelOutputs { last_hidden_state: hidden, encoder_last_hidden_state: Some(encoded) })
    }
}

/// `load`, `config` and `ModelForward` of a model over a [`T5Stack`].
macro_rules! t5_family {
    ($model:ident) => {
        impl $model {
            /// Loads from `vb` at the checkpoint root; `root` is the same root (for `lm_head`).
            pub fn load(vb: VarBuilder, root: &VarBuilder, config: &T5Config) -> Result<Self> {
                Ok($model { stack: T5Stack::load(vb, root, config)?, config: config.clone() })
            }

            pub fn config(&self) -> &T5Config {
                &self.config
            }
        }

        impl ModelForward for $model {
            const ACCEPTS: &'static [InputKind] = ENCODER_DECODER_INPUTS;
            const REQUIRES: &'static [InputKind] = &[InputKind::DecoderInputIds];

            fn forward_with(&self, inputs: &ModelInputs<'_>, ctx: &ForwardContext) -> Result<ModelOutputs> {
                self.stack.forward(&self.config, inputs, ctx)
            }

            fn attention_mask(&self, inputs: &ModelInputs<'_>) -> Result<Tensor> {
                encoder_decoder_mask(inputs)
            }

            fn input_embeddings(&self) -> Option<&Tensor> {
                Some(self.stack.shared.embeddings())
            }

            fn layer_norm_eps(&self) -> f64 {
                self.config.layer_norm_epsilon
            }

            fn tie_word_embeddings(&self) -> bool {
                self.config.tie_word_embeddings
            }

            /// `decoder_start_token_id`, else the pad token (T5 starts decoding with it).
            fn decoder_start_token_id(&self) -> Option<u32> {
                Some(self.config.decoder_start_token_id.unwrap_or(self.config.pad_token_id) as u32)
            }

            fn lm_head(&self) -> Option<&Tensor> {
                Some(self.stack.lm_head.as_ref().unwrap_or(self.stack.shared.embeddings()))
            }

            /// Tied checkpoints scale the decoder output by `d_model^-0.5` before the vocabulary
            /// projection (and `T5AdapterModel` before every head).
            fn head_input(&self, last_hidden_state: &Tensor) -> Result<Tensor> {
                if self.config.tie_word_embeddings {
                    last_hidden_state * (self.config.d_model as f64).powf(-0.5)
                } else {
                    Ok(last_hidden_state.clone())
                }
            }
        }
    };
}

t5_family!(T5Model);
t5_family!(MT5Model);
