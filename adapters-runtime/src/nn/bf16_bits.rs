//! bf16 <-> f32 on bit patterns: a shift one way, round-to-nearest-even the other. The fused
//! half-precision kernels read candle's bf16 storage as `u16` through these (the `half` type is
//! not named in this crate, and its generic `to_f64`/`from_f64` path is several times slower).

/// The f32 value of a bf16 bit pattern.
#[inline]
pub(crate) fn to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// The bf16 bit pattern nearest to `x` (ties to even; NaN stays NaN).
#[inline]
pub(crate) fn from_f32(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    // A select rather than an early return, so that loops over slices vectorise.
    if x.is_nan() {
        0x7fc0
    } else {
        rounded
    }
}

/// A bf16 slice of candle's storage as its bit patterns.
pub(crate) fn as_bits<T: candle_core::WithDType>(x: &[T]) -> &[u16] {
    assert_eq!(T::DTYPE, candle_core::DType::BF16, "bf16 storage expected");
    // SAFETY: candle's bf16 is `half::bf16`, `repr(transparent)` over `u16`.
    unsafe { std::slice::from_raw_parts(x.as_ptr().cast(), x.len()) }
}

/// A mutable bf16 slice as its bit patterns.
pub(crate) fn as_bits_mut<T: candle_core::WithDType>(x: &mut [T]) -> &mut [u16] {
    assert_eq!(T::DTYPE, candle_core::DType::BF16, "bf16 storage expected");
    // SAFETY: as in `as_bits`.
    unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr().cast(), x.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rounds_like_candle() {
        let values = [0.0f32, -0.0, 1.0, -2.5, std::f32::consts::PI, 1e-30, 6.5e37, f32::INFINITY, 1.003_906_2, 1.011_718_8];
        let tensor = candle_core::Tensor::new(&values[..], &candle_core::Device::Cpu).unwrap().to_dtype(candle_core::DType::BF16).unwrap();
        let theirs: Vec<f32> = tensor.to_dtype(candle_core::DType::F32).unwrap().to_vec1().unwrap();
        let ours: Vec<f32> = values.iter().map(|v| to_f32(from_f32(*v))).collect();
        assert_eq!(ours, theirs);
        assert!(to_f32(from_f32(f32::NAN)).is_nan());
    }
}
