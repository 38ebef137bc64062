#![allow(unused_imports)]

use adapters_runtime::{adapter_config, adapter_mixin, with_adapters, EmbeddingSlot, LoRALinear};

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

pub struct Embeddings {
    adapters: EmbeddingSlot,
}

// `invertible = false` refines an embedding slot the model does not mark.
#[with_adapters(model_type = "toy", layers = encoder.layers, layer_mixin = Layer, config = config, invertible = false)]
pub struct Model {
    embeddings: Embeddings,
    encoder: Encoder,
    config: Config,
}

fn main() {}
