//! What one forward pass of a base model takes and gives, for every kind of model: text
//! encoders, decoder-only language models (position ids, a causal mask, a KV cache),
//! encoder-decoders (encoder states, decoder inputs) and vision models (pixel values).
//!
//! A model declares the inputs it takes ([`ModelForward::ACCEPTS`](crate::ModelForward::ACCEPTS));
//! the runtime refuses any other input with an error that names it, before the model runs.
//!
//! ```
//! use adapters_runtime::{InputKind, ModelInputs};
//! use candle_core::{Device, Tensor};
//! let ids = Tensor::new(&[[101i64, 7592, 102]], &Device::Cpu).unwrap();
//! let mask = Tensor::ones((1, 3), candle_core::DType::I64, &Device::Cpu).unwrap();
//! let inputs = ModelInputs::text(ids, mask).causal();
//! assert_eq!(inputs.kinds(), vec![InputKind::InputIds, InputKind::AttentionMask, InputKind::Causal]);
//! ```

use std::sync::Mutex;

use candle_core::{Device, Tensor};

use crate::error::{AdapterError, Result};

/// One kind of model input, as [`ModelInputs`] carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// `input_ids`: I64 `[batch, seq]`.
    InputIds,
    /// `attention_mask`: I64 `[batch, seq]`, 1 where attended.
    AttentionMask,
    /// `position_ids`: I64 or U32 `[batch, seq]`; models number positions themselves without it.
    PositionIds,
    /// Each position attends only to itself and earlier ones (decoders).
    Causal,
    /// Keys and values of earlier steps, extended by this pass (generation).
    KvCache,
    /// `encoder_hidden_states` (+ optional `encoder_attention_mask`) for cross-attention.
    EncoderHiddenStates,
    /// `decoder_input_ids` (+ optional `decoder_attention_mask`) of an encoder-decoder.
    DecoderInputIds,
    /// `pixel_values`: F32 `[batch, channels, height, width]`.
    PixelValues,
}

/// Keys and values per layer from earlier forward passes; a pass appends its own. Shared by
/// reference so that a `&self` forward can extend it.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Mutex<Vec<Option<(Tensor, Tensor)>>>,
}

impl KvCache {
    pub fn new() -> Self {
        KvCache::default()
    }

    /// `keys`/`values` (`[batch, heads, new, head_dim]`) appended to layer `layer`'s cache;
    /// returns the whole cached keys and values.
    pub fn append(&self, layer: usize, keys: &Tensor, values: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let mut layers = self.layers.lock().map_err(|_| crate::error::internal("KV cache poisoned"))?;
        if layers.len() <= layer {
            layers.resize(layer + 1, None);
        }
        let joined = match &layers[layer] {
            Some((k, v)) => (Tensor::cat(&[k, keys], 2)?, Tensor::cat(&[v, values], 2)?),
            None => (keys.clone(), values.clone()),
        };
        layers[layer] = Some(joined.clone());
        Ok(joined)
    }

    /// The number of cached positions (0 when empty).
    pub fn len(&self) -> usize {
        let layers = self.layers.lock().map(|l| l.first().cloned().flatten());
        layers.ok().flatten().and_then(|(k, _)| k.dim(2).ok()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The inputs of one forward pass. Build with [`ModelInputs::text`] (or
/// [`ModelInputs::pixels`]) and add what the model kind needs.
#[derive(Clone, Debug, Default)]
pub struct ModelInputs<'a> {
    pub input_ids: Option<Tensor>,
    pub attention_mask: Option<Tensor>,
    pub position_ids: Option<Tensor>,
    pub causal: bool,
    pub cache: Option<&'a KvCache>,
    pub encoder_hidden_states: Option<Tensor>,
    pub encoder_attention_mask: Option<Tensor>,
    pub decoder_input_ids: Option<Tensor>,
    pub decoder_attention_mask: Option<Tensor>,
    pub pixel_values: Option<Tensor>,
    /// The batch already holds one copy per Parallel channel (channel-major), as in generation
    /// after the first step (Python's `adapter_input_parallelized`); the runtime does not
    /// replicate it again.
    pub parallelized: bool,
}

impl<'a> ModelInputs<'a> {
    /// Token ids and their attention mask (I64 `[batch, seq]`).
    pub fn text(input_ids: Tensor, attention_mask: Tensor) -> Self {
        ModelInputs { input_ids: Some(input_ids), attention_mask: Some(attention_mask), ..Default::default() }
    }

    /// Images (F32 `[batch, channels, height, width]`).
    pub fn pixels(pixel_values: Tensor) -> Self {
        ModelInputs { pixel_values: Some(pixel_values), ..Default::default() }
    }

    pub fn with_position_ids(mut self, position_ids: Tensor) -> Self {
        self.position_ids = Some(position_ids);
        self
    }

    /// Causal self-attention.
    pub fn causal(mut self) -> Self {
        self.causal = true;
        self
    }

    /// See [`ModelInputs::parallelized`].
    pub fn parallelized(mut self) -> Self {
        self.parallelized = true;
        self
    }

    pub fn with_cache(mut self, cache: &'a KvCache) -> Self {
        self.cache = Some(cache);
        self
    }

    pub fn with_encoder_hidden_states(mut self, states: Tensor, mask: Option<Tensor>) -> Self {
        self.encoder_hidden_states = Some(states);
        self.encoder_attention_mask = mask;
        self
    }

    pub fn with_decoder_input_ids(mut self, ids: Tensor, mask: Option<Tensor>) -> Self {
        self.decoder_input_ids = Some(ids);
        self.decoder_attention_mask = mask;
        self
    }

    /// The kinds of input present, in [`InputKind`] order.
    pub fn kinds(&self) -> Vec<InputKind> {
        let present = [
            (self.input_ids.is_some(), InputKind::InputIds),
            (self.attention_mask.is_some(), InputKind::AttentionMask),
            (self.position_ids.is_some(), InputKind::PositionIds),
            (self.causal, InputKind::Causal),
            (self.cache.is_some(), InputKind::KvCache),
            (self.encoder_hidden_states.is_some(), InputKind::EncoderHiddenStates),
            (self.decoder_input_ids.is_some(), InputKind::DecoderInputIds),
            (self.pixel_values.is_some(), InputKind::PixelValues),
        ];
        present.into_iter().filter(|(p, _)| *p).map(|(_, k)| k).collect()
    }

    /// Refuses an input `model` does not take, and a required one that is missing.
    pub fn check(&self, model: &str, accepts: &[InputKind], requires: &[InputKind]) -> Result<()> {
        let given = self.kinds();
        if let Some(kind) = given.iter().find(|k| !accepts.contains(k)) {
            return Err(AdapterError::InvalidInput(format!("{model} does not take {kind:?}; it takes {accepts:?}")));
        }
        if let Some(kind) = requires.iter().find(|k| !given.contains(k)) {
            return Err(AdapterError::InvalidInput(format!("{model} needs {kind:?}")));
        }
        Ok(())
    }

    /// The input ids, which text models require (checked first by [`ModelInputs::check`]).
    pub fn ids(&self) -> candle_core::Result<&Tensor> {
        self.input_ids.as_ref().ok_or_else(|| crate::error::invalid_input("input_ids are required"))
    }

    /// The attention mask, or all ones over the input ids.
    pub fn mask(&self) -> candle_core::Result<Tensor> {
        match &self.attention_mask {
            Some(m) => Ok(m.clone()),
            None => self.ids()?.ones_like(),
        }
    }

    /// Every batch tensor on `device`, and repeated `copies` times along the batch (a Parallel
    /// setup runs each channel on its own copy).
    pub(crate) fn placed(&self, device: &Device, copies: usize) -> Result<ModelInputs<'a>> {
        let copies = if self.parallelized { 1 } else { copies };
        let place = |t: &Option<Tensor>| -> Result<Option<Tensor>> {
            let Some(t) = t else { return Ok(None) };
            let t = t.to_device(device)?;
            if copies <= 1 {
                return Ok(Some(t));
            }
            let mut repeat = vec![1; t.rank()];
            repeat[0] = copies;
            Ok(Some(t.repeat(repeat)?))
        };
        Ok(ModelInputs {
            input_ids: place(&self.input_ids)?,
            attention_mask: place(&self.attention_mask)?,
            position_ids: place(&self.position_ids)?,
            causal: self.causal,
            cache: self.cache,
            encoder_hidden_states: place(&self.encoder_hidden_states)?,
            encoder_attention_mask: place(&self.encoder_attention_mask)?,
            decoder_input_ids: place(&self.decoder_input_ids)?,
            decoder_attention_mask: place(&self.decoder_attention_mask)?,
            pixel_values: place(&self.pixel_values)?,
            parallelized: self.parallelized,
        })
    }
}

/// What one forward pass of a base model gives.
#[derive(Clone, Debug)]
pub struct ModelOutputs {
    /// `[batch, seq, hidden]`: the encoder's, the decoder's after its final norm, or (vision)
    /// every patch position with the CLS position.
    pub last_hidden_state: Tensor,
    /// An encoder-decoder's encoder output.
    pub encoder_last_hidden_state: Option<Tensor>,
}

impl ModelOutputs {
    pub fn hidden(last_hidden_state: Tensor) -> Self {
        ModelOutputs { last_hidden_state, encoder_last_hidden_state: None }
    }
}
