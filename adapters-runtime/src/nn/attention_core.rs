//! `dropout(softmax(q k^T * scale + mask)) v` as one training-graph node (f32, CPU). Composed of
//! candle ops this is five nodes (the transposed keys, the product, the softmax, the dropout, the
//! second product), and candle's backward gives every node's inputs a zero-filled gradient
//! buffer and sums into it: for attention that is several passes over `[batch, heads, q, k]`
//! buffers per layer. This node keeps the probabilities from its forward and computes the three
//! input gradients directly.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::attention::{fits, Shape4};
use super::dropout::DropoutDraws;
use crate::context::ForwardContext;

/// The attention of `q` (`[batch, heads, q, d]`) over `k` and `v` (`[batch, heads, k, d]`)
/// with an additive `mask` (`[batch or 1, 1, q or 1, k]`), dropout `p` on the probabilities in
/// training; `[batch, heads, q, d]` out. `None` when the fused node does not apply (inference,
/// another dtype or device, a trained mask, mismatched heads, a context without a seeded
/// generator while dropout trains): the caller composes the ops.
pub(crate) fn attention_core(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64, p: f64, ctx: &ForwardContext) -> Result<Option<Tensor>> {
    let tracked = q.track_op() || k.track_op() || v.track_op();
    let f32_cpu = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu() && t.rank() == 4;
    if !tracked || mask.track_op() || ![q, k, v, mask].into_iter().all(f32_cpu) {
        return Ok(None);
    }
    let ((b, h, tq, d), (kb, kh, tk, kd), (vb, vh, vk, _)) = (q.dims4()?, k.dims4()?, v.dims4()?);
    if (kb, kh, kd) != (b, h, d) || (vb, vh, vk) != (b, h, tk) || !fits(&Shape::from((b, h, tq, tk)), mask)? {
        return Ok(None);
    }
    let dropout = if ctx.train() && p > 0.0 {
        match super::dropout::take_draws(b * h * tq * tk, p, ctx)? {
            Some(draws) => Some(draws),
            None => return Ok(None),
        }
    } else {
        None
    };
    let op = AttentionCore { mask: mask.contiguous()?, scale: scale as f32, dropout, saved: Mutex::new(None) };
    Ok(Some(q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)?))
}

struct AttentionCore {
    mask: Tensor,
    scale: f32,
    /// Dropout on the probabilities, read in the softmax pass and again in the backward.
    dropout: Option<DropoutDraws>,
    /// The probabilities and the (dropped) weights the values were averaged with (the same
    /// tensor without dropout), kept by the forward for the backward.
    saved: Mutex<Option<(Tensor, Tensor)>>,
}

fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        _ => candle_core::bail!("attention: contiguous f32 operands expected"),
    }
}

fn poisoned<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg("attention: saved state poisoned".into())
}

impl CustomOp3 for AttentionCore {
    fn name(&self) -> &'static str {
        "adapters-attention-core"
    }

    fn cpu_fwd(&self, qs: &CpuStorage, ql: &Layout, ks: &CpuStorage, kl: &Layout, vs: &CpuStorage, vl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, h, tq, d) = ql.shape().dims4()?;
        let tk = kl.shape().dims()[2];
        let bh = b * h;
        // q k^T over [bh, tq, d] x [bh, d, tk], the keys read transposed in place.
        let q3 = Layout::contiguous_with_offset((bh, tq, d), ql.start_offset());
        let kt = Layout::contiguous_with_offset((bh, tk, d), kl.start_offset()).transpose(1, 2)?;
        let CpuStorage::F32(scores) = qs.matmul(ks, (bh, tq, tk, d), &q3, &kt)? else { candle_core::bail!("attention: f32 scores expected") };
        let (mask_storage, mask_layout) = self.mask.storage_and_layout();
        let Storage::Cpu(mask_storage) = &*mask_storage else { candle_core::bail!("attention: the mask must be on the CPU") };
        let mask = f32_slice(mask_storage, mask_layout)?;
        let mask_dims = mask_layout.shape().dims();
        let shape = Shape4 { heads: h, q: tq, k: tk, mask_batch: mask_dims[0], mask_q: mask_dims[2] };
        let mut probs = scores;
        let mut weights = if self.dropout.is_some() { vec![0f32; probs.len()] } else { Vec::new() };
        let (scale, dropout) = (self.scale, self.dropout);
        let rows = probs.par_chunks_mut(tk).enumerate();
        match dropout {
            Some(draws) => rows.zip(weights.par_chunks_mut(tk)).for_each(|((row, probs), weights)| {
                let mask = &mask[shape.mask_offset(row)..][..tk];
                super::fast_math::simd(SoftmaxRow { probs, mask, scale, dropped: Some((weights, draws, row * tk)) });
            }),
            None => rows.for_each(|(row, probs)| {
                let mask = &mask[shape.mask_offset(row)..][..tk];
                super::fast_math::simd(SoftmaxRow { probs, mask, scale, dropped: None });
            }),
        }
        let probs = Tensor::from_vec(probs, (b, h, tq, tk), &Device::Cpu)?;
        let weights = if dropout.is_some() { Tensor::from_vec(weights, (b, h, tq, tk), &Device::Cpu)? } else { probs.clone() };
        let out = {
            let (w, _) = weights.storage_and_layout();
            let Storage::Cpu(w) = &*w else { unreachable!("made on the CPU above") };
            w.matmul(vs, (bh, tq, d, tk), &Layout::contiguous((bh, tq, tk)), &Layout::contiguous_with_offset((bh, tk, d), vl.start_offset()))?
        };
        *self.saved.lock().map_err(poisoned)? = Some((probs, weights));
        Ok((out, ql.shape().clone()))
    }

    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = self.saved.lock().map_err(poisoned)?;
        let Some((probs, weights)) = saved.as_ref() else { candle_core::bail!("attention: backward before forward") };
        let grad = grad.contiguous()?;
        let d_weights = grad.matmul(&v.t()?)?;
        let dv = weights.t()?.matmul(&grad)?;
        let d_scores = probs.apply_op2_no_bwd(&d_weights, &ScoresGrad { scale: self.scale, dropout: self.dropout })?;
        let dq = d_scores.matmul(k)?;
        let dk = d_scores.t()?.matmul(q)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}

/// One row: the scores become `softmax(scores * scale + mask)` in place; with dropout, the
/// dropped probabilities go to `weights` (`row_start`: the row's first element in the draws).
struct SoftmaxRow<'a> {
    probs: &'a mut [f32],
    mask: &'a [f32],
    scale: f32,
    dropped: Option<(&'a mut [f32], DropoutDraws, usize)>,
}

impl super::fast_math::SimdKernel for SoftmaxRow<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        for (v, m) in self.probs.iter_mut().zip(self.mask) {
            *v = *v * self.scale + m;
        }
        super::fast_math::softmax_in_place::<f32>(self.probs);
        if let Some((weights, draws, start)) = self.dropped {
            for (j, (w, p)) in weights.iter_mut().zip(self.probs.iter()).enumerate() {
                *w = p * draws.factor(start + j);
            }
        }
    }
}

/// The scores' gradient from the probabilities `P` and the weights' gradient `dW`:
/// `scale * P * (dP - sum(dP * P))` per row with `dP = dW * dropout factor`.
struct ScoresGrad {
    scale: f32,
    dropout: Option<DropoutDraws>,
}

impl CustomOp2 for ScoresGrad {
    fn name(&self) -> &'static str {
        "adapters-attention-scores-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (probs, d_weights) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?);
        let k = l1.shape().dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; probs.len()];
        out.par_chunks_mut(k).zip(probs.par_chunks(k).zip(d_weights.par_chunks(k))).enumerate().for_each(|(row, (out, (p, dw)))| {
            super::fast_math::simd(ScoresGradRow { out, p, dw, scale: self.scale, dropout: self.dropout.map(|d| (d, row * k)) });
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

struct ScoresGradRow<'a> {
    out: &'a mut [f32],
    p: &'a [f32],
    dw: &'a [f32],
    scale: f32,
    dropout: Option<(DropoutDraws, usize)>,
}

impl super::fast_math::SimdKernel for ScoresGradRow<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        // out holds dP first.
        match self.dropout {
            Some((draws, start)) => {
                for (j, (o, dw)) in self.out.iter_mut().zip(self.dw).enumerate() {
                    *o = dw * draws.factor(start + j);
                }
            }
            None => self.out.copy_from_slice(self.dw),
        }
        let dot = super::fast_math::dot(self.out, self.p);
        for (o, p) in self.out.iter_mut().zip(self.p) {
            *o = self.scale * p * (*o - dot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::init::Rng;
    use candle_core::Var;
    use std::sync::Arc;

    fn randn(rng: &mut Rng, std: f32, shape: &[usize]) -> Tensor {
        Tensor::from_vec(rng.normal_vec(shape.iter().product(), std), shape, &Device::Cpu).unwrap()
    }

    /// Output and the gradients of q, k and v equal the composed ops', with and without
    /// dropout (the same seeded masks), for the mask shapes attention uses.
    #[test]
    fn equals_the_composed_ops_and_their_gradients() {
        let mut rng = Rng::new(11);
        let (q, k, v) = (randn(&mut rng, 1.0, &[2, 3, 4, 8]), randn(&mut rng, 1.0, &[2, 3, 6, 8]), randn(&mut rng, 1.0, &[2, 3, 6, 8]));
        let probe = randn(&mut rng, 1.0, &[2, 3, 4, 8]);
        for mask_shape in [[2, 1, 1, 6], [1, 1, 4, 6]] {
            let mask = (randn(&mut rng, 1.0, &mask_shape).ge(0.5).unwrap().to_dtype(DType::F32).unwrap() * -1e9).unwrap();
            for p in [0.0, 0.3] {
                let vars = [&q, &k, &v].map(|t| Var::from_tensor(t).unwrap());
                let [qv, kv, vv] = [0, 1, 2].map(|i| vars[i].as_tensor().clone());
                let ctx = || ForwardContext::with_setup(None, true).with_dropout_rng(Arc::new(Mutex::new(Rng::new(4))));
                let ours = attention_core(&qv, &kv, &vv, &mask, 0.35, p, &ctx()).unwrap().expect("applies");
                let theirs = {
                    let c = ctx();
                    let probs =
                        candle_nn::ops::softmax(&(qv.matmul(&kv.t().unwrap()).unwrap() * 0.35).unwrap().broadcast_add(&mask).unwrap(), candle_core::D::Minus1)
                            .unwrap();
                    super::super::dropout::dropout(&probs, p, &c).unwrap().matmul(&vv).unwrap()
                };
                let diff = crate::compare::compare(&ours, &theirs).unwrap().max_abs;
                assert!(diff < 1e-5, "{mask_shape:?} p={p}: output differs by {diff}");
                let g1 = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                let g2 = (theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                for t in [&qv, &kv, &vv] {
                    let diff = crate::compare::compare(g1.get(t).unwrap(), g2.get(t).unwrap()).unwrap().max_abs;
                    assert!(diff < 1e-5, "{mask_shape:?} p={p}: gradient differs by {diff}");
                }
            }
        }
    }

    #[test]
    fn leaves_inference_and_mismatched_heads_to_the_composed_ops() {
        let mut rng = Rng::new(12);
        let q = randn(&mut rng, 1.0, &[1, 2, 3, 4]);
        let mask = Tensor::zeros((1, 1, 1, 3), DType::F32, &Device::Cpu).unwrap();
        let ctx = ForwardContext::with_setup(None, true);
        assert!(attention_core(&q, &q, &q, &mask, 1.0, 0.0, &ctx).unwrap().is_none());
        let tracked = Var::from_tensor(&q).unwrap();
        let fewer_heads = randn(&mut rng, 1.0, &[1, 1, 3, 4]);
        assert!(attention_core(tracked.as_tensor(), &fewer_heads, &fewer_heads, &mask, 1.0, 0.0, &ctx).unwrap().is_none());
    }
}
