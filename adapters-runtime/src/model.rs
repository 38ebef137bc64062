//! The model API, written once for every model: add, delete, activate, train, merge, save, load
//! and summarise adapters by walking the slots that the macros generated.

mod activation;
mod averaging;
mod files;
mod fusion;
#[cfg(feature = "generate")]
mod generation;
mod heads;
mod language_model;
mod lifecycle;
mod merge;
mod peft;
mod prefix;

pub use averaging::CombineStrategy;
pub use fusion::{FUSION_CONFIG_NAME, FUSION_WEIGHTS_PICKLE, FUSION_WEIGHTS_SAFE};
#[cfg(feature = "generate")]
pub use generation::GenerateOptions;
pub use heads::{HeadResult, ModelOutput};
pub(crate) use lifecycle::SharedModules;
pub use peft::{is_peft_folder, peft_folder, PEFT_WEIGHTS_PICKLE, PEFT_WEIGHTS_SAFE, SUPPORTED_PEFT_TYPES};

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use candle_core::{Tensor, Var};

use crate::body::BaseModel;
use crate::config::AdapterConfig;
use crate::context::ForwardContext;
use crate::error::{AdapterError, Result};
use crate::heads::{HeadSetup, PredictionHead};
use crate::methods::init::{Init, Placement, Rng};
use crate::methods::prefix::PrefixGroup;
use crate::methods::NamedParam;
use crate::mixin::{SlotMut, SlotRef};
use crate::model_io::{ModelInputs, ModelOutputs};
use crate::setup::AdapterSetup;

/// Weight file names of a saved adapter, as the Python library names them.
pub const ADAPTER_WEIGHTS_SAFE: &str = "adapter.safetensors";
pub const ADAPTER_WEIGHTS_PICKLE: &str = "pytorch_adapter.bin";
/// The `adapters` version whose behaviour and files this runtime follows.
pub const PYTHON_ADAPTERS_VERSION: &str = "1.3.0";
/// The file `save_adapter_setup` writes.
pub const ADAPTER_SETUP_NAME: &str = "adapter_setup.json";
/// The dropout seed of a new model (`set_seed` changes it).
pub const DEFAULT_SEED: u64 = 42;

/// A base model plus its adapters and prediction heads. `M` is a model annotated with
/// `#[with_adapters]`; `#[with_adapters]` also names this type after Python's AdapterModel class
/// (`BertAdapterModel = AdaptedModel<BertModel>`).
pub struct AdaptedModel<M: ?Sized> {
    configs: BTreeMap<String, AdapterConfig>,
    /// The active setup, shared with every forward's context.
    active: Option<Arc<AdapterSetup>>,
    training: bool,
    base_params: usize,
    root_prefix: String,
    heads: BTreeMap<String, PredictionHead>,
    active_head: Option<HeadSetup>,
    /// Fusion layers by name (`a,b`): their config and the fused adapters.
    fusions: BTreeMap<String, (crate::config::FusionConfig, Vec<String>)>,
    /// The base model's device and dtype: where new and loaded adapters, heads and fusion
    /// layers are put.
    placement: Placement,
    /// Whether forwards keep the autograd graph through adapters (set by the `train_*` calls).
    grad_enabled: bool,
    /// Base weights as variables, when the model was loaded for full fine-tuning.
    base_vars: Vec<(String, Var)>,
    dropout_rng: Arc<Mutex<Rng>>,
    /// AdapterDrop: layers where the active adapters do not run.
    skip_layers: Option<Arc<[usize]>>,
    /// Prefix tuning modules by adapter (Python's `PrefixTuningPool`), named
    /// `prefix_tuning.prefix_tunings.NAME.<location>.*`.
    prefixes: BTreeMap<String, PrefixGroup>,
    /// Parameters shared by every layer of an adapter (Compacter's PHM rule and W), named
    /// `shared_parameters.NAME.*`.
    shared: BTreeMap<String, Vec<NamedParam>>,
    /// The base model; last, so that `Box<AdaptedModel<BertModel>>` coerces to
    /// `Box<AdaptedModel<dyn BaseModel>>`.
    model: M,
}

/// One row of [`AdaptedModel::adapter_summary`].
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterSummaryRow {
    pub name: String,
    pub method: String,
    pub parameters: usize,
    pub percent_of_base: f64,
    pub active: bool,
    pub trainable: bool,
}

/// The rows of a summary, printed as the Python library's table.
pub struct AdapterSummary(pub Vec<AdapterSummaryRow>);

impl fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{:<20}{:<14}{:>12}{:>10}{:>8}{:>10}", "Name", "Architecture", "#Param", "%Param", "Active", "Train")?;
        for r in &self.0 {
            writeln!(f, "{:<20}{:<14}{:>12}{:>10.3}{:>8}{:>10}", r.name, r.method, r.parameters, r.percent_of_base, r.active, r.trainable)?;
        }
        Ok(())
    }
}

impl<M: BaseModel> AdaptedModel<M> {
    /// Wraps a loaded base model. `base_params` counts its parameters (for the summary);
    /// `root_prefix` is the prefix its weights were loaded under (`""` or `"bert"`), which adapter
    /// file names do not carry; `placement` is the device and dtype the base was loaded to.
    pub fn new(model: M, base_params: usize, root_prefix: impl Into<String>, placement: Placement) -> Self {
        let mut adapted = AdaptedModel {
            model,
            configs: BTreeMap::new(),
            active: None,
            training: false,
            base_params,
            root_prefix: root_prefix.into(),
            heads: BTreeMap::new(),
            active_head: None,
            fusions: BTreeMap::new(),
            placement,
            grad_enabled: false,
            base_vars: Vec::new(),
            dropout_rng: Arc::new(Mutex::new(Rng::new(DEFAULT_SEED))),
            skip_layers: None,
            prefixes: BTreeMap::new(),
            shared: BTreeMap::new(),
        };
        adapted.model.configure_slots();
        // Slots learn their layer index once, for AdapterDrop (prefix slots also their key).
        adapted.each_slot_mut(&mut |layer, mut slot| {
            slot.adapter_slot().set_layer(layer);
            if let SlotMut::Prefix(location, s) = slot {
                s.set_location(location);
            }
        });
        adapted
    }

    /// Records the base weights as variables (a model loaded for full fine-tuning); see
    /// [`AdaptedModel::train_full`].
    pub fn with_base_vars(mut self, vars: Vec<(String, Var)>) -> Self {
        self.base_vars = vars;
        self
    }

    /// This model with the architecture chosen at run time (what `load_model` returns).
    pub fn into_dyn(self: Box<Self>) -> Box<AdaptedModel<dyn BaseModel>>
    where
        M: 'static,
    {
        self
    }
}

impl<M: BaseModel + ?Sized> AdaptedModel<M> {
    /// The device and dtype of the base model, which every adapter, head and fusion layer shares.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The initialiser of a new module named `name`: seeded from the name (and `salt`, one per
    /// kind of module), placed with the base model.
    pub(crate) fn init_for(&self, name: &str, salt: u64) -> Init {
        Init::new(Rng::from_name(name, salt), self.placement.clone())
    }

    /// Reseeds the generator dropout draws from in training.
    pub fn set_seed(&mut self, seed: u64) {
        self.dropout_rng = Arc::new(Mutex::new(Rng::new(seed)));
    }

    /// Full fine-tuning: training mode, no adapter active, and every base weight plus every head
    /// returned as trainable. Needs a model loaded with its weights as variables.
    pub fn train_full(&mut self) -> Result<Vec<Var>> {
        if self.base_vars.is_empty() {
            return Err(AdapterError::Unsupported {
                adapter: "(base model)".into(),
                operation: "full fine-tuning".into(),
                reason: "the base weights were loaded as constants; load the model as trainable".into(),
            });
        }
        self.deactivate_adapters();
        self.training = true;
        self.grad_enabled = true;
        let mut vars: Vec<Var> = self.base_vars.iter().map(|(_, v)| v.clone()).collect();
        vars.extend(self.head_vars());
        Ok(vars)
    }

    /// Every head's variables: trainable alongside adapters, fusion layers or the full model
    /// (Python freezes only the base model).
    fn head_vars(&self) -> impl Iterator<Item = Var> + '_ {
        self.heads.values().flat_map(|h| h.params().iter().map(|p| p.var.clone()))
    }

    /// Base weights by their checkpoint names (empty unless loaded as trainable).
    pub fn base_vars(&self) -> &[(String, Var)] {
        &self.base_vars
    }

    pub fn head_names(&self) -> impl Iterator<Item = &str> {
        self.heads.keys().map(String::as_str)
    }

    pub fn head(&self, name: &str) -> Option<&PredictionHead> {
        self.heads.get(name)
    }

    /// The head the forward runs, when it runs one: the last added, or the one named after the
    /// active adapter. (Parallel and BatchSplit setups run several: see `active_heads`.)
    pub fn active_head(&self) -> Option<&str> {
        match &self.active_head {
            Some(HeadSetup::Single(name)) => Some(name),
            _ => None,
        }
    }

    /// The active head setup: one head, or one per Parallel channel or BatchSplit part.
    pub fn active_heads(&self) -> Option<&HeadSetup> {
        self.active_head.as_ref()
    }

    /// Selects the head the forward runs (`None`: none).
    pub fn set_active_head(&mut self, name: Option<&str>) -> Result<()> {
        if let Some(n) = name {
            self.head_named(n)?;
        }
        self.active_head = name.map(|n| HeadSetup::Single(n.to_string()));
        Ok(())
    }

    pub fn base(&self) -> &M {
        &self.model
    }

    /// The model's mapping entry (architecture, layer type, mixin, config keys).
    pub fn mapping(&self) -> crate::mixin::ModelMapping {
        self.model.mapping()
    }

    pub fn adapter_names(&self) -> impl Iterator<Item = &str> {
        self.configs.keys().map(String::as_str)
    }

    pub fn adapter_config(&self, name: &str) -> Option<&AdapterConfig> {
        self.configs.get(name)
    }

    /// The layers adapters attach to: the `layers` collection the model marks (an
    /// encoder-decoder's both stacks). A model that applies one physical layer several times
    /// (ALBERT) has fewer of these than its config's `num_hidden_layers`; layer indices
    /// (`leave_out`, `skip_layers`) count these (a model made of submodels numbers each
    /// submodel's from 0, and an index is refused only past all of them).
    pub fn adapter_layer_count(&self) -> usize {
        self.model.layer_count()
    }

    fn each_slot(&self, f: &mut dyn FnMut(usize, SlotRef<'_>)) {
        self.model.for_each_slot(f)
    }

    fn each_slot_mut(&mut self, f: &mut dyn FnMut(usize, SlotMut<'_>)) {
        self.model.for_each_slot_mut(f)
    }

    fn strip_root<'p>(&self, path: &'p str) -> &'p str {
        if self.root_prefix.is_empty() {
            return path;
        }
        path.strip_prefix(&self.root_prefix).and_then(|p| p.strip_prefix('.')).unwrap_or(path)
    }

    /// Name, method, parameter count, share of the base model, active and trainable, per adapter.
    pub fn adapter_summary(&self) -> AdapterSummary {
        let active: Vec<&str> = self.active.as_ref().map(|a| a.flatten()).unwrap_or_default();
        let rows = self
            .configs
            .iter()
            .map(|(name, config)| {
                let frozen = self.frozen_params(name);
                let parameters: usize = self.params_named_as(name, name).iter().filter(|(_, v)| !frozen.contains(&v.id())).map(|(_, v)| v.elem_count()).sum();
                let is_active = active.contains(&name.as_str());
                AdapterSummaryRow {
                    name: name.clone(),
                    method: config.method_name().into(),
                    parameters,
                    percent_of_base: 100.0 * parameters as f64 / self.base_params.max(1) as f64,
                    active: is_active,
                    trainable: is_active && self.training,
                }
            })
            .collect();
        AdapterSummary(rows)
    }

    /// The number of parameters of the base model.
    pub fn base_parameter_count(&self) -> usize {
        self.base_params
    }

    /// Whether forwards keep the autograd graph through the adapters: on once `train_adapter`,
    /// `train_adapter_fusion` or `train_full` handed out variables, off for a model that only
    /// runs (then adapter outputs are detached, and the base keeps its fused inference kernels).
    pub fn set_grad_enabled(&mut self, enabled: bool) {
        self.grad_enabled = enabled;
    }

    pub fn grad_enabled(&self) -> bool {
        self.grad_enabled
    }

    fn context(&self) -> ForwardContext {
        ForwardContext::with_setup(self.active.clone(), self.training)
            .with_grad(self.grad_enabled || !self.base_vars.is_empty())
            .with_dropout_rng(self.dropout_rng.clone())
            .with_skip_layers(self.skip_layers.clone())
    }
}

impl<M: BaseModel + ?Sized> AdaptedModel<M> {
    /// `last_hidden_state` with the active adapters: `[batch, seq, hidden]`, or
    /// `[channels * batch, seq, hidden]` under a Parallel block (rows grouped by channel, as
    /// Python returns them).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        Ok(self.forward_inputs(&ModelInputs::text(input_ids.clone(), attention_mask.clone()))?.last_hidden_state)
    }

    /// One pass with the active adapters on any inputs the model takes (position ids, a causal
    /// mask, ...); an input it does not take is refused with an error naming it.
    pub fn forward_inputs(&self, inputs: &ModelInputs<'_>) -> Result<ModelOutputs> {
        let (inputs, ctx) = self.prepare(inputs)?;
        Ok(self.model.forward_with(&inputs, &ctx)?)
    }

    /// The inputs as the model runs them (checked against what it takes, on its device, one
    /// copy of the batch per channel under a Parallel setup) and the pass's context.
    pub(crate) fn prepare<'a>(&self, inputs: &ModelInputs<'a>) -> Result<(ModelInputs<'a>, ForwardContext)> {
        let (accepts, requires) = self.model.accepts();
        inputs.check(self.model.mapping().model_class, accepts, requires)?;
        let channels = self.active.as_deref().map_or(1, AdapterSetup::parallel_channels);
        let placed = inputs.placed(&self.placement.device, channels)?;
        let ctx = self.forward_context(&self.model.attention_mask(&placed)?)?;
        Ok((placed, ctx))
    }
}

/// Python's `int(hidden_size // reduction_factor)`, at least 1.
pub(crate) fn bottleneck_size(hidden: usize, reduction_factor: f64) -> usize {
    ((hidden as f64 / reduction_factor).floor() as usize).max(1)
}
