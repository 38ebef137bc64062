//! The place right after a model's embeddings, where prompt tuning inserts its prompt. The model
//! marks it with `#[with_adapters(..., embeddings = embeddings.adapters)]` and calls it on the
//! embeddings output.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor};

use super::PromptTuning;
use crate::context::ForwardContext;

pub struct EmbeddingSlot {
    word_embeddings: Tensor,
    max_positions: usize,
    pub(crate) prompts: BTreeMap<String, PromptTuning>,
}

impl EmbeddingSlot {
    /// A slot after embeddings whose word embedding matrix is `word_embeddings` (`[vocab,
    /// hidden]`; prompts initialised from text copy rows of it) and whose position table has
    /// `max_positions` rows.
    pub fn new(word_embeddings: &Tensor, max_positions: usize) -> Self {
        EmbeddingSlot { word_embeddings: word_embeddings.clone(), max_positions, prompts: BTreeMap::new() }
    }

    pub fn hidden_size(&self) -> usize {
        self.word_embeddings.dims().last().copied().unwrap_or(0)
    }

    pub fn word_embeddings(&self) -> &Tensor {
        &self.word_embeddings
    }

    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// The module path the Python library names prompt weights under.
    pub fn prompt_path(&self) -> &'static str {
        "prompt_tuning"
    }

    /// Inserts the prompt of the setup's first adapter (as Python does) into `hidden`
    /// (`[batch, seq, hidden]`) and marks its positions as attended in `attention_mask`
    /// (`[batch, seq]`, 1 = attend). Without a prompt, returns the inputs.
    pub fn forward(&self, hidden: &Tensor, attention_mask: &Tensor, ctx: &ForwardContext) -> Result<(Tensor, Tensor)> {
        let Some(prompt) = ctx.setup().and_then(|s| s.first()).and_then(|first| self.prompts.get(first)) else {
            return Ok((hidden.clone(), attention_mask.clone()));
        };
        let batch = attention_mask.dim(0)?;
        let ones = Tensor::ones((batch, prompt.length()), attention_mask.dtype(), attention_mask.device())?;
        Ok((prompt.forward(hidden)?, Tensor::cat(&[&ones, attention_mask], 1)?))
    }
}
