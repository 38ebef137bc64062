//! Dropout with masks from the forward context's seeded generator.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::context::ForwardContext;

/// Elements per parallel task when drawing a mask.
const CHUNK: usize = 8192;

/// Inverted dropout, active only in training. Masks come from the context's seeded generator
/// (candle's own dropout draws from an unseedable thread RNG); without one, from candle's. The
/// mask is drawn in parallel with the numbers a serial loop would take
/// ([`crate::methods::init::Rng::take_stream`]), and applying it is one training-graph node
/// whose backward multiplies by the same mask (a plain product would also compute a gradient
/// for the mask).
pub fn dropout(x: &Tensor, p: f64, ctx: &ForwardContext) -> Result<Tensor> {
    if !ctx.train() || p <= 0.0 {
        return Ok(x.clone());
    }
    let Some(mask) = draw_mask(x.elem_count(), p, ctx)? else {
        return candle_nn::ops::dropout(x, p as f32);
    };
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?;
    if super::is_cpu_f32(x) {
        return x.contiguous()?.apply_op1(ApplyMask { mask });
    }
    x.mul(&mask.to_dtype(x.dtype())?)
}

/// `n` mask values for dropout `p`: `1 / (1 - p)` where kept, `0` where dropped, from the
/// context's seeded generator; `None` when the context has none.
pub(crate) fn draw_mask(n: usize, p: f64, ctx: &ForwardContext) -> Result<Option<Vec<f32>>> {
    let Some(draws) = take_draws(n, p, ctx)? else { return Ok(None) };
    let mut mask = vec![0f32; n];
    mask.par_chunks_mut(CHUNK).enumerate().for_each(|(c, chunk)| super::fast_math::simd(FillMask { draws, offset: c * CHUNK, chunk }));
    Ok(Some(mask))
}

/// The next `n` dropout decisions of the context's seeded generator, to be read where they are
/// applied (attention reads them inside its softmax pass and again in its backward, instead of
/// keeping a mask); `None` when the context has none.
pub(crate) fn take_draws(n: usize, p: f64, ctx: &ForwardContext) -> Result<Option<DropoutDraws>> {
    let Some(rng) = ctx.dropout_rng() else { return Ok(None) };
    let stream = rng.lock().map_err(|_| crate::error::internal("dropout generator poisoned"))?.take_stream(n);
    let keep = 1.0 - p as f32;
    Ok(Some(DropoutDraws { stream, keep, scale: 1.0 / keep }))
}

/// Dropout decisions as a counter-based stream: element `i` is kept when its draw is below
/// `keep`, and then scaled by `1 / keep`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DropoutDraws {
    stream: crate::methods::init::UniformStream,
    keep: f32,
    scale: f32,
}

impl DropoutDraws {
    /// The factor of element `i`: `1 / keep` or `0`.
    #[inline(always)]
    pub(crate) fn factor(&self, i: usize) -> f32 {
        if self.stream.uniform(i) < self.keep {
            self.scale
        } else {
            0.0
        }
    }
}

struct FillMask<'a> {
    draws: DropoutDraws,
    offset: usize,
    chunk: &'a mut [f32],
}

impl super::fast_math::SimdKernel for FillMask<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        for (i, m) in self.chunk.iter_mut().enumerate() {
            *m = self.draws.factor(self.offset + i);
        }
    }
}

/// `x * mask` elementwise (f32), with `g * mask` as its only gradient.
struct ApplyMask {
    mask: Tensor,
}

impl CustomOp1 for ApplyMask {
    fn name(&self) -> &'static str {
        "adapters-dropout"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
            candle_core::bail!("dropout: a contiguous f32 input expected")
        };
        let (mask, _) = self.mask.storage_and_layout();
        let candle_core::Storage::Cpu(CpuStorage::F32(mask)) = &*mask else { candle_core::bail!("dropout: an f32 CPU mask expected") };
        let mut out = x[start..end].to_vec();
        out.par_chunks_mut(CHUNK).zip(mask.par_chunks(CHUNK)).for_each(|(out, mask)| {
            for (o, m) in out.iter_mut().zip(mask) {
                *o *= m;
            }
        });
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.mul(&self.mask)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::init::Rng;
    use candle_core::{Device, Var};
    use std::sync::{Arc, Mutex};

    /// The mask is the serial draws' (a kept element is scaled by 1 / keep, a dropped one is 0),
    /// and the gradient is the upstream gradient through the same mask.
    #[test]
    fn masks_with_the_serial_draws_and_passes_the_gradient_through_them() {
        let n = 3 * CHUNK + 17;
        let x = Var::from_tensor(&Tensor::arange(1f32, n as f32 + 1.0, &Device::Cpu).unwrap()).unwrap();
        let ctx = ForwardContext::with_setup(None, true).with_dropout_rng(Arc::new(Mutex::new(Rng::new(3))));
        let out = dropout(&x, 0.25, &ctx).unwrap().to_vec1::<f32>().unwrap();
        let mut serial = Rng::new(3);
        for (i, got) in out.iter().enumerate() {
            let want = if serial.uniform() < 0.75 { (i + 1) as f32 / 0.75 } else { 0.0 };
            assert!((got - want).abs() <= want.abs() * 1e-6, "element {i}: {got} vs {want}");
        }
        let again = dropout(&x, 0.25, &ctx).unwrap();
        let grads = again.sum_all().unwrap().backward().unwrap();
        let grad = grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        let values = again.to_vec1::<f32>().unwrap();
        assert!(grad.iter().zip(&values).enumerate().all(|(i, (g, v))| (*g - v / (i + 1) as f32).abs() < 1e-5));
        assert!(grad.contains(&0.0) && grad.iter().any(|g| *g > 1.0));
    }
}
