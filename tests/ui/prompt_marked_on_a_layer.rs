#![allow(unused_imports)]

use adapters_runtime::{adapter_mixin, EmbeddingSlot};

#[adapter_mixin(prompt(embeddings = slot))]
pub struct Layer {
    slot: EmbeddingSlot,
}

fn main() {}
