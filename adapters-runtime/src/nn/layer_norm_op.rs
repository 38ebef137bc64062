//! LayerNorm over the last dimension as one training-graph node (f32, CPU): candle's fused
//! kernel has no gradient and its composed version is a dozen nodes, each with a zero-filled
//! gradient buffer and a pass of its own. The forward and the backward here are each one
//! parallel pass over the rows; the backward computes the weight and bias gradients only when
//! they are trained (a frozen base LayerNorm needs the input gradient alone).

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// Rows per parallel task.
const ROWS: usize = 16;

struct LayerNormOp {
    eps: f32,
}

fn contiguous_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("layer_norm: {what} must be f32");
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("layer_norm: {what} must be contiguous"),
    }
}

/// A row's mean and `1 / sqrt(var + eps)` (the variance about the mean, in two passes as
/// PyTorch's CPU kernel).
#[inline(always)]
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = super::fast_math::sum(row) / n;
    let mut acc = [0f32; 16];
    let chunks = row.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
    for chunk in chunks {
        for (a, v) in acc.iter_mut().zip(chunk) {
            *a += (v - mean) * (v - mean);
        }
    }
    let var = (acc.iter().sum::<f32>() + tail) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

struct ForwardRows<'a> {
    x: &'a [f32],
    w: &'a [f32],
    b: &'a [f32],
    out: &'a mut [f32],
    eps: f32,
}

impl super::fast_math::SimdKernel for ForwardRows<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let n = self.w.len();
        for (row, out) in self.x.chunks_exact(n).zip(self.out.chunks_exact_mut(n)) {
            let (mean, rstd) = moments(row, self.eps);
            for (((o, v), w), b) in out.iter_mut().zip(row).zip(self.w).zip(self.b) {
                *o = (v - mean) * rstd * w + b;
            }
        }
    }
}

/// The input gradient of a block of rows, `rstd (ĝ - mean(ĝ) - x̂ mean(ĝ x̂))` with `ĝ = g w`,
/// and, when asked for, the block's partial sums of `g x̂` (weight) and `g` (bias).
struct BackwardRows<'a> {
    x: &'a [f32],
    g: &'a [f32],
    w: &'a [f32],
    dx: &'a mut [f32],
    /// `[dw partial, db partial]`, each `n` long, or empty.
    partials: &'a mut [f32],
    eps: f32,
}

impl super::fast_math::SimdKernel for BackwardRows<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        let n = self.w.len();
        let inv_n = 1.0 / n as f32;
        let (dw, db) = self.partials.split_at_mut(self.partials.len() / 2);
        for ((row, g), dx) in self.x.chunks_exact(n).zip(self.g.chunks_exact(n)).zip(self.dx.chunks_exact_mut(n)) {
            let (mean, rstd) = moments(row, self.eps);
            // dx holds x̂ first, then the gradient.
            for (d, v) in dx.iter_mut().zip(row) {
                *d = (v - mean) * rstd;
            }
            let mean_gh = super::fast_math::dot(g, self.w) * inv_n;
            let mean_ghx = super::fast_math::dot3(g, self.w, dx) * inv_n;
            if !dw.is_empty() {
                for (((dw, db), g), xhat) in dw.iter_mut().zip(db.iter_mut()).zip(g).zip(dx.iter()) {
                    *dw += g * xhat;
                    *db += g;
                }
            }
            for ((d, g), w) in dx.iter_mut().zip(g).zip(self.w) {
                *d = rstd * (g * w - mean_gh - *d * mean_ghx);
            }
        }
    }
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "adapters-layer-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "input")?;
        let w = contiguous_f32(s2, l2, "weight")?;
        let b = contiguous_f32(s3, l3, "bias")?;
        let n = w.len();
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(ROWS * n).zip(x.par_chunks(ROWS * n)).for_each(|(out, x)| {
            super::fast_math::simd(ForwardRows { x, w, b, out, eps: self.eps });
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let n = w.elem_count();
        let affine = w.track_op() || b.track_op();
        let (x_storage, x_layout) = x.storage_and_layout();
        let (g_storage, g_layout) = g.storage_and_layout();
        let (w_storage, w_layout) = w.storage_and_layout();
        let (Storage::Cpu(xs), Storage::Cpu(gs), Storage::Cpu(ws)) = (&*x_storage, &*g_storage, &*w_storage) else {
            candle_core::bail!("layer_norm backward: CPU tensors expected")
        };
        let (xv, gv, wv) = (contiguous_f32(xs, x_layout, "input")?, contiguous_f32(gs, g_layout, "gradient")?, contiguous_f32(ws, w_layout, "weight")?);
        let mut dx = vec![0f32; xv.len()];
        let blocks = xv.len().div_ceil(ROWS * n);
        let mut partials = vec![0f32; if affine { blocks * 2 * n } else { 0 }];
        let rows = dx.par_chunks_mut(ROWS * n).zip(xv.par_chunks(ROWS * n).zip(gv.par_chunks(ROWS * n)));
        let run =
            |dx: &mut [f32], x: &[f32], g: &[f32], partials: &mut [f32]| super::fast_math::simd(BackwardRows { x, g, w: wv, dx, partials, eps: self.eps });
        if affine {
            rows.zip(partials.par_chunks_mut(2 * n)).for_each(|((dx, (x, g)), partials)| run(dx, x, g, partials));
        } else {
            rows.for_each(|(dx, (x, g))| run(dx, x, g, &mut []));
        }
        let dx = Tensor::from_vec(dx, x.shape(), x.device())?;
        if !affine {
            return Ok((Some(dx), None, None));
        }
        let (mut dw, mut db) = (vec![0f32; n], vec![0f32; n]);
        for block in partials.chunks_exact(2 * n) {
            for (a, v) in dw.iter_mut().zip(&block[..n]) {
                *a += v;
            }
            for (a, v) in db.iter_mut().zip(&block[n..]) {
                *a += v;
            }
        }
        let (dw, db) = (Tensor::from_vec(dw, w.shape(), w.device())?, Tensor::from_vec(db, b.shape(), b.device())?);
        Ok((Some(dx), w.track_op().then_some(dw), b.track_op().then_some(db)))
    }
}

/// LayerNorm over the last dimension (f32 on the CPU; other types and devices take candle's
/// composed op), with a gradient for input, weight and bias when any of them is tracked.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    if x.dtype() != DType::F32 || !x.device().is_cpu() {
        return candle_nn::ops::layer_norm_slow(x, weight, bias, eps);
    }
    let (x, weight, bias) = (x.contiguous()?, weight.contiguous()?, bias.contiguous()?);
    if !x.track_op() && !weight.track_op() && !bias.track_op() {
        return x.apply_op3_no_bwd(&weight, &bias, &LayerNormOp { eps });
    }
    x.apply_op3(&weight, &bias, LayerNormOp { eps })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Var, D};

    use crate::nn::test_support::{max_diff, randn};

    /// Output and every gradient equal candle's composed LayerNorm, with the affine parameters
    /// trained or frozen, over a row count that is not a multiple of the parallel block.
    #[test]
    fn equals_the_composed_ops_and_their_gradients() {
        let mut rng = crate::methods::init::Rng::new(7);
        let x = Var::from_tensor(&randn(&mut rng, 0.5, 2.0, &[3, 11, 40])).unwrap();
        let probe = randn(&mut rng, 0.0, 1.0, &[3, 11, 40]);
        for trained in [true, false] {
            let w = randn(&mut rng, 1.0, 0.1, &[40]);
            let b = randn(&mut rng, 0.0, 0.1, &[40]);
            let (w, b) = if trained { (Var::from_tensor(&w).unwrap().as_tensor().clone(), Var::from_tensor(&b).unwrap().as_tensor().clone()) } else { (w, b) };
            let ours = layer_norm(&x, &w, &b, 1e-12).unwrap();
            let theirs = candle_nn::ops::layer_norm_slow(&x, &w, &b, 1e-12).unwrap();
            assert!(max_diff(&ours, &theirs) < 1e-5);
            let g1 = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let g2 = (theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
            let d = max_diff(g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap());
            assert!(d < 1e-5, "input gradient differs by {d}");
            if trained {
                for v in [&w, &b] {
                    let d = max_diff(g1.get(v).unwrap(), g2.get(v).unwrap());
                    assert!(d < 1e-4, "parameter gradient differs by {d}");
                }
            } else {
                assert!(g1.get(&w).is_none() && g1.get(&b).is_none());
            }
        }
        // The mean of each output row is the bias's mean when the weight is one.
        let ones = Tensor::ones(40, DType::F32, &candle_core::Device::Cpu).unwrap();
        let zeros = ones.zeros_like().unwrap();
        let normed = layer_norm(x.as_tensor(), &ones, &zeros, 1e-12).unwrap();
        assert!(normed.mean_keepdim(D::Minus1).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() < 1e-5);
    }
}
