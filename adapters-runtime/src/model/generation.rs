//! Text generation with the active adapters: language-model logits (from an active causal LM
//! head, or the checkpoint's own decoder), and a decoding loop over a KV cache with candle-
//! transformers' `LogitsProcessor` (greedy, temperature, top-k, top-p, seeded).
//!
//! Every method runs per step through the model's own forward: LoRA and bottleneck adapters act
//! on each new position, prefix tuning prepends its keys and values at every step (they are not
//! part of the sequence, so the cache holds only the sequence's own keys and values, as in
//! Python). ReFT counts its positions from the end of the sequence, so its outputs at earlier
//! positions change as the sequence grows; with a ReFT adapter active every step recomputes the
//! whole sequence (Python's `generate(use_cache=False)`), which a cache cannot reproduce.
//! Positions follow `transformers`' `generate`: `cumsum(mask) - 1`, so a left-padded
//! batch numbers each row from its first real token.

use candle_core::{DType, IndexOp, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};

use super::AdaptedModel;
use crate::body::BaseModel;
use crate::error::Result;
use crate::model_io::{KvCache, ModelInputs};
use crate::setup::AdapterSetup;

/// How to decode.
///
/// ```
/// use adapters_runtime::model::GenerateOptions;
/// let greedy = GenerateOptions::greedy(16);
/// assert_eq!(greedy.max_new_tokens, 16);
/// let sampled = GenerateOptions { temperature: Some(0.7), top_p: Some(0.9), seed: 42, ..GenerateOptions::greedy(16) };
/// assert!(sampled.use_cache);
/// ```
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// `None` or 0: greedy (argmax).
    pub temperature: Option<f64>,
    pub top_k: Option<usize>,
    pub top_p: Option<f64>,
    pub seed: u64,
    /// A row stops at any of these; finished rows are padded with `pad_token_id`.
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: u32,
    /// Keep keys and values of earlier steps (the fast path); without, every step recomputes
    /// the whole sequence, which gives the same tokens.
    pub use_cache: bool,
}

impl GenerateOptions {
    pub fn greedy(max_new_tokens: usize) -> Self {
        GenerateOptions { max_new_tokens, temperature: None, top_k: None, top_p: None, seed: 0, eos_token_ids: Vec::new(), pad_token_id: 0, use_cache: true }
    }

    fn sampling(&self) -> Sampling {
        match (self.temperature.filter(|t| *t > 0.0), self.top_k, self.top_p) {
            (None, _, _) => Sampling::ArgMax,
            (Some(temperature), None, None) => Sampling::All { temperature },
            (Some(temperature), Some(k), None) => Sampling::TopK { k, temperature },
            (Some(temperature), None, Some(p)) => Sampling::TopP { p, temperature },
            (Some(temperature), Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
        }
    }
}

impl<M: BaseModel + ?Sized> AdaptedModel<M> {
    /// Generates up to `options.max_new_tokens` tokens after each row of `prompt_ids`
    /// (`[batch, len]`; left-pad rows of different lengths and mark padding in `prompt_mask`).
    /// `on_step` sees each step's new token per row. Returns the prompt with the new tokens
    /// (`[batch, len + steps]`, I64; under a Parallel setup `[channels * batch, ...]`, rows
    /// grouped by channel). BatchSplit setups generate each part's rows with its adapters.
    ///
    /// ```no_run
    /// # fn demo(model: &adapters_runtime::DynAdaptedModel, ids: &candle_core::Tensor) -> adapters_runtime::Result<()> {
    /// use adapters_runtime::model::GenerateOptions;
    /// let out = model.generate(ids, None, &GenerateOptions::greedy(20), |tokens| {
    ///     println!("{tokens:?}");
    ///     Ok(())
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn generate(
        &self,
        prompt_ids: &Tensor,
        prompt_mask: Option<&Tensor>,
        options: &GenerateOptions,
        mut on_step: impl FnMut(&[u32]) -> Result<()>,
    ) -> Result<Tensor> {
        if let Some(start) = self.model.decoder_start_token_id() {
            return self.generate_seq2seq(prompt_ids, prompt_mask, start, options, on_step);
        }
        let use_cache = options.use_cache && !self.active_has_reft();
        let device = self.placement.device.clone();
        let (channels, prompt_ids, mut mask) = self.generation_prompt(prompt_ids, prompt_mask)?;
        let (batch, _) = prompt_ids.dims2()?;
        let mut positions = generation_positions(&mask)?;
        let mut sequence = prompt_ids.clone();
        let mut processor = LogitsProcessor::from_sampling(options.seed, options.sampling());
        let mut finished = vec![false; batch];
        let cache = KvCache::new();
        let mut step_ids = prompt_ids;
        let mut step_positions = positions.clone();
        for _ in 0..options.max_new_tokens {
            let mut inputs = if use_cache {
                ModelInputs::text(step_ids.clone(), mask.clone()).with_position_ids(step_positions.clone()).causal().with_cache(&cache)
            } else {
                ModelInputs::text(sequence.clone(), mask.clone()).with_position_ids(positions.clone()).causal()
            };
            inputs.parallelized = channels > 1;
            let last = self.last_lm_logits(&inputs)?;
            let tokens = next_tokens(&last, &mut processor, &mut finished, options)?;
            on_step(&tokens)?;
            step_ids = Tensor::new(tokens.iter().map(|&t| i64::from(t)).collect::<Vec<_>>(), &device)?.reshape((batch, 1))?;
            sequence = Tensor::cat(&[&sequence, &step_ids], 1)?;
            mask = Tensor::cat(&[&mask, &Tensor::ones((batch, 1), DType::I64, &device)?], 1)?;
            step_positions = positions.i((.., positions.dim(1)? - 1..))?.broadcast_add(&Tensor::ones(1, DType::I64, &device)?)?;
            positions = Tensor::cat(&[&positions, &step_positions], 1)?;
            if finished.iter().all(|d| *d) {
                break;
            }
        }
        Ok(sequence)
    }
}

impl<M: BaseModel + ?Sized> AdaptedModel<M> {
    /// [`AdaptedModel::generate`] of an encoder-decoder: the encoder runs once over the prompt,
    /// the decoder starts every row with `start` and extends a KV cache of its self-attention
    /// (cross-attention re-reads the encoder output). Returns the decoder's sequence, `start`
    /// first (`[batch, 1 + steps]`), as `transformers`' `generate` does.
    fn generate_seq2seq(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        start: u32,
        options: &GenerateOptions,
        mut on_step: impl FnMut(&[u32]) -> Result<()>,
    ) -> Result<Tensor> {
        let use_cache = options.use_cache && !self.active_has_reft();
        let device = self.placement.device.clone();
        let (channels, input_ids, mask) = self.generation_prompt(input_ids, attention_mask)?;
        let (batch, _) = input_ids.dims2()?;
        let mut sequence = Tensor::full(i64::from(start), (batch, 1), &device)?;
        // The encoder once (the one-token decoder pass beside it is discarded).
        let mut first = ModelInputs::text(input_ids, mask.clone()).with_decoder_input_ids(sequence.clone(), None);
        first.parallelized = channels > 1;
        let encoded =
            self.forward_inputs(&first)?.encoder_last_hidden_state.ok_or_else(|| crate::error::internal("an encoder-decoder pass gave no encoder output"))?;
        let mut processor = LogitsProcessor::from_sampling(options.seed, options.sampling());
        let mut finished = vec![false; batch];
        let cache = KvCache::new();
        let mut step_ids = sequence.clone();
        for _ in 0..options.max_new_tokens {
            let decoder_ids = if use_cache { step_ids.clone() } else { sequence.clone() };
            let mut inputs = ModelInputs { attention_mask: Some(mask.clone()), ..Default::default() }
                .with_encoder_hidden_states(encoded.clone(), Some(mask.clone()))
                .with_decoder_input_ids(decoder_ids, None);
            if use_cache {
                inputs = inputs.with_cache(&cache);
            }
            inputs.parallelized = channels > 1;
            let last = self.last_lm_logits(&inputs)?;
            let tokens = next_tokens(&last, &mut processor, &mut finished, options)?;
            on_step(&tokens)?;
            step_ids = Tensor::new(tokens.iter().map(|&t| i64::from(t)).collect::<Vec<_>>(), &device)?.reshape((batch, 1))?;
            sequence = Tensor::cat(&[&sequence, &step_ids], 1)?;
            if finished.iter().all(|d| *d) {
                break;
            }
        }
        Ok(sequence)
    }

    /// The prompt and its mask (all ones when absent) as I64 on the model's device, and the
    /// number of Parallel channels: under Parallel each channel continues its own copy of the
    /// batch (rows grouped by channel, as the forward returns them), copied here once.
    fn generation_prompt(&self, ids: &Tensor, mask: Option<&Tensor>) -> Result<(usize, Tensor, Tensor)> {
        let device = &self.placement.device;
        let channels = self.active.as_deref().map_or(1, AdapterSetup::parallel_channels);
        let replicate = |t: &Tensor| -> candle_core::Result<Tensor> {
            let t = t.to_dtype(DType::I64)?.to_device(device)?;
            if channels > 1 {
                t.repeat((channels, 1))
            } else {
                Ok(t)
            }
        };
        let ids = replicate(ids)?;
        let mask = match mask {
            Some(m) => replicate(m)?,
            None => ids.ones_like()?,
        };
        Ok((channels, ids, mask))
    }

    /// Whether an adapter of the active setup intervenes with ReFT.
    fn active_has_reft(&self) -> bool {
        let Some(setup) = self.active.as_deref() else { return false };
        setup.flatten().iter().any(|name| self.configs.get(*name).is_some_and(|c| c.reft().is_some()))
    }
}

/// One token per row from each row's last logits (`[batch, 1, vocab]`); rows that ended get
/// the pad token, and a row ends at an end-of-sequence token.
fn next_tokens(last: &Tensor, processor: &mut LogitsProcessor, finished: &mut [bool], options: &GenerateOptions) -> Result<Vec<u32>> {
    let last = last.squeeze(1)?.to_dtype(DType::F32)?;
    let mut tokens = Vec::with_capacity(finished.len());
    for (row, done) in finished.iter_mut().enumerate() {
        let token = processor.sample(&last.i(row)?)?;
        let token = if *done { options.pad_token_id } else { token };
        *done |= options.eos_token_ids.contains(&token);
        tokens.push(token);
    }
    Ok(tokens)
}

/// `transformers`' generation positions: `cumsum(mask) - 1`, with padded positions at 1.
fn generation_positions(mask: &Tensor) -> Result<Tensor> {
    let rows: Vec<Vec<i64>> = mask.to_vec2()?;
    let positions: Vec<i64> = rows
        .iter()
        .flat_map(|row| {
            row.iter().scan(0i64, |count, &m| {
                *count += m;
                Some(if m == 0 { 1 } else { *count - 1 })
            })
        })
        .collect();
    Ok(Tensor::from_vec(positions, mask.dims(), mask.device())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_from_the_first_real_token() {
        let mask = Tensor::new(&[[0i64, 0, 1, 1], [1, 1, 1, 1]], &candle_core::Device::Cpu).unwrap();
        let p: Vec<Vec<i64>> = generation_positions(&mask).unwrap().to_vec2().unwrap();
        assert_eq!(p, vec![vec![1, 1, 0, 1], vec![0, 1, 2, 3]]);
    }

    #[test]
    fn sampling_follows_the_options() {
        assert!(matches!(GenerateOptions::greedy(1).sampling(), Sampling::ArgMax));
        let o = GenerateOptions { temperature: Some(0.5), top_k: Some(3), top_p: Some(0.9), ..GenerateOptions::greedy(1) };
        assert!(matches!(o.sampling(), Sampling::TopKThenTopP { k: 3, .. }));
    }
}
