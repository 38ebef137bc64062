//! Frozen base weights that stay quantized (a GGUF file's Q4/Q8 blocks): the forward multiplies
//! with candle's quantized kernels, and the backward hands the input its gradient through the
//! dequantized weight, so adapters train on a quantized base (QLoRA) while the base itself takes
//! a fraction of the memory and never changes.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

/// From this many input rows on, a quantized weight is dequantized for the product (see
/// [`BaseWeight::linear`]); fewer rows (decoding a token) keep candle's quantized kernels.
const DEQUANTIZE_FROM_ROWS: usize = 16;

/// A linear layer's frozen weight `[out, in]`: dense, or quantized.
#[derive(Clone, Debug)]
pub enum BaseWeight {
    Dense(Tensor),
    Quantized(Arc<QTensor>),
}

impl BaseWeight {
    /// `(out, in)`.
    pub fn dims(&self) -> Result<(usize, usize)> {
        match self {
            BaseWeight::Dense(w) => w.dims2(),
            BaseWeight::Quantized(q) => q.shape().dims2(),
        }
    }

    pub fn is_quantized(&self) -> bool {
        matches!(self, BaseWeight::Quantized(_))
    }

    /// The weight as a dense tensor (dequantized to f32 when quantized: a copy, made per call).
    pub fn dense(&self) -> Result<Tensor> {
        match self {
            BaseWeight::Dense(w) => Ok(w.clone()),
            BaseWeight::Quantized(q) => q.dequantize(&q.device()),
        }
    }

    /// `x W^T + b`, the input in any float dtype (quantized kernels take f32).
    pub fn linear(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let q = match self {
            BaseWeight::Dense(w) => return super::linear(x, w, bias),
            BaseWeight::Quantized(q) => q,
        };
        let dtype = x.dtype();
        let rows = x.elem_count() / x.dim(candle_core::D::Minus1)?;
        if rows >= DEQUANTIZE_FROM_ROWS {
            // Batches: dequantize this one weight for the call and multiply densely (the weight
            // stays quantized in memory; only one layer's f32 copy exists at a time). candle's
            // quantized kernels multiply row by row, about 12x slower than a dense GEMM here.
            let weight = q.dequantize(x.device())?.to_dtype(dtype)?;
            return super::linear(x, &weight, bias);
        }
        let x32 = x.to_dtype(DType::F32)?.contiguous()?;
        let out = if x32.track_op() { x32.apply_op1(FrozenQuantized(q.clone()))? } else { x32.apply_op1_no_bwd(q.as_ref())? };
        let out = out.to_dtype(dtype)?;
        match bias {
            Some(b) => out.broadcast_add(b),
            None => Ok(out),
        }
    }
}

/// The quantized product as a graph node whose backward gives the input `g W`.
struct FrozenQuantized(Arc<QTensor>);

impl CustomOp1 for FrozenQuantized {
    fn name(&self) -> &'static str {
        "adapters-frozen-quantized-matmul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        CustomOp1::cpu_fwd(self.0.as_ref(), storage, layout)
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let weight = self.0.dequantize(grad_res.device())?;
        Ok(Some(grad_res.broadcast_matmul(&weight)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::GgmlDType;
    use candle_core::{Device, Var};

    /// Quantized forward equals the dense product with the dequantized weight (up to the
    /// input's own 8-bit quantization), and the input gradient is `g W` of that weight.
    #[test]
    fn quantized_linear_matches_dense_and_passes_gradients() {
        let mut rng = crate::methods::init::Rng::new(5);
        let w = Tensor::from_vec(rng.normal_vec(8 * 64, 1.0), (8, 64), &Device::Cpu).unwrap();
        let q = Arc::new(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap());
        let base = BaseWeight::Quantized(q.clone());
        let dense = q.dequantize(&Device::Cpu).unwrap();
        let x = Var::from_tensor(&Tensor::from_vec(rng.normal_vec(3 * 64, 1.0), (1, 3, 64), &Device::Cpu).unwrap()).unwrap();
        let ours = base.linear(x.as_tensor(), None).unwrap();
        let reference = x.as_tensor().broadcast_matmul(&dense.t().unwrap()).unwrap();
        // The kernel rounds the input to 8 bits per block of 32 too: about 1 % of the output's range.
        let diff = crate::compare::compare(&ours, &reference).unwrap().max_abs;
        let range = reference.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff > 0.0 && diff < 0.03 * range, "{diff} of {range}");
        let probe = Tensor::from_vec(rng.normal_vec(3 * 8, 1.0), (1, 3, 8), &Device::Cpu).unwrap();
        let grads = (ours * &probe).unwrap().sum_all().unwrap().backward().unwrap();
        let expected = probe.broadcast_matmul(&dense).unwrap();
        let diff = crate::compare::compare(grads.get(x.as_tensor()).unwrap(), &expected).unwrap().max_abs;
        assert!(diff < 1e-4, "{diff}");
        // A batch multiplies with the dequantized weight: the dense product exactly.
        let batch = Tensor::from_vec(rng.normal_vec(32 * 64, 1.0), (2, 16, 64), &Device::Cpu).unwrap();
        let dense_out = batch.broadcast_matmul(&dense.t().unwrap()).unwrap();
        let diff = crate::compare::compare(&base.linear(&batch, None).unwrap(), &dense_out).unwrap().max_abs;
        assert!(diff < 1e-4, "{diff}");
    }
}
