#![allow(unused_imports)]

// A wrong argument of `#[with_adapters]` gives one error: the model still implements
// `AdaptableModel` (over no layers) and still has its `ToyAdapterModel` alias, so code using
// them reports nothing more.

use adapters_runtime::{adapter_config, adapter_mixin, with_adapters, AdaptableModel, LoRALinear};

#[adapter_config]
pub struct Config {
    hidden_size: usize,
    num_attention_heads: usize,
    num_hidden_layers: usize,
    hidden_dropout_prob: f64,
    attention_probs_dropout_prob: f64,
}

#[adapter_mixin(lora(q = query))]
pub struct Layer {
    query: LoRALinear,
}

pub struct Encoder {
    layers: Vec<Layer>,
}

#[with_adapters(model_type = toy, layers = encoder.layers, layer_mixin = Layer, config = config)]
pub struct ToyModel {
    encoder: Encoder,
    config: Config,
}

fn uses_the_model(_model: &ToyAdapterModel) -> &'static str {
    ToyModel::MAPPING.model_class
}

fn main() {}
