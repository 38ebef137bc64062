//! `a + b` and `x * s` for the residual sums and scalings of inference, in f32 and bf16. candle's
//! bf16 binary and affine ops call a conversion function per element (a bf16 `x * 2.0` took
//! 1.5 ms on MiniLM's `[8, 128, 384]`, more than the 384 x 384 product before it); its f32 ones
//! run on a second thread pool beside the one the GEMMs use, and on two cores the hand-over cost
//! more than the sums (MiniLM's f32 forward: 165-171 ms with candle's residual sums, 139-142 ms
//! with these). f16, tensors that need a gradient and broadcasts keep candle's ops.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::bf16_bits::{as_bits, as_bits_mut, from_f32, to_f32};
use super::fast_math::{simd, SimdKernel};

/// Elements per parallel chunk.
const CHUNK: usize = 1 << 14;

fn fast_path(t: &Tensor) -> bool {
    matches!(t.dtype(), DType::F32 | DType::BF16) && t.device().is_cpu() && !t.track_op()
}

/// `a + b` (same shapes and dtype, f32 or bf16, nothing trained through them; otherwise candle's
/// broadcasting add).
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// let a = Tensor::ones((2, 3), DType::BF16, &Device::Cpu)?;
/// let sum = adapters_runtime::nn::elementwise::add(&a, &a)?;
/// assert_eq!(sum.to_dtype(DType::F32)?.to_vec2::<f32>()?, vec![vec![2.0; 3]; 2]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if fast_path(a) && fast_path(b) && a.dims() == b.dims() && a.dtype() == b.dtype() {
        return a.contiguous()?.apply_op2_no_bwd(&b.contiguous()?, &Add);
    }
    a.broadcast_add(b)
}

/// `x * s` (f32 or bf16, nothing trained through it; otherwise candle's); `x` itself when `s`
/// is one.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// let x = Tensor::ones(4, DType::BF16, &Device::Cpu)?;
/// let half = adapters_runtime::nn::elementwise::scale(&x, 0.5)?;
/// assert_eq!(half.to_dtype(DType::F32)?.to_vec1::<f32>()?, vec![0.5; 4]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn scale(x: &Tensor, s: f64) -> Result<Tensor> {
    // A scaling of one (a bottleneck's and LoRA's default) is no pass over the tensor, in
    // inference or training (its gradient is the upstream one).
    if s == 1.0 {
        return Ok(x.clone());
    }
    if fast_path(x) {
        return x.contiguous()?.apply_op1_no_bwd(&Scale(s as f32));
    }
    x * s
}

fn bits<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [u16]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::BF16(v), Some((start, end))) => Ok(as_bits(&v[start..end])),
        _ => candle_core::bail!("bf16 elementwise: contiguous bf16 operands expected"),
    }
}

struct Add;

impl CustomOp2 for Add {
    fn name(&self) -> &'static str {
        "adapters-add"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        if let (CpuStorage::F32(a), CpuStorage::F32(b), Some((a0, a1)), Some((b0, b1))) = (s1, s2, l1.contiguous_offsets(), l2.contiguous_offsets()) {
            // One pass on this thread: the sum is cheaper than handing it to a pool.
            let out: Vec<f32> = a[a0..a1].iter().zip(&b[b0..b1]).map(|(x, y)| x + y).collect();
            return Ok((CpuStorage::F32(out), l1.shape().clone()));
        }
        let (a, b) = (bits(s1, l1)?, bits(s2, l2)?);
        let CpuStorage::BF16(like) = s1 else { candle_core::bail!("bf16 add: bf16 operands expected") };
        let mut out = vec![like[0]; a.len()];
        as_bits_mut(&mut out).par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK)).zip(b.par_chunks(CHUNK)).for_each(|((out, a), b)| simd(AddChunk { a, b, out }));
        Ok((CpuStorage::BF16(out), l1.shape().clone()))
    }
}

struct AddChunk<'a> {
    a: &'a [u16],
    b: &'a [u16],
    out: &'a mut [u16],
}

impl SimdKernel for AddChunk<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        for ((o, a), b) in self.out.iter_mut().zip(self.a).zip(self.b) {
            *o = from_f32(to_f32(*a) + to_f32(*b));
        }
    }
}

struct Scale(f32);

impl CustomOp1 for Scale {
    fn name(&self) -> &'static str {
        "adapters-scale"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        if let (CpuStorage::F32(x), Some((x0, x1))) = (storage, layout.contiguous_offsets()) {
            let s = self.0;
            let out: Vec<f32> = x[x0..x1].iter().map(|v| v * s).collect();
            return Ok((CpuStorage::F32(out), layout.shape().clone()));
        }
        let x = bits(storage, layout)?;
        let CpuStorage::BF16(like) = storage else { candle_core::bail!("bf16 scale: a bf16 operand expected") };
        let mut out = vec![like[0]; x.len()];
        let s = self.0;
        as_bits_mut(&mut out).par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(out, x)| simd(ScaleChunk { x, out, s }));
        Ok((CpuStorage::BF16(out), layout.shape().clone()))
    }
}

struct ScaleChunk<'a> {
    x: &'a [u16],
    out: &'a mut [u16],
    s: f32,
}

impl SimdKernel for ScaleChunk<'_> {
    type Output = ();
    #[inline(always)]
    fn run(self) {
        for (o, x) in self.out.iter_mut().zip(self.x) {
            *o = from_f32(to_f32(*x) * self.s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// The same values as candle's bf16 ops (both round the f32 result once).
    #[test]
    fn matches_candles_bf16_ops() {
        let a = Tensor::randn(0f32, 3.0, (3, 5000), &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
        let b = Tensor::randn(0f32, 3.0, (3, 5000), &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
        let same =
            |x: &Tensor, y: &Tensor| x.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap() == y.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
        assert!(same(&add(&a, &b).unwrap(), &(&a + &b).unwrap()));
        let ours = scale(&a, 2.0).unwrap();
        assert!(same(&ours, &(&a * 2.0).unwrap()));
        assert_eq!(ours.dtype(), DType::BF16);
        // Broadcasts take candle's op; f32 gives candle's values.
        let row = Tensor::randn(0f32, 1.0, 5000, &Device::Cpu).unwrap().to_dtype(DType::BF16).unwrap();
        assert_eq!(add(&a, &row).unwrap().dims(), [3, 5000]);
        let (f, g) = (Tensor::randn(0f32, 3.0, (3, 5000), &Device::Cpu).unwrap(), Tensor::randn(0f32, 3.0, (3, 5000), &Device::Cpu).unwrap());
        assert!(same(&scale(&f, 0.3).unwrap(), &(&f * 0.3).unwrap()));
        assert!(same(&add(&f, &g).unwrap(), &(&f + &g).unwrap()));
    }
}
