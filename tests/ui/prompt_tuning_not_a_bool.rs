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

// `prompt_tuning` takes `true` or `false`, not a string.
#[with_adapters(model_type = "toy", layers = encoder.layers, layer_mixin = Layer, config = config, embeddings = embeddings.adapters, prompt_tuning = "no")]
pub struct Model {
    embeddings: Embeddings,
    encoder: Encoder,
    config: Config,
}

fn main() {}
