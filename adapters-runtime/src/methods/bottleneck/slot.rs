//! The place where a transformer sublayer ends in `LayerNorm(hidden + residual)`: the model keeps
//! its pretrained LayerNorm here, and bottleneck adapters attach here. Follows
//! `BottleneckLayer.bottleneck_layer_forward` of the Python library.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor};

use super::{BottleneckAdapter, FusionLayer};
use crate::composition::{self, Composer};
use crate::context::{ForwardContext, FusionAttention};
use crate::mixin::SlotFamily;
use crate::nn::{LayerNorm, Norm};
use crate::setup::AdapterSetup;

/// The order in which a sublayer hands its two tensors to the adapters, as the Python library's
/// `bottleneck_layer_forward(hidden_states, residual_input, layer_norm)` receives them: the
/// adapters run on the first and add the second as the residual.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BottleneckInputs {
    /// `(projected, input)`: the sublayer's projected output, then its input (BERT and most
    /// models). The default.
    #[default]
    ProjectedFirst,
    /// `(input, projected)`: ALBERT's attention. Marked as `mh_adapter(input, projected) = ...`.
    InputFirst,
}

pub struct BottleneckSlot {
    /// The sublayer's LayerNorm after the residual (BERT); `None` where the model adds the
    /// residual with no norm after it (pre-norm decoders such as Llama).
    layer_norm: Option<Norm>,
    hidden_size: usize,
    /// Python's hook mode (the plugin interface): the slot sees the sublayer's projection and the
    /// residual stream, returns the projection with the adapters added, and the model adds the
    /// residual itself (the adapters' `original_ln_after` is off).
    hooked: bool,
    /// Which of the two tensors `forward_parts` gets is Python's `hidden_states` (set from the
    /// mark when the model is wrapped).
    inputs: BottleneckInputs,
    /// Module path under which the adapters' weights are named (`...output` for BERT,
    /// `...output_adapters` for DistilBERT).
    path: String,
    pub(crate) adapters: BTreeMap<String, BottleneckAdapter>,
    /// AdapterFusion layers by fusion name (`a,b`).
    pub(crate) fusions: BTreeMap<String, FusionLayer>,
    /// The index of the layer this slot sits in (set when the model is wrapped; AdapterDrop).
    pub(crate) layer: usize,
}

impl BottleneckSlot {
    /// Wraps the pretrained LayerNorm of a sublayer. `adapter_path` is the module path the
    /// Python library registers the adapters under (use `vb.prefix()`).
    pub fn new(layer_norm: LayerNorm, adapter_path: impl Into<String>) -> Self {
        let hidden_size = layer_norm.size();
        Self::with_norm(Some(Norm::Layer(layer_norm)), hidden_size, adapter_path.into())
    }

    /// A slot as Python's plugin interface places one (hook mode): on the output of the
    /// sublayer's last projection (`o_proj`, `down_proj`), given the sublayer's input stream as
    /// residual and the interface's `layer_ln_1` / `layer_ln_2` (Gemma 2's post-sublayer norms;
    /// none on Qwen). With nothing active it returns the projection unchanged.
    pub fn hooked(hidden_size: usize, norm: Option<Norm>, adapter_vb: &candle_nn::VarBuilder) -> Self {
        let mut slot = Self::with_norm(norm, hidden_size, adapter_vb.prefix());
        slot.hooked = true;
        slot
    }

    /// A slot where the sublayer ends in a plain residual sum, `hidden + residual` (Python passes
    /// `layer_norm=None`): pre-norm models such as Llama, whose norms come before each sublayer.
    pub fn residual_only(hidden_size: usize, adapter_vb: &candle_nn::VarBuilder) -> Self {
        Self::with_norm(None, hidden_size, adapter_vb.prefix())
    }

    fn with_norm(layer_norm: Option<Norm>, hidden_size: usize, path: String) -> Self {
        BottleneckSlot {
            layer_norm,
            hidden_size,
            hooked: false,
            inputs: BottleneckInputs::default(),
            path,
            adapters: BTreeMap::new(),
            fusions: BTreeMap::new(),
            layer: 0,
        }
    }

    /// Loads the pretrained LayerNorm from `ln_vb`; adapters are named under `adapter_vb`'s path.
    pub fn load(size: usize, eps: f64, ln_vb: candle_nn::VarBuilder, adapter_vb: &candle_nn::VarBuilder) -> Result<Self> {
        Ok(Self::new(LayerNorm::load(size, eps, ln_vb)?, adapter_vb.prefix()))
    }

    /// The order the mark declared (see [`BottleneckInputs`]).
    pub fn inputs(&self) -> BottleneckInputs {
        self.inputs
    }

    /// Set by the code `#[adapter_mixin]` generates for a mark that names its inputs.
    pub fn set_inputs(&mut self, inputs: BottleneckInputs) {
        self.inputs = inputs;
    }

    /// The sublayer's output with its tensors named: `projected` (the sublayer's projection) and
    /// `input` (what entered the sublayer). The mark says which one the Python library passes
    /// first, so a model whose sublayer passes them the other way round is one mark, not a
    /// silent mismatch at the call site.
    pub fn forward_parts(&self, projected: &Tensor, input: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        match self.inputs {
            BottleneckInputs::ProjectedFirst => self.forward(projected, input, ctx),
            BottleneckInputs::InputFirst => self.forward(input, projected, ctx),
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// The sublayer's own closing: `LayerNorm(hidden + residual)`, or the plain sum; in hook
    /// mode the projection itself (the model closes the sublayer).
    fn close(&self, hidden: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if self.hooked {
            return Ok(hidden.clone());
        }
        let sum = crate::nn::elementwise::add(hidden, residual)?;
        match &self.layer_norm {
            Some(norm) => norm.forward(&sum),
            None => Ok(sum),
        }
    }

    pub fn adapter_names(&self) -> impl Iterator<Item = &str> {
        self.adapters.keys().map(String::as_str)
    }

    /// `LayerNorm(hidden + residual)` with the active setup composed in (Python's
    /// `bottleneck_layer_forward`). With none of the setup's adapters here this is exactly the
    /// original computation.
    pub fn forward(&self, hidden: &Tensor, residual: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        Ok(ctx.output(self.composed(hidden, residual, ctx)?))
    }

    fn composed(&self, hidden: &Tensor, residual: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        let Some(setup) = ctx.setup_at(self.layer).filter(|s| s.any_adapter(&|n| self.adapters.contains_key(n))) else {
            return self.close(hidden, residual);
        };
        let state = BnState { hidden: hidden.clone(), input: residual.clone(), residual: residual.clone(), up: None, last: None };
        // A bare name is a one-adapter Stack, as Python parses it.
        let state = match setup {
            AdapterSetup::Single(name) => self.stack_child(name, state, ctx)?,
            other => composition::run(self, other, state, ctx)?,
        };
        match state.last.as_deref().and_then(|n| self.adapters.get(n)) {
            // The last adapter's post_forward closes the block for every row (as in Python).
            Some(last) => last.post_forward(&state.hidden, hidden, &state.input, self.layer_norm.as_ref(), !self.hooked),
            None => self.close(hidden, residual),
        }
    }

    /// The first adapter's `pre_forward` (Python's `pre_block`).
    fn pre_block(&self, name: Option<&str>, state: BnState) -> Result<BnState> {
        let Some(adapter) = name.and_then(|n| self.adapters.get(n)) else { return Ok(state) };
        let (hidden, residual) = adapter.pre_forward(&state.hidden, &state.input, self.layer_norm.as_ref())?;
        Ok(BnState { hidden, residual, ..state })
    }
}

impl Composer for BottleneckSlot {
    type State = BnState;
    const FAMILY: SlotFamily = SlotFamily::Bottleneck;

    fn has(&self, name: &str) -> bool {
        self.adapters.contains_key(name)
    }

    fn single(&self, name: &str, state: BnState, ctx: &ForwardContext) -> Result<BnState> {
        match self.adapters.get(name) {
            Some(adapter) => {
                let (hidden, up) = adapter.forward_with_up(&state.hidden, &state.residual, ctx)?;
                Ok(BnState { hidden, up: Some(up), last: Some(name.to_string()), ..state })
            }
            None => Ok(state),
        }
    }

    /// In a Stack each adapter runs its own `pre_forward` first.
    fn stack_child(&self, name: &str, state: BnState, ctx: &ForwardContext) -> Result<BnState> {
        if !self.has(name) {
            return Ok(state);
        }
        let state = self.pre_block(Some(name), state)?;
        self.single(name, state, ctx)
    }

    /// The block's first adapter runs `pre_forward` for all its children (Python's
    /// `pre_block`); Parallel, BatchSplit and Average need every child here.
    fn open_block(&self, setup: &AdapterSetup, state: BnState) -> Result<BnState> {
        if let AdapterSetup::Parallel(children) | AdapterSetup::BatchSplit { children, .. } | AdapterSetup::Average { children, .. } = setup {
            self.check_children_here(setup, children)?;
        }
        self.pre_block(setup.first(), state)
    }

    fn rows(&self, state: &BnState) -> Result<usize> {
        state.hidden.dim(0)
    }

    fn positions(&self, state: &BnState) -> Result<usize> {
        state.hidden.dim(1)
    }

    fn narrow(&self, state: &BnState, dim: usize, start: usize, len: usize) -> Result<BnState> {
        state.narrow(dim, start, len)
    }

    fn join(&self, _setup: &AdapterSetup, parts: Vec<BnState>, dim: usize, opened: &BnState) -> Result<BnState> {
        if dim == 0 {
            return BnState::cat(parts, 0);
        }
        // Split: the positions' hidden states side by side; the rest as the block opened.
        let last = parts.iter().fold(None, |last, p| p.last.clone().or(last));
        let hidden = Tensor::cat(&parts.iter().map(|p| &p.hidden).collect::<Vec<_>>(), 1)?;
        Ok(BnState { hidden, last, ..opened.clone() })
    }

    fn average(&self, outs: Vec<BnState>, weights: &[f64], _opened: BnState) -> Result<BnState> {
        let hiddens: Vec<Tensor> = outs.iter().map(|s| s.hidden.clone()).collect();
        let hidden = composition::weighted_mean(&hiddens, weights)?;
        let last = outs.last().and_then(|s| s.last.clone());
        let first = outs.into_iter().next().ok_or_else(|| crate::error::internal("Average without children"))?;
        Ok(BnState { hidden, last, ..first })
    }

    fn fuse(&self, setup: &AdapterSetup, children: &[AdapterSetup], state: BnState, ctx: &ForwardContext) -> Result<BnState> {
        self.compose_fuse(setup, children, state, ctx)
    }
}

impl BottleneckSlot {
    /// Parallel, BatchSplit and Average run one adapter's `pre_forward` and `post_forward` for
    /// all their children (as Python does), and Average needs every child's output, so every
    /// child must have a module here once any does. Python fails on such setups too (a KeyError
    /// for a missing first child, a missing tensor or, for Average, a child silently dropped),
    /// so they are refused, naming the children that are missing.
    fn check_children_here(&self, setup: &AdapterSetup, children: &[AdapterSetup]) -> Result<()> {
        let absent: Vec<String> = children.iter().filter(|c| !c.any_adapter(&|n| self.adapters.contains_key(n))).map(|c| format!("`{c}`")).collect();
        if absent.is_empty() {
            return Ok(());
        }
        Err(crate::error::invalid_input(format!(
            "{setup}: {} has no bottleneck module at `{}` while other children do; every child of {} must have a module at each location the block reaches",
            absent.join(", "),
            self.path,
            setup.kind().name()
        )))
    }

    /// Python's `compose_fuse`: the last adapter's `pre_forward` gives the query, each child
    /// runs on the same input, and the fusion layer attends over their up-projections.
    fn compose_fuse(&self, setup: &AdapterSetup, children: &[AdapterSetup], state: BnState, ctx: &ForwardContext) -> Result<BnState> {
        let name = setup.fusion_name().unwrap_or_default();
        let fusion = self
            .fusions
            .get(&name)
            .ok_or_else(|| crate::error::invalid_input(format!("{setup}: no fusion layer `{name}` at `{}`; add it with add_adapter_fusion", self.path)))?;
        let last = setup.last().unwrap_or_default().to_string();
        let last_adapter =
            self.adapters.get(&last).ok_or_else(|| crate::error::invalid_input(format!("{setup}: adapter `{last}` has no module at `{}`", self.path)))?;
        let (hidden, query, residual) =
            last_adapter.pre_forward_with_query(&state.hidden, &state.input, self.layer_norm.as_ref(), fusion.config().query_before_ln)?;
        let state = BnState { hidden, residual, ..state };
        let mut ups = Vec::with_capacity(children.len());
        for child in children {
            let out = composition::run(self, child, state.clone(), ctx)?;
            if let (Some(up), Some(_)) = (out.up, out.last) {
                ups.push(up);
            }
        }
        if ups.is_empty() {
            return Ok(BnState { last: Some(last), ..state });
        }
        let ups = Tensor::stack(&ups, 2)?;
        let (hidden, probs) = fusion.forward(&query, &ups, &state.residual, ctx)?;
        ctx.record_fusion_attention(FusionAttention { fusion: name, slot: self.path.clone(), layer: 0, location: "", probs });
        Ok(BnState { hidden, last: Some(last), ..state })
    }
}

/// Python's `BottleneckState`: the running hidden states, the sublayer input (`input_tensor`),
/// the adapter residual, the last adapter's up-projection (for fusion), and the last adapter
/// that ran.
#[derive(Clone)]
pub(crate) struct BnState {
    hidden: Tensor,
    input: Tensor,
    residual: Tensor,
    up: Option<Tensor>,
    last: Option<String>,
}

impl BnState {
    fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Self> {
        Ok(BnState {
            hidden: self.hidden.narrow(dim, start, len)?,
            input: self.input.narrow(dim, start, len)?,
            residual: self.residual.narrow(dim, start, len)?,
            up: self.up.as_ref().map(|u| u.narrow(dim, start, len)).transpose()?,
            last: self.last.clone(),
        })
    }

    fn cat(states: Vec<BnState>, dim: usize) -> Result<Self> {
        let join = |f: fn(&BnState) -> &Tensor| -> Result<Tensor> { Tensor::cat(&states.iter().map(f).collect::<Vec<_>>(), dim) };
        Ok(BnState {
            hidden: join(|s| &s.hidden)?,
            input: join(|s| &s.input)?,
            residual: join(|s| &s.residual)?,
            // Only a fusion reads `up`; children that ran no adapter here have none.
            up: states.iter().map(|s| s.up.clone()).collect::<Option<Vec<_>>>().map(|ups| Tensor::cat(&ups, dim)).transpose()?,
            last: states.last().and_then(|s| s.last.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use candle_core::{DType, Device, Tensor};

    use super::*;
    use crate::config::AdapterConfig;
    use crate::methods::bottleneck::{BottleneckAdapter, SharedPhm};
    use crate::methods::init::{Init, Placement, Rng};

    /// `forward_parts` hands Python's `hidden_states` the tensor the mark names first.
    #[test]
    fn named_inputs_follow_the_marked_order() {
        let placement = Placement::new(Device::Cpu, DType::F32);
        let mut init = Init::new(Rng::new(3), placement);
        let config = AdapterConfig::parse("double_seq_bn[reduction_factor=2]").unwrap();
        let adapter = BottleneckAdapter::new(config.bottleneck().unwrap(), 8, 4, &SharedPhm::default(), &mut init).unwrap();
        // Trained-size weights (the N(0, 0.02) start barely moves the output).
        for p in adapter.params() {
            p.var.set(&init.normal(p.var.dims(), 1.0).unwrap()).unwrap();
        }
        let ln = LayerNorm::new(init.ones(8).unwrap(), init.zeros(8).unwrap(), 1e-12);
        let mut slot = BottleneckSlot::new(ln, "layer.0.output");
        slot.adapters.insert("a".into(), adapter);
        let ctx = ForwardContext::with_setup(Some(Arc::new(AdapterSetup::from("a"))), false);
        let projected = init.normal(&[2, 3, 8], 1.0).unwrap();
        let input = init.normal(&[2, 3, 8], 1.0).unwrap();
        let diff = |a: &Tensor, b: &Tensor| crate::compare::compare(a, b).unwrap().max_abs;
        let python_bert = slot.forward(&projected, &input, &ctx).unwrap();
        let python_albert = slot.forward(&input, &projected, &ctx).unwrap();
        // Houlsby-style (no original LayerNorm before the adapter): the adapter sees only the first.
        assert!(diff(&python_bert, &python_albert) > 1e-3, "the order matters with an adapter active");
        assert_eq!(slot.inputs(), BottleneckInputs::ProjectedFirst);
        assert_eq!(diff(&slot.forward_parts(&projected, &input, &ctx).unwrap(), &python_bert), 0.0);
        slot.set_inputs(BottleneckInputs::InputFirst);
        assert_eq!(diff(&slot.forward_parts(&projected, &input, &ctx).unwrap(), &python_albert), 0.0);
    }
}
