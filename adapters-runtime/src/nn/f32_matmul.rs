//! f32 products on CPUs with AVX-512, the two forms a linear layer needs. candle's matmul (the
//! `gemm` crate) runs its AVX2 kernel on this machine's AVX-512 cores (half their vector width:
//! about 245 GFLOP/s on MiniLM's products, these about 1.4-1.8x that) and packs the weight on
//! every call, which at a few dozen rows costs as much as the product (MiniLM at batch 1 x 32:
//! packing took 27.6 % of the forward's samples).
//!
//! One micro-kernel does the work: a block of 12 rows x 32 columns of output kept in registers,
//! each step adding one row of the right operand (two vectors) times a broadcast value of the
//! left, so every output accumulates its products in order, as a BLAS kernel does (a different
//! order changes the roundings, and twenty training steps amplify them past PyTorch's loss).
//!
//! - [`matmul_nn`]: `g W`, a linear's input gradient: `W` `[N, K]` is read in place.
//! - [`matmul_nt`]: `x W^T (+ b)`, a linear's forward: each task copies its 64 columns of `W`
//!   into a transposed panel (`K x 64`, cache-sized), then runs all rows over it. In inference
//!   at up to 64 rows, where copying the panel would cost more than the product, each output is
//!   instead a dot product of two contiguous rows (4 x 4 outputs as 16-lane partial sums).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};

use super::is_cpu_f32 as f32_cpu;
use rayon::prelude::*;

/// Rows and columns of output per parallel task of the NN form.
const TASK_ROWS: usize = 48;
const TASK_COLUMNS: usize = 64;
/// Columns of `W` per panel (one task) of the NT form.
const PANEL_COLUMNS: usize = 64;
/// The register block: rows of output, each 32 columns wide.
const BLOCK_ROWS: usize = 12;
/// Rows of input up to which inference's `x W^T` takes the dot-product kernel.
const DOT_MAX_ROWS: usize = 64;
/// Outputs per row below which training graphs keep candle's product (LoRA's `A`, small heads):
/// it takes another summation order there, and twenty training steps amplify the difference;
/// they cost little.
pub(super) const TRAINING_MIN_OUTPUTS: usize = 16;

/// Whether this CPU runs the kernels.
fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x W^T (+ bias)` for f32 `x` (`[..., K]`, at least two rows: a single row is a
/// matrix-vector product, which candle does faster), `weight` (`[N, K]`) and `bias` (`[N]`) on
/// the CPU. Computes without a gradient: `None` when the kernel does not apply (the caller's
/// general path), including when any operand is part of a training graph.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// let x = Tensor::ones((4, 32), DType::F32, &Device::Cpu)?;
/// let w = Tensor::ones((16, 32), DType::F32, &Device::Cpu)?;
/// // `None` on a CPU without AVX-512: then the caller multiplies with candle.
/// if let Some(y) = adapters_runtime::nn::f32_matmul::matmul_nt(&x, &w, None)? {
///     assert_eq!(y.to_vec2::<f32>()?, vec![vec![32.0; 16]; 4]);
/// }
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn matmul_nt(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Option<Tensor>> {
    let untracked = !x.track_op() && !weight.track_op() && !bias.is_some_and(Tensor::track_op);
    if !untracked || !f32_cpu(x) || !f32_cpu(weight) || !bias.is_none_or(f32_cpu) || weight.rank() != 2 || x.rank() < 1 || !available() {
        return Ok(None);
    }
    let (n, k) = weight.dims2()?;
    if k == 0 || n == 0 || x.dim(candle_core::D::Minus1)? != k || x.elem_count() / k < 2 || bias.is_some_and(|b| b.dims() != [n]) {
        return Ok(None);
    }
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    Ok(Some(match bias {
        Some(b) => x.apply_op3_no_bwd(&weight, &b.contiguous()?, &Nt)?,
        None => x.apply_op2_no_bwd(&weight, &Nt)?,
    }))
}

/// `g W` for f32 `g` (`[..., N]`) and `weight` (`[N, K]`) on the CPU, without a gradient:
/// `[..., K]`. `None` when the kernel does not apply.
///
/// ```
/// use candle_core::{DType, Device, Tensor};
/// let g = Tensor::ones((4, 16), DType::F32, &Device::Cpu)?;
/// let w = Tensor::ones((16, 32), DType::F32, &Device::Cpu)?;
/// if let Some(dx) = adapters_runtime::nn::f32_matmul::matmul_nn(&g, &w)? {
///     assert_eq!(dx.to_vec2::<f32>()?, vec![vec![16.0; 32]; 4]);
/// }
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn matmul_nn(g: &Tensor, weight: &Tensor) -> Result<Option<Tensor>> {
    if !f32_cpu(g) || !f32_cpu(weight) || weight.rank() != 2 || g.rank() < 1 || !available() {
        return Ok(None);
    }
    let (n, k) = weight.dims2()?;
    if n == 0 || k == 0 || g.dim(candle_core::D::Minus1)? != n {
        return Ok(None);
    }
    Ok(Some(g.contiguous()?.apply_op2_no_bwd(&weight.contiguous()?, &Nn)?))
}

struct Nt;
struct Nn;

fn slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        _ => candle_core::bail!("f32 matmul: contiguous f32 operands expected"),
    }
}

/// The output, shared by the tasks that each write their own block of it.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: every task writes a disjoint block of the buffer, which outlives the parallel loop.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The output from element `offset` on.
    fn at(self, offset: usize) -> Out {
        // SAFETY: callers pass offsets inside the buffer.
        Out(unsafe { self.0.add(offset) })
    }
}

/// An output buffer of `len` values that the kernel writes in full before anything reads it (a
/// zero-filled one costs a pass over it: 1.3 % of MiniLM's forward).
struct Buffer(Vec<std::mem::MaybeUninit<f32>>);

impl Buffer {
    fn new(len: usize) -> Self {
        let mut v = Vec::with_capacity(len);
        // SAFETY: `MaybeUninit` values need no initialisation.
        unsafe { v.set_len(len) };
        Buffer(v)
    }

    fn out(&mut self) -> Out {
        Out(self.0.as_mut_ptr().cast())
    }

    /// The values, once every one has been written.
    ///
    /// # Safety
    /// Every element must have been written.
    unsafe fn assume_written(self) -> Vec<f32> {
        let mut v = std::mem::ManuallyDrop::new(self.0);
        Vec::from_raw_parts(v.as_mut_ptr().cast(), v.len(), v.capacity())
    }
}

/// `(first row, rows, first column, columns)` of each task over an `m x n` output.
fn tasks(m: usize, n: usize) -> Vec<(usize, usize, usize, usize)> {
    let mut all = Vec::new();
    for r0 in (0..m).step_by(TASK_ROWS) {
        for c0 in (0..n).step_by(TASK_COLUMNS) {
            all.push((r0, TASK_ROWS.min(m - r0), c0, TASK_COLUMNS.min(n - c0)));
        }
    }
    all
}

/// The input's shape with its last dimension `last`.
fn with_last(layout: &Layout, last: usize) -> Shape {
    let mut dims = layout.shape().dims().to_vec();
    *dims.last_mut().expect("rank >= 1") = last;
    Shape::from(dims)
}

impl Nt {
    fn run(&self, (xs, xl): (&CpuStorage, &Layout), (ws, wl): (&CpuStorage, &Layout), bias: Option<(&CpuStorage, &Layout)>) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (slice(xs, xl)?, slice(ws, wl)?);
        let bias = bias.map(|(s, l)| slice(s, l)).transpose()?;
        let (n, k) = wl.shape().dims2()?;
        let out = if x.len() / k <= DOT_MAX_ROWS { dot_slices(x, w, bias, n, k) } else { nt_slices(x, w, bias, n, k) };
        let Some(out) = out else { candle_core::bail!("f32 matmul: AVX-512 needed") };
        Ok((CpuStorage::F32(out), with_last(xl, n)))
    }
}

/// `x W^T (+ bias)` on slices (`x`: rows of `k`, `w`: `[n, k]`), `None` without AVX-512: what
/// the training graph's linear nodes run on their storages.
pub(super) fn nt_slices(x: &[f32], w: &[f32], bias: Option<&[f32]>, n: usize, k: usize) -> Option<Vec<f32>> {
    if !available() || k == 0 || n == 0 {
        return None;
    }
    let m = x.len() / k;
    let mut out = Buffer::new(m * n);
    let dst = out.out();
    // Narrow outputs (a bottleneck's down projection, LoRA's A) have fewer panels than threads:
    // their rows are split too, each part copying the (small) panel for itself.
    let panels = n.div_ceil(PANEL_COLUMNS);
    let parts = (2 * rayon::current_num_threads()).div_ceil(panels).max(1);
    let rows_per_part = m.div_ceil(parts).div_ceil(BLOCK_ROWS).max(1) * BLOCK_ROWS;
    let tasks: Vec<(usize, usize)> = (0..n).step_by(PANEL_COLUMNS).flat_map(|c0| (0..m).step_by(rows_per_part).map(move |r0| (c0, r0))).collect();
    tasks.into_par_iter().for_each(|(c0, r0)| {
        let (cols, rows) = (PANEL_COLUMNS.min(n - c0), rows_per_part.min(m - r0));
        // The panel: `k` rows of this task's columns of W, side by side.
        let mut panel = vec![0f32; k * cols];
        for (c, row) in w[c0 * k..(c0 + cols) * k].chunks_exact(k).enumerate() {
            for (j, v) in row.iter().enumerate() {
                panel[j * cols + c] = *v;
            }
        }
        let bias = bias.map(|b| &b[c0..c0 + cols]);
        // SAFETY: the CPU has AVX-512 F (checked above); the block is inside `out` and no other
        // task writes it.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            let left = x.as_ptr().add(r0 * k);
            block(Operands { left, left_stride: k, right: panel.as_ptr(), right_stride: cols, inner: k, bias }, dst.at(r0 * n + c0), n, rows, cols)
        }
    });
    // SAFETY: the tasks cover every row and column of the output.
    Some(unsafe { out.assume_written() })
}

/// `x W^T (+ bias)` for a few rows, as dot products of the contiguous rows of `x` and `W` (no
/// panel to copy: at a few dozen rows copying the weight costs more than the product). Its
/// lanes sum in another order than a BLAS kernel, so training graphs keep [`nt_slices`].
fn dot_slices(x: &[f32], w: &[f32], bias: Option<&[f32]>, n: usize, k: usize) -> Option<Vec<f32>> {
    if !available() || k == 0 {
        return None;
    }
    let m = x.len() / k;
    let mut out = Buffer::new(m * n);
    let dst = out.out();
    (0..n).into_par_iter().step_by(TASK_COLUMNS).for_each(|c0| {
        // SAFETY: as in `nt_slices`.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            dot_block(x, w, bias, dst, n, k, m, (c0, TASK_COLUMNS.min(n - c0)))
        }
    });
    // SAFETY: the tasks cover every column and each writes all rows of its columns.
    Some(unsafe { out.assume_written() })
}

impl CustomOp2 for Nt {
    fn name(&self) -> &'static str {
        "adapters-f32-matmul-nt"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), None)
    }
}

impl CustomOp3 for Nt {
    fn name(&self) -> &'static str {
        "adapters-f32-matmul-nt"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), Some((s3, l3)))
    }
}

impl CustomOp2 for Nn {
    fn name(&self) -> &'static str {
        "adapters-f32-matmul-nn"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, w) = (slice(s1, l1)?, slice(s2, l2)?);
        let (n, k) = l2.shape().dims2()?;
        let Some(out) = nn_slices(g, w, n, k) else { candle_core::bail!("f32 matmul: AVX-512 needed") };
        Ok((CpuStorage::F32(out), with_last(l1, k)))
    }
}

/// `g w` on slices (`g`: rows of `n`, `w`: `[n, k]`), `None` without AVX-512.
fn nn_slices(g: &[f32], w: &[f32], n: usize, k: usize) -> Option<Vec<f32>> {
    if !available() || n == 0 {
        return None;
    }
    let m = g.len() / n;
    let mut out = Buffer::new(m * k);
    let dst = out.out();
    tasks(m, k).into_par_iter().for_each(|(r0, rows, c0, cols)| {
        // SAFETY: as in `nt_slices`.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            let operands = Operands { left: g.as_ptr().add(r0 * n), left_stride: n, right: w.as_ptr().add(c0), right_stride: k, inner: n, bias: None };
            block(operands, dst.at(r0 * k + c0), k, rows, cols)
        }
    });
    // SAFETY: the tasks cover every row and column of the output.
    Some(unsafe { out.assume_written() })
}

/// `out[r, c] = x[r, :] · w[c, :] (+ bias[c])` for all `m` rows and the task's columns, in
/// 4 x 4 blocks of 16-lane partial sums, each block's lanes summed once at the end; rows and
/// columns past the end of a block repeat the last valid one and are not stored.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn dot_block(x: &[f32], w: &[f32], bias: Option<&[f32]>, out: Out, n: usize, k: usize, m: usize, (c0, cols): (usize, usize)) {
    use std::arch::x86_64::*;
    const B: usize = 4;
    let full = k / 16 * 16;
    let tail: __mmask16 = ((1u32 << (k - full)) - 1) as __mmask16;
    for cb in (c0..c0 + cols).step_by(B) {
        let cn = B.min(c0 + cols - cb);
        let wr: [*const f32; B] = std::array::from_fn(|c| w.as_ptr().add((cb + c.min(cn - 1)) * k));
        for rb in (0..m).step_by(B) {
            let rn = B.min(m - rb);
            let xr: [*const f32; B] = std::array::from_fn(|r| x.as_ptr().add((rb + r.min(rn - 1)) * k));
            let mut acc = [[_mm512_setzero_ps(); B]; B];
            let mut kk = 0;
            while kk < k {
                let mask = if kk < full { 0xffff } else { tail };
                let xv: [__m512; B] = std::array::from_fn(|r| _mm512_maskz_loadu_ps(mask, xr[r].add(kk)));
                for c in 0..B {
                    let wv = _mm512_maskz_loadu_ps(mask, wr[c].add(kk));
                    for r in 0..B {
                        acc[r][c] = _mm512_fmadd_ps(xv[r], wv, acc[r][c]);
                    }
                }
                kk += 16;
            }
            for (r, sums) in acc.iter().enumerate().take(rn) {
                for (c, sum) in sums.iter().enumerate().take(cn) {
                    let b = bias.map_or(0.0, |b| b[cb + c]);
                    *out.0.add((rb + r) * n + cb + c) = _mm512_reduce_add_ps(*sum) + b;
                }
            }
        }
    }
}

/// The operands of one task: `left` `[rows, inner]` and `right` `[inner, cols]`, row-major with
/// the given strides (each pointing at the task's first row or column).
struct Operands<'a> {
    left: *const f32,
    left_stride: usize,
    right: *const f32,
    right_stride: usize,
    inner: usize,
    /// Added to each output column after its sum.
    bias: Option<&'a [f32]>,
}

/// `out[r, c] = sum_j left[r, j] right[j, c] (+ bias[c])` over `rows x cols`, `out` with row
/// stride `out_stride`: register blocks of 12 rows x 32 columns; a partial block masks its
/// columns and repeats its last row (not stored).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn block(op: Operands<'_>, out: Out, out_stride: usize, rows: usize, cols: usize) {
    use std::arch::x86_64::*;
    let mask = |from: usize| -> __mmask16 { ((1u32 << cols.saturating_sub(from).min(16)) - 1) as __mmask16 };
    for cb in (0..cols).step_by(32) {
        let (m0, m1) = (mask(cb), mask(cb + 16));
        let bias =
            op.bias.map(|b| (_mm512_maskz_loadu_ps(m0, b.as_ptr().add(cb)), _mm512_maskz_loadu_ps(m1, b.as_ptr().add(cb + 16).min(b.as_ptr().add(b.len())))));
        for rb in (0..rows).step_by(BLOCK_ROWS) {
            let rn = BLOCK_ROWS.min(rows - rb);
            let left: [*const f32; BLOCK_ROWS] = std::array::from_fn(|r| op.left.add((rb + r.min(rn - 1)) * op.left_stride));
            let mut acc = [[_mm512_setzero_ps(); 2]; BLOCK_ROWS];
            for j in 0..op.inner {
                let row = op.right.add(j * op.right_stride + cb);
                let (w0, w1) = (_mm512_maskz_loadu_ps(m0, row), _mm512_maskz_loadu_ps(m1, row.add(16)));
                for r in 0..BLOCK_ROWS {
                    let v = _mm512_set1_ps(*left[r].add(j));
                    acc[r][0] = _mm512_fmadd_ps(v, w0, acc[r][0]);
                    acc[r][1] = _mm512_fmadd_ps(v, w1, acc[r][1]);
                }
            }
            for (r, sums) in acc.iter().enumerate().take(rn) {
                let (s0, s1) = match bias {
                    Some((b0, b1)) => (_mm512_add_ps(sums[0], b0), _mm512_add_ps(sums[1], b1)),
                    None => (sums[0], sums[1]),
                };
                let dst = out.0.add((rb + r) * out_stride + cb);
                _mm512_mask_storeu_ps(dst, m0, s0);
                _mm512_mask_storeu_ps(dst.add(16), m1, s1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::init::{Init, Placement, Rng};
    use candle_core::{DType, Device};

    /// As exact as candle's products: against the products in f64, the kernels' largest error
    /// is within four times candle's plus a few f32 roundings of the largest output (both sum in
    /// f32; candle adds blocks of the inner dimension, the panel kernel sums 1,536 terms in one
    /// run, which rounds up to about 3x more there), over row, column and
    /// feature counts with tails (a partial register block, a partial panel or task), with and
    /// without a bias.
    #[test]
    fn as_exact_as_candles_products() {
        if !available() {
            eprintln!("no AVX-512 on this CPU; the kernels are not used here");
            return;
        }
        let f64_of = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let err = |got: &Tensor, exact: &Tensor| f64_of(got).sub(exact).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        let roundings = |exact: &Tensor| 4.0 * f64::from(f32::EPSILON) * exact.abs().unwrap().max_all().unwrap().to_scalar::<f64>().unwrap();
        let mut init = Init::new(Rng::new(6), Placement::new(Device::Cpu, DType::F32));
        for (m, n, k) in [(2, 16, 1), (3, 21, 17), (7, 130, 64), (50, 384, 8), (64, 8, 384), (200, 8, 384), (32, 384, 384), (100, 67, 1536)] {
            let x = init.normal(&[m, k], 1.0).unwrap();
            let w = init.normal(&[n, k], 1.0).unwrap();
            let b = init.normal(&[n], 1.0).unwrap();
            let exact = f64_of(&x).matmul(&f64_of(&w).t().unwrap()).unwrap();
            let candle = x.matmul(&w.t().unwrap()).unwrap();
            let ours = matmul_nt(&x, &w, None).unwrap().expect("the kernel runs");
            let bound = 4.0 * err(&candle, &exact) + roundings(&exact);
            assert!(err(&ours, &exact) <= bound, "nt {m}x{n}x{k}: {} vs candle's {}", err(&ours, &exact), err(&candle, &exact));
            let exact_b = exact.broadcast_add(&f64_of(&b)).unwrap();
            let candle_b = candle.broadcast_add(&b).unwrap();
            let ours_b = matmul_nt(&x, &w, Some(&b)).unwrap().expect("the kernel runs");
            assert!(err(&ours_b, &exact_b) <= 4.0 * err(&candle_b, &exact_b) + roundings(&exact_b), "nt {m}x{n}x{k} with bias");
            // The input gradient's form: [m, n] times the [n, k] weight.
            let g = init.normal(&[m, n], 1.0).unwrap();
            let exact = f64_of(&g).matmul(&f64_of(&w)).unwrap();
            let ours = matmul_nn(&g, &w).unwrap().expect("the kernel runs");
            let bound = 4.0 * err(&g.matmul(&w).unwrap(), &exact) + roundings(&exact);
            assert!(err(&ours, &exact) <= bound, "nn {m}x{n}x{k}");
        }
        let x = init.normal(&[2, 3, 8], 1.0).unwrap();
        let w = init.normal(&[20, 8], 1.0).unwrap();
        assert_eq!(matmul_nt(&x, &w, None).unwrap().unwrap().dims(), [2, 3, 20]);
        assert_eq!(matmul_nn(&init.normal(&[2, 3, 20], 1.0).unwrap(), &w).unwrap().unwrap().dims(), [2, 3, 8]);
        // One row and a tracked input are left to the caller.
        assert!(matmul_nt(&init.normal(&[1, 8], 1.0).unwrap(), &w, None).unwrap().is_none());
        let tracked = candle_core::Var::from_tensor(&x).unwrap();
        assert!(matmul_nt(tracked.as_tensor(), &w, None).unwrap().is_none());
    }
}
