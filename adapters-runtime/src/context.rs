//! The forward context: what a forward pass needs to know about the adapters, passed explicitly
//! through the model instead of living in globals.

use std::sync::{Arc, Mutex};

use candle_core::Tensor;

use crate::methods::init::Rng;
use crate::setup::AdapterSetup;

/// Per-forward state. Slots read the active adapters from here; dropout draws its masks from the
/// context's seeded generator, so a training run with a fixed seed is repeatable.
#[derive(Clone, Debug, Default)]
pub struct ForwardContext {
    setup: Option<Arc<AdapterSetup>>,
    train: bool,
    /// Whether adapter outputs keep their autograd graph (some variable is being trained).
    grad: bool,
    dropout_rng: Option<Arc<Mutex<Rng>>>,
    fusion_attentions: Option<Arc<Mutex<Vec<FusionAttention>>>>,
    /// AdapterDrop: layers where no adapter runs.
    skip_layers: Option<Arc<[usize]>>,
    /// The prefixes of the active prefix-tuning adapters, computed once per forward.
    prefix_states: Option<Arc<crate::methods::prefix::PrefixStates>>,
    /// `(offset of the first real token, number of real tokens)` per batch row (ReFT positions).
    sequence_rows: Option<Arc<[(usize, usize)]>>,
}

/// The attention of one AdapterFusion layer over its adapters in one forward.
#[derive(Clone, Debug)]
pub struct FusionAttention {
    /// The fusion name (`a,b`).
    pub fusion: String,
    /// The module path of the slot (`encoder.layer.0.output`).
    pub slot: String,
    /// The layer index and location key (`mh_adapter`, `output_adapter`) of the slot, as Python
    /// keys its `adapter_fusion_attentions` (filled in by the model).
    pub layer: usize,
    pub location: &'static str,
    /// `[batch, seq, adapters]` softmax probabilities.
    pub probs: candle_core::Tensor,
}

impl ForwardContext {
    /// No adapter active, evaluation mode: the model computes exactly its original function.
    pub fn base() -> Self {
        Self::default()
    }

    /// The active setup, composed at every slot that holds one of its adapters.
    pub fn with_setup(setup: Option<Arc<AdapterSetup>>, train: bool) -> Self {
        ForwardContext { setup, train, ..Default::default() }
    }

    /// Keep the autograd graph through adapter outputs (the model has trained variables).
    pub fn with_grad(mut self, grad: bool) -> Self {
        self.grad = grad;
        self
    }

    /// A slot's output as the rest of the model should see it: with its graph while variables
    /// are trained, detached otherwise. An output computed from adapter variables is tracked,
    /// and a tracked tensor sends every later op of the model down its gradient-ready path;
    /// detached, inference keeps the fused kernels.
    pub fn output(&self, t: Tensor) -> Tensor {
        if self.grad {
            t
        } else {
            t.detach()
        }
    }

    /// An adapter parameter as this forward uses it: the variable itself while variables are
    /// trained, a detached view of it otherwise (a variable is always tracked, and a tracked
    /// operand sends the ops it enters down candle's general, gradient-ready paths instead of
    /// the inference kernels).
    ///
    /// ```
    /// let var = candle_core::Var::ones(3, candle_core::DType::F32, &candle_core::Device::Cpu)?;
    /// let ctx = adapters_runtime::ForwardContext::default();
    /// assert!(!ctx.param(&var).track_op()); // inference: detached
    /// assert!(ctx.with_grad(true).param(&var).track_op());
    /// # Ok::<(), candle_core::Error>(())
    /// ```
    pub fn param(&self, var: &candle_core::Var) -> Tensor {
        if self.grad {
            var.as_tensor().clone()
        } else {
            var.as_detached_tensor()
        }
    }

    /// Dropout masks come from `rng` (shared, so consecutive forwards continue one stream).
    pub fn with_dropout_rng(mut self, rng: Arc<Mutex<Rng>>) -> Self {
        self.dropout_rng = Some(rng);
        self
    }

    /// Collect the AdapterFusion attention scores of this forward into `sink`.
    pub fn with_fusion_attentions(mut self, sink: Arc<Mutex<Vec<FusionAttention>>>) -> Self {
        self.fusion_attentions = Some(sink);
        self
    }

    /// Records one fusion layer's attention, if this forward collects them.
    pub fn record_fusion_attention(&self, attention: FusionAttention) {
        if let Some(sink) = &self.fusion_attentions {
            if let Ok(mut v) = sink.lock() {
                v.push(attention);
            }
        }
    }

    /// AdapterDrop: no adapter runs in these layers.
    pub fn with_skip_layers(mut self, layers: Option<Arc<[usize]>>) -> Self {
        self.skip_layers = layers;
        self
    }

    /// The prefix states of this forward (adapter -> location key -> prefixes).
    pub fn with_prefix_states(mut self, states: Option<Arc<crate::methods::prefix::PrefixStates>>) -> Self {
        self.prefix_states = states;
        self
    }

    /// `[n_layers * 2, batch, heads, prefix_length, head_dim]` of one adapter at one location.
    pub fn prefix_states(&self, adapter: &str, location: &str) -> Option<&candle_core::Tensor> {
        self.prefix_states.as_ref()?.get(adapter)?.get(location)
    }

    /// Where each row's real tokens are, read from the attention mask.
    pub fn with_sequence_rows(mut self, rows: Option<Arc<[(usize, usize)]>>) -> Self {
        self.sequence_rows = rows;
        self
    }

    /// `(offset, length)` of the real tokens of each row, when the forward recorded them.
    pub fn sequence_rows(&self) -> Option<&[(usize, usize)]> {
        self.sequence_rows.as_deref()
    }

    pub fn setup(&self) -> Option<&AdapterSetup> {
        self.setup.as_deref()
    }

    /// The setup a slot in layer `layer` runs: none where AdapterDrop skips the layer.
    pub fn setup_at(&self, layer: usize) -> Option<&AdapterSetup> {
        match &self.skip_layers {
            Some(skip) if skip.contains(&layer) => None,
            _ => self.setup(),
        }
    }

    /// Training mode: dropout on.
    pub fn train(&self) -> bool {
        self.train
    }

    /// The generator dropout draws from in training, if the model gave one.
    pub fn dropout_rng(&self) -> Option<&Arc<Mutex<Rng>>> {
        self.dropout_rng.as_ref()
    }
}
