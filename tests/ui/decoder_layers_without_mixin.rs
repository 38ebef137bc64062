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

pub struct Stack {
    layers: Vec<Layer>,
}

// An encoder-decoder names its decoder stack and the decoder layer type together.
#[with_adapters(model_type = "toy", layers = encoder.layers, layer_mixin = Layer, config = config, decoder_layers = decoder.layers)]
pub struct Model {
    encoder: Stack,
    decoder: Stack,
    config: Config,
}

fn main() {}
