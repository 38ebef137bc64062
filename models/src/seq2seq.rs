//! What every encoder-decoder's forward shares: the inputs it takes, the encoder output (given,
//! as generation passes it after the first step, or computed), the encoder's padding mask, and
//! the decoder's ids, cached positions and padding mask.

use adapters_runtime::{AdapterError, InputKind, KvCache, ModelInputs};
use candle_core::{Result, Tensor};

/// What an encoder-decoder takes: the encoder's ids and mask (or its output, computed once for
/// generation), and the decoder's ids and mask with a KV cache for its self-attention.
pub(crate) const ENCODER_DECODER_INPUTS: &[InputKind] =
    &[InputKind::InputIds, InputKind::AttentionMask, InputKind::DecoderInputIds, InputKind::EncoderHiddenStates, InputKind::KvCache];

/// The encoder's output for this pass: given (generation after the first step) or computed.
pub(crate) fn encoder_states(inputs: &ModelInputs<'_>, encode: impl FnOnce(&Tensor, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
    match (&inputs.encoder_hidden_states, &inputs.input_ids) {
        (Some(states), _) => Ok(states.clone()),
        (None, Some(ids)) => encode(ids, &inputs.mask()?),
        (None, None) => Err(AdapterError::InvalidInput("an encoder-decoder needs input_ids (or encoder_hidden_states)".into()).into_candle()),
    }
}

/// The encoder's padding mask `[batch, source]`: the inputs' own, or all ones.
pub(crate) fn encoder_mask(inputs: &ModelInputs<'_>, states: &Tensor) -> Result<Tensor> {
    match (&inputs.encoder_attention_mask, &inputs.attention_mask) {
        (Some(mask), _) | (None, Some(mask)) => Ok(mask.clone()),
        (None, None) => Tensor::ones((states.dim(0)?, states.dim(1)?), candle_core::DType::I64, states.device()),
    }
}

/// The decoder's ids, the positions already in the cache, and its padding mask over cached and
/// new positions.
pub(crate) fn decoder_inputs<'a>(inputs: &'a ModelInputs<'_>) -> Result<(&'a Tensor, usize, Tensor)> {
    let ids = inputs.decoder_input_ids.as_ref().ok_or_else(|| {
        AdapterError::InvalidInput("an encoder-decoder needs decoder_input_ids (the decoder's tokens, starting with its start token)".into()).into_candle()
    })?;
    let past = inputs.cache.map_or(0, KvCache::len);
    let (batch, seq) = ids.dims2()?;
    let mask = match &inputs.decoder_attention_mask {
        Some(mask) if mask.dim(1)? == past + seq => mask.clone(),
        Some(mask) => {
            return Err(AdapterError::InvalidInput(format!(
                "decoder_attention_mask covers {} positions; with {past} cached and {seq} new it must cover {}",
                mask.dim(1)?,
                past + seq
            ))
            .into_candle())
        }
        None => Tensor::ones((batch, past + seq), candle_core::DType::I64, ids.device())?,
    };
    Ok((ids, past, mask))
}

/// The encoder's padding mask (the batch every pass's prefixes are built for).
pub(crate) fn encoder_decoder_mask(inputs: &ModelInputs<'_>) -> Result<Tensor> {
    match (&inputs.attention_mask, &inputs.input_ids, &inputs.encoder_hidden_states) {
        (Some(mask), _, _) => Ok(mask.clone()),
        (None, Some(ids), _) => ids.ones_like(),
        (None, None, Some(states)) => encoder_mask(inputs, states),
        (None, None, None) => decoder_inputs(inputs).map(|(_, _, mask)| mask),
    }
}
