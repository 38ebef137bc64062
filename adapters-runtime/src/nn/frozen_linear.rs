//! `x W^T + b` as one training-graph node when only `x` needs a gradient (a frozen base weight
//! under adapters). candle's matmul backward always computes the gradient of both operands, and
//! its bias add is a second node whose backward sums a gradient for the bias as well: a frozen
//! linear costs a full extra product and two extra passes per backward. This node runs the same
//! product straight on the storages (no copy in or out), adds the bias in place, and its backward
//! returns only `dx = g W`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Storage, Tensor};

pub(super) struct FrozenLinear {
    /// `[out, in]`, contiguous, f32 on the CPU.
    pub(super) weight: Tensor,
    /// `[out]`, contiguous, f32 on the CPU.
    pub(super) bias: Option<Tensor>,
}

fn cpu_f32(t: &Tensor, what: &str) -> Result<()> {
    if t.dtype() != candle_core::DType::F32 || !t.device().is_cpu() || !t.is_contiguous() {
        candle_core::bail!("frozen linear: {what} must be a contiguous f32 CPU tensor")
    }
    Ok(())
}

impl FrozenLinear {
    /// Whether [`FrozenLinear`] computes `x W^T + b` for these operands.
    pub(super) fn applies(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> bool {
        let f32_cpu = |t: &Tensor| t.dtype() == candle_core::DType::F32 && t.device().is_cpu();
        x.track_op()
            && !weight.track_op()
            && !bias.is_some_and(Tensor::track_op)
            && f32_cpu(x)
            && f32_cpu(weight)
            && weight.rank() == 2
            && x.rank() >= 2
            && bias.is_none_or(|b| f32_cpu(b) && b.dims() == [weight.dim(0).unwrap_or(0)])
    }

    pub(super) fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        let (weight, bias) = (weight.contiguous()?, bias.map(Tensor::contiguous).transpose()?);
        cpu_f32(&weight, "weight")?;
        if let Some(b) = &bias {
            cpu_f32(b, "bias")?;
        }
        Ok(FrozenLinear { weight, bias })
    }
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "adapters-frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let Some((start, _)) = layout.contiguous_offsets() else { candle_core::bail!("frozen linear: input must be contiguous") };
        let dims = layout.shape().dims();
        let (out_features, in_features) = self.weight.dims2()?;
        if dims[dims.len() - 1] != in_features {
            candle_core::bail!("frozen linear: input has {} features, the weight takes {in_features}", dims[dims.len() - 1])
        }
        let rows = layout.shape().elem_count() / in_features;
        let (w_storage, w_layout) = self.weight.storage_and_layout();
        let Storage::Cpu(w) = &*w_storage else { candle_core::bail!("frozen linear: weight must be on the CPU") };
        let x_layout = Layout::contiguous_with_offset((rows, in_features), start);
        let mut out = storage.matmul(w, (1, rows, out_features, in_features), &x_layout, &w_layout.transpose(0, 1)?)?;
        if let Some(bias) = &self.bias {
            let (b_storage, b_layout) = bias.storage_and_layout();
            let (Storage::Cpu(CpuStorage::F32(b)), CpuStorage::F32(o)) = (&*b_storage, &mut out) else {
                candle_core::bail!("frozen linear: bias and output must be f32")
            };
            let b = &b[b_layout.start_offset()..b_layout.start_offset() + out_features];
            for row in o.chunks_exact_mut(out_features) {
                for (v, b) in row.iter_mut().zip(b) {
                    *v += b;
                }
            }
        }
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("rank >= 2") = out_features;
        Ok((out, Shape::from(out_dims)))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.broadcast_matmul(&self.weight)?))
    }
}
