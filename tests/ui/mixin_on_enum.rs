#![allow(unused_imports)]

use adapters_runtime::adapter_mixin;

#[adapter_mixin(lora(q = query))]
pub enum Layer {
    A,
    B,
}

fn main() {}
