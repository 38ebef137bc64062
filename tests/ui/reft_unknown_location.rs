#![allow(unused_imports)]

use adapters_runtime::{adapter_mixin, ReftSlot};

#[adapter_mixin(reft(ouptut = reft))]
pub struct Layer {
    reft: ReftSlot,
}

fn main() {}
