//! What the kernels' unit tests share: seeded inputs and the largest difference of two results.

use candle_core::Tensor;

use crate::methods::init::Rng;

/// The largest absolute difference of two tensors of one shape.
pub(super) fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    crate::compare::compare(a, b).unwrap().max_abs
}

/// Seeded normal draws (the same numbers on every run) with this mean and spread, on the CPU.
pub(super) fn randn(rng: &mut Rng, mean: f32, std: f32, shape: &[usize]) -> Tensor {
    let n = rng.normal_vec(shape.iter().product(), std);
    (Tensor::from_vec(n, shape, &candle_core::Device::Cpu).unwrap() + f64::from(mean)).unwrap()
}
