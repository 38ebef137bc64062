//! A linear layer that LoRA-family modules attach to. With nothing active (or a module merged)
//! it is a plain `x W^T + b`.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor};

use super::LoraModule;
use crate::composition::{self, Composer};
use crate::context::ForwardContext;
use crate::mixin::SlotFamily;
use crate::nn::BaseWeight;
use crate::setup::AdapterSetup;

pub struct LoRALinear {
    weight: BaseWeight,
    bias: Option<Tensor>,
    path: String,
    pub(crate) loras: BTreeMap<String, LoraModule>,
    /// The merged module's name and the weight before merging (restored exactly on reset).
    merged: Option<(String, BaseWeight)>,
    /// The index of the layer this slot sits in (set when the model is wrapped; AdapterDrop).
    pub(crate) layer: usize,
}

impl LoRALinear {
    pub fn new(weight: Tensor, bias: Option<Tensor>, path: impl Into<String>) -> Self {
        Self::over(BaseWeight::Dense(weight), bias, path)
    }

    /// Over any base weight, e.g. one kept quantized (a GGUF base).
    pub fn over(weight: BaseWeight, bias: Option<Tensor>, path: impl Into<String>) -> Self {
        LoRALinear { weight, bias, path: path.into(), loras: BTreeMap::new(), merged: None, layer: 0 }
    }

    /// Loads `weight` (out, in) and `bias` from `vb`, as `candle_nn::linear` does, and records
    /// the module path so adapter weights get the Python library's names.
    pub fn load(in_features: usize, out_features: usize, vb: candle_nn::VarBuilder) -> Result<Self> {
        let weight = vb.get((out_features, in_features), "weight")?;
        let bias = vb.get(out_features, "bias")?;
        Ok(Self::new(weight, Some(bias), vb.prefix()))
    }

    /// [`LoRALinear::load`] for a linear that may have no bias (Llama's projections).
    pub fn load_with_bias(in_features: usize, out_features: usize, bias: bool, vb: candle_nn::VarBuilder) -> Result<Self> {
        let weight = vb.get((out_features, in_features), "weight")?;
        let bias = if bias { Some(vb.get(out_features, "bias")?) } else { None };
        Ok(Self::new(weight, bias, vb.prefix()))
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The base weight `[out, in]` as a dense tensor (dequantized when the base is quantized).
    pub fn weight(&self) -> Result<Tensor> {
        self.weight.dense()
    }

    pub fn base_weight(&self) -> &BaseWeight {
        &self.weight
    }

    /// (in_features, out_features)
    pub fn dims(&self) -> (usize, usize) {
        let (out, inp) = self.weight.dims().unwrap_or((0, 0));
        (inp, out)
    }

    pub fn merged(&self) -> Option<&str> {
        self.merged.as_ref().map(|(n, _)| n.as_str())
    }

    pub fn adapter_names(&self) -> impl Iterator<Item = &str> {
        self.loras.keys().map(String::as_str)
    }

    /// `x W^T + b` with the active setup's LoRA-family modules composed in (Python's
    /// `LoRALinear.forward`): the modules' outputs are composed block by block, then the last
    /// module that ran combines them with the base output (for every row, as in Python).
    pub fn forward(&self, x: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        Ok(ctx.output(self.composed(x, ctx)?))
    }

    fn composed(&self, x: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        let layer_output = self.weight.linear(x, self.bias.as_ref())?;
        if self.merged.is_some() {
            return Ok(layer_output);
        }
        let Some(setup) = ctx.setup_at(self.layer).filter(|s| s.any_adapter(&|n| self.loras.contains_key(n))) else {
            return Ok(layer_output);
        };
        let state = LoraState { input: x.clone(), hidden: None, output: layer_output, last: None };
        let state = composition::run(self, setup, state, ctx)?;
        match (state.last.as_deref().and_then(|n| self.loras.get(n)), state.hidden) {
            (Some(module), Some(hidden)) => module.combine(&state.output, &hidden, &self.weight),
            _ => Ok(state.output),
        }
    }

    pub(crate) fn merge(&mut self, name: &str) -> crate::error::Result<bool> {
        let refuse = |reason: String| crate::error::AdapterError::Unsupported { adapter: name.into(), operation: "merge_adapter".into(), reason };
        let Some(module) = self.loras.get(name) else { return Ok(false) };
        if module.is_gated() {
            return Err(refuse("a gated LoRA module (UniPELT) cannot be merged: its gate depends on the input".into()));
        }
        match &self.merged {
            Some((merged, _)) if merged == name => return Ok(true),
            Some((merged, _)) => return Err(refuse(format!("`{merged}` is already merged here; reset it first"))),
            None => {}
        }
        if self.weight.is_quantized() {
            return Err(refuse(format!(
                "the base weight of `{}` is quantized (a GGUF base); load the model dequantized to merge, or keep the adapter unmerged",
                self.path
            )));
        }
        let merged = BaseWeight::Dense(module.merged_weight(&self.weight.dense()?)?);
        let original = std::mem::replace(&mut self.weight, merged);
        self.merged = Some((name.to_string(), original));
        Ok(true)
    }

    pub(crate) fn reset(&mut self) {
        if let Some((_, original)) = self.merged.take() {
            self.weight = original;
        }
    }
}

impl Composer for LoRALinear {
    type State = LoraState;
    const FAMILY: SlotFamily = SlotFamily::Lora;

    fn has(&self, name: &str) -> bool {
        self.loras.contains_key(name)
    }

    fn single(&self, name: &str, state: LoraState, ctx: &ForwardContext) -> Result<LoraState> {
        match self.loras.get(name) {
            Some(module) => {
                let hidden = module.forward(state.hidden.as_ref(), &state.input, ctx)?;
                Ok(LoraState { hidden: Some(hidden), last: Some(name.to_string()), ..state })
            }
            None => Ok(state),
        }
    }

    fn rows(&self, state: &LoraState) -> Result<usize> {
        state.input.dim(0)
    }

    fn positions(&self, state: &LoraState) -> Result<usize> {
        state.input.dim(1)
    }

    fn narrow(&self, state: &LoraState, dim: usize, start: usize, len: usize) -> Result<LoraState> {
        state.narrow(dim, start, len)
    }

    fn join(&self, setup: &AdapterSetup, parts: Vec<LoraState>, dim: usize, _opened: &LoraState) -> Result<LoraState> {
        LoraState::cat(parts, dim).map_err(|e| crate::error::invalid_input(format!("{setup} at `{}`: {e}", self.path)))
    }

    fn average(&self, outs: Vec<LoraState>, weights: &[f64], opened: LoraState) -> Result<LoraState> {
        let hiddens: Option<Vec<Tensor>> = outs.iter().map(|s| s.hidden.clone()).collect();
        let hidden = hiddens.map(|h| composition::weighted_mean(&h, weights)).transpose()?;
        let last = outs.last().and_then(|s| s.last.clone());
        Ok(LoraState { hidden, last, ..opened })
    }
}

/// Python's `LoRAState`: the layer input, the composed module output so far, the base output,
/// and the last module that ran.
#[derive(Clone)]
pub(crate) struct LoraState {
    input: Tensor,
    hidden: Option<Tensor>,
    output: Tensor,
    last: Option<String>,
}

impl LoraState {
    fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Self> {
        Ok(LoraState {
            input: self.input.narrow(dim, start, len)?,
            hidden: self.hidden.as_ref().map(|h| h.narrow(dim, start, len)).transpose()?,
            output: self.output.narrow(dim, start, len)?,
            last: self.last.clone(),
        })
    }

    fn cat(states: Vec<LoraState>, dim: usize) -> Result<Self> {
        let hidden = composition::cat_optional(&states.iter().map(|s| s.hidden.clone()).collect::<Vec<_>>(), dim)?;
        Ok(LoraState {
            input: Tensor::cat(&states.iter().map(|s| &s.input).collect::<Vec<_>>(), dim)?,
            hidden,
            output: Tensor::cat(&states.iter().map(|s| &s.output).collect::<Vec<_>>(), dim)?,
            last: states.last().and_then(|s| s.last.clone()),
        })
    }
}
