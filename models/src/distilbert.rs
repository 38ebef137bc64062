//! DistilBERT. Its config names keys differently (`dim`, `n_heads`, ...): one attribute maps
//! them. Bottleneck adapters live in `attention_adapters` / `output_adapters` beside the
//! LayerNorms, as in the Python library.

use adapters_runtime::nn::activation::Activation;
use adapters_runtime::nn::dropout;
use adapters_runtime::{adapter_config, adapter_mixin, with_adapters};
use adapters_runtime::{BottleneckSlot, EmbeddingSlot, ForwardContext, LayerNorm, LoRALinear, PrefixPadding, PrefixSlot, ReftSlot};
use adapters_runtime::{ModelForward, ModelInputs, ModelOutputs};
use candle_core::{Module, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

use crate::attention::{additive_mask, attend, split_heads};

fn default_act() -> String {
    "gelu".into()
}

/// `config.json` of DistilBERT checkpoints.
#[adapter_config(
    hidden_size = dim,
    num_attention_heads = n_heads,
    num_hidden_layers = n_layers,
    hidden_dropout_prob = dropout,
    attention_probs_dropout_prob = attention_dropout,
)]
#[derive(Clone, Debug, Deserialize)]
pub struct DistilBertConfig {
    pub vocab_size: usize,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub hidden_dim: usize,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default)]
    pub attention_dropout: f64,
    #[serde(default = "default_act")]
    pub activation: String,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub pad_token_id: usize,
    /// Dropout of classification heads (Python's heads read it as `classifier_dropout`).
    #[serde(default = "default_seq_classif_dropout")]
    pub seq_classif_dropout: f64,
}

fn default_seq_classif_dropout() -> f64 {
    0.2
}

/// DistilBERT's LayerNorms are built with eps 1e-12.
const LN_EPS: f64 = 1e-12;

struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    layer_norm: LayerNorm,
    dropout: f64,
    /// Prompt tuning inserts its prompt into the embeddings output here.
    adapters: EmbeddingSlot,
}

struct MultiHeadSelfAttention {
    q_lin: LoRALinear,
    k_lin: LoRALinear,
    v_lin: LoRALinear,
    out_lin: LoRALinear,
    /// Prefix tuning prepends its keys and values here.
    prefix: PrefixSlot,
    heads: usize,
    dropout: f64,
}

struct FeedForward {
    lin1: LoRALinear,
    lin2: LoRALinear,
    activation: Activation,
    dropout: f64,
}

/// One transformer block.
#[adapter_mixin(
    lora(q = attention.q_lin, k = attention.k_lin, v = attention.v_lin, intermediate = ffn.lin1, output = ffn.lin2, attn_output = attention.out_lin),
    bottleneck(mh_adapter = sa_layer_norm, output_adapter = output_layer_norm),
    prefix(self = attention.prefix),
    reft(output = reft),
)]
pub struct TransformerBlock {
    attention: MultiHeadSelfAttention,
    sa_layer_norm: BottleneckSlot,
    ffn: FeedForward,
    output_layer_norm: BottleneckSlot,
    /// ReFT intervenes on the block's output here.
    reft: ReftSlot,
}

impl TransformerBlock {
    fn load(vb: VarBuilder, cfg: &DistilBertConfig) -> Result<Self> {
        let (h, i) = (cfg.dim, cfg.hidden_dim);
        let att = vb.pp("attention");
        Ok(TransformerBlock {
            attention: MultiHeadSelfAttention {
                q_lin: LoRALinear::load(h, h, att.pp("q_lin"))?,
                k_lin: LoRALinear::load(h, h, att.pp("k_lin"))?,
                v_lin: LoRALinear::load(h, h, att.pp("v_lin"))?,
                out_lin: LoRALinear::load(h, h, att.pp("out_lin"))?,
                prefix: PrefixSlot::new(&att, h, cfg.n_heads, cfg.pad_token_id, PrefixPadding::PlainMask),
                heads: cfg.n_heads,
                dropout: cfg.attention_dropout,
            },
            sa_layer_norm: BottleneckSlot::load(h, LN_EPS, vb.pp("sa_layer_norm"), &vb.pp("attention_adapters"))?,
            ffn: FeedForward {
                lin1: LoRALinear::load(h, i, vb.pp("ffn").pp("lin1"))?,
                lin2: LoRALinear::load(i, h, vb.pp("ffn").pp("lin2"))?,
                activation: Activation::parse(&cfg.activation).map_err(adapters_runtime::AdapterError::into_candle)?,
                dropout: cfg.dropout,
            },
            output_layer_norm: BottleneckSlot::load(h, LN_EPS, vb.pp("output_layer_norm"), &vb.pp("output_adapters"))?,
            reft: ReftSlot::new(&vb, h),
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        let a = &self.attention;
        let q = split_heads(&a.q_lin.forward(x, ctx)?, a.heads)?;
        let k = split_heads(&a.k_lin.forward(x, ctx)?, a.heads)?;
        let v = split_heads(&a.v_lin.forward(x, ctx)?, a.heads)?;
        let (k, v, mask) = a.prefix.forward(&k, &v, mask, x, ctx)?;
        let scale = 1.0 / (q.dim(3)? as f64).sqrt();
        let context = attend(&q, &k, &v, &mask, scale, a.dropout, ctx)?;
        let sa_output = a.out_lin.forward(&context, ctx)?;
        let sa_output = self.sa_layer_norm.forward(&sa_output, x, ctx)?;
        let f = &self.ffn;
        let hidden = f.activation.forward(&f.lin1.forward(&sa_output, ctx)?)?;
        let ffn_output = dropout(&f.lin2.forward(&hidden, ctx)?, f.dropout, ctx)?;
        self.reft.forward(&self.output_layer_norm.forward(&ffn_output, &sa_output, ctx)?, ctx)
    }
}

struct Transformer {
    layers: Vec<TransformerBlock>,
}

/// The bare DistilBERT encoder: `last_hidden_state`.
#[with_adapters(model_type = "distilbert", layers = transformer.layers, layer_mixin = TransformerBlock, config = config, embeddings = embeddings.adapters)]
pub struct DistilBertModel {
    embeddings: Embeddings,
    transformer: Transformer,
    config: DistilBertConfig,
}

impl DistilBertModel {
    pub fn load(vb: VarBuilder, config: &DistilBertConfig) -> Result<Self> {
        let h = config.dim;
        let e = vb.pp("embeddings");
        let layers = (0..config.n_layers).map(|i| TransformerBlock::load(vb.pp("transformer").pp("layer").pp(i), config)).collect::<Result<_>>()?;
        let word_embeddings = candle_nn::embedding(config.vocab_size, h, e.pp("word_embeddings"))?;
        Ok(DistilBertModel {
            embeddings: Embeddings {
                adapters: EmbeddingSlot::new(word_embeddings.embeddings(), config.max_position_embeddings),
                word_embeddings,
                position_embeddings: candle_nn::embedding(config.max_position_embeddings, h, e.pp("position_embeddings"))?,
                layer_norm: LayerNorm::load(h, LN_EPS, e.pp("LayerNorm"))?,
                dropout: config.dropout,
            },
            transformer: Transformer { layers },
            config: config.clone(),
        })
    }
}

/// Python's `DistilBertModel` takes token ids and a mask only (the default `ACCEPTS`).
impl ModelForward for DistilBertModel {
    fn forward_with(&self, inputs: &ModelInputs<'_>, ctx: &ForwardContext) -> Result<ModelOutputs> {
        let input_ids = inputs.ids()?;
        let attention_mask = &inputs.mask()?;
        let (_, seq) = input_ids.dims2()?;
        let positions = Tensor::arange(0u32, seq as u32, input_ids.device())?.unsqueeze(0)?;
        let e = &self.embeddings;
        let sum = e.word_embeddings.forward(input_ids)?.broadcast_add(&e.position_embeddings.forward(&positions)?)?;
        let hidden = dropout(&e.layer_norm.forward(&sum)?, e.dropout, ctx)?;
        let (mut hidden, attention_mask) = e.adapters.forward(&hidden, attention_mask, ctx)?;
        let mask = additive_mask(&attention_mask, hidden.dtype())?;
        for layer in &self.transformer.layers {
            hidden = layer.forward(&hidden, &mask, ctx)?;
        }
        Ok(ModelOutputs::hidden(hidden))
    }

    fn input_embeddings(&self) -> Option<&Tensor> {
        Some(self.embeddings.word_embeddings.embeddings())
    }

    fn layer_norm_eps(&self) -> f64 {
        LN_EPS
    }

    fn classifier_dropout(&self) -> Option<f64> {
        Some(self.config.seq_classif_dropout)
    }
}
