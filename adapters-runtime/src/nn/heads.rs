//! Attention's head layout changes, `[batch, seq, heads * d]` <-> `[batch, heads, seq, d]`. In a
//! training graph the composed version is three nodes each way (reshape, transpose, copy), and
//! candle's backward gives each a zero-filled gradient buffer and a sum into it, the transpose's
//! through a slow strided add; here each direction is one node whose backward is the opposite
//! permutation, one parallel pass.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `[batch, seq, heads * d]` -> `[batch, heads, seq, d]`, contiguous.
///
/// ```
/// use candle_core::{Device, Tensor};
/// let x = Tensor::arange(0f32, 12.0, &Device::Cpu)?.reshape((1, 3, 4))?;
/// let split = adapters_runtime::nn::split_heads(&x, 2)?; // [1, 2, 3, 2]
/// assert_eq!(split.dims(), [1, 2, 3, 2]);
/// assert_eq!(adapters_runtime::nn::merge_heads(&split)?.to_vec3::<f32>()?, x.to_vec3::<f32>()?);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (batch, seq, hidden) = x.dims3()?;
    if hidden % heads != 0 {
        candle_core::bail!("split_heads: {hidden} features do not split into {heads} heads")
    }
    if fused(x) {
        return x.contiguous()?.apply_op1(HeadLayout { heads, split: true });
    }
    x.reshape((batch, seq, heads, hidden / heads))?.transpose(1, 2)?.contiguous()
}

/// `[batch, heads, seq, d]` -> `[batch, seq, heads * d]`, contiguous.
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (batch, heads, seq, d) = x.dims4()?;
    if fused(x) {
        return x.contiguous()?.apply_op1(HeadLayout { heads, split: false });
    }
    x.transpose(1, 2)?.reshape((batch, seq, heads * d))
}

/// The single-node version serves f32 training graphs on the CPU; inference keeps candle's
/// copies (no gradient bookkeeping to save there).
fn fused(x: &Tensor) -> bool {
    x.track_op() && super::is_cpu_f32(x)
}

struct HeadLayout {
    heads: usize,
    split: bool,
}

impl CustomOp1 for HeadLayout {
    fn name(&self) -> &'static str {
        if self.split {
            "adapters-split-heads"
        } else {
            "adapters-merge-heads"
        }
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
            candle_core::bail!("{}: a contiguous f32 input expected", self.name())
        };
        let x = &x[start..end];
        let mut out = vec![0f32; x.len()];
        let (shape, swapped): (Shape, [usize; 4]) = if self.split {
            let (b, s, hidden) = layout.shape().dims3()?;
            let d = hidden / self.heads;
            ((b, self.heads, s, d).into(), [b, s, self.heads, d])
        } else {
            let (b, h, s, d) = layout.shape().dims4()?;
            ((b, s, h * d).into(), [b, h, s, d])
        };
        swap_middle(x, &mut out, swapped);
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let back = HeadLayout { heads: self.heads, split: !self.split };
        let grad = grad_res.contiguous()?.apply_op1_no_bwd(&back)?;
        Ok(Some(grad.reshape(arg.shape())?))
    }
}

/// `dst[b][y][x][..] = src[b][x][y][..]` for `src` of dims `[b, x, y, d]`, one output row of
/// `x * d` values per task.
fn swap_middle(src: &[f32], dst: &mut [f32], [_, xs, ys, d]: [usize; 4]) {
    dst.par_chunks_mut(xs * d).enumerate().for_each(|(row, out)| {
        let (b, y) = (row / ys, row % ys);
        for (x, out) in out.chunks_exact_mut(d).enumerate() {
            let from = ((b * xs + x) * ys + y) * d;
            out.copy_from_slice(&src[from..from + d]);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Both directions equal the composed reshapes and transposes, and so do their gradients.
    #[test]
    fn equals_the_composed_layout_changes_and_their_gradients() {
        let mut rng = crate::methods::init::Rng::new(3);
        let x = Var::from_tensor(&Tensor::from_vec(rng.normal_vec(2 * 5 * 12, 1.0), (2, 5, 12), &Device::Cpu).unwrap()).unwrap();
        let probe = Tensor::from_vec(rng.normal_vec(2 * 5 * 12, 1.0), (2, 3, 5, 4), &Device::Cpu).unwrap();
        let ours = split_heads(x.as_tensor(), 3).unwrap();
        let theirs = x.as_tensor().reshape((2, 5, 3, 4)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
        assert_eq!(ours.dims(), [2, 3, 5, 4]);
        assert_eq!(ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(), theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        // Merging back (another node) then weighting: the gradient reaches x through both nodes.
        let merged = merge_heads(&(ours * &probe).unwrap()).unwrap();
        let composed = (theirs * &probe).unwrap().transpose(1, 2).unwrap().reshape((2, 5, 12)).unwrap();
        assert_eq!(merged.to_vec3::<f32>().unwrap(), composed.to_vec3::<f32>().unwrap());
        let weights = Tensor::from_vec(rng.normal_vec(2 * 5 * 12, 1.0), (2, 5, 12), &Device::Cpu).unwrap();
        let g1 = (merged * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (composed * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let (a, b) = (g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap());
        assert!(crate::compare::compare(a, b).unwrap().max_abs < 1e-6);
        assert!(split_heads(x.as_tensor(), 5).is_err());
    }
}
