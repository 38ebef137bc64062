#![allow(unused_imports)]

use adapters_runtime::{adapter_mixin, BottleneckSlot, LoRALinear};

struct Attention {
    query: LoRALinear,
    value: LoRALinear,
}

#[adapter_mixin(bottleneck(mh_adaptr = norm))]
pub struct Layer {
    attention: Attention,
    norm: BottleneckSlot,
}

fn main() {}
