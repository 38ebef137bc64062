//! PyTorch's orthogonal parametrization of a non-square `[r, D]` weight (the Householder map with
//! a stored orthogonal `base`), which LoReft's projection uses. Written with tensor ops so that
//! gradients reach `original` in training.

use candle_core::{DType, Result, Tensor};

use crate::methods::init::Init;

/// The effective weight `[r, D]` from `original` `[r, D]` and `base` `[D, D]`:
/// `X = originalᵀ`, `Q = H_0 … H_{r-1} I[:, :r]` with `H_j = I - τ_j v_j v_jᵀ`,
/// `v_j = e_j + (strict lower part of X)[:, j]`, `τ_j = 2 / (1 + |…|²)`; column `j` of `Q`
/// times `trunc(X[j, j])` (PyTorch's `.int()`); the result is `(base Q)ᵀ`.
pub fn effective_weight(original: &Tensor, base: &Tensor) -> Result<Tensor> {
    let (r, d) = original.dims2()?;
    let x = original.t()?; // [D, r]
    let below: Vec<f32> = (0..d).flat_map(|i| (0..r).map(move |j| if i > j { 1.0 } else { 0.0 })).collect();
    let lower = x.mul(&Tensor::from_vec(below, (d, r), original.device())?.to_dtype(original.dtype())?)?;
    let eye = Tensor::eye(d, original.dtype(), original.device())?;
    let mut q = eye.narrow(1, 0, r)?; // [D, r]
    for j in (0..r).rev() {
        let v = lower.narrow(1, j, 1)?.add(&eye.narrow(1, j, 1)?)?; // [D, 1]
        let tau = (lower.narrow(1, j, 1)?.sqr()?.sum_all()? + 1.0)?.recip()?.affine(2.0, 0.0)?;
        let projection = v.matmul(&v.t()?.matmul(&q)?)?; // v (vᵀ Q)
        q = q.sub(&projection.broadcast_mul(&tau)?)?;
    }
    // The sign (and scale) comes from the integer part of the diagonal, a constant.
    let diagonal: Vec<f32> = {
        let x = x.detach().to_dtype(DType::F32)?.to_vec2::<f32>()?;
        (0..r).map(|j| x[j][j].trunc()).collect()
    };
    let signs = Tensor::from_vec(diagonal, (1, r), original.device())?.to_dtype(original.dtype())?;
    base.matmul(&q.broadcast_mul(&signs)?)?.t()?.contiguous()
}

/// A fresh `(original, base)` pair for a projection initialised like PyTorch does it: `base` an
/// orthogonal `[D, D]` matrix whose first `r` columns span the initial weight, and `original =
/// -I[r, D]` (so the effective weight starts as the first `r` columns of `-base`, transposed).
pub fn initial(r: usize, d: usize, init: &mut Init) -> Result<(Tensor, Tensor)> {
    // Gram-Schmidt over random normal columns, in f64.
    let mut columns: Vec<Vec<f64>> = Vec::with_capacity(d);
    while columns.len() < d {
        let mut v: Vec<f64> = (0..d).map(|_| f64::from(init.rng().normal())).collect();
        for c in &columns {
            let dot: f64 = v.iter().zip(c).map(|(a, b)| a * b).sum();
            v.iter_mut().zip(c).for_each(|(a, b)| *a -= dot * b);
        }
        let norm = v.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm > 1e-6 {
            columns.push(v.into_iter().map(|a| a / norm).collect());
        }
    }
    let base: Vec<f32> = (0..d).flat_map(|i| columns.iter().map(move |c| c[i] as f32).collect::<Vec<_>>()).collect();
    let original: Vec<f32> = (0..r).flat_map(|i| (0..d).map(move |j| if i == j { -1.0 } else { 0.0 })).collect();
    Ok((init.tensor(original, (r, d))?, init.tensor(base, (d, d))?))
}
