//! `dropout(softmax(q k^T * scale + mask)) v` as one node (f32, CPU), computed in groups of
//! heads, one group per thread.
//!
//! - In a training graph the composed version is five nodes (the transposed keys, the product,
//!   the softmax, the dropout, the second product), and candle's backward gives every node's
//!   inputs a zero-filled gradient buffer and sums into it: several passes over
//!   `[batch, heads, q, k]` buffers per layer. This node keeps the probabilities from its forward
//!   and computes the three input gradients directly; dropout decisions are read from the seeded
//!   stream where they apply, not kept as a mask.
//! - candle multiplies a batch of small matrices one after the other, each split over the
//!   threads (a 128 x 32 x 128 product is too small for that to pay: 1.03 ms for MiniLM's 96
//!   heads, 0.68 ms with the heads split over the two cores). Each group here runs its heads'
//!   products, softmax and second products on one thread.

use std::sync::Mutex;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Device, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

use super::attention::{fits, Shape4};
use super::dropout::DropoutDraws;
use super::fused::SoftmaxGradRow;
use crate::context::ForwardContext;

/// The attention of `q` (`[batch, heads, q, d]`) over `k` and `v` (`[batch, heads, k, d]`)
/// with an additive `mask` (`[batch or 1, 1, q or 1, k]`), dropout `p` on the probabilities in
/// training; `[batch, heads, q, d]` out. `None` when this node does not apply (another dtype or
/// device, a trained mask, mismatched heads, a context without a seeded generator while dropout
/// trains): the caller composes the ops.
pub(crate) fn attention_core(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64, p: f64, ctx: &ForwardContext) -> Result<Option<Tensor>> {
    let f32_cpu = |t: &Tensor| super::is_cpu_f32(t) && t.rank() == 4;
    if mask.track_op() || ![q, k, v, mask].into_iter().all(f32_cpu) {
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
    let tracked = q.track_op() || k.track_op() || v.track_op();
    let op = AttentionCore { mask: mask.contiguous()?, scale: scale as f32, dropout, keep: tracked, saved: Mutex::new(Vec::new()) };
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    Ok(Some(if tracked { q.apply_op3(&k, &v, op)? } else { q.apply_op3_no_bwd(&k, &v, &op)? }))
}

struct AttentionCore {
    mask: Tensor,
    scale: f32,
    /// Dropout on the probabilities, read in the softmax pass and again in the backward.
    dropout: Option<DropoutDraws>,
    /// Whether the forward keeps what the backward needs (a training graph).
    keep: bool,
    /// Per group, from the forward: the probabilities and, with dropout, the dropped weights the
    /// values were averaged with.
    saved: Mutex<Vec<Saved>>,
}

struct Saved {
    probs: CpuStorage,
    weights: Option<CpuStorage>,
}

/// The sizes of one call and the split of its `batch * heads` matrices into groups.
#[derive(Clone, Copy)]
struct Dims {
    tq: usize,
    tk: usize,
    d: usize,
    /// Matrices per group (the last group may hold fewer).
    per_group: usize,
    matrices: usize,
}

impl Dims {
    fn new(b: usize, h: usize, tq: usize, tk: usize, d: usize) -> Self {
        let matrices = b * h;
        let per_group = matrices.div_ceil(rayon::current_num_threads().max(1)).max(1);
        Dims { tq, tk, d, per_group, matrices }
    }

    /// `(first matrix, matrices)` of each group.
    fn groups(&self) -> Vec<(usize, usize)> {
        (0..self.matrices).step_by(self.per_group).map(|g0| (g0, self.per_group.min(self.matrices - g0))).collect()
    }
}

fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&data[start..end]),
        _ => candle_core::bail!("attention: contiguous f32 operands expected"),
    }
}

fn into_vec(storage: CpuStorage) -> Result<Vec<f32>> {
    match storage {
        CpuStorage::F32(v) => Ok(v),
        _ => candle_core::bail!("attention: f32 products expected"),
    }
}

fn cpu<'a>(storage: &'a Storage, what: &str) -> Result<&'a CpuStorage> {
    match storage {
        Storage::Cpu(s) => Ok(s),
        _ => candle_core::bail!("attention: {what} must be on the CPU"),
    }
}

fn poisoned<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg("attention: saved state poisoned".into())
}

/// `[n, rows, cols]` matrices of a contiguous buffer from matrix `first` on (`start`: where the
/// buffer's tensor begins), optionally read transposed (`[n, cols, rows]`).
fn matrices(start: usize, first: usize, n: usize, rows: usize, cols: usize, transposed: bool) -> Result<Layout> {
    let layout = Layout::contiguous_with_offset((n, rows, cols), start + first * rows * cols);
    if transposed {
        layout.transpose(1, 2)
    } else {
        Ok(layout)
    }
}

/// Group results concatenated in order, as one tensor of `shape`.
fn concat(parts: Vec<Vec<f32>>, shape: &Shape) -> Result<Tensor> {
    let mut all = Vec::with_capacity(shape.elem_count());
    for part in parts {
        all.extend_from_slice(&part);
    }
    Tensor::from_vec(all, shape, &Device::Cpu)
}

impl AttentionCore {
    /// One group's forward: scores, probabilities (dropped into weights), the weighted values.
    #[allow(clippy::too_many_arguments)]
    fn forward_group(
        &self,
        (qs, q0): (&CpuStorage, usize),
        (ks, k0): (&CpuStorage, usize),
        (vs, v0): (&CpuStorage, usize),
        mask: &[f32],
        shape: Shape4,
        dims: Dims,
        (g0, n): (usize, usize),
    ) -> Result<(Saved, Vec<f32>)> {
        let Dims { tq, tk, d, .. } = dims;
        let scores = qs.matmul(ks, (n, tq, tk, d), &matrices(q0, g0, n, tq, d, false)?, &matrices(k0, g0, n, tk, d, true)?)?;
        let mut probs = into_vec(scores)?;
        let mut weights = self.dropout.map(|_| vec![0f32; probs.len()]);
        for (r, row) in probs.chunks_exact_mut(tk).enumerate() {
            let global = g0 * tq + r;
            let mask = &mask[shape.mask_offset(global)..][..tk];
            let dropped = match (&mut weights, self.dropout) {
                (Some(w), Some(draws)) => Some((&mut w[r * tk..(r + 1) * tk], draws, global * tk)),
                _ => None,
            };
            super::fast_math::simd(SoftmaxRow { probs: row, mask, scale: self.scale, dropped });
        }
        let (probs, weights) = (CpuStorage::F32(probs), weights.map(CpuStorage::F32));
        let out = weights.as_ref().unwrap_or(&probs).matmul(vs, (n, tq, d, tk), &matrices(0, 0, n, tq, tk, false)?, &matrices(v0, g0, n, tk, d, false)?)?;
        Ok((Saved { probs, weights }, into_vec(out)?))
    }

    /// One group's gradients `(dq, dk, dv)` from the output's gradient `g`.
    #[allow(clippy::too_many_arguments)]
    fn backward_group(
        &self,
        (gs, g_start): (&CpuStorage, usize),
        (qs, q0): (&CpuStorage, usize),
        (ks, k0): (&CpuStorage, usize),
        (vs, v0): (&CpuStorage, usize),
        saved: &Saved,
        dims: Dims,
        (g0, n): (usize, usize),
    ) -> Result<[Vec<f32>; 3]> {
        let Dims { tq, tk, d, .. } = dims;
        let g = matrices(g_start, g0, n, tq, d, false)?;
        let weights = saved.weights.as_ref().unwrap_or(&saved.probs);
        // dW = g v^T, dv = W^T g
        let d_weights = gs.matmul(vs, (n, tq, tk, d), &g, &matrices(v0, g0, n, tk, d, true)?)?;
        let dv = weights.matmul(gs, (n, tk, d, tq), &matrices(0, 0, n, tq, tk, true)?, &g)?;
        // dS = scale P (dP - sum(dP P)), dP = dW * dropout factor, in place over dW.
        let mut d_scores = into_vec(d_weights)?;
        let CpuStorage::F32(probs) = &saved.probs else { candle_core::bail!("attention: f32 probabilities expected") };
        for (r, (grad, probs)) in d_scores.chunks_exact_mut(tk).zip(probs.chunks_exact(tk)).enumerate() {
            let dropout = self.dropout.map(|draws| (draws, (g0 * tq + r) * tk));
            super::fast_math::simd(SoftmaxGradRow { grad, probs, scale: self.scale, dropout });
        }
        let d_scores = CpuStorage::F32(d_scores);
        // dq = dS k, dk = dS^T q
        let dq = d_scores.matmul(ks, (n, tq, d, tk), &matrices(0, 0, n, tq, tk, false)?, &matrices(k0, g0, n, tk, d, false)?)?;
        let dk = d_scores.matmul(qs, (n, tk, d, tq), &matrices(0, 0, n, tq, tk, true)?, &matrices(q0, g0, n, tq, d, false)?)?;
        Ok([into_vec(dq)?, into_vec(dk)?, into_vec(dv)?])
    }
}

impl CustomOp3 for AttentionCore {
    fn name(&self) -> &'static str {
        "adapters-attention-core"
    }

    fn cpu_fwd(&self, qs: &CpuStorage, ql: &Layout, ks: &CpuStorage, kl: &Layout, vs: &CpuStorage, vl: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, h, tq, d) = ql.shape().dims4()?;
        let tk = kl.shape().dims()[2];
        let dims = Dims::new(b, h, tq, tk, d);
        let (mask_storage, mask_layout) = self.mask.storage_and_layout();
        let mask = f32_slice(cpu(&mask_storage, "the mask")?, mask_layout)?;
        let mask_dims = mask_layout.shape().dims();
        let shape = Shape4 { heads: h, q: tq, k: tk, mask_batch: mask_dims[0], mask_q: mask_dims[2] };
        let (q, k, v) = ((qs, ql.start_offset()), (ks, kl.start_offset()), (vs, vl.start_offset()));
        let groups: Vec<(Saved, Vec<f32>)> =
            dims.groups().into_par_iter().map(|group| self.forward_group(q, k, v, mask, shape, dims, group)).collect::<Result<_>>()?;
        let mut out = Vec::with_capacity(ql.shape().elem_count());
        let mut saved = Vec::with_capacity(groups.len());
        for (s, part) in groups {
            out.extend_from_slice(&part);
            saved.push(s);
        }
        if self.keep {
            *self.saved.lock().map_err(poisoned)? = saved;
        }
        Ok((CpuStorage::F32(out), ql.shape().clone()))
    }

    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = self.saved.lock().map_err(poisoned)?;
        let (b, h, tq, d) = q.dims4()?;
        let dims = Dims::new(b, h, tq, k.dim(2)?, d);
        let groups = dims.groups();
        if saved.len() != groups.len() {
            candle_core::bail!("attention: backward without its forward")
        }
        let grad = grad.contiguous()?;
        let (gs, gl) = grad.storage_and_layout();
        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let g = (cpu(&gs, "the gradient")?, gl.start_offset());
        let (qa, ka, va) = ((cpu(&qs, "q")?, ql.start_offset()), (cpu(&ks, "k")?, kl.start_offset()), (cpu(&vs, "v")?, vl.start_offset()));
        let parts: Vec<[Vec<f32>; 3]> =
            groups.into_par_iter().zip(saved.par_iter()).map(|(group, s)| self.backward_group(g, qa, ka, va, s, dims, group)).collect::<Result<_>>()?;
        let (mut dq, mut dk, mut dv) = (Vec::new(), Vec::new(), Vec::new());
        for [q_part, k_part, v_part] in parts {
            dq.push(q_part);
            dk.push(k_part);
            dv.push(v_part);
        }
        Ok((Some(concat(dq, q.shape())?), Some(concat(dk, k.shape())?), Some(concat(dv, v.shape())?)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::init::Rng;
    use candle_core::{DType, Var};
    use std::sync::Arc;

    use crate::nn::test_support::randn;

    /// Output and the gradients of q, k and v equal the composed ops', with and without
    /// dropout (the same seeded masks), for the mask shapes attention uses, over heads that split
    /// into equal and unequal groups; an untracked call gives the same output.
    #[test]
    fn equals_the_composed_ops_and_their_gradients() {
        let mut rng = Rng::new(11);
        for (b, h) in [(2, 3), (1, 5)] {
            let (q, k, v) = (randn(&mut rng, 0.0, 1.0, &[b, h, 4, 8]), randn(&mut rng, 0.0, 1.0, &[b, h, 6, 8]), randn(&mut rng, 0.0, 1.0, &[b, h, 6, 8]));
            let probe = randn(&mut rng, 0.0, 1.0, &[b, h, 4, 8]);
            for mask_shape in [[b, 1, 1, 6], [1, 1, 4, 6]] {
                let mask = (randn(&mut rng, 0.0, 1.0, &mask_shape).ge(0.5).unwrap().to_dtype(DType::F32).unwrap() * -1e9).unwrap();
                for p in [0.0, 0.3] {
                    let vars = [&q, &k, &v].map(|t| Var::from_tensor(t).unwrap());
                    let [qv, kv, vv] = [0, 1, 2].map(|i| vars[i].as_tensor().clone());
                    let ctx = || ForwardContext::with_setup(None, true).with_dropout_rng(Arc::new(Mutex::new(Rng::new(4))));
                    let ours = attention_core(&qv, &kv, &vv, &mask, 0.35, p, &ctx()).unwrap().expect("applies");
                    let untracked = attention_core(&q, &k, &v, &mask, 0.35, p, &ctx()).unwrap().expect("applies");
                    let theirs = {
                        let c = ctx();
                        let scores = (qv.matmul(&kv.t().unwrap()).unwrap() * 0.35).unwrap().broadcast_add(&mask).unwrap();
                        let probs = candle_nn::ops::softmax(&scores, candle_core::D::Minus1).unwrap();
                        super::super::dropout::dropout(&probs, p, &c).unwrap().matmul(&vv).unwrap()
                    };
                    for out in [&ours, &untracked] {
                        let diff = crate::compare::compare(out, &theirs).unwrap().max_abs;
                        assert!(diff < 1e-5, "{b}x{h} {mask_shape:?} p={p}: output differs by {diff}");
                    }
                    let g1 = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                    let g2 = (theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
                    for t in [&qv, &kv, &vv] {
                        let diff = crate::compare::compare(g1.get(t).unwrap(), g2.get(t).unwrap()).unwrap().max_abs;
                        assert!(diff < 1e-5, "{b}x{h} {mask_shape:?} p={p}: gradient differs by {diff}");
                    }
                }
            }
        }
    }

    #[test]
    fn leaves_mismatched_heads_and_other_dtypes_to_the_composed_ops() {
        let mut rng = Rng::new(12);
        let q = randn(&mut rng, 0.0, 1.0, &[1, 2, 3, 4]);
        let mask = Tensor::zeros((1, 1, 1, 3), DType::F32, &Device::Cpu).unwrap();
        let ctx = ForwardContext::with_setup(None, true);
        let fewer_heads = randn(&mut rng, 0.0, 1.0, &[1, 1, 3, 4]);
        assert!(attention_core(&q, &fewer_heads, &fewer_heads, &mask, 1.0, 0.0, &ctx).unwrap().is_none());
        let half = q.to_dtype(DType::BF16).unwrap();
        assert!(attention_core(&half, &half, &half, &mask.to_dtype(DType::BF16).unwrap(), 1.0, 0.0, &ctx).unwrap().is_none());
    }
}
