//! The exact (erf) GELU, `0.5 x (1 + erf(x / sqrt 2))`, forward and backward as single parallel
//! passes at the CPU's vector width: candle's calls libm's scalar `erff` per element (and converts
//! each bf16/f16 element around it), and a composed backward is several passes with a fresh buffer
//! each.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per parallel task: large enough that scheduling is noise, small enough that both
/// cores get work on a layer's activations.
const CHUNK: usize = 4096;

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

/// `gelu(x)` for f32, bf16 and f16 (half precision through f32, rounded once); its backward
/// (f32) is [`GeluErfBackward`].
struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "adapters-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else { candle_core::bail!("gelu: input must be contiguous") };
        let out = match storage {
            CpuStorage::BF16(x) => {
                let x = &x[start..end];
                let mut out = x.to_vec();
                gelu_parallel(super::bf16_bits::as_bits(x), super::bf16_bits::as_bits_mut(&mut out), super::bf16_bits::to_f32, super::bf16_bits::from_f32);
                CpuStorage::BF16(out)
            }
            CpuStorage::F32(x) => {
                let x = &x[start..end];
                let mut out = vec![0f32; x.len()];
                gelu_parallel(x, &mut out, |v| v, |v| v);
                CpuStorage::F32(out)
            }
            CpuStorage::F16(x) => {
                let x = &x[start..end];
                let mut out = x.to_vec();
                gelu_parallel(x, &mut out, |v| v.to_f64() as f32, |v| candle_core::WithDType::from_f64(f64::from(v)));
                CpuStorage::F16(out)
            }
            _ => candle_core::bail!("gelu: float input expected"),
        };
        Ok((out, layout.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&grad_res.contiguous()?, &GeluErfBackward)?))
    }
}

fn gelu_parallel<T, L, S>(x: &[T], out: &mut [T], load: L, store: S)
where
    T: Copy + Send + Sync,
    L: Fn(T) -> f32 + Sync,
    S: Fn(f32) -> T + Sync,
{
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

/// `g * gelu'(x)` with `gelu'(x) = Φ(x) + x φ(x)`, f32: `(x, g)` in, the input gradient out.
struct GeluErfBackward;

impl CustomOp2 for GeluErfBackward {
    fn name(&self) -> &'static str {
        "adapters-gelu-erf-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(g)) = (s1, s2) else { candle_core::bail!("gelu backward: f32 expected") };
        let (Some((x0, x1)), Some((g0, g1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("gelu backward: operands must be contiguous")
        };
        let (x, g) = (&x[x0..x1], &g[g0..g1]);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK))).for_each(|(dst, (x, g))| {
            super::fast_math::simd(GeluGradChunk { x, g, dst });
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

struct GeluGradChunk<'a> {
    x: &'a [f32],
    g: &'a [f32],
    dst: &'a mut [f32],
}

impl super::fast_math::SimdKernel for GeluGradChunk<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        // A gradient needs no correctly rounded exponential: the f32 one within 2 ulp (what
        // `erf::<u16>` takes) is twice as fast.
        let inv_sqrt_2pi = 0.5 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2;
        for ((d, &x), &g) in self.dst.iter_mut().zip(self.x).zip(self.g) {
            let cdf = 0.5 * (1.0 + erf::<u16>(x * std::f32::consts::FRAC_1_SQRT_2));
            *d = g * (cdf + x * inv_sqrt_2pi * super::fast_math::exp_half_precision(-0.5 * x * x));
        }
    }
}

/// The exact (erf) GELU, `0.5 x (1 + erf(x / sqrt 2))`: with a gradient for f32 training graphs
/// on the CPU (other tracked types take candle's), without one in inference.
pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    let supported = matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16) && x.device().is_cpu();
    if supported && !x.track_op() {
        return x.contiguous()?.apply_op1_no_bwd(&GeluErf);
    }
    if x.dtype() != DType::F32 || !x.device().is_cpu() {
        return x.gelu_erf();
    }
    x.contiguous()?.apply_op1(GeluErf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    use crate::nn::test_support::{max_diff, randn};

    #[test]
    fn gelu_matches_candle_and_its_gradient() {
        let mut rng = crate::methods::init::Rng::new(7);
        let x = Var::from_tensor(&randn(&mut rng, 0.0, 3.0, &[3, 4099])).unwrap();
        let ours = gelu_erf(&x).unwrap();
        let theirs = x.as_tensor().gelu_erf().unwrap();
        assert!(max_diff(&ours, &theirs) < 1e-6, "{}", max_diff(&ours, &theirs));
        let probe = randn(&mut rng, 0.0, 1.0, &[3, 4099]);
        let g1 = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (theirs * &probe).unwrap().sum_all().unwrap().backward().unwrap();
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
}
