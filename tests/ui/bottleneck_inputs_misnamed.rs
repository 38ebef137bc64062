#![allow(unused_imports)]

use adapters_runtime::{adapter_mixin, BottleneckSlot};

#[adapter_mixin(bottleneck(mh_adapter(input, output) = attention_norm))]
pub struct Layer {
    attention_norm: BottleneckSlot,
}

fn main() {}
