#![allow(unused_imports)]

use adapters_runtime::with_adapters;

#[with_adapters(model_type = "toy", layers = encoder.layers, layer_mixin = Layer, config = config)]
pub fn model() {}

fn main() {}
