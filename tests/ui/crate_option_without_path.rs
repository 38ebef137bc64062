#![allow(unused_imports)]

use adapters_runtime::{adapter_mixin, LoRALinear};

#[adapter_mixin(crate, lora(q = query))]
pub struct Layer {
    query: LoRALinear,
}

fn main() {}
