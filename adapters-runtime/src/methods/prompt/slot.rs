//! The place right after a model's embeddings, where prompt tuning inserts its prompt. The model
//! marks it with `#[with_adapters(..., embeddings = embeddings.adapters)]` and calls it on the
//! embeddings output.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor};

use super::PromptTuning;
use crate::context::ForwardContext;
use crate::methods::invertible::InvertibleAdapter;

pub struct EmbeddingSlot {
    word_embeddings: Tensor,
    max_positions: usize,
    pub(crate) prompts: BTreeMap<String, PromptTuning>,
    /// Invertible adapters (`invertible_adapters.NAME.*`), run on the embeddings output.
    pub(crate) invertibles: BTreeMap<String, InvertibleAdapter>,
    /// The module that holds the invertible adapters (`""`: the base model; BART's encoder).
    invertible_path: String,
}

impl EmbeddingSlot {
    /// A slot after embeddings whose word embedding matrix is `word_embeddings` (`[vocab,
    /// hidden]`; prompts initialised from text copy rows of it) and whose position table has
    /// `max_positions` rows.
    pub fn new(word_embeddings: &Tensor, max_positions: usize) -> Self {
        EmbeddingSlot {
            word_embeddings: word_embeddings.clone(),
            max_positions,
            prompts: BTreeMap::new(),
            invertibles: BTreeMap::new(),
            invertible_path: String::new(),
        }
    }

    /// This slot with its invertible adapters held by the module at `path` (named
    /// `<path>.invertible_adapters.NAME.*`, as Python's encoder-decoders hold them in the encoder).
    pub fn with_invertible_path(mut self, path: impl Into<String>) -> Self {
        self.invertible_path = path.into();
        self
    }

    /// The module path of the invertible adapters (`""`: the base model).
    pub fn invertible_path(&self) -> &str {
        &self.invertible_path
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

    /// The invertible adapter of `name`, for the reverse pass before a language-modeling head.
    pub fn invertible(&self, name: &str) -> Option<&InvertibleAdapter> {
        self.invertibles.get(name)
    }

    /// Runs the invertible adapter of the setup's first adapter on `hidden` (`[batch, seq,
    /// hidden]`), then inserts its prompt and marks the prompt positions as attended in
    /// `attention_mask` (`[batch, seq]`, 1 = attend), in Python's order. Without either, returns
    /// the inputs.
    pub fn forward(&self, hidden: &Tensor, attention_mask: &Tensor, ctx: &ForwardContext) -> Result<(Tensor, Tensor)> {
        let (hidden, mask) = self.prompted(hidden, attention_mask, ctx)?;
        Ok((ctx.output(hidden), mask))
    }

    fn prompted(&self, hidden: &Tensor, attention_mask: &Tensor, ctx: &ForwardContext) -> Result<(Tensor, Tensor)> {
        let first = ctx.setup().and_then(|s| s.first());
        let hidden = match first.and_then(|f| self.invertibles.get(f)) {
            Some(inv) => inv.forward(hidden)?,
            None => hidden.clone(),
        };
        let Some(prompt) = first.and_then(|f| self.prompts.get(f)) else {
            return Ok((hidden, attention_mask.clone()));
        };
        let hidden = &hidden;
        let batch = attention_mask.dim(0)?;
        let ones = Tensor::ones((batch, prompt.length()), attention_mask.dtype(), attention_mask.device())?;
        Ok((prompt.forward(hidden)?, Tensor::cat(&[&ones, attention_mask], 1)?))
    }
}
