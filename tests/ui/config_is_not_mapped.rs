#![allow(unused_imports)]

use adapters_runtime::{adapter_mixin, with_adapters, LoRALinear};

pub struct Config {
    hidden_size: usize,
}

#[adapter_mixin(lora(q = query))]
pub struct Layer {
    query: LoRALinear,
}

#[with_adapters(model_type = "toy", layers = layers, layer_mixin = Layer, config = config)]
pub struct Model {
    layers: Vec<Layer>,
    config: Config,
}

fn main() {}
