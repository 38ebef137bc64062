//! Elementwise math the CPU kernels share, in plain arithmetic so that loops over slices
//! vectorise: libm's `expf` is a call per element, which made softmax and GELU (whose erf needs an
//! exponential) cost more than the GEMMs around them.

/// `e^x` in f32, computed in f64 and rounded once, so that it is the correctly rounded value
/// (what glibc's `expf` returns) but in plain arithmetic: `x = n ln 2 + r` with `|r| <= ln 2 / 2`,
/// a degree-9 Taylor polynomial for `e^r` (error below 1e-12, far under f32's half ulp), and `2^n`
/// built in the exponent bits (f32's subnormals and its overflow to infinity come from the one
/// rounding); NaN stays NaN.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // Round to nearest by adding and removing 1.5 * 2^52 (no rounding instruction needed).
    const ROUND: f64 = 6_755_399_441_055_744.0;
    // Plain compares and selects (`clamp` and `as` carry NaN and saturation handling that keeps
    // the loop scalar).
    let lo = if x < -104.0 { -104.0 } else { x };
    let clamped = f64::from(if lo > 89.0 { 89.0 } else { lo });
    let n = (clamped * std::f64::consts::LOG2_E + ROUND) - ROUND;
    let r = clamped - n * std::f64::consts::LN_2;
    let mut p = 1.0 / 362_880.0;
    for c in [1.0 / 40_320.0, 1.0 / 5_040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * r + c;
    }
    // 2^n for n in [-150, 128]: n + 1023 is the low mantissa bits of 2^52 + n + 1023, shifted
    // into the exponent.
    let biased = (n + (1023.0 + 4_503_599_627_370_496.0)).to_bits() & 0x7ff;
    // NaN fails both compares above and comes through as NaN.
    (p * f64::from_bits(biased << 52)) as f32
}

/// `e^x` to about 2 ulp of f32, in f32 arithmetic (twice as fast as [`exp`]): for kernels whose
/// results are rounded to bf16 or f16, which keep 8 or 11 bits of the 24. Cephes' `expf`
/// polynomial after the same range reduction.
#[inline(always)]
// The coefficients are Cephes' as published; f32 rounds the last digits the same way.
#[allow(clippy::excessive_precision)]
pub(crate) fn exp_half_precision(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_375;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0;
    let lo = if x < -87.336_54 { -87.336_54 } else { x };
    let clamped = if lo > 88.722_83 { 88.722_83 } else { lo };
    let n = (clamped * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let p =
        ((((1.987_569_15e-4 * r + 1.398_199_950_7e-3) * r + 8.333_451_907_3e-3) * r + 4.166_579_589_4e-2) * r + 1.666_666_545_9e-1) * r + 5.000_000_120_1e-1;
    let biased = (n + (127.0 + 8_388_608.0)).to_bits() & 0x1ff;
    (p * r * r + r + 1.0) * f32::from_bits(biased << 23)
}

/// [`exp`] for kernels whose storage type `T` is f32, [`exp_half_precision`] for 2-byte types.
#[inline(always)]
pub(crate) fn exp_for<T>(x: f32) -> f32 {
    if std::mem::size_of::<T>() == 2 {
        exp_half_precision(x)
    } else {
        exp(x)
    }
}

/// A loop to run at this CPU's vector width through [`simd`]. `run` must be `#[inline(always)]`:
/// it is then compiled into [`simd`]'s AVX-512 and AVX2 variants (a closure is not reliably
/// inlined there and would run at the baseline width).
pub(crate) trait SimdKernel {
    type Output;
    fn run(self) -> Self::Output;
}

/// Runs `kernel` compiled for AVX-512 (or AVX2 and FMA) when this CPU has them; otherwise at the
/// baseline x86-64 width (SSE2), which is what the binaries are built for so that they run on
/// any x86-64 CPU.
#[inline(always)]
pub(crate) fn simd<K: SimdKernel>(kernel: K) -> K::Output {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512dq") && has!("fma") {
            // SAFETY: the features were just detected.
            return unsafe { with_avx512(kernel) };
        }
        if has!("avx2") && has!("fma") {
            // SAFETY: as above.
            return unsafe { with_avx2(kernel) };
        }
    }
    kernel.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")]
unsafe fn with_avx512<K: SimdKernel>(kernel: K) -> K::Output {
    kernel.run()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn with_avx2<K: SimdKernel>(kernel: K) -> K::Output {
    kernel.run()
}

/// Lanes of the partial sums and maxima below: wide enough for one AVX-512 register.
const LANES: usize = 16;

/// The sum of `x`, accumulated in `LANES` interleaved partial sums (vectorises; a single running
/// sum is a dependency chain the compiler must keep in order).
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for (a, v) in acc.iter_mut().zip(chunk) {
            *a += v;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `sum(a * b)`, in `LANES` partial sums (the shorter length counts).
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for ((s, x), y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `sum(a * b * c)`, in `LANES` partial sums (the shortest length counts).
#[inline(always)]
pub(crate) fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let n = a.len().min(b.len()).min(c.len());
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    let mut acc = [0f32; LANES];
    let (ca, cb, cc) = (a.chunks_exact(LANES), b.chunks_exact(LANES), c.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).zip(cc.remainder()).map(|((x, y), z)| x * y * z).sum();
    for ((x, y), z) in ca.zip(cb).zip(cc) {
        for (((s, x), y), z) in acc.iter_mut().zip(x).zip(y).zip(z) {
            *s += x * y * z;
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The maximum of `x` (`-inf` when empty), in `LANES` partial maxima.
#[inline(always)]
pub(crate) fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let tail = chunks.remainder().iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for chunk in chunks {
        for (a, v) in acc.iter_mut().zip(chunk) {
            *a = if *v > *a { *v } else { *a };
        }
    }
    acc.iter().copied().fold(tail, f32::max)
}

/// Softmax of one row in place: `exp(x - max) / sum`, for results stored as `T` ([`exp_for`]).
#[inline(always)]
pub(crate) fn softmax_in_place<T>(row: &mut [f32]) {
    let m = max(row);
    for v in row.iter_mut() {
        *v = exp_for::<T>(*v - m);
    }
    let inv = 1.0 / sum(row);
    for v in row.iter_mut() {
        *v *= inv;
    }
}

/// [`softmax_in_place`] as a [`SimdKernel`].
pub(crate) struct SoftmaxInPlace<'a>(pub &'a mut [f32]);

impl SimdKernel for SoftmaxInPlace<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        softmax_in_place::<f32>(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_one_ulp_of_libm() {
        let mut worst = 0u32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, libm) = (exp(x), x.exp());
            worst = worst.max(ours.to_bits().abs_diff(libm.to_bits()));
            x += 0.001_7;
        }
        assert!(worst <= 1, "{worst} ulp");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), (-100f32).exp());
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        let mut x = -87.0f32;
        while x < 88.0 {
            let (ours, libm) = (exp_half_precision(x), x.exp());
            assert!(ours.to_bits().abs_diff(libm.to_bits()) <= 2, "{x}: {ours} vs {libm}");
            x += 0.001_7;
        }
    }

    #[test]
    fn sums_maxima_and_softmax_match_the_plain_loops() {
        let x: Vec<f32> = (0..37).map(|i| ((i * 7919) % 101) as f32 / 10.0 - 5.0).collect();
        assert!((sum(&x) - x.iter().sum::<f32>()).abs() < 1e-4);
        assert_eq!(max(&x), x.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        let y: Vec<f32> = x.iter().map(|v| v * 0.5 - 1.0).collect();
        let plain: f32 = x.iter().zip(&y).map(|(a, b)| a * b).sum();
        assert!((dot(&x, &y) - plain).abs() < 1e-3);
        let plain3: f32 = x.iter().zip(&y).map(|(a, b)| a * b * b).sum();
        assert!((dot3(&x, &y, &y) - plain3).abs() < 1e-2 * plain3.abs().max(1.0));
        let mut row = x.clone();
        softmax_in_place::<f32>(&mut row);
        let m = max(&x);
        let total: f32 = x.iter().map(|v| (v - m).exp()).sum();
        for (got, v) in row.iter().zip(&x) {
            assert!((got - (v - m).exp() / total).abs() < 1e-7);
        }
    }
}
