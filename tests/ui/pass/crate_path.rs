// `crate = path`: a crate that reaches the runtime under another path (here a re-export) names
// it once per macro, and the generated impls use that path.

mod reexport {
    pub use adapters_runtime as rt;
}

use reexport::rt::{adapter_config, adapter_mixin, with_adapters, AdaptableModel, AdapterMixin, AdapterModelConfig, LoRALinear};

#[adapter_config(crate = reexport::rt, hidden_size = dim)]
pub struct Config {
    dim: usize,
    num_attention_heads: usize,
    num_hidden_layers: usize,
    hidden_dropout_prob: f64,
    attention_probs_dropout_prob: f64,
}

#[adapter_mixin(lora(q = query), crate = reexport::rt)]
pub struct Layer {
    query: LoRALinear,
}

pub struct Encoder {
    layers: Vec<Layer>,
}

#[with_adapters(crate = reexport::rt, model_type = "toy", layers = encoder.layers, layer_mixin = Layer, config = config)]
pub struct ToyModel {
    encoder: Encoder,
    config: Config,
}

fn main() {
    assert_eq!(Layer::MIXIN.slots.len(), 1);
    assert_eq!(Config::KEY_MAPPING, &[("hidden_size", "dim"), ("num_attention_heads", "num_attention_heads"), ("num_hidden_layers", "num_hidden_layers"), ("hidden_dropout_prob", "hidden_dropout_prob"), ("attention_probs_dropout_prob", "attention_probs_dropout_prob")]);
    assert_eq!(ToyModel::MAPPING.adapter_model_class, "ToyAdapterModel");
    let _: Option<ToyAdapterModel> = None;
}
