#![allow(unused_imports)]

use adapters_runtime::{adapter_config, adapter_mixin, with_adapters, LoRALinear};

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

pub struct PlainLayer;

pub struct PlainEncoder {
    layers: Vec<PlainLayer>,
}

#[with_adapters(model_type = "toy", layers = encoder.layers, layer_mixin = PlainLayer, config = config)]
pub struct Model {
    encoder: PlainEncoder,
    config: Config,
}

fn main() {}
