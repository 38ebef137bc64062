//! The place where a transformer sublayer ends in `LayerNorm(hidden + residual)`: the model keeps
//! its pretrained LayerNorm here, and bottleneck adapters attach here. Follows
//! `BottleneckLayer.bottleneck_layer_forward` of the Python library.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor};

use super::BottleneckAdapter;
use crate::context::ForwardContext;
use crate::methods::LayerNorm;

pub struct BottleneckSlot {
    layer_norm: LayerNorm,
    /// Module path under which the adapters' weights are named (`...output` for BERT,
    /// `...output_adapters` for DistilBERT).
    path: String,
    pub(crate) adapters: BTreeMap<String, BottleneckAdapter>,
}

impl BottleneckSlot {
    /// Wraps the pretrained LayerNorm of a sublayer. `adapter_path` is the module path the
    /// Python library registers the adapters under (use `vb.prefix()`).
    pub fn new(layer_norm: LayerNorm, adapter_path: impl Into<String>) -> Self {
        BottleneckSlot { layer_norm, path: adapter_path.into(), adapters: BTreeMap::new() }
    }

    /// Loads the pretrained LayerNorm from `ln_vb`; adapters are named under `adapter_vb`'s path.
    pub fn load(size: usize, eps: f64, ln_vb: candle_nn::VarBuilder, adapter_vb: &candle_nn::VarBuilder) -> Result<Self> {
        Ok(Self::new(LayerNorm::load(size, eps, ln_vb)?, adapter_vb.prefix()))
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn hidden_size(&self) -> usize {
        self.layer_norm.size()
    }

    pub fn adapter_names(&self) -> impl Iterator<Item = &str> {
        self.adapters.keys().map(String::as_str)
    }

    /// `LayerNorm(hidden + residual)` with the active bottleneck adapters composed in.
    /// With no active adapter here this is exactly the original computation.
    pub fn forward(&self, hidden: &Tensor, residual: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        let mut active = ctx.active_stack().iter().filter_map(|n| self.adapters.get(n)).peekable();
        if active.peek().is_none() {
            return self.layer_norm.forward(&(hidden + residual)?);
        }
        let input_hidden = hidden.clone();
        let mut state = hidden.clone();
        let mut last = None;
        for adapter in active {
            let (adapter_in, adapter_residual) = adapter.pre_forward(&state, residual, &self.layer_norm)?;
            state = adapter.forward(&adapter_in, &adapter_residual, ctx)?;
            last = Some(adapter);
        }
        match last {
            Some(adapter) => adapter.post_forward(&state, &input_hidden, residual, &self.layer_norm),
            None => self.layer_norm.forward(&(hidden + residual)?),
        }
    }
}
