//! BART and MBART as candle models annotated for adapters: an encoder and a decoder with
//! cross-attention, shared token embeddings, learned positions offset by 2. BART's layers are
//! post-norm (each bottleneck slot holds its sublayer's LayerNorm); MBART's are pre-norm with a
//! final LayerNorm per stack (its bottleneck slots end in a plain residual sum), as the Python
//! library's BART and MBART mixins place them. Encoder layers come first in layer numbering.

use adapters_runtime::nn::activation::Activation;
use adapters_runtime::nn::{causal_additive_mask_for, dropout};
use adapters_runtime::{adapter_config, adapter_mixin, with_adapters, AdapterError};
use adapters_runtime::{BottleneckSlot, EmbeddingSlot, ForwardContext, LayerNorm, LoRALinear, PrefixPadding, PrefixSlot, ReftSlot};
use adapters_runtime::{InputKind, KvCache, ModelForward, ModelInputs, ModelOutputs};
use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

use crate::attention::{additive_mask, attend, split_heads};
use crate::seq2seq::{decoder_inputs, encoder_decoder_mask, encoder_mask, encoder_states, ENCODER_DECODER_INPUTS};

fn default_act() -> String {
    "gelu".into()
}
fn default_true() -> bool {
    true
}
fn default_pad() -> usize {
    1
}

/// BART's learned position tables have two extra rows: position `p` reads row `p + 2`.
const POSITION_OFFSET: usize = 2;
/// BART builds its LayerNorms with PyTorch's default eps.
const LN_EPS: f64 = 1e-5;

/// `config.json` of BART and MBART checkpoints.
#[adapter_config(
    hidden_size = d_model,
    num_attention_heads = encoder_attention_heads,
    num_hidden_layers = encoder_layers,
    hidden_dropout_prob = dropout,
    attention_probs_dropout_prob = attention_dropout,
)]
#[derive(Clone, Debug, Deserialize)]
pub struct BartConfig {
    pub vocab_size: usize,
    pub d_model: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub decoder_attention_heads: usize,
    pub encoder_ffn_dim: usize,
    pub decoder_ffn_dim: usize,
    #[serde(default = "default_act")]
    pub activation_function: String,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default)]
    pub activation_dropout: f64,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub scale_embedding: bool,
    #[serde(default = "default_pad")]
    pub pad_token_id: usize,
    #[serde(default)]
    pub decoder_start_token_id: Option<usize>,
    #[serde(default)]
    pub eos_token_id: Option<usize>,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub model_type: Option<String>,
}

impl BartConfig {
    /// MBART: pre-norm layers and a final LayerNorm after each stack.
    fn pre_norm(&self) -> bool {
        self.model_type.as_deref() == Some("mbart")
    }
}

/// Multi-head attention over its own input (self-attention) or over the encoder output
/// (cross-attention).
pub(crate) struct BartAttention {
    q_proj: LoRALinear,
    k_proj: LoRALinear,
    v_proj: LoRALinear,
    out_proj: LoRALinear,
    /// Prefix tuning prepends its keys and values here.
    prefix: PrefixSlot,
    heads: usize,
    dropout: f64,
}

impl BartAttention {
    fn load(vb: VarBuilder, cfg: &BartConfig, heads: usize) -> Result<Self> {
        let h = cfg.d_model;
        Ok(BartAttention {
            q_proj: LoRALinear::load(h, h, vb.pp("q_proj"))?,
            k_proj: LoRALinear::load(h, h, vb.pp("k_proj"))?,
            v_proj: LoRALinear::load(h, h, vb.pp("v_proj"))?,
            out_proj: LoRALinear::load(h, h, vb.pp("out_proj"))?,
            prefix: PrefixSlot::new(&vb, h, heads, cfg.pad_token_id, PrefixPadding::InvertedMask),
            heads,
            dropout: cfg.attention_dropout,
        })
    }

    /// `x` attends to `source` (itself for self-attention); `cache` extends the keys and values
    /// with earlier steps' (decoder self-attention only).
    fn forward(&self, x: &Tensor, source: &Tensor, mask: &Tensor, cache: Option<(&KvCache, usize)>, ctx: &ForwardContext) -> Result<Tensor> {
        let q = split_heads(&self.q_proj.forward(x, ctx)?, self.heads)?;
        let k = split_heads(&self.k_proj.forward(source, ctx)?, self.heads)?;
        let v = split_heads(&self.v_proj.forward(source, ctx)?, self.heads)?;
        let (k, v) = match cache {
            Some((cache, layer)) => cache.append(layer, &k, &v)?,
            None => (k, v),
        };
        let (k, v, mask) = self.prefix.forward(&k, &v, mask, x, ctx)?;
        let scale = 1.0 / (q.dim(3)? as f64).sqrt();
        self.out_proj.forward(&attend(&q, &k, &v, &mask, scale, self.dropout, ctx)?, ctx)
    }
}

/// A sublayer's residual connection: the bottleneck slot (with the sublayer's LayerNorm after
/// the sum in BART) and, in MBART, the LayerNorm applied to the sublayer's input.
struct Residual {
    pre_norm: Option<LayerNorm>,
    adapters: BottleneckSlot,
}

impl Residual {
    fn load(vb: &VarBuilder, norm: &str, adapters: &str, cfg: &BartConfig) -> Result<Self> {
        let h = cfg.d_model;
        Ok(if cfg.pre_norm() {
            Residual { pre_norm: Some(LayerNorm::load(h, LN_EPS, vb.pp(norm))?), adapters: BottleneckSlot::residual_only(h, &vb.pp(adapters)) }
        } else {
            Residual { pre_norm: None, adapters: BottleneckSlot::load(h, LN_EPS, vb.pp(norm), &vb.pp(adapters))? }
        })
    }

    /// What the sublayer reads: its input, normalised first in MBART.
    fn input(&self, x: &Tensor) -> Result<Tensor> {
        match &self.pre_norm {
            Some(norm) => norm.forward(x),
            None => Ok(x.clone()),
        }
    }
}

struct FeedForward {
    fc1: LoRALinear,
    fc2: LoRALinear,
    activation: Activation,
    activation_dropout: f64,
    dropout: f64,
}

impl FeedForward {
    fn load(vb: &VarBuilder, cfg: &BartConfig, ffn: usize) -> Result<Self> {
        Ok(FeedForward {
            fc1: LoRALinear::load(cfg.d_model, ffn, vb.pp("fc1"))?,
            fc2: LoRALinear::load(ffn, cfg.d_model, vb.pp("fc2"))?,
            activation: Activation::parse(&cfg.activation_function).map_err(AdapterError::into_candle)?,
            activation_dropout: cfg.activation_dropout,
            dropout: cfg.dropout,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        let hidden = dropout(&self.activation.forward(&self.fc1.forward(x, ctx)?)?, self.activation_dropout, ctx)?;
        dropout(&self.fc2.forward(&hidden, ctx)?, self.dropout, ctx)
    }
}

/// One encoder layer: self-attention (prefix location `encoder_prefix`) and the feed-forward block.
#[adapter_mixin(
    lora(
        q = self_attn.q_proj,
        k = self_attn.k_proj,
        v = self_attn.v_proj,
        attn_output = self_attn.out_proj,
        intermediate = ffn.fc1,
        output = ffn.fc2,
    ),
    bottleneck(mh_adapter = attention.adapters, output_adapter = output.adapters),
    prefix(encoder_prefix = self_attn.prefix),
    reft(output = reft),
)]
pub struct BartEncoderLayer {
    self_attn: BartAttention,
    attention: Residual,
    ffn: FeedForward,
    output: Residual,
    /// ReFT intervenes on the layer's output here.
    reft: ReftSlot,
    dropout: f64,
}

impl BartEncoderLayer {
    fn load(vb: VarBuilder, cfg: &BartConfig) -> Result<Self> {
        Ok(BartEncoderLayer {
            self_attn: BartAttention::load(vb.pp("self_attn"), cfg, cfg.encoder_attention_heads)?,
            attention: Residual::load(&vb, "self_attn_layer_norm", "attention_adapters", cfg)?,
            ffn: FeedForward::load(&vb, cfg, cfg.encoder_ffn_dim)?,
            output: Residual::load(&vb, "final_layer_norm", "output_adapters", cfg)?,
            reft: ReftSlot::new(&vb, cfg.d_model),
            dropout: cfg.dropout,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        let input = self.attention.input(x)?;
        let attended = dropout(&self.self_attn.forward(&input, &input, mask, None, ctx)?, self.dropout, ctx)?;
        let hidden = self.attention.adapters.forward_parts(&attended, x, ctx)?;
        let projected = self.ffn.forward(&self.output.input(&hidden)?, ctx)?;
        self.reft.forward(&self.output.adapters.forward_parts(&projected, &hidden, ctx)?, ctx)
    }
}

/// One decoder layer: causal self-attention (`self_prefix`), cross-attention over the encoder
/// output (`cross_prefix`, the `cross_adapter` bottleneck, LoRA on its q/k/v as on
/// self-attention's) and the feed-forward block.
#[adapter_mixin(
    lora(
        q = self_attn.q_proj,
        k = self_attn.k_proj,
        v = self_attn.v_proj,
        attn_output = self_attn.out_proj,
        cross_q = encoder_attn.q_proj,
        cross_k = encoder_attn.k_proj,
        cross_v = encoder_attn.v_proj,
        cross_attn_output = encoder_attn.out_proj,
        intermediate = ffn.fc1,
        output = ffn.fc2,
    ),
    bottleneck(mh_adapter = attention.adapters, cross_adapter = cross_attention.adapters, output_adapter = output.adapters),
    prefix(self_prefix = self_attn.prefix, cross_prefix = encoder_attn.prefix),
    reft(output = reft),
)]
pub struct BartDecoderLayer {
    self_attn: BartAttention,
    attention: Residual,
    encoder_attn: BartAttention,
    cross_attention: Residual,
    ffn: FeedForward,
    output: Residual,
    /// ReFT intervenes on the layer's output here.
    reft: ReftSlot,
    dropout: f64,
}

/// The encoder output a decoder layer attends to, with its additive mask.
struct CrossSource<'a> {
    states: &'a Tensor,
    mask: &'a Tensor,
}

impl BartDecoderLayer {
    fn load(vb: VarBuilder, cfg: &BartConfig) -> Result<Self> {
        Ok(BartDecoderLayer {
            self_attn: BartAttention::load(vb.pp("self_attn"), cfg, cfg.decoder_attention_heads)?,
            attention: Residual::load(&vb, "self_attn_layer_norm", "attention_adapters", cfg)?,
            encoder_attn: BartAttention::load(vb.pp("encoder_attn"), cfg, cfg.decoder_attention_heads)?,
            cross_attention: Residual::load(&vb, "encoder_attn_layer_norm", "cross_attention_adapters", cfg)?,
            ffn: FeedForward::load(&vb, cfg, cfg.decoder_ffn_dim)?,
            output: Residual::load(&vb, "final_layer_norm", "output_adapters", cfg)?,
            reft: ReftSlot::new(&vb, cfg.d_model),
            dropout: cfg.dropout,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, source: &CrossSource<'_>, cache: Option<(&KvCache, usize)>, ctx: &ForwardContext) -> Result<Tensor> {
        let input = self.attention.input(x)?;
        let attended = dropout(&self.self_attn.forward(&input, &input, mask, cache, ctx)?, self.dropout, ctx)?;
        let hidden = self.attention.adapters.forward_parts(&attended, x, ctx)?;
        let query = self.cross_attention.input(&hidden)?;
        let crossed = dropout(&self.encoder_attn.forward(&query, source.states, source.mask, None, ctx)?, self.dropout, ctx)?;
        let hidden = self.cross_attention.adapters.forward_parts(&crossed, &hidden, ctx)?;
        let projected = self.ffn.forward(&self.output.input(&hidden)?, ctx)?;
        self.reft.forward(&self.output.adapters.forward_parts(&projected, &hidden, ctx)?, ctx)
    }
}

/// Token embeddings (scaled), learned positions and the embedding LayerNorm of one stack.
struct StackEmbeddings {
    positions: Embedding,
    layernorm_embedding: LayerNorm,
    /// MBART's LayerNorm after the last layer.
    final_norm: Option<LayerNorm>,
}

impl StackEmbeddings {
    fn load(vb: &VarBuilder, cfg: &BartConfig) -> Result<Self> {
        let h = cfg.d_model;
        Ok(StackEmbeddings {
            positions: candle_nn::embedding(cfg.max_position_embeddings + POSITION_OFFSET, h, vb.pp("embed_positions"))?,
            layernorm_embedding: LayerNorm::load(h, LN_EPS, vb.pp("layernorm_embedding"))?,
            final_norm: if cfg.pre_norm() { Some(LayerNorm::load(h, LN_EPS, vb.pp("layer_norm"))?) } else { None },
        })
    }

    /// `LayerNorm(tokens * scale + positions[past..past + seq])`.
    fn forward(&self, tokens: &Tensor, ids: &Tensor, past: usize, cfg: &BartConfig) -> Result<Tensor> {
        let seq = ids.dim(1)?;
        crate::llama::check_positions(past, seq, cfg.max_position_embeddings)?;
        let rows = Tensor::arange((past + POSITION_OFFSET) as u32, (past + seq + POSITION_OFFSET) as u32, ids.device())?;
        let positions = self.positions.forward(&rows)?.unsqueeze(0)?;
        let tokens = if cfg.scale_embedding { (tokens * (cfg.d_model as f64).sqrt())? } else { tokens.clone() };
        self.layernorm_embedding.forward(&tokens.broadcast_add(&positions)?)
    }

    fn finish(&self, hidden: Tensor) -> Result<Tensor> {
        match &self.final_norm {
            Some(norm) => norm.forward(&hidden),
            None => Ok(hidden),
        }
    }
}

/// Everything of BART and MBART but the names they carry: shared embeddings, both stacks and
/// the checkpoint's `final_logits_bias`.
pub struct BartStack {
    shared: Embedding,
    encoder_embeddings: StackEmbeddings,
    /// Invertible adapters run on the encoder's embeddings (Python hooks
    /// `encoder.layernorm_embedding`); BART takes no prompt tuning.
    embedding_adapters: EmbeddingSlot,
    encoder_layers: Vec<BartEncoderLayer>,
    decoder_embeddings: StackEmbeddings,
    decoder_layers: Vec<BartDecoderLayer>,
    /// `final_logits_bias` of a `*ForConditionalGeneration` checkpoint, added to its LM logits.
    final_logits_bias: Option<Tensor>,
}

/// BART: `last_hidden_state` of the decoder and `encoder_last_hidden_state`.
#[with_adapters(
    model_type = "bart",
    layers = stack.encoder_layers,
    layer_mixin = BartEncoderLayer,
    layer_type = "BartEncoderLayer",
    decoder_layers = stack.decoder_layers,
    decoder_mixin = BartDecoderLayer,
    config = config,
    embeddings = stack.embedding_adapters,
    prompt_tuning = false
)]
pub struct BartModel {
    stack: BartStack,
    config: BartConfig,
}

/// MBART: BART's layers (and mixins, as in Python) in pre-norm order, with a final LayerNorm
/// after each stack.
#[with_adapters(
    model_type = "mbart",
    layers = stack.encoder_layers,
    layer_mixin = BartEncoderLayer,
    layer_type = "MBartEncoderLayer",
    decoder_layers = stack.decoder_layers,
    decoder_mixin = BartDecoderLayer,
    config = config,
    embeddings = stack.embedding_adapters,
    prompt_tuning = false
)]
pub struct MBartModel {
    stack: BartStack,
    config: BartConfig,
}

/// MBART checkpoints use BART's config keys.
pub type MBartConfig = BartConfig;

impl BartStack {
    /// Loads from `vb` rooted at the base model (`model.` of a `*ForConditionalGeneration`
    /// checkpoint already applied); `root` is the checkpoint root (for `final_logits_bias`).
    pub fn load(vb: VarBuilder, root: &VarBuilder, config: &BartConfig) -> Result<Self> {
        let (h, vocab) = (config.d_model, config.vocab_size);
        // The shared table is saved once, under whichever name the checkpoint kept.
        let name =
            ["shared", "encoder.embed_tokens", "decoder.embed_tokens"].into_iter().find(|n| vb.contains_tensor(&format!("{n}.weight"))).unwrap_or("shared");
        let shared = candle_nn::embedding(vocab, h, vb.pp(name))?;
        let (encoder, decoder) = (vb.pp("encoder"), vb.pp("decoder"));
        let final_logits_bias = if root.contains_tensor("final_logits_bias") { Some(root.get((1, vocab), "final_logits_bias")?) } else { None };
        Ok(BartStack {
            embedding_adapters: EmbeddingSlot::new(shared.embeddings(), config.max_position_embeddings).with_invertible_path(encoder.prefix()),
            shared,
            encoder_embeddings: StackEmbeddings::load(&encoder, config)?,
            encoder_layers: (0..config.encoder_layers).map(|i| BartEncoderLayer::load(encoder.pp("layers").pp(i), config)).collect::<Result<_>>()?,
            decoder_embeddings: StackEmbeddings::load(&decoder, config)?,
            decoder_layers: (0..config.decoder_layers).map(|i| BartDecoderLayer::load(decoder.pp("layers").pp(i), config)).collect::<Result<_>>()?,
            final_logits_bias,
        })
    }

    /// The encoder over `input_ids`: `[batch, seq, hidden]`.
    fn encode(&self, config: &BartConfig, input_ids: &Tensor, attention_mask: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        let tokens = self.shared.forward(input_ids)?;
        let embedded = self.encoder_embeddings.forward(&tokens, input_ids, 0, config)?;
        let (embedded, _) = self.embedding_adapters.forward(&embedded, attention_mask, ctx)?;
        let mut hidden = dropout(&embedded, config.dropout, ctx)?;
        let mask = additive_mask(attention_mask, hidden.dtype())?;
        for layer in &self.encoder_layers {
            hidden = layer.forward(&hidden, &mask, ctx)?;
        }
        self.encoder_embeddings.finish(hidden)
    }
}

impl BartStack {
    fn forward(&self, config: &BartConfig, inputs: &ModelInputs<'_>, ctx: &ForwardContext) -> Result<ModelOutputs> {
        let (decoder_ids, past, decoder_mask) = decoder_inputs(inputs)?;
        let encoded = encoder_states(inputs, |ids, mask| self.encode(config, ids, mask, ctx))?;
        let cross_mask = additive_mask(&encoder_mask(inputs, &encoded)?, encoded.dtype())?;
        let tokens = self.shared.forward(decoder_ids)?;
        let embedded = self.decoder_embeddings.forward(&tokens, decoder_ids, past, config)?;
        let mut hidden = dropout(&embedded, config.dropout, ctx)?;
        let mask = causal_additive_mask_for(&decoder_mask, decoder_ids.dim(1)?, hidden.dtype())?;
        let source = CrossSource { states: &encoded, mask: &cross_mask };
        for (i, layer) in self.decoder_layers.iter().enumerate() {
            hidden = layer.forward(&hidden, &mask, &source, inputs.cache.map(|c| (c, i)), ctx)?;
        }
        Ok(ModelOutputs { last_hidden_state: self.decoder_embeddings.finish(hidden)?, encoder_last_hidden_state: Some(encoded) })
    }
}

/// `load`, `config` and `ModelForward` of a model over a [`BartStack`].
macro_rules! bart_family {
    ($model:ident) => {
        impl $model {
            /// Loads from `vb` rooted at the base model (`model.` of a
            /// `*ForConditionalGeneration` checkpoint already applied); `root` is the checkpoint
            /// root (for `final_logits_bias`).
            pub fn load(vb: VarBuilder, root: &VarBuilder, config: &BartConfig) -> Result<Self> {
                Ok($model { stack: BartStack::load(vb, root, config)?, config: config.clone() })
            }

            pub fn config(&self) -> &BartConfig {
                &self.config
            }

            /// `final_logits_bias` of the checkpoint, when it has one.
            pub fn final_logits_bias(&self) -> Option<&Tensor> {
                self.stack.final_logits_bias.as_ref()
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
                LN_EPS
            }

            fn tie_word_embeddings(&self) -> bool {
                self.config.tie_word_embeddings
            }

            fn lm_head(&self) -> Option<&Tensor> {
                Some(self.stack.shared.embeddings())
            }

            /// `decoder_start_token_id`, else BART's default (2, its `</s>`).
            fn decoder_start_token_id(&self) -> Option<u32> {
                Some(self.config.decoder_start_token_id.unwrap_or(2) as u32)
            }

            fn lm_head_bias(&self) -> Option<&Tensor> {
                self.stack.final_logits_bias.as_ref()
            }
        }
    };
}

bart_family!(BartModel);
bart_family!(MBartModel);
