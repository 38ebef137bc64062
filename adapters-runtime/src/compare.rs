//! Comparing two tensors element by element: the largest absolute difference and where it is.
//!
//! Written for parity checks (this crate's and the integration tests'), where a comparison must
//! never pass on broken output. A reduction such as candle's `max` keeps its first element when
//! every `acc < x` test with a NaN is false, so a NaN anywhere but position 0 would vanish from
//! the result; here any NaN or infinity in either tensor is an error that names its position.
//!
//! ```
//! use adapters_runtime::compare::compare;
//! use candle_core::{Device, Tensor};
//! let a = Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
//! let b = Tensor::new(&[[1f32, 2.5], [3.0, 4.0]], &Device::Cpu).unwrap();
//! let diff = compare(&a, &b).unwrap();
//! assert_eq!((diff.max_abs, diff.index.as_slice()), (0.5, &[0usize, 1][..]));
//! let nan = Tensor::new(&[[1f32, 2.0], [f32::NAN, 4.0]], &Device::Cpu).unwrap();
//! assert!(compare(&a, &nan).unwrap_err().to_string().contains("NaN at [1, 0]"));
//! ```

use candle_core::{DType, Tensor};

use crate::error::{AdapterError, Result};

/// The largest absolute element difference of two tensors and its multi-index.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorDiff {
    pub max_abs: f32,
    /// Where `max_abs` occurs (the first such position); empty for scalars.
    pub index: Vec<usize>,
    /// The two values there.
    pub left: f32,
    pub right: f32,
}

impl std::fmt::Display for TensorDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "max |diff| {:.3e} at {:?} ({} vs {})", self.max_abs, self.index, self.left, self.right)
    }
}

/// Compares `a` and `b` (same shape, any float dtype, any device; computed in f32 on the CPU).
/// Errors when the shapes differ or when either tensor holds a NaN or an infinity, naming the
/// first such position.
pub fn compare(a: &Tensor, b: &Tensor) -> Result<TensorDiff> {
    if a.dims() != b.dims() {
        return Err(AdapterError::Compare(format!("shapes {:?} and {:?} differ", a.dims(), b.dims())));
    }
    let dims = a.dims().to_vec();
    let left = values(a)?;
    let right = values(b)?;
    for (which, v) in [("left", &left), ("right", &right)] {
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            let kind = if v[i].is_nan() { "NaN" } else { "infinity" };
            return Err(AdapterError::Compare(format!("the {which} tensor holds a {kind} at {:?}", unravel(i, &dims))));
        }
    }
    let (mut worst, mut at) = (0f32, 0usize);
    for (i, (x, y)) in left.iter().zip(&right).enumerate() {
        let d = (x - y).abs();
        if d > worst {
            worst = d;
            at = i;
        }
    }
    let (l, r) = if left.is_empty() { (0.0, 0.0) } else { (left[at], right[at]) };
    Ok(TensorDiff { max_abs: worst, index: unravel(at, &dims), left: l, right: r })
}

fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

fn unravel(mut flat: usize, dims: &[usize]) -> Vec<usize> {
    let mut index = vec![0; dims.len()];
    for (slot, &d) in index.iter_mut().zip(dims).rev() {
        if d > 0 {
            *slot = flat % d;
            flat /= d;
        }
    }
    index
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32], shape: &[usize]) -> Tensor {
        Tensor::from_slice(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn finds_the_worst_position() {
        let d = compare(&t(&[0.0, 1.0, 2.0, 3.0, 4.0, 5.0], &[2, 3]), &t(&[0.0, 1.0, 2.0, 3.0, 4.5, 5.0], &[2, 3])).unwrap();
        assert_eq!((d.max_abs, d.index, d.left, d.right), (0.5, vec![1, 1], 4.0, 4.5));
    }

    #[test]
    fn a_nan_or_infinity_anywhere_fails() {
        let clean = t(&[1.0; 6], &[2, 3]);
        for pos in 0..6 {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut v = [1.0f32; 6];
                v[pos] = bad;
                let err = compare(&clean, &t(&v, &[2, 3])).unwrap_err().to_string();
                assert!(err.contains(&format!("{:?}", unravel(pos, &[2, 3]))) && err.contains("right"), "{err}");
                let err = compare(&t(&v, &[2, 3]), &clean).unwrap_err().to_string();
                assert!(err.contains("left"), "{err}");
            }
        }
    }

    #[test]
    fn shapes_must_agree() {
        assert!(compare(&t(&[1.0; 6], &[2, 3]), &t(&[1.0; 6], &[3, 2])).is_err());
    }
}
