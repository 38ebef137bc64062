//! One prompt: `prompt_length` trainable embeddings combined with the embedded input. Follows
//! `PromptTuning` of the Python library.

use candle_core::{Result, Tensor, Var};

use crate::config::{PromptCombine, PromptTuningConfig};
use crate::methods::NamedParam;

pub struct PromptTuning {
    embedding: Var,
    combine: PromptCombine,
    params: Vec<NamedParam>,
}

impl PromptTuning {
    /// A prompt with the given initial embeddings `[prompt_length, hidden]`.
    pub fn new(config: &PromptTuningConfig, initial: Tensor) -> crate::error::Result<Self> {
        let param = NamedParam::new("prompt_embedding.weight", initial)?;
        Ok(PromptTuning { embedding: param.var.clone(), combine: config.combine()?, params: vec![param] })
    }

    pub fn params(&self) -> &[NamedParam] {
        &self.params
    }

    pub fn length(&self) -> usize {
        self.embedding.dim(0).unwrap_or(0)
    }

    /// `[batch, seq, hidden]` -> `[batch, prompt_length + seq, hidden]`.
    pub fn forward(&self, embedded: &Tensor) -> Result<Tensor> {
        let (batch, _, hidden) = embedded.dims3()?;
        let prompt = self.embedding.as_tensor().unsqueeze(0)?.broadcast_as((batch, self.length(), hidden))?.to_dtype(embedded.dtype())?;
        match self.combine {
            PromptCombine::Prefix => Tensor::cat(&[&prompt, embedded], 1),
            PromptCombine::PrefixAfterBos => {
                let seq = embedded.dim(1)?;
                Tensor::cat(&[&embedded.narrow(1, 0, 1)?, &prompt, &embedded.narrow(1, 1, seq - 1)?], 1)
            }
        }
    }
}
