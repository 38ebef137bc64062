#![allow(unused_imports)]

use adapters_runtime::{adapter_mixin, BottleneckSlot};

#[adapter_mixin(reft(output = norm))]
pub struct Layer {
    norm: BottleneckSlot,
}

fn main() {}
