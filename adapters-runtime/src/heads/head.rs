//! A prediction head: the `nn.Sequential` the Python library builds from a head config, with the
//! same module indices (so weights are named `heads.NAME.<index>.weight` as Python names them).

use candle_core::{Result as CResult, Tensor, Var};

use super::config::{HeadConfig, HeadType};
use crate::context::ForwardContext;
use crate::methods::init::Init;
use crate::methods::NamedParam;
use crate::nn::activation::Activation;
use crate::nn::{dropout, linear};

/// Sizes a head is built against, taken from the base model.
#[derive(Clone, Copy, Debug)]
pub struct HeadDims {
    pub hidden_size: usize,
    /// Used when the head config leaves `dropout_prob` unset (Python: `hidden_dropout_prob`).
    pub dropout: f64,
    pub layer_norm_eps: f64,
    /// Python's `initializer_range`: new head weights are drawn from N(0, std).
    pub init_std: f32,
    /// The model's `tie_word_embeddings`: language-modeling heads then decode with the input
    /// embedding matrix instead of a weight of their own (Python's `tie_weights`).
    pub tie_word_embeddings: bool,
}

enum HeadLayer {
    Dropout(f64),
    Linear { weight: Option<Var>, bias: Option<Var> },
    Activation(Activation),
    LayerNorm { weight: Var, bias: Var, eps: f64 },
}

/// What a head computes for a batch.
#[derive(Clone, Debug)]
pub enum HeadOutput {
    /// Classification `[batch, labels]`, multiple choice `[batch, choices]`, tagging
    /// `[batch, seq, labels]`, masked LM `[batch, seq, vocab]`.
    Logits(Tensor),
    /// Question answering: start and end logits, each `[batch, seq]`.
    Span { start: Tensor, end: Tensor },
}

impl HeadOutput {
    /// The tensors under the names Python's model outputs use.
    pub fn named(&self) -> Vec<(&'static str, Tensor)> {
        match self {
            HeadOutput::Logits(t) => vec![("logits", t.clone())],
            HeadOutput::Span { start, end } => vec![("start_logits", start.clone()), ("end_logits", end.clone())],
        }
    }

    /// The main logits (start logits for question answering).
    pub fn logits(&self) -> &Tensor {
        match self {
            HeadOutput::Logits(t) => t,
            HeadOutput::Span { start, .. } => start,
        }
    }
}

/// One head: its config, its layers and its parameters.
pub struct PredictionHead {
    config: HeadConfig,
    layers: Vec<HeadLayer>,
    params: Vec<NamedParam>,
    tied: bool,
}

impl PredictionHead {
    /// Builds a freshly initialised head, as Python's `PredictionHead.build`. A language-model
    /// head's decoder weight is the input embedding matrix when the model ties its embeddings,
    /// passed at forward time (tied, not a parameter).
    pub fn new(config: HeadConfig, dims: HeadDims, init: &mut Init) -> CResult<Self> {
        let h = dims.hidden_size;
        let act = config.activation().map(Activation::parse).transpose().map_err(crate::error::AdapterError::into_candle)?;
        let mut layers = Vec::new();
        let mut params = Vec::new();
        let add_linear =
            |init: &mut Init, layers: &mut Vec<HeadLayer>, params: &mut Vec<NamedParam>, inp: usize, out: usize, bias: bool, tied: bool| -> CResult<()> {
                let index = layers.len();
                let weight = if tied {
                    None
                } else {
                    let p = NamedParam::new(format!("{index}.weight"), init.normal(&[out, inp], dims.init_std)?)?;
                    let v = p.var.clone();
                    params.push(p);
                    Some(v)
                };
                let bias = if bias {
                    let p = NamedParam::new(format!("{index}.bias"), init.zeros(out)?)?;
                    let v = p.var.clone();
                    params.push(p);
                    Some(v)
                } else {
                    None
                };
                layers.push(HeadLayer::Linear { weight, bias });
                Ok(())
            };
        let n = config.layers();
        let tied = config.head_type().is_language_model() && dims.tie_word_embeddings;
        if config.head_type().is_language_model() {
            for _ in 0..n.saturating_sub(1) {
                add_linear(init, &mut layers, &mut params, h, h, true, false)?;
                if let Some(a) = act {
                    layers.push(HeadLayer::Activation(a));
                }
                if config.layer_norm() {
                    let index = layers.len();
                    let weight = NamedParam::new(format!("{index}.weight"), init.ones(h)?)?;
                    let bias = NamedParam::new(format!("{index}.bias"), init.zeros(h)?)?;
                    layers.push(HeadLayer::LayerNorm { weight: weight.var.clone(), bias: bias.var.clone(), eps: dims.layer_norm_eps });
                    params.extend([weight, bias]);
                }
            }
            add_linear(init, &mut layers, &mut params, h, config.out_features(), config.bias(), tied)?;
        } else {
            let p = config.dropout_prob().unwrap_or(dims.dropout);
            for l in 0..n {
                layers.push(HeadLayer::Dropout(p));
                if l + 1 < n {
                    add_linear(init, &mut layers, &mut params, h, h, true, false)?;
                    if let Some(a) = act {
                        layers.push(HeadLayer::Activation(a));
                    }
                } else {
                    add_linear(init, &mut layers, &mut params, h, config.out_features(), config.bias(), false)?;
                }
            }
        }
        Ok(PredictionHead { config, layers, params, tied })
    }

    pub fn config(&self) -> &HeadConfig {
        &self.config
    }

    /// Parameters named relative to the head (`1.weight`, `4.bias`, ...).
    pub fn params(&self) -> &[NamedParam] {
        &self.params
    }

    /// Whether the head's decoder is tied to the input embeddings (language-model heads on a
    /// model that ties its word embeddings).
    pub fn is_tied(&self) -> bool {
        self.tied
    }

    /// Runs the head. `hidden`: `last_hidden_state` `[batch, seq, hidden]`; `summary`: the
    /// vector per sequence that sequence-level heads read (the pooler output under `use_pooler`,
    /// else the model's sequence output), required by them; `embeddings`: the input embedding
    /// matrix, required by tied heads. `inverse`: an invertible adapter, run in reverse before
    /// the decoder of a language-modeling head (as Python's LM heads do).
    pub fn forward(
        &self,
        hidden: &Tensor,
        summary: Option<&Tensor>,
        embeddings: Option<&Tensor>,
        inverse: Option<&crate::methods::invertible::InvertibleAdapter>,
        ctx: &ForwardContext,
    ) -> CResult<HeadOutput> {
        let head_type = self.config.head_type();
        let mut x = if head_type.is_sequence_level() {
            summary.cloned().ok_or_else(|| {
                crate::error::invalid_input(if self.config.use_pooler() {
                    "this head uses the pooler, and the model has none"
                } else {
                    "a sequence-level head needs the model's sequence output"
                })
            })?
        } else {
            hidden.clone()
        };
        let last = self.layers.len().saturating_sub(1);
        for (index, layer) in self.layers.iter().enumerate() {
            if index == last && self.config.head_type().is_language_model() {
                if let Some(inverse) = inverse {
                    x = inverse.reverse(&x)?;
                }
            }
            x = match layer {
                HeadLayer::Dropout(p) => dropout(&x, *p, ctx)?,
                HeadLayer::Activation(a) => a.forward(&x)?,
                HeadLayer::LayerNorm { weight, bias, eps } => crate::nn::layer_norm(&x, weight.as_tensor(), bias.as_tensor(), *eps as f32)?,
                HeadLayer::Linear { weight, bias } => {
                    let w = match weight {
                        Some(w) => w.as_tensor(),
                        None => embeddings.ok_or_else(|| crate::error::invalid_input("a tied head needs the input embeddings"))?,
                    };
                    linear(&x, w, bias.as_ref().map(Var::as_tensor))?
                }
            };
        }
        Ok(match head_type {
            HeadType::MultipleChoice => HeadOutput::Logits(x.reshape(((), self.config.num_labels()))?),
            HeadType::QuestionAnswering => {
                let start = x.narrow(2, 0, 1)?.squeeze(2)?;
                let end = x.narrow(2, 1, 1)?.squeeze(2)?;
                HeadOutput::Span { start, end }
            }
            _ => HeadOutput::Logits(x),
        })
    }
}
