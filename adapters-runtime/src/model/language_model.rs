//! Language-model outputs of a decoder with adapters: logits from an active causal LM head or the
//! checkpoint's own decoder, and the next-token loss that trains adapters on text.

use candle_core::{DType, Tensor};

use super::AdaptedModel;
use crate::body::BaseModel;
use crate::error::{AdapterError, Result};
use crate::heads::{HeadSetup, HeadType, IGNORE_INDEX};
use crate::model_io::ModelInputs;

impl<M: BaseModel + ?Sized> AdaptedModel<M> {
    /// Language-model logits `[batch, seq, vocab]` for one pass: the active causal LM head's,
    /// or, with no head active, the checkpoint's own decoder (`lm_head`, or the tied input
    /// embeddings).
    pub fn lm_logits(&self, inputs: &ModelInputs<'_>) -> Result<Tensor> {
        self.lm_logits_at(inputs, false)
    }

    /// [`AdaptedModel::lm_logits`] of each row's last position only (`[batch, 1, vocab]`), what
    /// a generation step samples from.
    #[cfg(feature = "generate")]
    pub(crate) fn last_lm_logits(&self, inputs: &ModelInputs<'_>) -> Result<Tensor> {
        self.lm_logits_at(inputs, true)
    }

    fn lm_logits_at(&self, inputs: &ModelInputs<'_>, last_position_only: bool) -> Result<Tensor> {
        match &self.active_head {
            Some(HeadSetup::Single(name)) => {
                let head = self.head_named(name)?;
                if !matches!(head.config().head_type(), HeadType::CausalLm | HeadType::Seq2SeqLm) {
                    return Err(AdapterError::InvalidConfig(format!(
                        "the active head `{name}` is a {} head; language-model logits need a causal_lm or seq2seq_lm head (or no active head, to use the checkpoint's lm_head)",
                        head.config().head_type().name()
                    )));
                }
                let out = self.forward_heads(inputs, last_position_only)?;
                let head = out.head.ok_or_else(|| AdapterError::InvalidConfig(format!("head `{name}` gave no output")))?;
                Ok(head.logits().clone())
            }
            Some(other) => Err(AdapterError::InvalidConfig(format!("language-model logits need one active head, not {:?}", other.names()))),
            None => {
                let decoder = self.model.lm_head().ok_or_else(|| {
                    AdapterError::InvalidConfig(format!(
                        "this {} checkpoint has no lm_head (and does not tie its embeddings); add a causal LM head (add_causal_lm_head) or load one with an adapter",
                        self.model.mapping().model_type
                    ))
                })?;
                let mut hidden = self.model.head_input(&self.forward_inputs(inputs)?.last_hidden_state)?;
                if last_position_only {
                    hidden = hidden.narrow(1, hidden.dim(1)? - 1, 1)?;
                }
                if let Some(inverse) = self.active_invertible().filter(|_| self.model.lm_head_reverses_invertible()) {
                    hidden = inverse.reverse(&hidden)?;
                }
                let logits = crate::nn::linear(&hidden, decoder, None)?;
                let logits = match self.model.lm_head_bias() {
                    Some(bias) => logits.broadcast_add(&bias.to_dtype(logits.dtype())?)?,
                    None => logits,
                };
                Ok(match self.model.final_logit_softcapping() {
                    Some(cap) => ((logits / cap)?.tanh()? * cap)?,
                    None => logits,
                })
            }
        }
    }

    /// The mean next-token cross entropy of a pass: position `i`'s logits against `labels[i + 1]`
    /// (`[batch, seq]`, I64; `-100` where no loss is taken, e.g. padding or prompt tokens).
    pub fn lm_loss(&self, inputs: &ModelInputs<'_>, labels: &Tensor) -> Result<Tensor> {
        let logits = self.lm_logits(inputs)?;
        let (batch, seq, vocab) = logits.dims3()?;
        if labels.dims() != [batch, seq] {
            return Err(AdapterError::InvalidInput(format!("labels have shape {:?}; the pass has [{batch}, {seq}] positions", labels.dims())));
        }
        if seq < 2 {
            return Err(AdapterError::InvalidInput("a next-token loss needs at least two positions".into()));
        }
        let logits = logits.narrow(1, 0, seq - 1)?.to_dtype(DType::F32)?.reshape(((), vocab))?;
        let labels = labels.to_dtype(DType::I64)?.narrow(1, 1, seq - 1)?.flatten_all()?;
        Ok(crate::heads::cross_entropy(&logits, &labels.to_device(logits.device())?, IGNORE_INDEX)?)
    }
}
