//! The attention probabilities `softmax(scores * scale + mask)` in one pass: scale, mask,
//! softmax and the rounding back to the scores' dtype per row, in f32. Composed of candle ops
//! this is three passes over `[batch, heads, q, k]` and, in bf16 and f16, three slow ones (each
//! element is converted to f32 and back per op); fused it is one.

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, WithDType};

use rayon::prelude::*;

use super::bf16_bits;

/// `softmax(scores * scale + mask)` over the last dimension. `scores`: `[batch, heads, q, k]`;
/// `mask`: additive, `[batch or 1, 1, q or 1, k]`. In f32 training graphs the pass is one node
/// whose backward gives the scores their gradient (the mask is a constant); a trained mask or
/// another dtype in training takes the composed ops with their gradients.
pub fn scaled_masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    let tracked = scores.track_op() || mask.track_op();
    if !tracked && scores.device().is_cpu() && scores.dtype() == mask.dtype() && fits(scores.shape(), mask)? {
        return scores.contiguous()?.apply_op2_no_bwd(&mask.contiguous()?, &ScaledMaskedSoftmax { scale });
    }
    if !mask.track_op()
        && scores.dtype() == candle_core::DType::F32
        && mask.dtype() == candle_core::DType::F32
        && scores.device().is_cpu()
        && fits(scores.shape(), mask)?
    {
        return scores.contiguous()?.apply_op2(&mask.contiguous()?, ScaledMaskedSoftmax { scale });
    }
    let scores = (scores * scale)?.broadcast_add(mask)?;
    if tracked {
        super::fused::softmax_last_dim(&scores)
    } else {
        candle_nn::ops::softmax_last_dim(&scores)
    }
}

/// `a b^T` over the last two dimensions (attention's `q k^T`; `p v` is `matmul_nt(p, v^T)`):
/// the bf16 kernel when nothing is trained through it, candle's matmul otherwise.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// let q = Tensor::ones((1, 2, 3, 4), DType::F32, &Device::Cpu)?;
/// let scores = adapters_runtime::nn::matmul_nt(&q, &q)?; // [1, 2, 3, 3], each 4.0
/// assert_eq!(scores.dims(), [1, 2, 3, 3]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn matmul_nt(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !a.track_op() && !b.track_op() {
        if let Some(out) = super::bf16_matmul::batched_matmul_nt(a, b)? {
            return Ok(out);
        }
    }
    a.matmul(&b.t()?)
}

/// `a b` over the last two dimensions (attention's `p v`): the bf16 kernel on `b^T` (a small
/// copy) when it applies, candle's matmul otherwise.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// let p = Tensor::ones((1, 2, 3, 4), DType::F32, &Device::Cpu)?;
/// let v = Tensor::ones((1, 2, 4, 5), DType::F32, &Device::Cpu)?;
/// assert_eq!(adapters_runtime::nn::matmul(&p, &v)?.dims(), [1, 2, 3, 5]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    // The kernel takes even inner sizes only: check before copying b^T.
    let even = b.rank() >= 2 && b.dim(candle_core::D::Minus2)? % 2 == 0;
    if even && a.dtype() == candle_core::DType::BF16 && super::bf16_matmul::available() && !a.track_op() && !b.track_op() {
        if let Some(out) = super::bf16_matmul::batched_matmul_nt(a, &b.t()?.contiguous()?)? {
            return Ok(out);
        }
    }
    a.matmul(b)
}

/// Whether the mask broadcasts over scores of this shape the way the fused passes read it.
pub(super) fn fits(scores: &Shape, mask: &Tensor) -> Result<bool> {
    if scores.rank() != 4 || mask.rank() != 4 {
        return Ok(false);
    }
    let (b, _, q, k) = scores.dims4()?;
    let (mb, mh, mq, mk) = mask.dims4()?;
    Ok((mb == b || mb == 1) && mh == 1 && (mq == q || mq == 1) && mk == k)
}

/// `softmax(scores * scale + mask)` over the heads of one layer, then the values weighted by the
/// probabilities (dropout `p` on them in training): `[batch, heads, q, d]`. In f32 training
/// graphs this is one node with its own backward (`nn/attention_core.rs`); otherwise the
/// kernels above.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// let q = Tensor::ones((1, 2, 3, 4), DType::F32, &Device::Cpu)?;
/// let mask = Tensor::zeros((1, 1, 1, 3), DType::F32, &Device::Cpu)?;
/// let ctx = adapters_runtime::ForwardContext::base();
/// let out = adapters_runtime::nn::attend_heads(&q, &q, &q, &mask, 0.5, 0.1, &ctx)?;
/// assert_eq!(out.dims(), [1, 2, 3, 4]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn attend_heads(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64, p: f64, ctx: &crate::ForwardContext) -> Result<Tensor> {
    if let Some(out) = super::attention_core::attention_core(q, k, v, mask, scale, p, ctx)? {
        return Ok(out);
    }
    let probs = scaled_masked_softmax(&matmul_nt(q, k)?, mask, scale)?;
    matmul(&super::dropout::dropout(&probs, p, ctx)?, v)
}

struct ScaledMaskedSoftmax {
    scale: f64,
}

impl CustomOp2 for ScaledMaskedSoftmax {
    fn name(&self) -> &'static str {
        "adapters-scaled-masked-softmax"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let scale = self.scale as f32;
        let (dims, mask_dims) = (l1.shape().dims(), l2.shape().dims());
        let (Some((a0, a1)), Some((m0, m1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("scaled masked softmax: operands must be contiguous")
        };
        let shape = Shape4 { heads: dims[1], q: dims[2], k: dims[3], mask_batch: mask_dims[0], mask_q: mask_dims[2] };
        let storage = match (s1, s2) {
            (CpuStorage::F32(s), CpuStorage::F32(m)) => {
                let mut out = vec![0f32; a1 - a0];
                run(&s[a0..a1], &m[m0..m1], &mut out, shape, scale, |v| v, |v| v);
                CpuStorage::F32(out)
            }
            (CpuStorage::BF16(s), CpuStorage::BF16(m)) => {
                let mut out = vec![s[a0]; a1 - a0];
                run(
                    bf16_bits::as_bits(&s[a0..a1]),
                    bf16_bits::as_bits(&m[m0..m1]),
                    bf16_bits::as_bits_mut(&mut out),
                    shape,
                    scale,
                    bf16_bits::to_f32,
                    bf16_bits::from_f32,
                );
                CpuStorage::BF16(out)
            }
            (CpuStorage::F16(s), CpuStorage::F16(m)) => {
                let mut out = vec![s[a0]; a1 - a0];
                run(&s[a0..a1], &m[m0..m1], &mut out, shape, scale, |v| v.to_f64() as f32, |v| WithDType::from_f64(f64::from(v)));
                CpuStorage::F16(out)
            }
            _ => candle_core::bail!("scaled masked softmax: scores and mask must share a float dtype"),
        };
        Ok((storage, l1.shape().clone()))
    }

    /// The scores' gradient, `scale * y * (g - sum(g * y))`; the mask is not trained.
    fn bwd(&self, _scores: &Tensor, _mask: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(super::fused::softmax_backward(res, grad_res, self.scale as f32)?), None))
    }
}

#[derive(Clone, Copy)]
pub(super) struct Shape4 {
    pub(super) heads: usize,
    pub(super) q: usize,
    pub(super) k: usize,
    pub(super) mask_batch: usize,
    pub(super) mask_q: usize,
}

impl Shape4 {
    /// Where the mask row of score row `row` (of `batch * heads * q`) starts.
    #[inline(always)]
    pub(super) fn mask_offset(&self, row: usize) -> usize {
        let (b, qi) = (row / (self.heads * self.q), row % self.q);
        (if self.mask_batch == 1 { 0 } else { b }) * self.mask_q * self.k + (if self.mask_q == 1 { 0 } else { qi }) * self.k
    }
}

/// The rows in parallel on candle's thread pool; `load`/`store` convert the storage type to and
/// from f32 (generic, so they inline into the loops: a function pointer per element costs more
/// than the softmax).
fn run<T, L, S>(scores: &[T], mask: &[T], out: &mut [T], shape: Shape4, scale: f32, load: L, store: S)
where
    T: Copy + Send + Sync,
    L: Fn(T) -> f32 + Sync,
    S: Fn(f32) -> T + Sync,
{
    let k = shape.k;
    out.par_chunks_mut(k).enumerate().for_each_init(
        || vec![0f32; k],
        |row_f32, (row, dst)| {
            let mask_row = shape.mask_offset(row);
            let (src, m) = (&scores[row * k..(row + 1) * k], &mask[mask_row..mask_row + k]);
            super::fast_math::simd(SoftmaxRow { src, mask: m, row: row_f32, dst, scale, load: &load, store: &store });
        },
    );
}

/// One row: `softmax(src * scale + mask)` through an f32 buffer, at the CPU's vector width.
struct SoftmaxRow<'a, T, L, S> {
    src: &'a [T],
    mask: &'a [T],
    row: &'a mut [f32],
    dst: &'a mut [T],
    scale: f32,
    load: &'a L,
    store: &'a S,
}

impl<T: Copy, L: Fn(T) -> f32, S: Fn(f32) -> T> super::fast_math::SimdKernel for SoftmaxRow<'_, T, L, S> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        for ((v, s), m) in self.row.iter_mut().zip(self.src).zip(self.mask) {
            *v = (self.load)(*s) * self.scale + (self.load)(*m);
        }
        super::fast_math::softmax_in_place::<T>(self.row);
        for (d, v) in self.dst.iter_mut().zip(self.row.iter()) {
            *d = (self.store)(*v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::init::{Init, Placement, Rng};
    use candle_core::{DType, Device};

    /// Equal to the composed ops, for every mask shape attention uses.
    #[test]
    fn equals_scale_mask_softmax_composed() {
        let mut init = Init::new(Rng::new(9), Placement::new(Device::Cpu, DType::F32));
        let scores = init.normal(&[2, 3, 4, 5], 2.0).unwrap();
        for mask_shape in [[2, 1, 1, 5], [1, 1, 1, 5], [2, 1, 4, 5], [1, 1, 4, 5]] {
            let mask = (init.uniform(&mask_shape, 1.0).unwrap().ge(0.0).unwrap().to_dtype(DType::F32).unwrap() * -1e9).unwrap();
            let fused = scaled_masked_softmax(&scores, &mask, 0.3).unwrap();
            let composed = candle_nn::ops::softmax_last_dim(&(&scores * 0.3).unwrap().broadcast_add(&mask).unwrap()).unwrap();
            let diff = crate::compare::compare(&fused, &composed).unwrap().max_abs;
            // Probabilities are at most 1; the fused pass's exponential is within 2 ulp of libm's.
            assert!(diff <= 2.5e-7, "{mask_shape:?}: {diff}");
            // bf16: within bf16 rounding of the f32 result.
            let half = scaled_masked_softmax(&scores.to_dtype(DType::BF16).unwrap(), &mask.to_dtype(DType::BF16).unwrap(), 0.3).unwrap();
            assert_eq!(half.dtype(), DType::BF16);
            let diff = crate::compare::compare(&half, &composed).unwrap().max_abs;
            assert!(diff <= 1e-2, "{mask_shape:?} bf16: {diff}");
            // In a training graph: the scores' gradient equals the composed ops'.
            let var = candle_core::Var::from_tensor(&scores).unwrap();
            let probe = init.normal(&[2, 3, 4, 5], 1.0).unwrap();
            let fused = scaled_masked_softmax(var.as_tensor(), &mask, 0.3).unwrap();
            let composed = candle_nn::ops::softmax(&(var.as_tensor() * 0.3).unwrap().broadcast_add(&mask).unwrap(), candle_core::D::Minus1).unwrap();
            assert!(crate::compare::compare(&fused, &composed).unwrap().max_abs <= 2.5e-7);
            let g1 = (fused * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (composed * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let diff = crate::compare::compare(g1.get(var.as_tensor()).unwrap(), g2.get(var.as_tensor()).unwrap()).unwrap().max_abs;
            assert!(diff <= 1e-6, "{mask_shape:?} gradient: {diff}");
        }
    }
}
