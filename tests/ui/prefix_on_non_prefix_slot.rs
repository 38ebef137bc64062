#![allow(unused_imports)]

use adapters_runtime::{adapter_mixin, BottleneckSlot, LoRALinear};

struct Attention {
    query: LoRALinear,
    value: LoRALinear,
}

#[adapter_mixin(prefix(self_prefix = attention.query))]
pub struct Layer {
    attention: Attention,
    norm: BottleneckSlot,
}

fn main() {}
