//! The base model as the runtime drives it: one object-safe trait, implemented for every model
//! the macros annotate (`#[with_adapters]` plus [`ModelForward`]). [`AdaptedModel`] is written
//! once over it, so `AdaptedModel<BertModel>` and `AdaptedModel<dyn BaseModel>` (what
//! `load_model` returns when the architecture is chosen at run time) share every method.
//!
//! [`AdaptedModel`]: crate::AdaptedModel

use candle_core::{Result, Tensor};

use crate::context::ForwardContext;
use crate::methods::prompt::EmbeddingSlot;
use crate::mixin::{AdaptableModel, ModelDims, ModelForward, ModelMapping, SlotMut, SlotRef};
use crate::model_io::{InputKind, ModelInputs, ModelOutputs};

/// What the runtime needs from a base model: its mapping and sizes, its slots by layer, and its
/// forward pass with the hooks heads use.
pub trait BaseModel {
    fn mapping(&self) -> ModelMapping;
    fn dims(&self) -> ModelDims;
    /// The layers adapters attach to (a model that applies one physical layer several times
    /// counts it once).
    fn layer_count(&self) -> usize;
    /// Every slot with its layer index.
    fn for_each_slot(&self, f: &mut dyn FnMut(usize, SlotRef<'_>));
    fn for_each_slot_mut(&mut self, f: &mut dyn FnMut(usize, SlotMut<'_>));
    /// Applies the marks' slot settings once (see [`AdapterMixin::configure_slots`]).
    fn configure_slots(&mut self);
    fn embedding_slot(&self) -> Option<&EmbeddingSlot>;
    fn embedding_slot_mut(&mut self) -> Option<&mut EmbeddingSlot>;
    /// The inputs the model takes and those it requires.
    fn accepts(&self) -> (&'static [InputKind], &'static [InputKind]);
    fn forward_with(&self, inputs: &ModelInputs<'_>, ctx: &ForwardContext) -> Result<ModelOutputs>;
    fn attention_mask(&self, inputs: &ModelInputs<'_>) -> Result<Tensor>;
    fn pooled_output(&self, last_hidden_state: &Tensor) -> Option<Result<Tensor>>;
    fn has_pooler(&self) -> bool;
    fn input_embeddings(&self) -> Option<&Tensor>;
    fn classifier_dropout(&self) -> Option<f64>;
    fn layer_norm_eps(&self) -> f64;
    fn tie_word_embeddings(&self) -> bool;
    fn lm_head(&self) -> Option<&Tensor>;
    fn lm_head_reverses_invertible(&self) -> bool;
    fn final_logit_softcapping(&self) -> Option<f64>;
    fn head_input(&self, last_hidden_state: &Tensor) -> Result<Tensor>;
    fn lm_head_bias(&self) -> Option<&Tensor>;
    fn decoder_start_token_id(&self) -> Option<u32>;
    fn sequence_output(&self, last_hidden_state: &Tensor, input_ids: Option<&Tensor>) -> Result<Tensor>;
}

impl<M: AdaptableModel + ModelForward> BaseModel for M {
    fn mapping(&self) -> ModelMapping {
        M::MAPPING
    }
    fn dims(&self) -> ModelDims {
        AdaptableModel::dims(self)
    }
    fn layer_count(&self) -> usize {
        let mut count = 0;
        self.for_each_layer(&mut |_, _| count += 1);
        count
    }
    fn for_each_slot(&self, f: &mut dyn FnMut(usize, SlotRef<'_>)) {
        self.for_each_layer(&mut |i, layer| layer.for_each_slot(&mut |slot| f(i, slot)));
    }
    fn for_each_slot_mut(&mut self, f: &mut dyn FnMut(usize, SlotMut<'_>)) {
        self.for_each_layer_mut(&mut |i, layer| layer.for_each_slot_mut(&mut |slot| f(i, slot)));
    }
    fn configure_slots(&mut self) {
        self.for_each_layer_mut(&mut |_, layer| layer.configure_slots());
    }
    fn embedding_slot(&self) -> Option<&EmbeddingSlot> {
        AdaptableModel::embedding_slot(self)
    }
    fn embedding_slot_mut(&mut self) -> Option<&mut EmbeddingSlot> {
        AdaptableModel::embedding_slot_mut(self)
    }
    fn accepts(&self) -> (&'static [InputKind], &'static [InputKind]) {
        (M::ACCEPTS, M::REQUIRES)
    }
    fn forward_with(&self, inputs: &ModelInputs<'_>, ctx: &ForwardContext) -> Result<ModelOutputs> {
        ModelForward::forward_with(self, inputs, ctx)
    }
    fn attention_mask(&self, inputs: &ModelInputs<'_>) -> Result<Tensor> {
        ModelForward::attention_mask(self, inputs)
    }
    fn pooled_output(&self, last_hidden_state: &Tensor) -> Option<Result<Tensor>> {
        ModelForward::pooled_output(self, last_hidden_state)
    }
    fn has_pooler(&self) -> bool {
        ModelForward::has_pooler(self)
    }
    fn input_embeddings(&self) -> Option<&Tensor> {
        ModelForward::input_embeddings(self)
    }
    fn classifier_dropout(&self) -> Option<f64> {
        ModelForward::classifier_dropout(self)
    }
    fn layer_norm_eps(&self) -> f64 {
        ModelForward::layer_norm_eps(self)
    }
    fn tie_word_embeddings(&self) -> bool {
        ModelForward::tie_word_embeddings(self)
    }
    fn lm_head(&self) -> Option<&Tensor> {
        ModelForward::lm_head(self)
    }
    fn lm_head_reverses_invertible(&self) -> bool {
        ModelForward::lm_head_reverses_invertible(self)
    }
    fn final_logit_softcapping(&self) -> Option<f64> {
        ModelForward::final_logit_softcapping(self)
    }
    fn head_input(&self, last_hidden_state: &Tensor) -> Result<Tensor> {
        ModelForward::head_input(self, last_hidden_state)
    }
    fn lm_head_bias(&self) -> Option<&Tensor> {
        ModelForward::lm_head_bias(self)
    }
    fn decoder_start_token_id(&self) -> Option<u32> {
        ModelForward::decoder_start_token_id(self)
    }
    fn sequence_output(&self, last_hidden_state: &Tensor, input_ids: Option<&Tensor>) -> Result<Tensor> {
        ModelForward::sequence_output(self, last_hidden_state, input_ids)
    }
}
