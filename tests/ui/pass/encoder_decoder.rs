// An encoder-decoder: two layer types, the decoder's with cross-attention marks, walked encoder
// first (Python's `iter_layers` order); the mapping lists both mixins.

use adapters_runtime::{adapter_config, adapter_mixin, with_adapters, AdaptableModel, AdapterMixin, BottleneckSlot, LoRALinear, PrefixSlot};

#[adapter_config]
pub struct Config {
    hidden_size: usize,
    num_attention_heads: usize,
    num_hidden_layers: usize,
    hidden_dropout_prob: f64,
    attention_probs_dropout_prob: f64,
}

pub struct Attention {
    q_proj: LoRALinear,
    prefix: PrefixSlot,
}

#[adapter_mixin(lora(q = self_attn.q_proj), prefix(encoder_prefix = self_attn.prefix))]
pub struct EncoderLayer {
    self_attn: Attention,
}

#[adapter_mixin(
    lora(q = self_attn.q_proj, cross_q = encoder_attn.q_proj),
    bottleneck(cross_adapter = cross_attention_adapters),
    prefix(self_prefix = self_attn.prefix, cross_prefix = encoder_attn.prefix),
)]
pub struct DecoderLayer {
    self_attn: Attention,
    encoder_attn: Attention,
    cross_attention_adapters: BottleneckSlot,
}

pub struct Stack<L> {
    layers: Vec<L>,
}

#[with_adapters(
    model_type = "toy",
    layers = encoder.layers,
    layer_mixin = EncoderLayer,
    decoder_layers = decoder.layers,
    decoder_mixin = DecoderLayer,
    config = config
)]
pub struct ToyModel {
    encoder: Stack<EncoderLayer>,
    decoder: Stack<DecoderLayer>,
    config: Config,
}

fn main() {
    assert_eq!(DecoderLayer::MIXIN.slots.len(), 5);
    let mapping = ToyModel::MAPPING;
    assert_eq!(mapping.layer_mixin.name, "EncoderLayer");
    assert_eq!(mapping.decoder_mixin.map(|m| m.name), Some("DecoderLayer"));
    assert!(mapping.has_location("cross_adapter") && mapping.has_location("cross_prefix"));
}
