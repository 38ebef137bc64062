#![allow(unused_imports)]

use adapters_runtime::adapter_config;

#[adapter_config(hiden_size = dim, num_attention_heads = n_heads, num_hidden_layers = n_layers, hidden_dropout_prob = dropout, attention_probs_dropout_prob = dropout)]
pub struct DistilConfig {
    dim: usize,
    n_heads: usize,
    n_layers: usize,
    dropout: f64,
}

fn main() {}
