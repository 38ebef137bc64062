//! Adding and deleting adapters: the modules each method puts on each slot, and the parameters
//! an adapter shares across its layers.

use crate::body::BaseModel;
use crate::config::AdapterConfig;
use crate::error::{AdapterError, Result};
use crate::methods::bottleneck::SharedPhm;
use crate::methods::init::Init;
use crate::methods::lora::SharedVera;
use crate::methods::NamedParam;
use crate::mixin::SlotRef;
use crate::slot::{Planned, Planning};

use super::{bottleneck_size, AdaptedModel};

impl<M: BaseModel + ?Sized> AdaptedModel<M> {
    /// Adds a new adapter (not active until `set_active_adapters` or `train_adapter`).
    ///
    /// ```no_run
    /// # fn demo(model: &mut adapters_runtime::DynAdaptedModel) -> adapters_runtime::Result<()> {
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
    /// # fn demo(model: &mut adapters_runtime::DynAdaptedModel) -> adapters_runtime::Result<()> {
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
    /// `leave_out` and ReFT `layers` name layers this model has (Python ignores an index past the
    /// last layer, which hides a config meant for a deeper model).
    fn check_layer_indices(&self, name: &str, config: &AdapterConfig) -> Result<()> {
        // `cross_adapter` on a model without cross-attention (Python adds nothing there,
        // silently). A model with cross-attention but no `cross_adapter` location (BERT as a
        // decoder) takes the config and adds nothing there, as Python does.
        let mapping = self.model.mapping();
        for member in config.members() {
            if let AdapterConfig::Bottleneck(c) = member {
                if c.cross_adapter && !mapping.has_cross_attention() {
                    return Err(AdapterError::Unsupported {
                        adapter: name.into(),
                        operation: "cross_adapter".into(),
                        reason: format!("{} has no cross-attention (only encoder-decoders do); set cross_adapter to false", mapping.model_class),
                    });
                }
            }
        }
        let layers = self.adapter_layer_count();
        for member in config.members() {
            let (key, indices): (&str, &[usize]) = match member.reft() {
                Some(reft) => match &reft.layers {
                    crate::config::ReftLayers::Some(list) => ("layers", list),
                    crate::config::ReftLayers::All(_) => continue,
                },
                None => ("leave_out", member.leave_out()),
            };
            if let Some(bad) = indices.iter().find(|l| **l >= layers) {
                return Err(AdapterError::InvalidConfig(format!("adapter `{name}`: {key} names layer {bad}; this model has layers 0..{layers}")));
            }
        }
        Ok(())
    }

    pub(crate) fn add_adapter_with(&mut self, name: &str, config: AdapterConfig, prompt_ids: Option<&[u32]>) -> Result<()> {
        if self.configs.contains_key(name) {
            return Err(AdapterError::AdapterExists(name.into()));
        }
        if name.is_empty() || name.contains(['.', ',', '[', ']']) {
            return Err(AdapterError::InvalidConfig(format!("adapter name `{name}` may not be empty or contain `.`, `,`, `[` or `]`")));
        }
        config.validate()?;
        self.check_layer_indices(name, &config)?;
        // Build every module first, then insert: a failure leaves the model untouched.
        let mut init = self.init_for(name, 0);
        let mut shared_params = Vec::new();
        let phm = match config.bottleneck() {
            Some(c) if c.phm_layer => {
                let hidden = self.model.dims().hidden_size;
                // Only a shared W needs the bottleneck size (validation requires one factor then).
                let down = if c.shared_W_phm == Some(true) { bottleneck_size(hidden, c.reduction_factor.for_layer(0)?) } else { 0 };
                SharedPhm::new(c, hidden, down, &mut shared_params, &mut init)?
            }
            _ => SharedPhm::default(),
        };
        let vera = self.shared_vera(&config, &mut shared_params, &mut init)?;
        let shared = SharedModules { phm, vera };
        let mut planned: Vec<Option<Planned>> = Vec::new();
        let mut failure = None;
        let mut planning = Planning::new(&shared, &mut init);
        self.each_slot(&mut |layer, slot| {
            if failure.is_some() {
                return;
            }
            match slot.plan(&config, layer, &mut planning) {
                Ok(p) => planned.push(p),
                Err(e) => failure = Some(e),
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        let group = self.plan_prefix_group(&config, &planned, &mut init)?;
        let prompt = self.plan_prompt(name, &config, prompt_ids, &mut init)?;
        let invertible = self.plan_invertible(name, &config, &mut init)?;
        if planned.iter().all(Option::is_none) && group.is_none() && prompt.is_none() && invertible.is_none() {
            return Err(AdapterError::NothingToAdd {
                adapter: name.into(),
                method: config.method_name().into(),
                reason: "no slot of this model matches the config's locations and layers".into(),
            });
        }
        let mut planned = planned.into_iter();
        self.each_slot_mut(&mut |_, mut slot| {
            if let Some(module) = planned.next().flatten() {
                slot.adapter_slot().install(name, module);
            }
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
        self.each_slot_mut(&mut |_, mut slot| slot.adapter_slot().remove_adapter(name));
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

    /// VeRA's shared random pair, shaped after the first linear the config targets (as Python
    /// does), appended to `params` as buffers `lora_A`, `lora_B`.
    pub(super) fn shared_vera(&self, config: &AdapterConfig, params: &mut Vec<NamedParam>, init: &mut Init) -> Result<Option<SharedVera>> {
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
        let mut draw = |rows: usize, cols: usize| init.uniform(&[rows, cols], (6.0 / cols as f32).sqrt());
        let a = NamedParam::buffer("lora_A", draw(c.r, inp)?)?;
        let b = NamedParam::buffer("lora_B", draw(out, c.r)?)?;
        let shared = SharedVera { a: a.var.clone(), b: b.var.clone() };
        params.push(a);
        params.push(b);
        Ok(Some(shared))
    }
}

/// Parameters one adapter shares across its layers, created before its modules.
pub(crate) struct SharedModules {
    pub(crate) phm: SharedPhm,
    pub(crate) vera: Option<SharedVera>,
}
