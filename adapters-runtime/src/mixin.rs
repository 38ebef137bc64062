//! What the macros generate for a model, and what the runtime walks: slots, mixins, the mapping
//! and the config key view. Model authors do not implement these traits by hand;
//! `#[adapter_mixin]`, `#[with_adapters]` and `#[adapter_config]` do.

pub use crate::methods::bottleneck::BottleneckInputs;
use crate::methods::bottleneck::BottleneckSlot;
use crate::methods::lora::LoRALinear;
use crate::methods::prefix::PrefixSlot;
use crate::methods::reft::ReftSlot;

/// Which linear of a layer a LoRA-family slot wraps (the Python location keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LoraLocation {
    Query,
    Key,
    Value,
    /// A fused q/k/v projection (GPT-2's `c_attn`, Python's `selfattn` location of
    /// `LoRAMergedLinear`): one slot for the matrices `attn_matrices` selects among q, k and v.
    SelfAttn,
    Intermediate,
    Output,
    /// The attention output projection (`o_proj`, BERT's `attention.output.dense`), which the
    /// Python library never adapts: only PEFT adapters whose `target_modules` name it sit here.
    AttnOutput,
    /// The gate projection of a gated feed-forward block (`gate_proj`); PEFT adapters only.
    Gate,
}

/// Where a bottleneck slot sits in a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BottleneckLocation {
    /// After multi-head attention (`mh_adapter`).
    MhAdapter,
    /// After the feed-forward block (`output_adapter`).
    OutputAdapter,
    /// After a decoder's cross-attention (`cross_adapter`), only where a config sets
    /// `cross_adapter`.
    CrossAdapter,
}

impl BottleneckLocation {
    /// The Python location key, which is also the config flag that enables it.
    pub fn key(self) -> &'static str {
        match self {
            BottleneckLocation::MhAdapter => "mh_adapter",
            BottleneckLocation::OutputAdapter => "output_adapter",
            BottleneckLocation::CrossAdapter => "cross_adapter",
        }
    }
}

/// A slot, borrowed mutably, with its location.
pub enum SlotMut<'a> {
    Lora(LoraLocation, &'a mut LoRALinear),
    Bottleneck(BottleneckLocation, &'a mut BottleneckSlot),
    /// A prefix slot with its location key (`self_prefix`), as Python keys its prefix modules.
    Prefix(&'static str, &'a mut PrefixSlot),
    /// The layer output, where ReFT intervenes.
    Reft(&'a mut ReftSlot),
}

/// A slot, borrowed, with its location.
pub enum SlotRef<'a> {
    Lora(LoraLocation, &'a LoRALinear),
    Bottleneck(BottleneckLocation, &'a BottleneckSlot),
    Prefix(&'static str, &'a PrefixSlot),
    Reft(&'a ReftSlot),
}

/// The method family an insertion point serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotFamily {
    Lora,
    Bottleneck,
    Prefix,
    Reft,
}

/// One marked insertion point of a mixin, as written in `#[adapter_mixin(...)]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotSpec {
    pub family: SlotFamily,
    /// The location key (`q`, `mh_adapter`, ...).
    pub location: &'static str,
    /// The field path inside the layer (`attention.self_attention.query`).
    pub field: &'static str,
}

/// A mixin: the insertion points one layer type carries.
#[derive(Clone, Copy, Debug)]
pub struct MixinInfo {
    pub name: &'static str,
    pub slots: &'static [SlotSpec],
}

impl MixinInfo {
    pub fn has(&self, family: SlotFamily) -> bool {
        self.slots.iter().any(|s| s.family == family)
    }
}

/// Implemented by `#[adapter_mixin(...)]` on a layer struct.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an adapter mixin",
    label = "no `#[adapter_mixin(...)]` on this type",
    note = "mark the layer struct with `#[adapter_mixin(lora(...), bottleneck(...))]`, or name a layer type that has one (e.g. `layer_mixin = BertLayer`)"
)]
pub trait AdapterMixin {
    const MIXIN: MixinInfo;
    fn for_each_slot(&self, f: &mut dyn FnMut(SlotRef<'_>));
    fn for_each_slot_mut(&mut self, f: &mut dyn FnMut(SlotMut<'_>));
    /// Applies what the marks say beyond where the slots are (the input order of bottleneck
    /// slots); called once when the model is wrapped.
    fn configure_slots(&mut self) {}
}

/// A layer as the runtime walks it, whatever its mixin type (an encoder-decoder's two stacks have
/// two): the object-safe part of [`AdapterMixin`], implemented for every mixin.
pub trait LayerSlots {
    fn for_each_slot(&self, f: &mut dyn FnMut(SlotRef<'_>));
    fn for_each_slot_mut(&mut self, f: &mut dyn FnMut(SlotMut<'_>));
    fn configure_slots(&mut self);
}

impl<T: AdapterMixin> LayerSlots for T {
    fn for_each_slot(&self, f: &mut dyn FnMut(SlotRef<'_>)) {
        AdapterMixin::for_each_slot(self, f)
    }
    fn for_each_slot_mut(&mut self, f: &mut dyn FnMut(SlotMut<'_>)) {
        AdapterMixin::for_each_slot_mut(self, f)
    }
    fn configure_slots(&mut self) {
        AdapterMixin::configure_slots(self)
    }
}

/// The config values adapters need, under the names the Python library uses
/// (`CONFIG_CLASS_KEYS_MAPPING` maps other names onto these).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelDims {
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub num_hidden_layers: usize,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
}

/// Implemented by `#[adapter_config(...)]` on a model config struct.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an adapter model config",
    label = "no `#[adapter_config]` on this type",
    note = "mark the config struct with `#[adapter_config]` (and map keys it names otherwise, e.g. `#[adapter_config(hidden_size = dim)]`)"
)]
pub trait AdapterModelConfig {
    /// The Python names of the keys and the config fields they come from.
    const KEY_MAPPING: &'static [(&'static str, &'static str)];
    fn dims(&self) -> ModelDims;
}

/// The mapping entry of one model: which layer type carries which mixin.
#[derive(Clone, Copy, Debug)]
pub struct ModelMapping {
    pub model_type: &'static str,
    pub model_class: &'static str,
    /// The Python class with flexible heads (`BertAdapterModel`), written into head files.
    pub adapter_model_class: &'static str,
    /// The layer type as the model names it (`RobertaLayer`).
    pub layer_type: &'static str,
    /// The mixin that layer reuses (`BertLayer`); an encoder-decoder's encoder layer.
    pub layer_mixin: MixinInfo,
    /// An encoder-decoder's decoder layer mixin (its layers follow the encoder's in layer
    /// numbering, as Python's `iter_layers` yields them).
    pub decoder_mixin: Option<MixinInfo>,
    /// The Python names of the config keys and the fields they come from.
    pub config_keys: &'static [(&'static str, &'static str)],
    /// Whether the model marks an `EmbeddingSlot` (prompt tuning, invertible adapters).
    pub has_embedding_slot: bool,
    /// Whether that slot takes prompt tuning (`#[with_adapters(..., prompt_tuning = false)]`
    /// says it does not, as Python's `support_prompt_tuning = False`).
    pub supports_prompt_tuning: bool,
    /// Whether that slot takes invertible adapters (`invertible = false` says it does not, as
    /// Python's ViT has no `InvertibleAdaptersMixin`).
    pub supports_invertible: bool,
}

impl ModelMapping {
    /// Whether the model's checkpoints keep linear weights as Conv1D, `[in, out]` (GPT-2), the
    /// transpose of the `[out, in]` the slots hold: merged checkpoints are written back that way
    /// and PEFT files say `fan_in_fan_out`.
    pub fn stores_conv1d(&self) -> bool {
        self.model_type == "gpt2"
    }

    /// Whether any of the model's layer mixins marks a slot of `family`.
    pub fn has(&self, family: SlotFamily) -> bool {
        self.layer_mixin.has(family) || self.decoder_mixin.is_some_and(|m| m.has(family))
    }

    /// Every insertion point the model's layer mixins mark.
    fn slots(&self) -> impl Iterator<Item = &SlotSpec> {
        self.layer_mixin.slots.iter().chain(self.decoder_mixin.iter().flat_map(|m| m.slots))
    }

    /// Whether any layer marks a cross-attention location (`cross_q`, `cross_prefix`, ...).
    pub fn has_cross_attention(&self) -> bool {
        self.slots().any(|s| s.location.starts_with("cross"))
    }

    /// Whether any layer marks the location `location` (`cross_adapter`, `cross_prefix`).
    pub fn has_location(&self, location: &str) -> bool {
        self.slots().any(|s| s.location == location)
    }

    /// The methods this model supports, derived from the slots its mixins mark.
    pub fn supported_methods(&self) -> Vec<&'static str> {
        let mut methods = Vec::new();
        if self.has(SlotFamily::Bottleneck) {
            methods.extend(["seq_bn", "double_seq_bn", "par_bn", "scaled_par_bn", "compacter", "compacter++", "adapterplus"]);
            if self.supports_invertible {
                methods.extend(["seq_bn_inv", "double_seq_bn_inv"]);
            }
        }
        if self.has(SlotFamily::Lora) {
            methods.extend(["lora", "ia3", "dora", "vera", "dvora"]);
        }
        if self.has(SlotFamily::Prefix) {
            methods.extend(["prefix_tuning", "prefix_tuning_flat"]);
        }
        if self.supports_prompt_tuning {
            methods.push("prompt_tuning");
        }
        if self.has(SlotFamily::Reft) {
            methods.extend(["loreft", "noreft", "direft"]);
        }
        if self.has(SlotFamily::Prefix) && self.has(SlotFamily::Bottleneck) {
            methods.push("mam");
            if self.has(SlotFamily::Lora) {
                methods.push("unipelt");
            }
        }
        methods
    }
}

/// Implemented by `#[with_adapters(...)]` on a base model struct.
pub trait AdaptableModel {
    const MAPPING: ModelMapping;
    fn dims(&self) -> ModelDims;
    /// Every layer adapters attach to with its layer index, in Python's `iter_layers` order: an
    /// encoder-decoder's encoder layers, then its decoder layers numbered on (a model made of
    /// submodels numbers each submodel's layers from 0, as Python's `EncoderDecoderModel` does).
    fn for_each_layer(&self, f: &mut dyn FnMut(usize, &dyn LayerSlots));
    fn for_each_layer_mut(&mut self, f: &mut dyn FnMut(usize, &mut dyn LayerSlots));
    /// The slot after the embeddings (prompt tuning), when the model marks one.
    fn embedding_slot(&self) -> Option<&crate::methods::prompt::EmbeddingSlot> {
        None
    }
    fn embedding_slot_mut(&mut self) -> Option<&mut crate::methods::prompt::EmbeddingSlot> {
        None
    }
}

/// The forward pass of a model, written once by the model author with the context threaded
/// through to its slots. One trait for every model kind: what a pass takes and gives is in
/// [`ModelInputs`](crate::ModelInputs) and [`ModelOutputs`](crate::ModelOutputs).
pub trait ModelForward {
    /// The inputs this model takes; the runtime refuses any other before `forward_with` runs.
    const ACCEPTS: &'static [crate::InputKind] = &[crate::InputKind::InputIds, crate::InputKind::AttentionMask];
    /// The inputs it cannot run without.
    const REQUIRES: &'static [crate::InputKind] = &[crate::InputKind::InputIds];

    /// One pass; an encoder returns `last_hidden_state` `[batch, seq, hidden]`.
    fn forward_with(&self, inputs: &crate::ModelInputs<'_>, ctx: &crate::context::ForwardContext) -> candle_core::Result<crate::ModelOutputs>;

    /// The attention mask (`[batch, seq]`, 1 = attended) of the sequence the layers see, before
    /// any prompt: the inputs' own for text; vision models give one over their patch positions.
    fn attention_mask(&self, inputs: &crate::ModelInputs<'_>) -> candle_core::Result<candle_core::Tensor> {
        inputs.mask()
    }

    /// The pooler output (`[batch, hidden]`) for heads with `use_pooler`; `None`: no pooler.
    fn pooled_output(&self, _last_hidden_state: &candle_core::Tensor) -> Option<candle_core::Result<candle_core::Tensor>> {
        None
    }

    /// Whether `pooled_output` gives an output (checked when a `use_pooler` head is added).
    fn has_pooler(&self) -> bool {
        false
    }

    /// The input embedding matrix `[vocab, hidden]`, which masked LM heads tie their decoder to.
    fn input_embeddings(&self) -> Option<&candle_core::Tensor> {
        None
    }

    /// Dropout of heads without `dropout_prob`, when the model config names one
    /// (`classifier_dropout`); otherwise heads use `hidden_dropout_prob`.
    fn classifier_dropout(&self) -> Option<f64> {
        None
    }

    /// The epsilon of the model's LayerNorms (used by heads with a LayerNorm).
    fn layer_norm_eps(&self) -> f64 {
        1e-12
    }

    /// The config's `tie_word_embeddings`: language-model heads decode with the input
    /// embeddings (BERT-family checkpoints do; many decoders do not).
    fn tie_word_embeddings(&self) -> bool {
        true
    }

    /// The checkpoint's own language-model decoder `[vocab, hidden]` (its `lm_head`, or the input
    /// embeddings when tied), which generation uses when no causal LM head is active.
    fn lm_head(&self) -> Option<&candle_core::Tensor> {
        None
    }

    /// Whether the checkpoint's `lm_head` sees the hidden states through the reverse of the
    /// active invertible adapter (Python's plugin interface hooks it there; its own decoder
    /// classes leave a static `lm_head` alone).
    fn lm_head_reverses_invertible(&self) -> bool {
        false
    }

    /// An encoder-decoder's first decoder token (`decoder_start_token_id`), which generation
    /// starts every row with; `None` for models without a decoder of their own.
    fn decoder_start_token_id(&self) -> Option<u32> {
        None
    }

    /// The bias the checkpoint's `lm_head` adds (BART's `final_logits_bias`, `[1, vocab]`).
    fn lm_head_bias(&self) -> Option<&candle_core::Tensor> {
        None
    }

    /// What heads (and the checkpoint's `lm_head`) read of `last_hidden_state`: itself, or, for
    /// T5 with tied embeddings, the output scaled by `d_model^-0.5`.
    fn head_input(&self, last_hidden_state: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        Ok(last_hidden_state.clone())
    }

    /// Gemma 2's `final_logit_softcapping`: the checkpoint's LM logits become `tanh(l / cap) * cap`.
    fn final_logit_softcapping(&self) -> Option<f64> {
        None
    }

    /// The vector per sequence that classification heads read: the first token for encoders;
    /// decoders override it with the last non-padding token, as Python's decoder models do.
    fn sequence_output(&self, last_hidden_state: &candle_core::Tensor, _input_ids: Option<&candle_core::Tensor>) -> candle_core::Result<candle_core::Tensor> {
        last_hidden_state.narrow(1, 0, 1)?.squeeze(1)
    }
}

/// Static checks the macros emit so that a mistake is reported on the marked token with a
/// message that says what to write.
pub mod assert {
    use super::*;

    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot carry LoRA: a `lora(...)` mark must name a `LoRALinear` field",
        label = "this field is not a `LoRALinear`",
        note = "declare the field as `adapters_runtime::LoRALinear` and build it with `LoRALinear::load(in, out, vb.pp(\"name\"))`"
    )]
    pub trait LoraTarget {
        fn as_lora(&self) -> &LoRALinear;
        fn as_lora_mut(&mut self) -> &mut LoRALinear;
    }
    impl LoraTarget for LoRALinear {
        fn as_lora(&self) -> &LoRALinear {
            self
        }
        fn as_lora_mut(&mut self) -> &mut LoRALinear {
            self
        }
    }

    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot carry bottleneck adapters: a `bottleneck(...)` mark must name a `BottleneckSlot` field",
        label = "this field is not a `BottleneckSlot`",
        note = "keep the sublayer's LayerNorm in an `adapters_runtime::BottleneckSlot` and call `slot.forward(hidden, residual, ctx)` where the model computed `LayerNorm(hidden + residual)`"
    )]
    pub trait BottleneckTarget {
        fn as_bottleneck(&self) -> &BottleneckSlot;
        fn as_bottleneck_mut(&mut self) -> &mut BottleneckSlot;
    }
    impl BottleneckTarget for BottleneckSlot {
        fn as_bottleneck(&self) -> &BottleneckSlot {
            self
        }
        fn as_bottleneck_mut(&mut self) -> &mut BottleneckSlot {
            self
        }
    }

    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot carry prefix tuning: a `prefix(...)` mark must name a `PrefixSlot` field",
        label = "this field is not a `PrefixSlot`",
        note = "add a field `prefix: adapters_runtime::PrefixSlot` to the attention module, build it with `PrefixSlot::new(&vb, hidden, heads, pad_token_id, PrefixPadding::InvertedMask)`, and call `let (k, v, mask) = self.prefix.forward(&k, &v, &mask, &hidden_states, ctx)?` before the attention scores"
    )]
    pub trait PrefixTarget {
        fn as_prefix(&self) -> &PrefixSlot;
        fn as_prefix_mut(&mut self) -> &mut PrefixSlot;
    }
    impl PrefixTarget for PrefixSlot {
        fn as_prefix(&self) -> &PrefixSlot {
            self
        }
        fn as_prefix_mut(&mut self) -> &mut PrefixSlot {
            self
        }
    }

    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot carry prompt tuning: `embeddings = ...` must name an `EmbeddingSlot` field",
        label = "this field is not an `EmbeddingSlot`",
        note = "add a field `adapters: adapters_runtime::EmbeddingSlot` to the embeddings module and call `let (hidden, mask) = self.adapters.forward(&hidden, &attention_mask, ctx)?` on the embeddings output"
    )]
    pub trait EmbeddingTarget {
        fn as_embedding(&self) -> &crate::methods::prompt::EmbeddingSlot;
        fn as_embedding_mut(&mut self) -> &mut crate::methods::prompt::EmbeddingSlot;
    }
    impl EmbeddingTarget for crate::methods::prompt::EmbeddingSlot {
        fn as_embedding(&self) -> &crate::methods::prompt::EmbeddingSlot {
            self
        }
        fn as_embedding_mut(&mut self) -> &mut crate::methods::prompt::EmbeddingSlot {
            self
        }
    }

    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot carry ReFT: a `reft(...)` mark must name a `ReftSlot` field",
        label = "this field is not a `ReftSlot`",
        note = "add a field `reft: adapters_runtime::ReftSlot` to the layer, build it with `ReftSlot::new(&vb, hidden)`, and return `self.reft.forward(&output, ctx)` at the end of the layer's forward"
    )]
    pub trait ReftTarget {
        fn as_reft(&self) -> &ReftSlot;
        fn as_reft_mut(&mut self) -> &mut ReftSlot;
    }
    impl ReftTarget for ReftSlot {
        fn as_reft(&self) -> &ReftSlot {
            self
        }
        fn as_reft_mut(&mut self) -> &mut ReftSlot {
            self
        }
    }

    /// A layer of a `layers`/`decoder_layers` stack, as the runtime walks it.
    pub fn layer<T: AdapterMixin>(t: &T) -> &dyn LayerSlots {
        t
    }
    pub fn layer_mut<T: AdapterMixin>(t: &mut T) -> &mut dyn LayerSlots {
        t
    }

    pub fn reft<T: ReftTarget + ?Sized>(t: &T) -> &ReftSlot {
        t.as_reft()
    }
    pub fn reft_mut<T: ReftTarget + ?Sized>(t: &mut T) -> &mut ReftSlot {
        t.as_reft_mut()
    }

    pub fn prefix<T: PrefixTarget + ?Sized>(t: &T) -> &PrefixSlot {
        t.as_prefix()
    }
    pub fn prefix_mut<T: PrefixTarget + ?Sized>(t: &mut T) -> &mut PrefixSlot {
        t.as_prefix_mut()
    }
    pub fn embedding<T: EmbeddingTarget + ?Sized>(t: &T) -> &crate::methods::prompt::EmbeddingSlot {
        t.as_embedding()
    }
    pub fn embedding_mut<T: EmbeddingTarget + ?Sized>(t: &mut T) -> &mut crate::methods::prompt::EmbeddingSlot {
        t.as_embedding_mut()
    }

    pub fn lora<T: LoraTarget + ?Sized>(t: &T) -> &LoRALinear {
        t.as_lora()
    }
    pub fn lora_mut<T: LoraTarget + ?Sized>(t: &mut T) -> &mut LoRALinear {
        t.as_lora_mut()
    }
    pub fn bottleneck<T: BottleneckTarget + ?Sized>(t: &T) -> &BottleneckSlot {
        t.as_bottleneck()
    }
    pub fn bottleneck_mut<T: BottleneckTarget + ?Sized>(t: &mut T) -> &mut BottleneckSlot {
        t.as_bottleneck_mut()
    }
}
