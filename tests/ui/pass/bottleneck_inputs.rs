// A sublayer that hands its tensors to the adapters as (input, projected), as ALBERT's attention
// does, is one mark: `mh_adapter(input, projected) = ...`. Wrapping the model applies it
// (`configure_slots`); `forward_parts(projected, input, ctx)` then passes them in that order.

use adapters_runtime::{adapter_mixin, AdapterMixin, BottleneckInputs, BottleneckSlot, LayerNorm};
use candle_core::{DType, Device, Tensor};

#[adapter_mixin(bottleneck(mh_adapter(input, projected) = attention_norm, output_adapter(projected, input) = output_norm))]
pub struct Layer {
    attention_norm: BottleneckSlot,
    output_norm: BottleneckSlot,
}

fn slot() -> BottleneckSlot {
    let ones = Tensor::ones(4, DType::F32, &Device::Cpu).unwrap();
    BottleneckSlot::new(LayerNorm::new(ones.clone(), ones.zeros_like().unwrap(), 1e-12), "x")
}

fn main() {
    let mut layer = Layer { attention_norm: slot(), output_norm: slot() };
    assert_eq!(layer.attention_norm.inputs(), BottleneckInputs::ProjectedFirst);
    layer.configure_slots();
    assert_eq!(layer.attention_norm.inputs(), BottleneckInputs::InputFirst);
    assert_eq!(layer.output_norm.inputs(), BottleneckInputs::ProjectedFirst);
}
