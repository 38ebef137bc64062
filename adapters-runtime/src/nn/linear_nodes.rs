//! `x W^T + b` as one training-graph node (f32, CPU). Composed of candle ops a linear over a
//! batch is five nodes (the input folded to rows, the transposed weight, the product, the bias
//! broadcast, the sum), each with a zero-filled gradient buffer in the backward; the product's
//! backward always computes the gradient of both operands, so a frozen weight costs a full extra
//! product. Both nodes here run the product straight on the storages (no copy in or out; the
//! AVX-512 kernels of [`super::f32_matmul`] where the CPU has them, candle's product otherwise)
//! and add the bias in place:
//!
//! - [`FrozenLinear`]: only `x` needs a gradient (a frozen base weight under adapters); the
//!   weight and bias are part of the node, and its backward returns `dx = g W` alone.
//! - [`TrainedLinear`]: the weight (and bias) are trained (adapter projections, LoRA matrices,
//!   heads); the backward returns `dW = g^T x`, `db = sum g` and, when `x` is tracked, `dx`.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, Tensor};

pub(super) struct FrozenLinear {
    /// `[out, in]`, contiguous, f32 on the CPU.
    pub(super) weight: Tensor,
    /// `[out]`, contiguous, f32 on the CPU.
    pub(super) bias: Option<Tensor>,
}

/// Whether the operands suit both nodes: f32 on the CPU, a `[out, in]` weight, an input of rank
/// two or more, a bias of `out` values.
fn operands_fit(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> bool {
    let f32_cpu = super::is_cpu_f32;
    f32_cpu(x) && f32_cpu(weight) && weight.rank() == 2 && x.rank() >= 2 && bias.is_none_or(|b| f32_cpu(b) && b.dims() == [weight.dim(0).unwrap_or(0)])
}

impl FrozenLinear {
    /// Whether [`FrozenLinear`] computes `x W^T + b` for these operands.
    pub(super) fn applies(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> bool {
        x.track_op() && !weight.track_op() && !bias.is_some_and(Tensor::track_op) && operands_fit(x, weight, bias)
    }

    /// The node for operands [`FrozenLinear::applies`] to.
    pub(super) fn new(weight: &Tensor, bias: Option<&Tensor>) -> Result<Self> {
        Ok(FrozenLinear { weight: weight.contiguous()?, bias: bias.map(Tensor::contiguous).transpose()? })
    }
}

/// `x W^T (+ b)` on the CPU storages: rows of `x` (contiguous, any rank, features last) times the
/// transposed `[out, in]` weight, the bias added in place.
fn forward(x: &CpuStorage, x_layout: &Layout, w: &CpuStorage, w_layout: &Layout, bias: Option<(&CpuStorage, &Layout)>) -> Result<(CpuStorage, Shape)> {
    let Some((start, _)) = x_layout.contiguous_offsets() else { candle_core::bail!("linear: input must be contiguous") };
    let dims = x_layout.shape().dims();
    let (out_features, in_features) = w_layout.shape().dims2()?;
    if dims[dims.len() - 1] != in_features {
        candle_core::bail!("linear: input has {} features, the weight takes {in_features}", dims[dims.len() - 1])
    }
    let rows = x_layout.shape().elem_count() / in_features;
    let mut out_dims = dims.to_vec();
    *out_dims.last_mut().expect("rank >= 2") = out_features;
    // The AVX-512 kernel, bias included, when the CPU has it.
    if let (CpuStorage::F32(xs), CpuStorage::F32(ws), Some((w0, w1))) = (x, w, w_layout.contiguous_offsets()) {
        let bias_values = match bias {
            None => Some(None),
            Some((CpuStorage::F32(b), l)) => l.contiguous_offsets().map(|(b0, b1)| Some(&b[b0..b1])),
            Some(_) => None,
        };
        if let Some(bias_values) = bias_values.filter(|_| out_features >= super::f32_matmul::TRAINING_MIN_OUTPUTS) {
            if let Some(out) = super::f32_matmul::nt_slices(&xs[start..start + rows * in_features], &ws[w0..w1], bias_values, out_features, in_features) {
                return Ok((CpuStorage::F32(out), Shape::from(out_dims)));
            }
        }
    }
    let rows_layout = Layout::contiguous_with_offset((rows, in_features), start);
    let mut out = x.matmul(w, (1, rows, out_features, in_features), &rows_layout, &w_layout.transpose(0, 1)?)?;
    if let Some((b, b_layout)) = bias {
        let (CpuStorage::F32(b), CpuStorage::F32(o), Some((b0, b1))) = (b, &mut out, b_layout.contiguous_offsets()) else {
            candle_core::bail!("linear: bias and output must be contiguous f32")
        };
        let b = &b[b0..b1];
        for row in o.chunks_exact_mut(out_features) {
            for (v, b) in row.iter_mut().zip(b) {
                *v += b;
            }
        }
    }
    Ok((out, Shape::from(out_dims)))
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "adapters-frozen-linear"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (w_storage, w_layout) = self.weight.storage_and_layout();
        let Storage::Cpu(w) = &*w_storage else { candle_core::bail!("frozen linear: weight must be on the CPU") };
        match &self.bias {
            Some(bias) => {
                let (b_storage, b_layout) = bias.storage_and_layout();
                let Storage::Cpu(b) = &*b_storage else { candle_core::bail!("frozen linear: bias must be on the CPU") };
                forward(storage, layout, w, w_layout, Some((b, b_layout)))
            }
            None => forward(storage, layout, w, w_layout, None),
        }
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        input_gradient(grad_res, &self.weight).map(Some)
    }
}

/// `dx = g W`: the AVX-512 kernel when the CPU has it, candle's product otherwise.
fn input_gradient(g: &Tensor, w: &Tensor) -> Result<Tensor> {
    match super::f32_matmul::matmul_nn(g, w)? {
        Some(dx) => Ok(dx),
        None => g.broadcast_matmul(w),
    }
}

/// `x W^T + b` with a trained weight (and bias): see the module documentation.
pub(super) struct TrainedLinear;

impl TrainedLinear {
    /// Whether [`TrainedLinear`] computes `x W^T + b` for these operands.
    pub(super) fn applies(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> bool {
        weight.track_op() && operands_fit(x, weight, bias)
    }

    pub(super) fn apply(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let (x, weight) = (x.contiguous()?, weight.contiguous()?);
        match bias {
            Some(b) => x.apply_op3(&weight, &b.contiguous()?, TrainedLinear),
            None => x.apply_op2(&weight, TrainedLinear),
        }
    }

    /// `(dx, dW, db)` for the gradient `g` of the output.
    fn gradients(x: &Tensor, w: &Tensor, g: &Tensor, with_bias: bool) -> Result<(Option<Tensor>, Tensor, Option<Tensor>)> {
        let (out_features, in_features) = w.dims2()?;
        let rows = x.elem_count() / in_features;
        let g = g.contiguous()?;
        let g_rows = g.reshape((rows, out_features))?;
        let dw = g_rows.t()?.matmul(&x.reshape((rows, in_features))?)?;
        let db = if with_bias { Some(g_rows.sum(0)?) } else { None };
        let dx = if x.track_op() { Some(input_gradient(&g, w)?) } else { None };
        Ok((dx, dw, db))
    }
}

impl CustomOp2 for TrainedLinear {
    fn name(&self) -> &'static str {
        "adapters-trained-linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        forward(s1, l1, s2, l2, None)
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = TrainedLinear::gradients(x, w, grad_res, false)?;
        Ok((dx, Some(dw)))
    }
}

impl CustomOp3 for TrainedLinear {
    fn name(&self) -> &'static str {
        "adapters-trained-linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        forward(s1, l1, s2, l2, Some((s3, l3)))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, b: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, db) = TrainedLinear::gradients(x, w, grad_res, b.track_op())?;
        Ok((dx, Some(dw), db))
    }
}
