//! A model made of two annotated submodels (Python's `EncoderDecoderModel` with
//! `ModelUsingSubmodelsAdaptersMixin`): any encoder and any decoder that takes
//! `encoder_hidden_states`, combined with no adapter code of their own. As in Python, each half
//! numbers its layers from 0 (`leave_out=[0]` leaves out the first layer of both), keeps its
//! own prefix pool (`encoder.prefix_tuning...`, `decoder.bert.prefix_tuning...`), and adapter
//! weights are named by each half's module path.

use adapters_runtime::mixin::{LayerSlots, SlotMut};
use adapters_runtime::{AdaptableModel, AdapterError, ForwardContext, InputKind, ModelDims, ModelForward, ModelInputs, ModelMapping, ModelOutputs};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::bert::BertConfig;
use crate::bert_decoder::BertDecoderModel;
use crate::seq2seq::{decoder_inputs, encoder_decoder_mask, encoder_mask, encoder_states, ENCODER_DECODER_INPUTS};
use crate::BertModel;

/// The top level of an `EncoderDecoderModel`'s `config.json` (each half's config sits under
/// `encoder` / `decoder`).
#[derive(Clone, Debug, Deserialize)]
pub struct EncoderDecoderConfig {
    #[serde(default)]
    pub decoder_start_token_id: Option<usize>,
    #[serde(default)]
    pub pad_token_id: Option<usize>,
}

/// An encoder `E` and a decoder `D` (which takes `EncoderHiddenStates`), each an annotated model.
pub struct EncoderDecoderModel<E, D> {
    encoder: E,
    decoder: D,
    config: EncoderDecoderConfig,
}

impl<E: AdaptableModel, D: AdaptableModel> EncoderDecoderModel<E, D> {
    /// Combines two loaded halves; `encoder_path` and `decoder_path` are their module paths (the
    /// `VarBuilder` prefixes they were loaded under, `encoder` and `decoder.bert`), which name
    /// their prefix pools.
    pub fn new(mut encoder: E, encoder_path: &str, mut decoder: D, decoder_path: &str, config: EncoderDecoderConfig) -> Self {
        set_prefix_pool(&mut encoder, encoder_path);
        set_prefix_pool(&mut decoder, decoder_path);
        EncoderDecoderModel { encoder, decoder, config }
    }
}

/// Puts every prefix slot of `model` in the pool at `path`.
fn set_prefix_pool<M: AdaptableModel>(model: &mut M, path: &str) {
    model.for_each_layer_mut(&mut |_, layer| {
        layer.for_each_slot_mut(&mut |slot| {
            if let SlotMut::Prefix(_, s) = slot {
                s.set_pool(path);
            }
        })
    });
}

impl<E: AdaptableModel, D: AdaptableModel> AdaptableModel for EncoderDecoderModel<E, D> {
    const MAPPING: ModelMapping = ModelMapping {
        model_type: "encoder-decoder",
        model_class: "EncoderDecoderModel",
        adapter_model_class: "EncoderDecoderModel",
        layer_type: E::MAPPING.layer_type,
        layer_mixin: E::MAPPING.layer_mixin,
        decoder_mixin: Some(D::MAPPING.layer_mixin),
        config_keys: E::MAPPING.config_keys,
        // Python's EncoderDecoderModel takes no prompt tuning; invertible adapters are not
        // wired here (see the model overview).
        has_embedding_slot: false,
        supports_prompt_tuning: false,
        supports_invertible: false,
    };

    fn dims(&self) -> ModelDims {
        self.encoder.dims()
    }

    /// The encoder's layers, then the decoder's, each numbered from 0.
    fn for_each_layer(&self, f: &mut dyn FnMut(usize, &dyn LayerSlots)) {
        self.encoder.for_each_layer(f);
        self.decoder.for_each_layer(f);
    }

    fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(usize, &mut dyn LayerSlots)) {
        self.encoder.for_each_layer_mut(f);
        self.decoder.for_each_layer_mut(f);
    }
}

impl<E: ModelForward, D: ModelForward> ModelForward for EncoderDecoderModel<E, D> {
    const ACCEPTS: &'static [InputKind] = ENCODER_DECODER_INPUTS;
    const REQUIRES: &'static [InputKind] = &[InputKind::DecoderInputIds];

    fn forward_with(&self, inputs: &ModelInputs<'_>, ctx: &ForwardContext) -> Result<ModelOutputs> {
        let (decoder_ids, _, decoder_mask) = decoder_inputs(inputs)?;
        let encoded = encoder_states(inputs, |ids, mask| Ok(self.encoder.forward_with(&ModelInputs::text(ids.clone(), mask.clone()), ctx)?.last_hidden_state))?;
        let source_mask = encoder_mask(inputs, &encoded)?;
        let mut decoder = ModelInputs::text(decoder_ids.clone(), decoder_mask).causal().with_encoder_hidden_states(encoded.clone(), Some(source_mask));
        decoder.cache = inputs.cache;
        let hidden = self.decoder.forward_with(&decoder, ctx)?.last_hidden_state;
        Ok(ModelOutputs { last_hidden_state: hidden, encoder_last_hidden_state: Some(encoded) })
    }

    fn attention_mask(&self, inputs: &ModelInputs<'_>) -> Result<Tensor> {
        encoder_decoder_mask(inputs)
    }

    /// The decoder's word embeddings, which its LM head is tied to.
    fn input_embeddings(&self) -> Option<&Tensor> {
        self.decoder.input_embeddings()
    }

    fn layer_norm_eps(&self) -> f64 {
        self.decoder.layer_norm_eps()
    }

    fn decoder_start_token_id(&self) -> Option<u32> {
        Some(self.config.decoder_start_token_id.or(self.config.pad_token_id).unwrap_or(0) as u32)
    }
}

/// `config.json` of a BERT-to-BERT `EncoderDecoderModel`: each half's BERT config, and the
/// top-level generation settings.
#[derive(Clone, Debug, Deserialize)]
pub struct BertPairConfig {
    pub encoder: BertConfig,
    pub decoder: BertConfig,
    #[serde(flatten)]
    pub top: EncoderDecoderConfig,
}

/// A BERT encoder with a BERT decoder (`BertLMHeadModel` with cross-attention), Python's
/// `EncoderDecoderModel.from_encoder_decoder_pretrained("bert-...", "bert-...")`.
pub type Bert2BertModel = EncoderDecoderModel<BertModel, BertDecoderModel>;

impl Bert2BertModel {
    /// Loads both halves from `vb` at the checkpoint root (`encoder.*`, `decoder.bert.*`).
    pub fn load(vb: VarBuilder, config: &BertPairConfig) -> Result<Self> {
        for (half, c) in [("encoder", &config.encoder), ("decoder", &config.decoder)] {
            if c.model_type.as_deref().is_some_and(|t| t != "bert") {
                return Err(AdapterError::InvalidConfig(format!(
                    "`{half}.model_type` is `{}`; encoder-decoder checkpoints are supported with BERT halves",
                    c.model_type.as_deref().unwrap_or_default()
                ))
                .into_candle());
            }
        }
        let encoder = BertModel::load(vb.pp("encoder"), &config.encoder)?;
        let decoder = BertDecoderModel::load(vb.pp("decoder").pp("bert"), &config.decoder)?;
        Ok(EncoderDecoderModel::new(encoder, "encoder", decoder, "decoder.bert", config.top.clone()))
    }
}
