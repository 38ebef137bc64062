#![allow(unused_imports)]

// One wrong mark on the layer gives one error: the layer still implements `AdapterMixin` (with
// no slots), so the model that names it, the config and the `ToyAdapterModel` alias report
// nothing more (before: "`Layer` is not an adapter mixin" at `layer_mixin = Layer` as well).

use adapters_runtime::{adapter_config, adapter_mixin, with_adapters, LoRALinear};

#[adapter_config(hidden_size = dim)]
pub struct Config {
    dim: usize,
    num_attention_heads: usize,
    num_hidden_layers: usize,
    hidden_dropout_prob: f64,
    attention_probs_dropout_prob: f64,
}

#[adapter_mixin(lora(qq = query))]
pub struct Layer {
    query: LoRALinear,
}

pub struct Encoder {
    layers: Vec<Layer>,
}

#[with_adapters(model_type = "toy", layers = encoder.layers, layer_mixin = Layer, config = config)]
pub struct ToyModel {
    encoder: Encoder,
    config: Config,
}

fn uses_the_model(_model: &ToyAdapterModel) -> &'static str {
    <ToyModel as adapters_runtime::AdaptableModel>::MAPPING.layer_mixin.name
}

fn main() {}
