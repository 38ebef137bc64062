#![allow(unused_imports)]

use adapters_runtime::{adapter_mixin, BottleneckSlot, LoRALinear};

struct Attention {
    query: LoRALinear,
    value: LoRALinear,
}

#[adapter_mixin(lora(q = atention.query))]
pub struct Layer {
    attention: Attention,
}

fn main() {}
