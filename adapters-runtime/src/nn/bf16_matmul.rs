//! `x W^T` in bf16 on CPUs with AVX-512 BF16 (`vdpbf16ps`: two bf16 products summed into each
//! f32 lane per instruction). candle's CPU matmul widens bf16 to f32 and runs at under half its
//! f32 speed; this kernel keeps the operands in bf16, accumulates in f32 and rounds the result
//! once, as PyTorch's oneDNN path does.
//!
//! Layout: the weight `[N, K]` is packed into panels of 16 output columns, each holding, for
//! every pair of input features, the 16 columns' two bf16 values side by side (one `u32` per
//! column). A micro-kernel then keeps `ROWS x 32` f32 sums in registers: per feature pair it
//! loads two panel vectors, broadcasts each row's pair of inputs, and issues one `vdpbf16ps`
//! per row and panel. Blocks of rows run on candle's thread pool.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::bf16_bits::{as_bits, as_bits_mut};

/// Rows of `x` one micro-kernel call computes.
const ROWS: usize = 6;
/// Output columns per panel (one zmm of f32 sums).
const PANEL: usize = 16;

/// Whether this CPU runs the kernel.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bw") && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x W^T (+ bias)` for bf16 `x` (`[..., K]`, on the CPU), `weight` (`[N, K]`) and `bias`
/// (`[N]`), when the kernel can run it (AVX-512 BF16, even `K`); `None` otherwise, for the
/// caller's general path. The bias is added to the f32 sums before the one rounding, as
/// PyTorch's fused `addmm` does (and without a second pass over the output).
pub fn matmul_nt(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Option<Tensor>> {
    matmul_nt_with(x, weight, bias, None)
}

/// A weight `[N, K]` packed for the kernel once ([`pack_weight`]), for a linear layer that
/// multiplies by it on every call: packing is a pass over the weight, which at a few rows of
/// input (decoding, batch 1) costs as much as the product.
#[derive(Debug)]
pub struct PackedWeight {
    panels: Vec<u32>,
    n: usize,
    k: usize,
}

/// `weight` packed, when the kernel can multiply by it (bf16, `[N, K]` with even `K`, on the
/// CPU, AVX-512 BF16, nothing trained through it); `None` otherwise.
pub fn pack_weight(weight: &Tensor) -> Result<Option<Arc<PackedWeight>>> {
    if weight.dtype() != DType::BF16 || weight.rank() != 2 || !weight.device().is_cpu() || weight.track_op() || !available() {
        return Ok(None);
    }
    let (n, k) = weight.dims2()?;
    if k % 2 != 0 {
        return Ok(None);
    }
    let weight = weight.contiguous()?;
    let (storage, layout) = weight.storage_and_layout();
    let (candle_core::Storage::Cpu(CpuStorage::BF16(w)), Some((w0, w1))) = (&*storage, layout.contiguous_offsets()) else { return Ok(None) };
    Ok(Some(Arc::new(PackedWeight { panels: pack(as_bits(&w[w0..w1]), n, k), n, k })))
}

/// [`matmul_nt`] with the weight already packed (it must be `weight`, packed by [`pack_weight`]).
pub fn matmul_nt_packed(x: &Tensor, weight: &Tensor, packed: &Arc<PackedWeight>, bias: Option<&Tensor>) -> Result<Option<Tensor>> {
    if weight.dims() != [packed.n, packed.k] {
        candle_core::bail!("bf16 matmul: packed {}x{}, weight {:?}", packed.n, packed.k, weight.dims());
    }
    matmul_nt_with(x, weight, bias, Some(packed.clone()))
}

fn matmul_nt_with(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, packed: Option<Arc<PackedWeight>>) -> Result<Option<Tensor>> {
    let k = x.dim(candle_core::D::Minus1)?;
    if x.dtype() != DType::BF16 || weight.dtype() != DType::BF16 || !x.device().is_cpu() || k % 2 != 0 || weight.dim(1)? != k || !available() {
        return Ok(None);
    }
    let n = weight.dim(0)?;
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    let op = MatmulNt { packed };
    Ok(Some(match bias {
        Some(b) if b.dtype() == DType::BF16 && b.dims() == [n] => x.apply_op3_no_bwd(&weight, &b.contiguous()?, &op)?,
        Some(b) => x.apply_op2_no_bwd(&weight, &op)?.broadcast_add(b)?,
        None => x.apply_op2_no_bwd(&weight, &op)?,
    }))
}

struct MatmulNt {
    packed: Option<Arc<PackedWeight>>,
}

impl MatmulNt {
    fn run(&self, x: (&CpuStorage, &Layout), w: (&CpuStorage, &Layout), bias: Option<(&CpuStorage, &Layout)>) -> Result<(CpuStorage, Shape)> {
        let ((CpuStorage::BF16(xs), l1), (CpuStorage::BF16(ws), l2)) = (x, w) else { candle_core::bail!("bf16 matmul: both operands must be bf16") };
        let (Some((x0, x1)), Some((w0, w1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("bf16 matmul: operands must be contiguous")
        };
        let bias = match bias {
            None => None,
            Some((CpuStorage::BF16(b), l3)) => {
                let Some((b0, b1)) = l3.contiguous_offsets() else { candle_core::bail!("bf16 matmul: the bias must be contiguous") };
                Some(&b[b0..b1])
            }
            Some(_) => candle_core::bail!("bf16 matmul: the bias must be bf16"),
        };
        let dims = l1.shape().dims();
        let k = dims[dims.len() - 1];
        let m = l1.shape().elem_count() / k;
        let n = l2.shape().dims()[0];
        let mut out = zeroed_like(xs, m * n);
        let fresh;
        let packed = match &self.packed {
            Some(p) => &p.panels,
            None => {
                fresh = pack(as_bits(&ws[w0..w1]), n, k);
                &fresh
            }
        };
        matmul_bits(as_bits(&xs[x0..x1]), packed, bias.map(as_bits), as_bits_mut(&mut out), m, n, k);
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("rank >= 1") = n;
        Ok((CpuStorage::BF16(out), Shape::from(shape)))
    }
}

impl CustomOp2 for MatmulNt {
    fn name(&self) -> &'static str {
        "adapters-bf16-matmul-nt"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), None)
    }
}

impl candle_core::CustomOp3 for MatmulNt {
    fn name(&self) -> &'static str {
        "adapters-bf16-matmul-nt-bias"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), Some((s3, l3)))
    }
}

/// `x W^T` per batch item for bf16 `x` (`[..., M, K]`) and `w` (`[..., N, K]`) with the same
/// leading dimensions (attention's `q k^T`, and `p v` as `p (v^T)^T`), when the kernel can run it;
/// `None` otherwise. Batch items run in parallel, each on one thread.
pub fn batched_matmul_nt(x: &Tensor, w: &Tensor) -> Result<Option<Tensor>> {
    let (xd, wd) = (x.dims(), w.dims());
    let rank = xd.len();
    if x.dtype() != DType::BF16 || w.dtype() != DType::BF16 || !x.device().is_cpu() || rank < 3 || wd.len() != rank || !available() {
        return Ok(None);
    }
    if xd[..rank - 2] != wd[..rank - 2] || xd[rank - 1] != wd[rank - 1] || xd[rank - 1] % 2 != 0 {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &BatchedMatmulNt)?))
}

struct BatchedMatmulNt;

impl CustomOp2 for BatchedMatmulNt {
    fn name(&self) -> &'static str {
        "adapters-bf16-batched-matmul-nt"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::BF16(xs), CpuStorage::BF16(ws)) = (s1, s2) else { candle_core::bail!("bf16 matmul: both operands must be bf16") };
        let (Some((x0, x1)), Some((w0, w1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else {
            candle_core::bail!("bf16 matmul: operands must be contiguous")
        };
        let (xd, wd) = (l1.shape().dims(), l2.shape().dims());
        let rank = xd.len();
        let (m, k, n) = (xd[rank - 2], xd[rank - 1], wd[rank - 2]);
        let batch: usize = xd[..rank - 2].iter().product();
        let mut out = zeroed_like(xs, batch * m * n);
        let start = vec![0f32; (n.div_ceil(PANEL) + 1) * PANEL];
        let (x, w) = (as_bits(&xs[x0..x1]), as_bits(&ws[w0..w1]));
        as_bits_mut(&mut out).par_chunks_mut(m * n).zip(x.par_chunks(m * k)).zip(w.par_chunks(n * k)).for_each(|((out, x), w)| {
            let packed = pack(w, n, k);
            // SAFETY: `batched_matmul_nt` checked that the CPU has AVX-512 F, BW and BF16.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                rows_block(x, &packed, &start, out, m, n, k)
            }
        });
        let mut shape = xd.to_vec();
        shape[rank - 1] = n;
        Ok((CpuStorage::BF16(out), Shape::from(shape)))
    }
}

/// `len` default values of the slice's element type (bf16, which this crate does not name).
fn zeroed_like<T: Default + Clone>(_like: &[T], len: usize) -> Vec<T> {
    vec![T::default(); len]
}

/// The weight packed into 16-column panels of feature pairs (zero-padded past `n`).
fn pack(w: &[u16], n: usize, k: usize) -> Vec<u32> {
    let panels = n.div_ceil(PANEL);
    let pairs = k / 2;
    let mut packed = vec![0u32; panels * pairs * PANEL];
    for col in 0..n {
        let (panel, lane) = (col / PANEL, col % PANEL);
        let row = &w[col * k..(col + 1) * k];
        for pair in 0..pairs {
            packed[(panel * pairs + pair) * PANEL + lane] = u32::from(row[2 * pair]) | (u32::from(row[2 * pair + 1]) << 16);
        }
    }
    packed
}

/// `out[m, n] = x[m, k] · w[n, k]^T (+ bias[n])` on bf16 bit patterns, `w` packed.
fn matmul_bits(x: &[u16], packed: &[u32], bias: Option<&[u16]>, out: &mut [u16], m: usize, n: usize, k: usize) {
    // The starting sums of every column: the bias in f32, zero-padded one panel past the last
    // (the micro-kernel reads a second panel even when there is none).
    let mut start = vec![0f32; (n.div_ceil(PANEL) + 1) * PANEL];
    if let Some(b) = bias {
        for (s, v) in start.iter_mut().zip(b) {
            *s = super::bf16_bits::to_f32(*v);
        }
    }
    // Blocks of rows on candle's thread pool; each block runs every panel.
    let block = (ROWS * 8).min(m.div_ceil(rayon::current_num_threads().max(1)).div_ceil(ROWS) * ROWS).max(ROWS);
    out.par_chunks_mut(block * n).zip(x.par_chunks(block * k)).for_each(|(out_chunk, x_chunk)| {
        let rows = out_chunk.len() / n;
        // SAFETY: `matmul_nt` checked that the CPU has AVX-512 F, BW and BF16.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            rows_block(x_chunk, packed, &start, out_chunk, rows, n, k)
        }
    });
}

/// All panels for `rows` rows of `x`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn rows_block(x: &[u16], packed: &[u32], start: &[f32], out: &mut [u16], rows: usize, n: usize, k: usize) {
    use std::arch::x86_64::*;
    let pairs = k / 2;
    let panels = n.div_ceil(PANEL);
    let mut tile = [0u16; ROWS * 2 * PANEL];
    for panel in (0..panels).step_by(2) {
        let two = panel + 1 < panels;
        let b0 = packed.as_ptr().add(panel * pairs * PANEL);
        let b1 = if two { packed.as_ptr().add((panel + 1) * pairs * PANEL) } else { b0 };
        for row0 in (0..rows).step_by(ROWS) {
            let r = ROWS.min(rows - row0);
            let first = [_mm512_loadu_ps(start.as_ptr().add(panel * PANEL)), _mm512_loadu_ps(start.as_ptr().add((panel + 1) * PANEL))];
            let mut acc = [first; ROWS];
            let a: [*const u32; ROWS] = std::array::from_fn(|i| x.as_ptr().add((row0 + i.min(r - 1)) * k).cast::<u32>());
            for pair in 0..pairs {
                let v0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b0.add(pair * PANEL).cast()));
                let v1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b1.add(pair * PANEL).cast()));
                for i in 0..ROWS {
                    let ai: __m512bh = std::mem::transmute(_mm512_set1_epi32(a[i].add(pair).read_unaligned() as i32));
                    acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, v0);
                    acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, v1);
                }
            }
            // Round once to bf16 (nearest even) and copy the valid rows and columns out.
            for (i, sums) in acc.iter().enumerate().take(r) {
                for (half, sum) in sums.iter().enumerate() {
                    let rounded: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(*sum));
                    _mm256_storeu_si256(tile.as_mut_ptr().add((i * 2 + half) * PANEL).cast(), rounded);
                }
            }
            let col0 = panel * PANEL;
            let cols = (2 * PANEL).min(n - col0);
            for i in 0..r {
                let dst = &mut out[(row0 + i) * n + col0..(row0 + i) * n + col0 + cols];
                dst.copy_from_slice(&tile[i * 2 * PANEL..i * 2 * PANEL + cols]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::init::{Init, Placement, Rng};
    use candle_core::Device;

    /// Against candle's f32 product of the same bf16 values: within bf16 rounding of the result.
    #[test]
    fn matches_the_f32_product_of_the_same_values() {
        if !available() {
            eprintln!("no AVX-512 BF16 on this CPU; the kernel is not used here");
            return;
        }
        let mut init = Init::new(Rng::new(5), Placement::new(Device::Cpu, DType::BF16));
        // Odd sizes: row and column tails, several threads, a rank-3 input.
        for (m, n, k) in [(1, 1, 2), (7, 17, 6), (13, 50, 64), (64, 40, 384)] {
            let x = init.normal(&[m, k], 1.0).unwrap();
            let w = init.normal(&[n, k], 1.0).unwrap();
            let b = init.normal(&[n], 1.0).unwrap();
            let got = matmul_nt(&x, &w, Some(&b)).unwrap().expect("the kernel runs").to_dtype(DType::F32).unwrap();
            let want = x.to_dtype(DType::F32).unwrap().matmul(&w.to_dtype(DType::F32).unwrap().t().unwrap()).unwrap();
            let want = want.broadcast_add(&b.to_dtype(DType::F32).unwrap()).unwrap();
            let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
            let diff = crate::compare::compare(&got, &want).unwrap().max_abs;
            assert!(diff <= scale / 128.0, "{m}x{n}x{k}: {diff} (scale {scale})");
        }
        // A weight packed once gives the same product.
        let (x, w, b) = (init.normal(&[13, 64], 1.0).unwrap(), init.normal(&[50, 64], 1.0).unwrap(), init.normal(&[50], 1.0).unwrap());
        let packed = pack_weight(&w).unwrap().expect("packs");
        let once = matmul_nt_packed(&x, &w, &packed, Some(&b)).unwrap().unwrap().to_dtype(DType::F32).unwrap();
        let each = matmul_nt(&x, &w, Some(&b)).unwrap().unwrap().to_dtype(DType::F32).unwrap();
        assert_eq!(crate::compare::compare(&once, &each).unwrap().max_abs, 0.0);
        // Batched: per item, against candle's f32 product.
        let (x, w) = (init.normal(&[2, 3, 7, 6], 1.0).unwrap(), init.normal(&[2, 3, 9, 6], 1.0).unwrap());
        let got = batched_matmul_nt(&x, &w).unwrap().expect("the kernel runs").to_dtype(DType::F32).unwrap();
        let want = x.to_dtype(DType::F32).unwrap().matmul(&w.to_dtype(DType::F32).unwrap().t().unwrap()).unwrap();
        assert!(crate::compare::compare(&got, &want).unwrap().max_abs <= 0.1);
        assert!(batched_matmul_nt(&x, &init.normal(&[3, 2, 9, 6], 1.0).unwrap()).unwrap().is_none());
        let x = init.normal(&[2, 3, 8], 1.0).unwrap();
        let w = init.normal(&[5, 8], 1.0).unwrap();
        assert_eq!(matmul_nt(&x, &w, None).unwrap().unwrap().dims(), [2, 3, 5]);
        // Odd K and f32 inputs take the general path.
        assert!(matmul_nt(&init.normal(&[2, 3], 1.0).unwrap(), &init.normal(&[4, 3], 1.0).unwrap(), None).unwrap().is_none());
    }
}
