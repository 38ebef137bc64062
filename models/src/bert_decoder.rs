//! BERT as a decoder with cross-attention (`is_decoder`, `add_cross_attention`: the `bert` of a
//! `BertLMHeadModel` in an `EncoderDecoderModel`): BERT's layers with a `crossattention` block
//! between self-attention and the feed-forward block. Python adapts the cross-attention's
//! output at its `mh_adapter` location, puts LoRA on its q/k/v, and keys its prefixes
//! `cross_prefix`; it has no `cross_adapter` location.

use adapters_runtime::nn::causal_additive_mask_for;
use adapters_runtime::{adapter_mixin, with_adapters, AdapterError};
use adapters_runtime::{ForwardContext, InputKind, KvCache, ModelForward, ModelInputs, ModelOutputs, ReftSlot};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::attention::additive_mask;
use crate::bert::{BertAttention, BertConfig, BertEmbeddings, BertIntermediate, BertOutput};

/// A decoder layer: causal self-attention, cross-attention over the encoder output, the
/// feed-forward block.
#[adapter_mixin(
    lora(
        q = attention.self_attention.query,
        k = attention.self_attention.key,
        v = attention.self_attention.value,
        attn_output = attention.output.dense,
        cross_q = crossattention.self_attention.query,
        cross_k = crossattention.self_attention.key,
        cross_v = crossattention.self_attention.value,
        cross_attn_output = crossattention.output.dense,
        intermediate = intermediate.dense,
        output = output.dense,
    ),
    bottleneck(mh_adapter = attention.output.layer_norm, cross_mh_adapter = crossattention.output.layer_norm, output_adapter = output.layer_norm),
    prefix(self_prefix = attention.self_attention.prefix, cross_prefix = crossattention.self_attention.prefix),
    reft(output = reft),
)]
pub struct BertDecoderLayer {
    attention: BertAttention,
    crossattention: BertAttention,
    intermediate: BertIntermediate,
    output: BertOutput,
    /// ReFT intervenes on the layer's output here.
    reft: ReftSlot,
}

impl BertDecoderLayer {
    fn load(vb: VarBuilder, cfg: &BertConfig) -> Result<Self> {
        Ok(BertDecoderLayer {
            attention: BertAttention::load(vb.pp("attention"), cfg)?,
            crossattention: BertAttention::load(vb.pp("crossattention"), cfg)?,
            intermediate: BertIntermediate::load(vb.pp("intermediate"), cfg)?,
            output: BertOutput::load(vb.pp("output"), cfg)?,
            reft: ReftSlot::new(&vb, cfg.hidden_size),
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, source: (&Tensor, &Tensor), cache: Option<(&KvCache, usize)>, ctx: &ForwardContext) -> Result<Tensor> {
        let attended = self.attention.self_attention.forward(x, mask, cache, ctx)?;
        let hidden = self.attention.output.forward(&attended, x, ctx)?;
        let (encoded, cross_mask) = source;
        let crossed = self.crossattention.self_attention.attend_to(&hidden, encoded, cross_mask, None, ctx)?;
        let hidden = self.crossattention.output.forward(&crossed, &hidden, ctx)?;
        let intermediate = self.intermediate.forward(&hidden, ctx)?;
        self.reft.forward(&self.output.forward(&intermediate, &hidden, ctx)?, ctx)
    }
}

pub struct BertDecoderStack {
    layers: Vec<BertDecoderLayer>,
}

/// The BERT decoder: causal, with cross-attention over `encoder_hidden_states`, a KV cache for
/// generation. No embedding slot: in an encoder-decoder, Python runs invertible adapters on the
/// encoder's embeddings only.
#[with_adapters(model_type = "bert", layers = encoder.layers, layer_mixin = BertDecoderLayer, layer_type = "BertLayer", config = config)]
pub struct BertDecoderModel {
    embeddings: BertEmbeddings,
    encoder: BertDecoderStack,
    config: BertConfig,
}

impl BertDecoderModel {
    /// Loads from a `VarBuilder` at the BERT model (`decoder.bert` of an `EncoderDecoderModel`).
    pub fn load(vb: VarBuilder, config: &BertConfig) -> Result<Self> {
        let layers = vb.pp("encoder").pp("layer");
        Ok(BertDecoderModel {
            embeddings: BertEmbeddings::load(vb.pp("embeddings"), config)?,
            encoder: BertDecoderStack { layers: (0..config.num_hidden_layers).map(|i| BertDecoderLayer::load(layers.pp(i), config)).collect::<Result<_>>()? },
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }
}

impl ModelForward for BertDecoderModel {
    const ACCEPTS: &'static [InputKind] =
        &[InputKind::InputIds, InputKind::AttentionMask, InputKind::PositionIds, InputKind::Causal, InputKind::KvCache, InputKind::EncoderHiddenStates];
    const REQUIRES: &'static [InputKind] = &[InputKind::InputIds, InputKind::EncoderHiddenStates];

    /// `attention_mask` covers the cached positions too.
    fn forward_with(&self, inputs: &ModelInputs<'_>, ctx: &ForwardContext) -> Result<ModelOutputs> {
        let ids = inputs.ids()?;
        let past = inputs.cache.map_or(0, KvCache::len);
        let positions = crate::llama::decoder_positions(inputs, ids.dim(1)?, past)?;
        let mut hidden = self.embeddings.forward(ids, &positions, ctx)?;
        let encoded = inputs
            .encoder_hidden_states
            .as_ref()
            .ok_or_else(|| AdapterError::InvalidInput("the BERT decoder needs encoder_hidden_states".into()).into_candle())?;
        let encoder_mask = match &inputs.encoder_attention_mask {
            Some(m) => m.clone(),
            None => Tensor::ones((encoded.dim(0)?, encoded.dim(1)?), candle_core::DType::I64, encoded.device())?,
        };
        let cross_mask = additive_mask(&encoder_mask, hidden.dtype())?;
        let mask = causal_additive_mask_for(&inputs.mask()?, ids.dim(1)?, hidden.dtype())?;
        for (i, layer) in self.encoder.layers.iter().enumerate() {
            hidden = layer.forward(&hidden, &mask, (encoded, &cross_mask), inputs.cache.map(|c| (c, i)), ctx)?;
        }
        Ok(ModelOutputs::hidden(hidden))
    }

    fn input_embeddings(&self) -> Option<&Tensor> {
        Some(self.embeddings.word_embeddings())
    }

    fn layer_norm_eps(&self) -> f64 {
        self.config.layer_norm_eps
    }
}
