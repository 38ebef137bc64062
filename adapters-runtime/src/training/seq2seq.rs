//! Teacher forcing for encoder-decoders: the decoder reads the labels shifted one position to
//! the right behind its start token, as `transformers`' BART (`shift_tokens_right`) and T5
//! (`_shift_right`) build `decoder_input_ids` from `labels`; a seq2seq LM head's loss then
//! compares position `i`'s logits with label `i` (no further shift).

use candle_core::{DType, Tensor};

use crate::error::{AdapterError, Result};
use crate::heads::IGNORE_INDEX;

/// `decoder_input_ids` for `labels` (`[batch, seq]`, I64, `-100` where no loss is taken):
/// `start`, then the labels but the last, with `-100` replaced by `pad`.
///
/// ```
/// use adapters_runtime::training::decoder_inputs_from_labels;
/// use candle_core::{Device, Tensor};
/// let labels = Tensor::new(&[[5i64, 6, 7], [8, -100, -100]], &Device::Cpu)?;
/// let decoder = decoder_inputs_from_labels(&labels, 2, 1)?;
/// assert_eq!(decoder.to_vec2::<i64>()?, vec![vec![2, 5, 6], vec![2, 8, 1]]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn decoder_inputs_from_labels(labels: &Tensor, start: u32, pad: u32) -> Result<Tensor> {
    let (batch, seq) = labels.dims2()?;
    if seq == 0 {
        return Err(AdapterError::InvalidInput("labels have no positions".into()));
    }
    let labels = labels.to_dtype(DType::I64)?;
    let starts = Tensor::full(i64::from(start), (batch, 1), labels.device())?;
    let shifted = Tensor::cat(&[&starts, &labels.narrow(1, 0, seq - 1)?], 1)?;
    let ignored = shifted.eq(IGNORE_INDEX)?;
    Ok(ignored.where_cond(&shifted.ones_like()?.affine(0.0, f64::from(pad))?, &shifted)?)
}
