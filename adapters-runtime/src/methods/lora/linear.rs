//! A linear layer that LoRA-family modules attach to. With nothing active (or a module merged)
//! it is a plain `x W^T + b`.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor};

use super::LoraModule;
use crate::context::ForwardContext;

pub struct LoRALinear {
    weight: Tensor,
    bias: Option<Tensor>,
    path: String,
    pub(crate) loras: BTreeMap<String, LoraModule>,
    /// The merged module's name and the weight before merging (restored exactly on reset).
    merged: Option<(String, Tensor)>,
}

impl LoRALinear {
    pub fn new(weight: Tensor, bias: Option<Tensor>, path: impl Into<String>) -> Self {
        LoRALinear { weight, bias, path: path.into(), loras: BTreeMap::new(), merged: None }
    }

    /// Loads `weight` (out, in) and `bias` from `vb`, as `candle_nn::linear` does, and records
    /// the module path so adapter weights get the Python library's names.
    pub fn load(in_features: usize, out_features: usize, vb: candle_nn::VarBuilder) -> Result<Self> {
        let weight = vb.get((out_features, in_features), "weight")?;
        let bias = vb.get(out_features, "bias")?;
        Ok(Self::new(weight, Some(bias), vb.prefix()))
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// (in_features, out_features)
    pub fn dims(&self) -> (usize, usize) {
        let (out, inp) = self.weight.dims2().unwrap_or((0, 0));
        (inp, out)
    }

    pub fn merged(&self) -> Option<&str> {
        self.merged.as_ref().map(|(n, _)| n.as_str())
    }

    pub fn adapter_names(&self) -> impl Iterator<Item = &str> {
        self.loras.keys().map(String::as_str)
    }

    pub fn forward(&self, x: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        let layer_output = crate::methods::linear(x, &self.weight, self.bias.as_ref())?;
        if self.merged.is_some() {
            return Ok(layer_output);
        }
        let mut hidden: Option<Tensor> = None;
        let mut last = None;
        for module in ctx.active_stack().iter().filter_map(|n| self.loras.get(n)) {
            hidden = Some(module.forward(hidden.as_ref(), x, ctx)?);
            last = Some(module);
        }
        match (last, hidden) {
            (Some(module), Some(hidden)) => module.combine(&layer_output, &hidden, &self.weight),
            _ => Ok(layer_output),
        }
    }

    pub(crate) fn merge(&mut self, name: &str) -> std::result::Result<bool, String> {
        let Some(module) = self.loras.get(name) else { return Ok(false) };
        match &self.merged {
            Some((merged, _)) if merged == name => return Ok(true),
            Some((merged, _)) => return Err(format!("`{merged}` is already merged here; reset it first")),
            None => {}
        }
        let merged = module.merged_weight(&self.weight).map_err(|e| e.to_string())?;
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
