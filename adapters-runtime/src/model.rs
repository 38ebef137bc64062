//! The model API, written once for every model: add, delete, activate, train, merge, save, load
//! and summarise adapters by walking the slots that the macros generated.

mod averaging;
mod fusion;
mod heads;
mod prefix;

pub use averaging::CombineStrategy;
pub use fusion::{FUSION_CONFIG_NAME, FUSION_WEIGHTS_PICKLE, FUSION_WEIGHTS_SAFE};
pub use heads::{HeadResult, ModelOutput};

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{Tensor, Var};

use crate::config::{AdapterConfig, AdapterFile};
use crate::context::ForwardContext;
use crate::error::{AdapterError, Result};
use crate::heads::{HeadSetup, PredictionHead};
use crate::methods::bottleneck::{BottleneckAdapter, SharedPhm};
use crate::methods::init::Rng;
use crate::methods::lora::{LoraModule, SharedVera};
use crate::methods::prefix::{PrefixGate, PrefixGroup};
use crate::methods::reft::ReftModule;
use crate::methods::NamedParam;
use crate::mixin::{AdaptableModel, AdapterMixin, BottleneckLocation, EncoderForward, SlotMut, SlotRef};
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
pub struct AdaptedModel<M> {
    model: M,
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

impl<M: AdaptableModel> AdaptedModel<M> {
    /// Wraps a loaded base model. `base_params` counts its parameters (for the summary);
    /// `root_prefix` is the prefix its weights were loaded under (`""` or `"bert"`), which adapter
    /// file names do not carry.
    pub fn new(model: M, base_params: usize, root_prefix: impl Into<String>) -> Self {
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
            base_vars: Vec::new(),
            dropout_rng: Arc::new(Mutex::new(Rng::new(DEFAULT_SEED))),
            skip_layers: None,
            prefixes: BTreeMap::new(),
            shared: BTreeMap::new(),
        };
        // Slots learn their layer index once, for AdapterDrop (prefix slots also their key).
        adapted.each_slot_mut(&mut |layer, slot| match slot {
            SlotMut::Bottleneck(_, s) => s.layer = layer,
            SlotMut::Lora(_, s) => s.layer = layer,
            SlotMut::Prefix(location, s) => {
                s.layer = layer;
                s.location = location;
            }
            SlotMut::Reft(s) => s.layer = layer,
        });
        adapted
    }

    /// Records the base weights as variables (a model loaded for full fine-tuning); see
    /// [`AdaptedModel::train_full`].
    pub fn with_base_vars(mut self, vars: Vec<(String, Var)>) -> Self {
        self.base_vars = vars;
        self
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
            if !self.heads.contains_key(n) {
                return Err(AdapterError::InvalidConfig(format!("no head named `{n}` in this model")));
            }
        }
        self.active_head = name.map(|n| HeadSetup::Single(n.to_string()));
        Ok(())
    }

    pub fn base(&self) -> &M {
        &self.model
    }

    pub fn adapter_names(&self) -> impl Iterator<Item = &str> {
        self.configs.keys().map(String::as_str)
    }

    pub fn adapter_config(&self, name: &str) -> Option<&AdapterConfig> {
        self.configs.get(name)
    }

    fn each_slot(&self, f: &mut dyn FnMut(usize, SlotRef<'_>)) {
        for (i, layer) in self.model.layers().into_iter().enumerate() {
            layer.for_each_slot(&mut |slot| f(i, slot));
        }
    }

    fn each_slot_mut(&mut self, f: &mut dyn FnMut(usize, SlotMut<'_>)) {
        for (i, layer) in self.model.layers_mut().into_iter().enumerate() {
            layer.for_each_slot_mut(&mut |slot| f(i, slot));
        }
    }

    /// Adds a new adapter (not active until `set_active_adapters` or `train_adapter`).
    ///
    /// ```no_run
    /// # fn demo<M: adapters_runtime::AdaptableModel>(model: &mut adapters_runtime::AdaptedModel<M>) -> adapters_runtime::Result<()> {
    /// use adapters_runtime::AdapterConfig;
    /// model.add_adapter("sst2", AdapterConfig::parse("seq_bn[reduction_factor=16]")?)?;
    /// model.set_active_adapters("sst2")?;
    /// # Ok(()) }
    /// ```
    pub fn add_adapter(&mut self, name: &str, config: AdapterConfig) -> Result<()> {
        if config.prompt_tuning().is_some_and(|c| c.prompt_init == "from_string") {
            return Err(AdapterError::InvalidConfig(format!(
                "adapter `{name}`: prompt_init \"from_string\" needs the token ids of prompt_init_text; use add_prompt_adapter_from_ids (the CLI tokenizes the text for you)"
            )));
        }
        self.add_adapter_with(name, config, None)
    }

    /// Adds an adapter whose prompt (prompt tuning with `prompt_init = "from_string"`) starts from
    /// the input embeddings of `prompt_ids`, the tokenized `prompt_init_text`; the ids are
    /// repeated or cut to the prompt length, as Python does.
    ///
    /// ```no_run
    /// # fn demo<M: adapters_runtime::AdaptableModel>(model: &mut adapters_runtime::AdaptedModel<M>) -> adapters_runtime::Result<()> {
    /// use adapters_runtime::AdapterConfig;
    /// let config = AdapterConfig::parse("prompt_tuning[prompt_length=8, prompt_init='from_string', prompt_init_text='classify the sentiment']")?;
    /// // [CLS] classify the sentiment [SEP], as the model's tokenizer gives them.
    /// model.add_prompt_adapter_from_ids("sst2", config, &[101, 26268, 1996, 15792, 102])?;
    /// # Ok(()) }
    /// ```
    pub fn add_prompt_adapter_from_ids(&mut self, name: &str, config: AdapterConfig, prompt_ids: &[u32]) -> Result<()> {
        self.add_adapter_with(name, config, Some(prompt_ids))
    }

    /// `add_adapter`; `prompt_ids` initialise a `from_string` prompt (without them, as when
    /// loading weights, it starts random).
    pub(crate) fn add_adapter_with(&mut self, name: &str, config: AdapterConfig, prompt_ids: Option<&[u32]>) -> Result<()> {
        if self.configs.contains_key(name) {
            return Err(AdapterError::AdapterExists(name.into()));
        }
        if name.is_empty() || name.contains(['.', ',', '[', ']']) {
            return Err(AdapterError::InvalidConfig(format!("adapter name `{name}` may not be empty or contain `.`, `,`, `[` or `]`")));
        }
        config.validate()?;
        // Build every module first, then insert: a failure leaves the model untouched.
        let mut rng = Rng::from_name(name, 0);
        let mut shared_params = Vec::new();
        let phm = match config.bottleneck() {
            Some(c) if c.phm_layer => {
                let hidden = self.model.dims().hidden_size;
                // Only a shared W needs the bottleneck size (validation requires one factor then).
                let down = if c.shared_W_phm == Some(true) { bottleneck_size(hidden, c.reduction_factor.for_layer(0)?) } else { 0 };
                SharedPhm::new(c, hidden, down, &mut shared_params, &mut rng)?
            }
            _ => SharedPhm::default(),
        };
        let vera = self.shared_vera(&config, &mut shared_params, &mut rng)?;
        let shared = SharedModules { phm, vera };
        let mut planned: Vec<Option<Planned>> = Vec::new();
        let mut failure = None;
        self.each_slot(&mut |layer, slot| {
            if failure.is_some() {
                return;
            }
            match plan_module(&config, layer, &slot, &shared, &mut rng) {
                Ok(p) => planned.push(p),
                Err(e) => failure = Some(e),
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        let group = self.plan_prefix_group(&config, &planned, &mut rng)?;
        let prompt = self.plan_prompt(name, &config, prompt_ids, &mut rng)?;
        let invertible = self.plan_invertible(name, &config, &mut rng)?;
        if planned.iter().all(Option::is_none) && group.is_none() && prompt.is_none() && invertible.is_none() {
            return Err(AdapterError::NothingToAdd {
                adapter: name.into(),
                method: config.method_name().into(),
                reason: "no slot of this model matches the config's locations and layers".into(),
            });
        }
        let mut planned = planned.into_iter();
        let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
        self.each_slot_mut(&mut |_, slot| match (planned.next().flatten(), slot) {
            (Some(Planned::Bottleneck(m)), SlotMut::Bottleneck(_, s)) => {
                s.adapters.insert(name.to_string(), m);
            }
            (Some(Planned::Lora(m)), SlotMut::Lora(_, s)) => {
                s.loras.insert(name.to_string(), m);
            }
            (Some(Planned::Reft(m)), SlotMut::Reft(s)) => {
                s.refts.insert(name.to_string(), m);
            }
            (Some(Planned::Prefix(gate)), SlotMut::Prefix(location, s)) => {
                let index = counts.entry(location).or_insert(0);
                s.prefixes.insert(name.to_string(), *index);
                *index += 1;
                if let Some(gate) = gate {
                    s.gates.insert(name.to_string(), gate);
                }
            }
            _ => {}
        });
        if let Some(group) = group {
            self.prefixes.insert(name.to_string(), group);
        }
        if !shared_params.is_empty() {
            self.shared.insert(name.to_string(), shared_params);
        }
        if let (Some(prompt), Some(slot)) = (prompt, self.model.embedding_slot_mut()) {
            slot.prompts.insert(name.to_string(), prompt);
        }
        if let (Some(invertible), Some(slot)) = (invertible, self.model.embedding_slot_mut()) {
            slot.invertibles.insert(name.to_string(), invertible);
        }
        self.configs.insert(name.to_string(), config);
        Ok(())
    }

    /// Removes an adapter from every slot and from the active setup.
    pub fn delete_adapter(&mut self, name: &str) -> Result<()> {
        if self.configs.remove(name).is_none() {
            return Err(AdapterError::NoSuchAdapter(name.into()));
        }
        self.each_slot_mut(&mut |_, slot| match slot {
            SlotMut::Bottleneck(_, s) => {
                s.adapters.remove(name);
            }
            SlotMut::Lora(_, s) => {
                if s.merged() == Some(name) {
                    s.reset();
                }
                s.loras.remove(name);
            }
            SlotMut::Prefix(_, s) => {
                s.prefixes.remove(name);
                s.gates.remove(name);
            }
            SlotMut::Reft(s) => {
                s.refts.remove(name);
            }
        });
        self.prefixes.remove(name);
        self.shared.remove(name);
        if let Some(slot) = self.model.embedding_slot_mut() {
            slot.prompts.remove(name);
            slot.invertibles.remove(name);
        }
        if self.active.as_ref().is_some_and(|a| a.flatten().contains(&name)) {
            self.deactivate_adapters();
        }
        // A fusion layer over a deleted adapter cannot run any more.
        let stale: Vec<String> = self.fusions.iter().filter(|(_, (_, m))| m.iter().any(|x| x == name)).map(|(n, _)| n.clone()).collect();
        for fusion in stale {
            self.delete_adapter_fusion(&fusion)?;
        }
        Ok(())
    }

    /// Activates a setup (`"a"`, `AdapterSetup::stack(["a", "b"])`, or a parsed repr). The
    /// setup must follow the Python library's nesting rules, name only adapters of this model,
    /// and use blocks their methods support; the error names the rule that is broken.
    ///
    /// ```no_run
    /// # fn demo<M: adapters_runtime::AdaptableModel>(model: &mut adapters_runtime::AdaptedModel<M>) -> adapters_runtime::Result<()> {
    /// use adapters_runtime::AdapterSetup;
    /// model.set_active_adapters(AdapterSetup::parse("Stack[lang, Parallel[task_a, task_b]]")?)?;
    /// # Ok(()) }
    /// ```
    pub fn set_active_adapters(&mut self, setup: impl Into<AdapterSetup>) -> Result<()> {
        self.set_active_adapters_skipping(setup, None)
    }

    /// [`AdaptedModel::set_active_adapters`] with AdapterDrop: no adapter runs in the layers
    /// `skip_layers` (Python's `set_active_adapters(setup, skip_layers=[...])`; each call sets
    /// them anew).
    pub fn set_active_adapters_skipping(&mut self, setup: impl Into<AdapterSetup>, skip_layers: Option<Vec<usize>>) -> Result<()> {
        let setup = setup.into();
        let layers = self.model.dims().num_hidden_layers;
        if let Some(bad) = skip_layers.iter().flatten().find(|l| **l >= layers) {
            return Err(AdapterError::Setup { setup: setup.to_string(), reason: format!("skip_layers names layer {bad}; this model has layers 0..{layers}") });
        }
        for name in setup.flatten() {
            if !self.configs.contains_key(name) {
                return Err(AdapterError::Setup { setup: setup.to_string(), reason: format!("no adapter named `{name}` in this model") });
            }
        }
        setup.validate()?;
        self.check_method_support(&setup, &setup)?;
        // Python activates the heads the setup ends in, if the model has them.
        if let Some(heads) = HeadSetup::from_setup(&setup).filter(|h| h.names().iter().all(|n| self.heads.contains_key(*n))) {
            self.active_head = Some(heads);
        }
        self.active = Some(Arc::new(setup));
        self.skip_layers = skip_layers.map(Arc::from);
        Ok(())
    }

    /// Per-method composition support: bottleneck adapters take every block; LoRA-family
    /// adapters take Stack, Parallel, BatchSplit and Average (Python's `supported_compositions`).
    fn check_method_support(&self, whole: &AdapterSetup, setup: &AdapterSetup) -> Result<()> {
        match setup {
            AdapterSetup::Fuse { children, .. } => {
                let name = setup.fusion_name().unwrap_or_default();
                if !self.fusions.contains_key(&name) {
                    return Err(AdapterError::Setup {
                        setup: whole.to_string(),
                        reason: format!("no fusion layer named `{name}`; add it with add_adapter_fusion or load it with load_adapter_fusion"),
                    });
                }
                if let Some(lora) = children.iter().flat_map(|c| c.flatten()).find(|n| self.configs.get(*n).is_some_and(|c| c.lora().is_some())) {
                    return Err(AdapterError::Setup {
                        setup: whole.to_string(),
                        reason: format!("`{lora}` is a LoRA-family adapter; AdapterFusion fuses bottleneck adapters"),
                    });
                }
            }
            AdapterSetup::Split { .. } => {
                if let Some(lora) = setup.flatten().into_iter().find(|n| self.configs.get(*n).is_some_and(|c| c.lora().is_some())) {
                    return Err(AdapterError::Setup {
                        setup: whole.to_string(),
                        reason: format!("`{lora}` is a LoRA-family adapter, which composes with Stack, Parallel, BatchSplit and Average, not Split"),
                    });
                }
            }
            _ => {}
        }
        if matches!(setup, AdapterSetup::Fuse { .. } | AdapterSetup::Split { .. } | AdapterSetup::Average { .. }) {
            if let Some(prefix) = setup.flatten().into_iter().find(|n| self.prefixes.contains_key(*n)) {
                return Err(AdapterError::Setup {
                    setup: whole.to_string(),
                    reason: format!("`{prefix}` has prefix tuning, which composes with Stack, Parallel and BatchSplit, not {}", setup.kind().name()),
                });
            }
        }
        for child in setup.children() {
            self.check_method_support(whole, child)?;
        }
        Ok(())
    }

    /// Deactivates all adapters: the model computes its original function.
    pub fn deactivate_adapters(&mut self) {
        self.active = None;
    }

    /// Writes the active setup and heads as Python's `save_adapter_setup` does
    /// (`DIR/adapter_setup.json`: `adapter_setup`, `head_setup`, `version`).
    pub fn save_adapter_setup(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        let setup = self.active.as_ref().ok_or_else(|| AdapterError::InvalidConfig("no adapter setup is active".into()))?;
        std::fs::create_dir_all(dir).map_err(|e| AdapterError::io(dir, e))?;
        let file = serde_json::json!({
            "adapter_setup": setup.to_json(),
            "head_setup": self.active_head.as_ref().map(HeadSetup::to_json),
            "version": format!("adapters.{PYTHON_ADAPTERS_VERSION}"),
        });
        let text = serde_json::to_string_pretty(&file).expect("JSON values always serialise");
        crate::io::write_atomic(&dir.join(ADAPTER_SETUP_NAME), text.as_bytes())
    }

    pub fn active_adapters(&self) -> Option<&AdapterSetup> {
        self.active.as_deref()
    }

    /// Activates `setup`, switches to training mode, and returns exactly the trainable variables:
    /// the parameters of the adapters in the setup, and of every prediction head (Python freezes
    /// only the base model). Base weights stay fixed.
    pub fn train_adapter(&mut self, setup: impl Into<AdapterSetup>) -> Result<Vec<Var>> {
        let setup = setup.into();
        self.set_active_adapters(setup.clone())?;
        self.training = true;
        let names: Vec<String> = setup.flatten().into_iter().map(String::from).collect();
        let mut vars = Vec::new();
        for name in &names {
            let frozen = self.frozen_params(name);
            vars.extend(self.named_params(name)?.into_iter().map(|(_, v)| v).filter(|v| !frozen.contains(&v.id())));
        }
        vars.extend(self.head_vars());
        Ok(vars)
    }

    /// Training mode (dropout on) or evaluation mode.
    pub fn set_training(&mut self, training: bool) {
        self.training = training;
    }

    pub fn is_training(&self) -> bool {
        self.training
    }

    /// Folds a LoRA-family adapter into the base weights. The forward then skips LoRA modules
    /// until `reset_adapter`.
    pub fn merge_adapter(&mut self, name: &str) -> Result<()> {
        match self.configs.get(name) {
            None => return Err(AdapterError::NoSuchAdapter(name.into())),
            Some(AdapterConfig::LoRA(_)) => {}
            Some(other) => {
                return Err(AdapterError::Unsupported {
                    adapter: name.into(),
                    operation: "merge_adapter".into(),
                    reason: format!("{} adapters cannot be merged; only LoRA, IA3 and DoRA can", other.method_name()),
                })
            }
        }
        let mut conflict = None;
        self.each_slot(&mut |_, slot| {
            if let SlotRef::Lora(_, s) = slot {
                if let Some(m) = s.merged().filter(|m| *m != name) {
                    conflict.get_or_insert_with(|| m.to_string());
                }
            }
        });
        if let Some(other) = conflict {
            return Err(AdapterError::Unsupported {
                adapter: name.into(),
                operation: "merge_adapter".into(),
                reason: format!("`{other}` is already merged; call reset_adapter first"),
            });
        }
        let mut failure = None;
        self.each_slot_mut(&mut |_, slot| {
            if let SlotMut::Lora(_, s) = slot {
                if let Err(e) = s.merge(name) {
                    failure.get_or_insert(e);
                }
            }
        });
        match failure {
            Some(reason) => {
                self.reset_adapter();
                Err(AdapterError::Unsupported { adapter: name.into(), operation: "merge_adapter".into(), reason })
            }
            None => Ok(()),
        }
    }

    /// Undoes `merge_adapter`, restoring the exact base weights.
    /// The current weight of every linear layer that takes LoRA-family modules, under its
    /// parameter name on the bare base model (`encoder.layer.0.attention.self.query.weight`).
    /// After `merge_adapter` these are the merged weights, as Python's `merge_adapter` leaves them
    /// in the module's `weight`.
    pub fn lora_linear_weights(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.each_slot(&mut |_, slot| {
            if let SlotRef::Lora(_, s) = slot {
                out.push((format!("{}.weight", self.strip_root(s.path())), s.weight().clone()));
            }
        });
        out
    }

    pub fn reset_adapter(&mut self) {
        self.each_slot_mut(&mut |_, slot| {
            if let SlotMut::Lora(_, s) = slot {
                s.reset();
            }
        });
    }

    fn strip_root<'p>(&self, path: &'p str) -> &'p str {
        if self.root_prefix.is_empty() {
            return path;
        }
        path.strip_prefix(&self.root_prefix).and_then(|p| p.strip_prefix('.')).unwrap_or(path)
    }

    /// Every parameter of an adapter under the name the Python library gives it on the bare
    /// base model (`encoder.layer.0.output.adapters.NAME.adapter_up.weight`).
    pub fn named_params(&self, name: &str) -> Result<Vec<(String, Var)>> {
        if !self.configs.contains_key(name) {
            return Err(AdapterError::NoSuchAdapter(name.into()));
        }
        Ok(self.params_named_as(name, name))
    }

    /// The parameters of adapter `name`, named as if the adapter were called `file_name`.
    fn params_named_as(&self, name: &str, file_name: &str) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        let mut push = |path: &str, group: &str, params: &[NamedParam]| {
            for p in params {
                out.push((format!("{}.{group}.{file_name}.{}", self.strip_root(path), p.name), p.var.clone()));
            }
        };
        self.each_slot(&mut |_, slot| match slot {
            SlotRef::Bottleneck(_, s) => {
                if let Some(a) = s.adapters.get(name) {
                    push(s.path(), "adapters", a.params());
                }
            }
            SlotRef::Lora(_, s) => {
                if let Some(m) = s.loras.get(name) {
                    push(s.path(), "loras", m.params());
                }
            }
            SlotRef::Prefix(_, s) => {
                if let Some(g) = s.gates.get(name) {
                    push(&format!("{}.prefix_tuning", s.path()), "prefix_gates", &g.params);
                }
            }
            SlotRef::Reft(s) => {
                if let Some(m) = s.refts.get(name) {
                    push(&format!("{}.reft_layer", s.path()), "refts", m.params());
                }
            }
        });
        if let Some(group) = self.prefixes.get(name) {
            for (location, module) in &group.modules {
                for p in module.params() {
                    out.push((format!("prefix_tuning.prefix_tunings.{file_name}.{location}.{}", p.name), p.var.clone()));
                }
            }
        }
        for p in self.shared.get(name).into_iter().flatten() {
            out.push((format!("shared_parameters.{file_name}.{}", p.name), p.var.clone()));
        }
        if let Some(prompt) = self.model.embedding_slot().and_then(|s| s.prompts.get(name)) {
            for p in prompt.params() {
                out.push((format!("prompt_tuning.prompt_tunings.{file_name}.{}", p.name), p.var.clone()));
            }
        }
        if let Some(invertible) = self.model.embedding_slot().and_then(|s| s.invertibles.get(name)) {
            for p in invertible.params() {
                out.push((format!("invertible_adapters.{file_name}.{}", p.name), p.var.clone()));
            }
        }
        out
    }

    /// VeRA's shared random pair, shaped after the first linear the config targets (as Python
    /// does), appended to `params` as buffers `lora_A`, `lora_B`.
    fn shared_vera(&self, config: &AdapterConfig, params: &mut Vec<NamedParam>, rng: &mut Rng) -> Result<Option<SharedVera>> {
        let Some(c) = config.lora().filter(|c| c.is_vera()) else { return Ok(None) };
        let mut dims = None;
        self.each_slot(&mut |layer, slot| {
            if let SlotRef::Lora(location, s) = slot {
                if dims.is_none() && c.targets(location) && !c.leave_out.contains(&layer) {
                    dims = Some(s.dims());
                }
            }
        });
        let Some((inp, out)) = dims else { return Ok(None) };
        // kaiming_uniform_(a = 0): U(-sqrt(6 / fan_in), sqrt(6 / fan_in)).
        let mut draw = |rows: usize, cols: usize| crate::methods::init::uniform(rng, &[rows, cols], (6.0 / cols as f32).sqrt());
        let a = NamedParam::buffer("lora_A", draw(c.r, inp)?)?;
        let b = NamedParam::buffer("lora_B", draw(out, c.r)?)?;
        let shared = SharedVera { a: a.var.clone(), b: b.var.clone() };
        params.push(a);
        params.push(b);
        Ok(Some(shared))
    }

    /// Buffers of an adapter (saved, never trained), by tensor id.
    fn frozen_params(&self, name: &str) -> Vec<candle_core::TensorId> {
        let mut out = Vec::new();
        let mut take = |params: &[NamedParam]| out.extend(params.iter().filter(|p| p.frozen).map(|p| p.var.id()));
        self.each_slot(&mut |_, slot| match slot {
            SlotRef::Reft(s) => {
                if let Some(m) = s.refts.get(name) {
                    take(m.params());
                }
            }
            SlotRef::Bottleneck(_, s) => {
                if let Some(a) = s.adapters.get(name) {
                    take(a.params());
                }
            }
            SlotRef::Lora(_, s) => {
                if let Some(m) = s.loras.get(name) {
                    take(m.params());
                }
            }
            _ => {}
        });
        if let Some(shared) = self.shared.get(name) {
            out.extend(shared.iter().filter(|p| p.frozen).map(|p| p.var.id()));
        }
        out
    }

    /// (alias, parameter) full names of the parameters the Python module registers twice.
    fn aliases(&self, name: &str, file_name: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let pool = self.prefixes.get(name);
        self.each_slot(&mut |_, slot| match slot {
            SlotRef::Bottleneck(_, s) => {
                if let Some(a) = s.adapters.get(name) {
                    let base = format!("{}.adapters.{file_name}", self.strip_root(s.path()));
                    out.extend(a.aliases().iter().map(|(alias, p)| (format!("{base}.{alias}"), format!("{base}.{p}"))));
                }
            }
            // Every attention module holding a prefix also registers the whole pool (`.bin` files
            // from Python carry these copies).
            SlotRef::Prefix(_, s) => {
                for (location, module) in pool.map(|g| &g.modules).into_iter().flatten() {
                    for p in module.params() {
                        let module = format!("prefix_tunings.{file_name}.{location}.{}", p.name);
                        out.push((format!("{}.prefix_tuning.pool.{module}", self.strip_root(s.path())), format!("prefix_tuning.{module}")));
                    }
                }
            }
            _ => {}
        });
        out
    }

    /// Writes `DIR/adapter_config.json` and `DIR/adapter.safetensors`, readable by the Python
    /// library's `load_adapter`; a head named like the adapter is saved beside it
    /// (`head_config.json`, `model_head.safetensors`), as Python's `with_head=True` does.
    pub fn save_adapter(&self, dir: impl AsRef<Path>, name: &str) -> Result<()> {
        let dir = dir.as_ref();
        let config = self.configs.get(name).ok_or_else(|| AdapterError::NoSuchAdapter(name.into()))?;
        std::fs::create_dir_all(dir).map_err(|e| AdapterError::io(dir, e))?;
        let mut tensors: HashMap<String, Tensor> = self.named_params(name)?.into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
        // Written under both names, as Python's state dict has them (separate copies, since
        // safetensors refuses shared storage).
        // (Prefix pool copies are left out: Python's own safetensors file has only the pool.)
        for (alias, original) in self.aliases(name, name).into_iter().filter(|(a, _)| !a.contains(".prefix_tuning.pool.")) {
            if let Some(t) = tensors.get(&original) {
                let copy = t.copy()?;
                tensors.insert(alias, copy);
            }
        }
        // Weights, config and head are written together: a failure on any leaves the folder's
        // previous files as they were.
        let mut batch = crate::io::FileBatch::new();
        batch.add_safetensors(&dir.join(ADAPTER_WEIGHTS_SAFE), &tensors)?;
        let mapping = M::MAPPING;
        AdapterFile {
            config: config.clone(),
            name: name.to_string(),
            hidden_size: Some(self.model.dims().hidden_size),
            model_type: Some(mapping.model_type.into()),
            model_class: Some(mapping.model_class.into()),
            model_name: None,
            version: format!("adapters.{PYTHON_ADAPTERS_VERSION}"),
            extra: direft_marker(config),
        }
        .stage(&mut batch, dir)?;
        if self.heads.contains_key(name) {
            self.stage_head(&mut batch, dir, name)?;
        }
        batch.commit()
    }

    /// Loads the adapter of a folder (not its head; see `load_adapter`). Either every tensor
    /// loads or nothing is added.
    pub(crate) fn load_adapter_only(&mut self, dir: impl AsRef<Path>, load_as: Option<&str>) -> Result<String> {
        let dir = dir.as_ref();
        let file = AdapterFile::read(dir)?;
        let weights_path = crate::io::find_weights(dir, ADAPTER_WEIGHTS_SAFE, ADAPTER_WEIGHTS_PICKLE)?;
        let weights = crate::io::read_weights(&weights_path)?;
        let name = load_as.unwrap_or(&file.name).to_string();
        let mut config = file.config.clone();
        apply_direft_marker(&mut config, &file.extra);
        // Files from versions before 1.1.0 ignored alpha; the Python library loads them with alpha = r.
        if let AdapterConfig::LoRA(c) = &mut config {
            if version_before(&file.version, (1, 1, 0)) {
                c.alpha = c.r as f64;
            }
        }
        if let (Some(h), dims) = (file.hidden_size, self.model.dims()) {
            if h != dims.hidden_size {
                return Err(AdapterError::ConfigKey {
                    file: dir.join(crate::config::CONFIG_NAME).display().to_string(),
                    key: "hidden_size".into(),
                    reason: format!("the adapter was saved for hidden size {h}, this model has {}", dims.hidden_size),
                });
            }
        }
        self.add_adapter_with(&name, config, None)?;
        match self.assign_weights(&name, &file.name, &weights, &weights_path) {
            Ok(()) => Ok(name),
            Err(e) => {
                self.delete_adapter(&name)?;
                Err(e)
            }
        }
    }

    fn assign_weights(&self, name: &str, file_name: &str, weights: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
        let origin = path.display().to_string();
        let expected: HashMap<String, Var> = self.params_named_as(name, file_name).into_iter().collect();
        let aliases: HashMap<String, String> = self.aliases(name, file_name).into_iter().collect();
        let candidates = |key: &str| -> Vec<String> {
            let mut keys = vec![key.to_string()];
            // Files saved from an AdapterModel carry the base model prefix (`bert.`).
            if let Some((_, rest)) = key.split_once('.') {
                keys.push(rest.to_string());
            }
            keys
        };
        let mut staged: Vec<(&Var, &Tensor)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (key, tensor) in weights {
            let found = candidates(key).into_iter().find_map(|k| expected.get_key_value(&k).map(|(k, v)| (k.clone(), v)));
            let Some((matched, var)) = found else {
                if candidates(key).iter().any(|k| aliases.contains_key(k)) {
                    // A second name of a parameter loaded under its first name.
                    continue;
                }
                return Err(AdapterError::UnexpectedTensor { file: origin, tensor: key.clone(), adapter: file_name.into() });
            };
            if var.dims() != tensor.dims() {
                return Err(AdapterError::ShapeMismatch { file: origin, tensor: key.clone(), expected: var.dims().to_vec(), found: tensor.dims().to_vec() });
            }
            seen.insert(matched);
            staged.push((var, tensor));
        }
        let mut missing: Vec<&String> = expected.keys().filter(|k| !seen.contains(*k)).collect();
        missing.sort();
        if let Some(tensor) = missing.first() {
            if tensor.starts_with("shared_parameters.") {
                // adapters 1.3.0 leaves these out when it saves from a bare model (its filter
                // wants a `.` before `shared_parameters`); loading them fresh would silently
                // change the adapter, so this is an error that says where they went.
                return Err(AdapterError::file(
                    &origin,
                    format!(
                        "tensor `{tensor}` is missing: the parameters shared by all layers (Compacter's PHM rule, VeRA's A and B) are not in this file. \
                         The Python library does not save them from a bare model (BertModel); save the adapter from an AdapterModel class \
                         (BertAdapterModel), or add the `shared_parameters.*` tensors to the file"
                    ),
                ));
            }
            return Err(AdapterError::MissingTensor { file: origin, tensor: (*tensor).clone() });
        }
        for (var, tensor) in staged {
            var.set(tensor)?;
        }
        Ok(())
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

    fn context(&self) -> ForwardContext {
        ForwardContext::with_setup(self.active.clone(), self.training).with_dropout_rng(self.dropout_rng.clone()).with_skip_layers(self.skip_layers.clone())
    }
}

impl<M: AdaptableModel + EncoderForward> AdaptedModel<M> {
    /// `last_hidden_state` with the active adapters: `[batch, seq, hidden]`, or
    /// `[channels * batch, seq, hidden]` under a Parallel block (rows grouped by channel, as
    /// Python returns them).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let (ids, mask) = self.replicate_for_parallel(input_ids, attention_mask)?;
        let ctx = self.forward_context(&mask)?;
        Ok(self.model.forward_with(&ids, &mask, &ctx)?)
    }

    /// A Parallel setup runs every channel on its own copy of the batch.
    pub(crate) fn replicate_for_parallel(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<(Tensor, Tensor)> {
        let channels = self.active.as_deref().map_or(1, AdapterSetup::parallel_channels);
        if channels <= 1 {
            return Ok((input_ids.clone(), attention_mask.clone()));
        }
        Ok((input_ids.repeat((channels, 1))?, attention_mask.repeat((channels, 1))?))
    }
}

/// Python's `int(hidden_size // reduction_factor)`, at least 1.
pub(crate) fn bottleneck_size(hidden: usize, reduction_factor: f64) -> usize {
    ((hidden as f64 / reduction_factor).floor() as usize).max(1)
}

/// DiReft differs from NoReft by a Python class attribute that `adapter_config.json` cannot hold
/// (Python reloads a saved DiReft as NoReft). This library writes a top-level marker, which
/// Python ignores, so that its own files reload as what was saved.
const DIREFT_MARKER: &str = "reft_subtract_projection";

fn direft_marker(config: &AdapterConfig) -> serde_json::Map<String, serde_json::Value> {
    let mut extra = serde_json::Map::new();
    if config.reft().is_some_and(|c| !c.subtract_projection) {
        extra.insert(DIREFT_MARKER.into(), serde_json::Value::Bool(false));
    }
    extra
}

fn apply_direft_marker(config: &mut AdapterConfig, extra: &serde_json::Map<String, serde_json::Value>) {
    if extra.get(DIREFT_MARKER) == Some(&serde_json::Value::Bool(false)) {
        match config {
            AdapterConfig::Reft(c) => c.subtract_projection = false,
            AdapterConfig::Union(members) => members.iter_mut().for_each(|m| apply_direft_marker(m, extra)),
            _ => {}
        }
    }
}

fn version_before(version: &str, (major, minor, patch): (u64, u64, u64)) -> bool {
    let mut parts = version.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty()).map(|p| p.parse::<u64>().unwrap_or(0));
    let v = (parts.next(), parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    match v {
        (Some(a), b, c) => (a, b, c) < (major, minor, patch),
        (None, _, _) => false,
    }
}

/// Parameters one adapter shares across its layers, created before its modules.
struct SharedModules {
    phm: SharedPhm,
    vera: Option<SharedVera>,
}

enum Planned {
    Bottleneck(BottleneckAdapter),
    Lora(LoraModule),
    /// A prefix at this slot, with its gate (UniPELT).
    Prefix(Option<PrefixGate>),
    Reft(ReftModule),
}

/// The module `config` (or the member of a union for this slot's family) puts on one slot.
fn plan_module(config: &AdapterConfig, layer: usize, slot: &SlotRef<'_>, shared: &SharedModules, rng: &mut Rng) -> Result<Option<Planned>> {
    for member in config.members() {
        if let Some(planned) = plan_member(member, layer, slot, shared, rng)? {
            return Ok(Some(planned));
        }
    }
    Ok(None)
}

fn plan_member(config: &AdapterConfig, layer: usize, slot: &SlotRef<'_>, shared: &SharedModules, rng: &mut Rng) -> Result<Option<Planned>> {
    if config.leave_out().contains(&layer) {
        return Ok(None);
    }
    Ok(match (config, slot) {
        (AdapterConfig::Reft(c), SlotRef::Reft(s)) => {
            if !c.layers.contains(layer) {
                return Ok(None);
            }
            Some(Planned::Reft(ReftModule::new(c, s.hidden_size(), rng)?))
        }
        (AdapterConfig::PrefixTuning(c), SlotRef::Prefix(location, s)) => {
            // Python matches the `encoder`/`cross` flags only for keys named that way.
            let wanted = if location.starts_with("encoder") {
                c.encoder_prefix
            } else if location.starts_with("cross") {
                c.cross_prefix
            } else {
                true
            };
            if !wanted {
                return Ok(None);
            }
            let gate = if c.use_gating {
                let (hidden, _, _) = s.dims();
                let outputs = if c.shared_gating { 1 } else { 2 };
                let bias = crate::methods::init::uniform(rng, &[outputs], 1.0 / (hidden as f32).sqrt())?;
                Some(PrefixGate::new(crate::methods::init::normal(rng, &[outputs, hidden], 0.02)?, bias)?)
            } else {
                None
            };
            Some(Planned::Prefix(gate))
        }
        (AdapterConfig::Bottleneck(c), SlotRef::Bottleneck(location, s)) => {
            let wanted = match location {
                BottleneckLocation::MhAdapter => c.mh_adapter,
                BottleneckLocation::OutputAdapter => c.output_adapter,
            };
            if !wanted {
                return Ok(None);
            }
            let hidden = s.hidden_size();
            // Python: int(hidden_size // reduction_factor), at least 1.
            let down = bottleneck_size(hidden, c.reduction_factor.for_layer(layer)?);
            Some(Planned::Bottleneck(BottleneckAdapter::new(c, hidden, down, &shared.phm, rng)?))
        }
        (AdapterConfig::LoRA(c), SlotRef::Lora(location, s)) => {
            if !c.targets(*location) {
                return Ok(None);
            }
            let (inp, out) = s.dims();
            Some(Planned::Lora(LoraModule::new(c, inp, out, s.weight(), shared.vera.as_ref(), rng)?))
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn versions_compare() {
        assert!(super::version_before("1.0.1", (1, 1, 0)));
        assert!(!super::version_before("1.3.0", (1, 1, 0)));
        assert!(!super::version_before("", (1, 1, 0)));
    }
}
