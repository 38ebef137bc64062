//! Additive attention masks in the compute dtype.

use candle_core::{DType, Result, Tensor};

/// The value a masked position adds to the attention scores: the lowest finite value of `dtype`
/// (PyTorch's `torch.finfo(dtype).min`, which `transformers` uses). `f32::MIN` itself is not
/// finite in f16 or bf16, and a row of infinities would give NaN after the softmax.
pub fn mask_min(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => -65504.0,
        // bf16 0xFF7F: f32's exponent with 7 mantissa bits.
        DType::BF16 => -3.389_531_389_251_535_5e38,
        DType::F64 => f64::MIN,
        _ => f64::from(f32::MIN),
    }
}

/// `[batch, seq]` 0/1 mask to the additive `[batch, 1, 1, seq]` bias in `dtype`: 0 where attended,
/// [`mask_min`] where masked.
pub fn additive_mask(attention_mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (batch, seq) = attention_mask.dims2()?;
    let mask = attention_mask.to_dtype(DType::F32)?;
    ((1.0 - mask)? * mask_min(dtype))?.to_dtype(dtype)?.reshape((batch, 1, 1, seq))
}

/// [`additive_mask`] for causal self-attention over the last `queries` positions of the keys
/// `attention_mask` covers (all of them, or the new ones of a pass that extends a KV cache),
/// `[batch, 1, queries, keys]`: a query attends to keys up to its own position that the padding
/// mask keeps. As `transformers` builds a decoder's mask: one 0/1 mask, then one bias, so two
/// masked reasons never add up to an infinity.
pub fn causal_additive_mask_for(attention_mask: &Tensor, queries: usize, dtype: DType) -> Result<Tensor> {
    causal_additive_mask_windowed(attention_mask, queries, None, dtype)
}

/// [`causal_additive_mask_for`] with sliding-window attention (Mistral): with `Some(window)` a
/// query also ignores keys `window` or more positions before it.
pub fn causal_additive_mask_windowed(attention_mask: &Tensor, queries: usize, window: Option<usize>, dtype: DType) -> Result<Tensor> {
    let (batch, keys) = attention_mask.dims2()?;
    if queries > keys {
        return Err(crate::error::invalid_input(format!(
            "{queries} new positions but an attention mask over {keys}; with a KV cache the mask covers the cached positions too"
        )));
    }
    let device = attention_mask.device();
    let past = keys - queries;
    // 1 where the key is at or before the query's position (and, with a window, less than
    // `window` positions before it).
    let causal: Vec<f32> = (0..queries)
        .flat_map(|q| (0..keys).map(move |k| (q + past, k)))
        .map(|(position, k)| f32::from(u8::from(k <= position && window.is_none_or(|w| k + w > position))))
        .collect();
    let causal = Tensor::from_vec(causal, (queries, keys), device)?;
    let keep = attention_mask.to_dtype(DType::F32)?.reshape((batch, 1, 1, keys))?.broadcast_mul(&causal.reshape((1, 1, queries, keys))?)?;
    ((1.0 - keep)? * mask_min(dtype))?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn masked_positions_stay_finite_in_every_dtype() {
        let mask = Tensor::new(&[[1i64, 0]], &Device::Cpu).unwrap();
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let bias = additive_mask(&mask, dtype).unwrap().to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!(bias[0], 0.0, "{dtype:?}");
            assert!(bias[1].is_finite() && bias[1] < -6e4, "{dtype:?}: {}", bias[1]);
        }
    }

    #[test]
    fn causal_mask_keeps_earlier_unpadded_keys() {
        let mask = Tensor::new(&[[1i64, 1, 0]], &Device::Cpu).unwrap();
        let bias = causal_additive_mask_for(&mask, 3, DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let keep: Vec<bool> = bias.iter().map(|b| *b == 0.0).collect();
        // rows q = 0, 1, 2; columns k = 0, 1, 2 (k = 2 is padding)
        assert_eq!(keep, [true, false, false, true, true, false, true, true, false]);
        assert!(bias.iter().all(|b| b.is_finite()));
    }

    #[test]
    fn sliding_window_drops_keys_too_far_back() {
        let mask = Tensor::new(&[[1i64, 1, 1, 1]], &Device::Cpu).unwrap();
        let bias = causal_additive_mask_windowed(&mask, 2, Some(2), DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let keep: Vec<bool> = bias.iter().map(|b| *b == 0.0).collect();
        // queries at positions 2 and 3 (two cached), window 2: keys q-1 and q only
        assert_eq!(keep, [false, true, true, false, false, false, true, true]);
    }
}
