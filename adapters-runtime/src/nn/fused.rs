//! Softmax as a single graph node with its own backward (candle's fused kernel has no gradient
//! and its composed version adds several nodes to the training graph, each with a zero-filled
//! gradient buffer), and `linear`: the one entry point for `x W^T + b` that picks the bf16
//! kernel, the frozen-weight training node or candle's product.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, D};

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{what}: expected f32");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

struct SoftmaxLastDim;

impl CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "adapters-softmax-last-dim"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, "softmax")?;
        let dims = layout.shape().dims();
        let n = dims[dims.len() - 1];
        let mut dst = src.to_vec();
        {
            use rayon::prelude::*;
            dst.par_chunks_exact_mut(n).for_each(|row| super::fast_math::simd(super::fast_math::SoftmaxInPlace(row)));
        }
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        softmax_backward(res, grad_res, 1.0).map(Some)
    }
}

/// The gradient of `softmax(x * scale)`'s input from its output `y` and the output's gradient
/// `g`: `scale * y * (g - sum(g * y))` over the last dimension, one parallel pass over the rows
/// (f32).
pub(super) fn softmax_backward(y: &Tensor, g: &Tensor, scale: f32) -> Result<Tensor> {
    y.contiguous()?.apply_op2_no_bwd(&g.contiguous()?, &SoftmaxBackward { scale })
}

struct SoftmaxBackward {
    scale: f32,
}

impl candle_core::CustomOp2 for SoftmaxBackward {
    fn name(&self) -> &'static str {
        "adapters-softmax-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        use rayon::prelude::*;
        let (y, g) = (contiguous_f32(s1, l1, "softmax backward")?, contiguous_f32(s2, l2, "softmax backward")?);
        let n = l1.shape().dims().last().copied().unwrap_or(1).max(1);
        // dx starts as the output's gradient; each row turns it into the input's in place.
        let mut dx = g.to_vec();
        dx.par_chunks_mut(n).zip(y.par_chunks(n)).for_each(|(grad, probs)| {
            super::fast_math::simd(SoftmaxGradRow { grad, probs, scale: self.scale, dropout: None });
        });
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// One row of softmax's input gradient, in place over the gradient that arrives: `grad` holds
/// the gradient of the (dropped) probabilities and becomes `scale * P * (dP - sum(dP * P))`,
/// with `dP = grad * dropout factor` when dropout follows the softmax (attention: the factors of
/// elements `start..` of the draws).
pub(super) struct SoftmaxGradRow<'a> {
    pub(super) grad: &'a mut [f32],
    pub(super) probs: &'a [f32],
    pub(super) scale: f32,
    pub(super) dropout: Option<(super::dropout::DropoutDraws, usize)>,
}

impl super::fast_math::SimdKernel for SoftmaxGradRow<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        if let Some((draws, start)) = self.dropout {
            for (j, g) in self.grad.iter_mut().enumerate() {
                *g *= draws.factor(start + j);
            }
        }
        let dot = super::fast_math::dot(self.grad, self.probs);
        for (g, p) in self.grad.iter_mut().zip(self.probs) {
            *g = self.scale * p * (*g - dot);
        }
    }
}

/// Softmax over the last dimension with a gradient (f32; other types take candle's composed op).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.dtype() != DType::F32 || !x.device().is_cpu() {
        return candle_nn::ops::softmax(x, D::Minus1);
    }
    x.contiguous()?.apply_op1(SoftmaxLastDim)
}

/// `x W^T + b` for inputs of any rank (the last dimension is the feature dimension). When `x`
/// is part of a training graph and the weight is frozen, the weight and bias get no gradient
/// work (`nn/linear_nodes.rs`).
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let untracked = !x.track_op() && !weight.track_op() && !bias.is_some_and(Tensor::track_op);
    if let Some(out) = untracked.then(|| super::bf16_matmul::matmul_nt(x, weight, bias)).transpose()?.flatten() {
        return Ok(out);
    }
    if let Some(out) = untracked.then(|| super::f32_matmul::matmul_nt(x, weight, bias)).transpose()?.flatten() {
        return Ok(out);
    }
    if super::linear_nodes::FrozenLinear::applies(x, weight, bias) {
        return x.contiguous()?.apply_op1(super::linear_nodes::FrozenLinear::new(weight, bias)?);
    }
    if super::linear_nodes::TrainedLinear::applies(x, weight, bias) {
        return super::linear_nodes::TrainedLinear::apply(x, weight, bias);
    }
    let out = x.broadcast_matmul(&weight.t()?)?;
    match bias {
        // The product is a fresh tensor nothing else holds: adding in place saves a second
        // output buffer (a fresh large buffer costs its page faults, more than the add).
        Some(b) if untracked && out.device().is_cpu() && out.is_contiguous() && b.dims() == [out.dim(D::Minus1)?] && b.dtype() == out.dtype() => {
            out.inplace_op2(&b.contiguous()?, &BiasAddInPlace)?;
            Ok(out)
        }
        Some(b) => out.broadcast_add(b),
        None => Ok(out),
    }
}

/// `out[.., j] += bias[j]` on a contiguous output (f32, bf16 or f16).
struct BiasAddInPlace;

impl candle_core::InplaceOp2 for BiasAddInPlace {
    fn name(&self) -> &'static str {
        "adapters-bias-add-in-place"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        fn add<T: Copy + std::ops::Add<Output = T>>(out: &mut [T], bias: &[T]) {
            for row in out.chunks_exact_mut(bias.len()) {
                for (o, b) in row.iter_mut().zip(bias) {
                    *o = *o + *b;
                }
            }
        }
        let (Some((o0, o1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("bias add: operands must be contiguous")
        };
        match (s1, s2) {
            (CpuStorage::F32(o), CpuStorage::F32(b)) => add(&mut o[o0..o1], &b[b0..b1]),
            (CpuStorage::BF16(o), CpuStorage::BF16(b)) => add(&mut o[o0..o1], &b[b0..b1]),
            (CpuStorage::F16(o), CpuStorage::F16(b)) => add(&mut o[o0..o1], &b[b0..b1]),
            _ => candle_core::bail!("bias add: output and bias must share a float dtype"),
        }
        Ok(())
    }
}

/// [`linear`] with a candle `Linear`'s weight and bias.
pub fn linear_module(x: &Tensor, module: &candle_nn::Linear) -> Result<Tensor> {
    linear(x, module.weight(), module.bias())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    use crate::nn::test_support::{max_diff, randn};

    #[test]
    fn frozen_weight_linear_matches_matmul_and_its_input_gradient() {
        let mut rng = crate::methods::init::Rng::new(7);
        // Rows 1..3 of a larger variable: a contiguous input that starts at an offset.
        let x = Var::from_tensor(&randn(&mut rng, 0.0, 1.0, &[4, 3, 8])).unwrap();
        let w = randn(&mut rng, 0.0, 1.0, &[5, 8]);
        let b = randn(&mut rng, 0.0, 1.0, &[5]);
        let probe = randn(&mut rng, 0.0, 1.0, &[2, 3, 5]);
        for bias in [Some(&b), None] {
            let input = x.as_tensor().narrow(0, 1, 2).unwrap();
            let ours = linear(&input, &w, bias).unwrap();
            let product = input.broadcast_matmul(&w.t().unwrap()).unwrap();
            let theirs = match bias {
                Some(b) => product.broadcast_add(b).unwrap(),
                None => product,
            };
            assert_eq!(ours.dims(), [2, 3, 5]);
            assert!(max_diff(&ours, &theirs) < 1e-6);
            let g1 = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            assert!(max_diff(g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap()) < 1e-5);
            // The frozen weight and bias get no gradient.
            assert!(g1.get(&w).is_none() && g1.get(&b).is_none());
        }
    }

    /// A trained weight and bias: every gradient equals the composed ops', with the input
    /// tracked or not.
    #[test]
    fn trained_linear_matches_matmul_and_every_gradient() {
        let mut rng = crate::methods::init::Rng::new(9);
        let w = Var::from_tensor(&randn(&mut rng, 0.0, 1.0, &[5, 8])).unwrap();
        let b = Var::from_tensor(&randn(&mut rng, 0.0, 1.0, &[5])).unwrap();
        let probe = randn(&mut rng, 0.0, 1.0, &[2, 3, 5]);
        for tracked_input in [true, false] {
            let x = randn(&mut rng, 0.0, 1.0, &[2, 3, 8]);
            let x = if tracked_input { Var::from_tensor(&x).unwrap().as_tensor().clone() } else { x };
            for bias in [Some(b.as_tensor()), None] {
                let ours = linear(&x, w.as_tensor(), bias).unwrap();
                let product = x.broadcast_matmul(&w.as_tensor().t().unwrap()).unwrap();
                let theirs = match bias {
                    Some(b) => product.broadcast_add(b).unwrap(),
                    None => product,
                };
                assert!(max_diff(&ours, &theirs) < 1e-6);
                let g1 = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                let g2 = (theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                let mut trained = vec![w.as_tensor()];
                trained.extend(bias);
                if tracked_input {
                    trained.push(&x);
                }
                for t in trained {
                    assert!(max_diff(g1.get(t).unwrap(), g2.get(t).unwrap()) < 1e-5);
                }
                assert_eq!(g1.get(&x).is_some(), tracked_input);
            }
        }
    }

    #[test]
    fn gradients_equal_the_composed_ops() {
        let mut rng = crate::methods::init::Rng::new(7);
        let x = Var::from_tensor(&randn(&mut rng, 0.0, 1.0, &[3, 5, 16])).unwrap();
        let w = Var::from_tensor(&randn(&mut rng, 1.0, 0.1, &[16])).unwrap();
        let b = Var::from_tensor(&randn(&mut rng, 0.0, 0.1, &[16])).unwrap();
        let probe = randn(&mut rng, 0.0, 1.0, &[3, 5, 16]);
        let ours = softmax_last_dim(&crate::nn::layer_norm(&x, &w, &b, 1e-12).unwrap()).unwrap();
        let theirs = candle_nn::ops::softmax(&candle_nn::ops::layer_norm_slow(&x, &w, &b, 1e-12).unwrap(), D::Minus1).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-6);
        let g1 = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        for v in [&x, &w, &b] {
            let d = max_diff(g1.get(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
            assert!(d < 1e-5, "gradient differs by {d}");
        }
    }
}
