//! Softmax and LayerNorm as single graph nodes with their own backward. candle's fused kernels
//! have no gradient and its composed versions add a dozen nodes each to the training graph (each
//! with a zero-filled gradient buffer); these keep one node per call in training.

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Tensor, D};

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

    /// dx = y * (g - sum(g * y)) over the last dimension.
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let dot = (grad_res * res)?.sum_keepdim(D::Minus1)?;
        Ok(Some(res.mul(&grad_res.broadcast_sub(&dot)?)?))
    }
}

/// Softmax over the last dimension with a gradient (f32; other types take candle's composed op).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.dtype() != DType::F32 || !x.device().is_cpu() {
        return candle_nn::ops::softmax(x, D::Minus1);
    }
    x.contiguous()?.apply_op1(SoftmaxLastDim)
}

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "adapters-layer-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s1, l1, "layer_norm input")?;
        let w = contiguous_f32(s2, l2, "layer_norm weight")?;
        let b = contiguous_f32(s3, l3, "layer_norm bias")?;
        let n = w.len();
        let mut dst = vec![0f32; x.len()];
        for (row, out) in x.chunks_exact(n).zip(dst.chunks_exact_mut(n)) {
            let mean = row.iter().sum::<f32>() / n as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
            let rstd = 1.0 / (var + self.eps).sqrt();
            for i in 0..n {
                out[i] = (row[i] - mean) * rstd * w[i] + b[i];
            }
        }
        Ok((CpuStorage::F32(dst), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _b: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // Recompute the normalised input; x̂ = (x - mean) * rstd.
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let rstd = (var + f64::from(self.eps))?.sqrt()?.recip()?;
        let xhat = centered.broadcast_mul(&rstd)?;
        let rows = x.elem_count() / w.elem_count();
        let n = w.elem_count();
        let g2 = g.reshape((rows, n))?;
        let dw = (&g2 * xhat.reshape((rows, n))?)?.sum(0)?;
        let db = g2.sum(0)?;
        // dx = rstd * (ĝ - mean(ĝ) - x̂ * mean(ĝ x̂)), ĝ = g * w.
        let gh = g.broadcast_mul(w)?;
        let mean_gh = gh.mean_keepdim(D::Minus1)?;
        let mean_ghx = (&gh * &xhat)?.mean_keepdim(D::Minus1)?;
        let dx = gh.broadcast_sub(&mean_gh)?.sub(&xhat.broadcast_mul(&mean_ghx)?)?.broadcast_mul(&rstd)?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// LayerNorm over the last dimension with a gradient for input, weight and bias (f32; other
/// types take candle's composed op).
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    if x.dtype() != DType::F32 || !x.device().is_cpu() {
        return candle_nn::ops::layer_norm_slow(x, weight, bias, eps);
    }
    x.contiguous()?.apply_op3(&weight.contiguous()?, &bias.contiguous()?, LayerNormOp { eps })
}

/// erf with a maximum absolute error of about 1.2e-7 (Numerical Recipes' `erfc` Chebyshev fit),
/// branch-free so the compiler vectorises it; libm's scalar `erff` is what makes candle's GELU
/// slow on CPU. `T` is the storage type of the result (the exponential it takes: [`super::fast_math::exp_for`]).
#[inline(always)]
// The coefficients are kept as published; f32 rounds the last digits the same way.
#[allow(clippy::excessive_precision)]
fn erf<T>(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06 + t * (0.278_868_07 + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * super::fast_math::exp_for::<T>(poly);
    let magnitude = 1.0 - erfc;
    if x < 0.0 {
        -magnitude
    } else {
        magnitude
    }
}

/// The exact GELU for inference, in f32 across threads with the branch-free erf (rounded once
/// for half-precision inputs): candle's calls libm's scalar erf per element (and converts each
/// bf16/f16 element around it).
struct GeluErfInference;

impl CustomOp1 for GeluErfInference {
    fn name(&self) -> &'static str {
        "adapters-gelu-erf-inference"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("gelu: input must be contiguous") };
        let out = match storage {
            CpuStorage::BF16(x) => {
                let x = &x[start..end];
                let mut out = x.to_vec();
                gelu_inference(super::bf16_bits::as_bits(x), super::bf16_bits::as_bits_mut(&mut out), super::bf16_bits::to_f32, super::bf16_bits::from_f32);
                CpuStorage::BF16(out)
            }
            CpuStorage::F32(x) => {
                let x = &x[start..end];
                let mut out = vec![0f32; x.len()];
                gelu_inference(x, &mut out, |v| v, |v| v);
                CpuStorage::F32(out)
            }
            CpuStorage::F16(x) => {
                let x = &x[start..end];
                let mut out = x.to_vec();
                gelu_inference(x, &mut out, |v| v.to_f64() as f32, |v| candle_core::WithDType::from_f64(f64::from(v)));
                CpuStorage::F16(out)
            }
            _ => candle_core::bail!("gelu: float input expected"),
        };
        Ok((out, layout.shape().clone()))
    }
}

fn gelu_inference<T, L, S>(x: &[T], out: &mut [T], load: L, store: S)
where
    T: Copy + Send + Sync,
    L: Fn(T) -> f32 + Sync,
    S: Fn(f32) -> T + Sync,
{
    use rayon::prelude::*;
    const CHUNK: usize = 4096;
    out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(dst, src)| {
        super::fast_math::simd(GeluChunk { src, dst, load: &load, store: &store });
    });
}

/// `0.5 x (1 + erf(x / sqrt 2))` elementwise, at the CPU's vector width.
struct GeluChunk<'a, T, L, S> {
    src: &'a [T],
    dst: &'a mut [T],
    load: &'a L,
    store: &'a S,
}

impl<T: Copy, L: Fn(T) -> f32, S: Fn(f32) -> T> super::fast_math::SimdKernel for GeluChunk<'_, T, L, S> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        for (d, s) in self.dst.iter_mut().zip(self.src) {
            let v = (self.load)(*s);
            *d = (self.store)(0.5 * v * (1.0 + erf::<T>(v * std::f32::consts::FRAC_1_SQRT_2)));
        }
    }
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "adapters-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, "gelu")?;
        let dst: Vec<f32> = src.iter().map(|&x| 0.5 * x * (1.0 + erf::<f32>(x * std::f32::consts::FRAC_1_SQRT_2))).collect();
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }

    /// d/dx = Φ(x) + x φ(x).
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.mul(&arg.contiguous()?.apply_op1_no_bwd(&GeluErfGrad)?)?))
    }
}

struct GeluErfGrad;

impl CustomOp1 for GeluErfGrad {
    fn name(&self) -> &'static str {
        "adapters-gelu-erf-grad"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let src = contiguous_f32(storage, layout, "gelu grad")?;
        let inv_sqrt_2pi = 0.5 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2;
        let dst: Vec<f32> = src
            .iter()
            .map(|&x| 0.5 * (1.0 + erf::<f32>(x * std::f32::consts::FRAC_1_SQRT_2)) + x * inv_sqrt_2pi * super::fast_math::exp(-0.5 * x * x))
            .collect();
        Ok((CpuStorage::F32(dst), layout.shape().clone()))
    }
}

/// The exact (erf) GELU, `0.5 x (1 + erf(x / sqrt 2))`, with a gradient (f32; other types take
/// candle's).
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16) && x.device().is_cpu() && !x.track_op() {
        return x.contiguous()?.apply_op1_no_bwd(&GeluErfInference);
    }
    if x.dtype() != DType::F32 || !x.device().is_cpu() {
        return x.gelu_erf();
    }
    x.contiguous()?.apply_op1(GeluErf)
}

/// `x W^T` where only `x` needs a gradient. candle's matmul backward always computes the
/// gradient of both operands, so a frozen weight costs a full extra matmul per linear in every
/// backward pass; this node computes the same product and returns only `dx = g W`.
struct FrozenWeightMatmul {
    weight: Tensor,
}

impl CustomOp1 for FrozenWeightMatmul {
    fn name(&self) -> &'static str {
        "adapters-frozen-weight-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = Tensor::from_slice(contiguous_f32(storage, layout, "linear input")?, layout.shape(), self.weight.device())?;
        let y = x.broadcast_matmul(&self.weight.t()?)?;
        let shape = y.shape().clone();
        Ok((CpuStorage::F32(y.flatten_all()?.to_vec1::<f32>()?), shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.broadcast_matmul(&self.weight)?))
    }
}

/// `x W^T + b` for inputs of any rank (the last dimension is the feature dimension). When `x`
/// is part of a training graph and the weight is frozen, the weight gets no gradient work.
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let untracked = !x.track_op() && !weight.track_op() && !bias.is_some_and(Tensor::track_op);
    if let Some(out) = untracked.then(|| super::bf16_matmul::matmul_nt(x, weight, bias)).transpose()?.flatten() {
        return Ok(out);
    }
    let out = if x.track_op() && !weight.track_op() && x.dtype() == DType::F32 && x.device().is_cpu() {
        x.contiguous()?.apply_op1(FrozenWeightMatmul { weight: weight.clone() })?
    } else {
        x.broadcast_matmul(&weight.t()?)?
    };
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

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        crate::compare::compare(a, b).unwrap().max_abs
    }

    /// Seeded normal draws (the same numbers on every run), shifted to `mean`.
    fn randn(rng: &mut crate::methods::init::Rng, mean: f32, std: f32, shape: &[usize]) -> Tensor {
        let n = rng.normal_vec(shape.iter().product(), std);
        (Tensor::from_vec(n, shape, &candle_core::Device::Cpu).unwrap() + mean as f64).unwrap()
    }

    #[test]
    fn frozen_weight_linear_matches_matmul_and_its_input_gradient() {
        let mut rng = crate::methods::init::Rng::new(7);
        let x = Var::from_tensor(&randn(&mut rng, 0.0, 1.0, &[2, 3, 8])).unwrap();
        let w = randn(&mut rng, 0.0, 1.0, &[5, 8]);
        let b = randn(&mut rng, 0.0, 1.0, &[5]);
        let probe = randn(&mut rng, 0.0, 1.0, &[2, 3, 5]);
        let ours = linear(&x, &w, Some(&b)).unwrap();
        let theirs = x.as_tensor().broadcast_matmul(&w.t().unwrap()).unwrap().broadcast_add(&b).unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-6);
        let g1 = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        assert!(max_diff(g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap()) < 1e-5);
    }

    #[test]
    fn gelu_matches_candle_and_its_gradient() {
        let mut rng = crate::methods::init::Rng::new(7);
        let x = Var::from_tensor(&randn(&mut rng, 0.0, 3.0, &[4096])).unwrap();
        let ours = gelu_erf(&x).unwrap();
        let theirs = x.as_tensor().gelu_erf().unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-6, "{}", max_diff(&ours, &theirs));
        let g1 = ours.sum_all().unwrap().backward().unwrap();
        let g2 = theirs.sum_all().unwrap().backward().unwrap();
        let d = max_diff(g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap());
        assert!(d < 1e-6, "gradient differs by {d}");
    }

    /// Half precision: the f32 GELU rounded once, within half a unit in the last place of
    /// candle's (which rounds the same exact value).
    #[test]
    fn half_precision_gelu_rounds_the_f32_value() {
        let mut rng = crate::methods::init::Rng::new(8);
        let x = randn(&mut rng, 0.0, 3.0, &[4099]);
        for dtype in [DType::BF16, DType::F16] {
            let half = x.to_dtype(dtype).unwrap();
            let ours = gelu_erf(&half).unwrap();
            assert_eq!(ours.dtype(), dtype);
            let exact = half.to_dtype(DType::F32).unwrap().gelu_erf().unwrap();
            let ulp = if dtype == DType::BF16 { 1.0 / 128.0 } else { 1.0 / 1024.0 };
            let scale = exact.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            let d = max_diff(&ours.to_dtype(DType::F32).unwrap(), &exact);
            assert!(d <= ulp * scale, "{dtype:?}: {d}");
        }
    }

    #[test]
    fn gradients_equal_the_composed_ops() {
        let mut rng = crate::methods::init::Rng::new(7);
        let x = Var::from_tensor(&randn(&mut rng, 0.0, 1.0, &[3, 5, 16])).unwrap();
        let w = Var::from_tensor(&randn(&mut rng, 1.0, 0.1, &[16])).unwrap();
        let b = Var::from_tensor(&randn(&mut rng, 0.0, 0.1, &[16])).unwrap();
        let probe = randn(&mut rng, 0.0, 1.0, &[3, 5, 16]);
        let ours = softmax_last_dim(&layer_norm(&x, &w, &b, 1e-12).unwrap()).unwrap();
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
