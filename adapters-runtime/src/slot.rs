//! What every slot offers the model-level API, whatever its method family: planning a new
//! adapter's module here, inserting it, the adapters it holds, their parameters under the module
//! path Python names them by, removal and merging. The model walks slots through this trait; the
//! per-family arms below are a method family's registration.

use std::collections::BTreeMap;

use crate::config::{AdapterConfig, LoRAConfig};
use crate::error::Result;
use crate::methods::bottleneck::{BottleneckAdapter, BottleneckSlot};
use crate::methods::init::Init;
use crate::methods::lora::{LoRALinear, LoraModule};
use crate::methods::prefix::{PrefixGate, PrefixSlot};
use crate::methods::reft::{ReftModule, ReftSlot};
use crate::methods::NamedParam;
use crate::mixin::{BottleneckLocation, SlotMut, SlotRef};
use crate::model::SharedModules;

/// A module planned for one slot (opaque outside the runtime). Every module of a new adapter is
/// planned before any is inserted, so a failure leaves the model untouched.
pub struct Planned(pub(crate) PlannedModule);

pub(crate) enum PlannedModule {
    Bottleneck(BottleneckAdapter),
    Lora(LoraModule),
    /// A prefix at this slot, its index among the prefix slots of its location key (which rows
    /// of the pooled prefix it reads), and its gate (UniPELT).
    Prefix {
        index: usize,
        gate: Option<PrefixGate>,
    },
    Reft(ReftModule),
}

/// What planning one adapter carries from slot to slot.
pub(crate) struct Planning<'a> {
    shared: &'a SharedModules,
    init: &'a mut Init,
    /// Prefix slots planned so far, per location key.
    prefix_counts: BTreeMap<String, usize>,
}

impl<'a> Planning<'a> {
    pub(crate) fn new(shared: &'a SharedModules, init: &'a mut Init) -> Self {
        Planning { shared, init, prefix_counts: BTreeMap::new() }
    }
}

pub trait AdapterSlot {
    /// The parameters adapter `name` holds here, with the module path they hang under
    /// (`encoder.layer.0.output.adapters`; the adapter's name and the parameter's follow).
    fn adapter_params(&self, name: &str) -> Option<(String, &[NamedParam])>;
    /// Second names under which the Python module registers some of adapter `name`'s
    /// parameters here, as `(alias, parameter)` relative to the module path `adapter_params`
    /// gives (files from Python may carry either).
    fn param_aliases(&self, _name: &str) -> Vec<(String, String)> {
        Vec::new()
    }
    /// Removes adapter `name` from this slot (a merged LoRA module is unmerged first).
    fn remove_adapter(&mut self, name: &str);
    /// Records the index of the layer the slot sits in (AdapterDrop and per-layer setups).
    fn set_layer(&mut self, layer: usize);
    /// The adapter folded into the slot's weights, if any (only weight-merging methods do this).
    fn merged(&self) -> Option<&str> {
        None
    }
    /// Folds adapter `name` into the slot's weights; `Ok(false)` when it has nothing of it here
    /// or cannot hold merged weights, `Err` when the adapter cannot be merged.
    fn merge(&mut self, _name: &str) -> crate::error::Result<bool> {
        Ok(false)
    }
    /// Restores the weights from before any merge.
    fn unmerge(&mut self) {}
    /// Inserts the module planned for this slot under `name`.
    fn install(&mut self, name: &str, planned: Planned);
}

impl AdapterSlot for BottleneckSlot {
    fn param_aliases(&self, name: &str) -> Vec<(String, String)> {
        self.adapters.get(name).map(|a| a.aliases().iter().map(|(alias, p)| (alias.to_string(), p.to_string())).collect()).unwrap_or_default()
    }
    fn install(&mut self, name: &str, planned: Planned) {
        if let Planned(PlannedModule::Bottleneck(module)) = planned {
            self.adapters.insert(name.to_string(), module);
        }
    }
    fn adapter_params(&self, name: &str) -> Option<(String, &[NamedParam])> {
        self.adapters.get(name).map(|a| (format!("{}.adapters", self.path()), a.params()))
    }
    fn remove_adapter(&mut self, name: &str) {
        self.adapters.remove(name);
    }
    fn set_layer(&mut self, layer: usize) {
        self.layer = layer;
    }
}

impl AdapterSlot for LoRALinear {
    fn install(&mut self, name: &str, planned: Planned) {
        if let Planned(PlannedModule::Lora(module)) = planned {
            self.loras.insert(name.to_string(), module);
        }
    }
    fn adapter_params(&self, name: &str) -> Option<(String, &[NamedParam])> {
        self.loras.get(name).map(|m| (format!("{}.loras", self.path()), m.params()))
    }
    fn remove_adapter(&mut self, name: &str) {
        if self.merged() == Some(name) {
            self.reset();
        }
        self.loras.remove(name);
    }
    fn set_layer(&mut self, layer: usize) {
        self.layer = layer;
    }
    fn merged(&self) -> Option<&str> {
        LoRALinear::merged(self)
    }
    fn merge(&mut self, name: &str) -> crate::error::Result<bool> {
        LoRALinear::merge(self, name)
    }
    fn unmerge(&mut self) {
        self.reset();
    }
}

impl AdapterSlot for PrefixSlot {
    fn install(&mut self, name: &str, planned: Planned) {
        if let Planned(PlannedModule::Prefix { index, gate }) = planned {
            self.prefixes.insert(name.to_string(), index);
            if let Some(gate) = gate {
                self.gates.insert(name.to_string(), gate);
            }
        }
    }
    /// Only UniPELT's gates live here; the prefixes themselves are in the model-level pool.
    fn adapter_params(&self, name: &str) -> Option<(String, &[NamedParam])> {
        self.gates.get(name).map(|g| (format!("{}.prefix_tuning.prefix_gates", self.path()), g.params.as_slice()))
    }
    fn remove_adapter(&mut self, name: &str) {
        self.prefixes.remove(name);
        self.gates.remove(name);
    }
    fn set_layer(&mut self, layer: usize) {
        self.layer = layer;
    }
}

impl AdapterSlot for ReftSlot {
    fn install(&mut self, name: &str, planned: Planned) {
        if let Planned(PlannedModule::Reft(module)) = planned {
            self.refts.insert(name.to_string(), module);
        }
    }
    fn adapter_params(&self, name: &str) -> Option<(String, &[NamedParam])> {
        self.refts.get(name).map(|m| (format!("{}.reft_layer.refts", self.path()), m.params()))
    }
    fn remove_adapter(&mut self, name: &str) {
        self.refts.remove(name);
    }
    fn set_layer(&mut self, layer: usize) {
        self.layer = layer;
    }
}

impl SlotRef<'_> {
    /// The module `config` (or the member of a union for this slot's family) puts here at
    /// `layer`; `None` when it does not target this slot.
    pub(crate) fn plan(&self, config: &AdapterConfig, layer: usize, planning: &mut Planning<'_>) -> Result<Option<Planned>> {
        for member in config.members() {
            if member.leave_out().contains(&layer) {
                continue;
            }
            if let Some(planned) = self.plan_member(member, layer, planning)? {
                return Ok(Some(planned));
            }
        }
        Ok(None)
    }

    fn plan_member(&self, config: &AdapterConfig, layer: usize, planning: &mut Planning<'_>) -> Result<Option<Planned>> {
        let init = &mut *planning.init;
        Ok(match (config, self) {
            (AdapterConfig::Reft(c), SlotRef::Reft(s)) => {
                if !c.layers.contains(layer) {
                    return Ok(None);
                }
                Some(Planned(PlannedModule::Reft(ReftModule::new(c, s.hidden_size(), init)?)))
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
                    let bias = init.uniform(&[outputs], 1.0 / (hidden as f32).sqrt())?;
                    Some(PrefixGate::new(init.normal(&[outputs, hidden], 0.02)?, bias)?)
                } else {
                    None
                };
                let count = planning.prefix_counts.entry(s.pool_key().to_string()).or_insert(0);
                let index = *count;
                *count += 1;
                Some(Planned(PlannedModule::Prefix { index, gate }))
            }
            (AdapterConfig::Bottleneck(c), SlotRef::Bottleneck(location, s)) => {
                let wanted = match location {
                    BottleneckLocation::MhAdapter => c.mh_adapter,
                    BottleneckLocation::OutputAdapter => c.output_adapter,
                    BottleneckLocation::CrossAdapter => c.cross_adapter,
                };
                if !wanted {
                    return Ok(None);
                }
                let hidden = s.hidden_size();
                // Python: int(hidden_size // reduction_factor), at least 1.
                let down = crate::model::bottleneck_size(hidden, c.reduction_factor.for_layer(layer)?);
                Some(Planned(PlannedModule::Bottleneck(BottleneckAdapter::new(c, hidden, down, &planning.shared.phm, init)?)))
            }
            (AdapterConfig::LoRA(c), SlotRef::Lora(_, s)) if c.peft.is_some() => {
                // A PEFT layout places modules by path, each with its own rank and alpha.
                let Some(spec) = c.peft.as_ref().and_then(|l| l.modules.get(s.path())) else { return Ok(None) };
                let module_config = LoRAConfig { r: spec.r, alpha: spec.alpha, peft: None, ..c.clone() };
                let (inp, out) = s.dims();
                Some(Planned(PlannedModule::Lora(LoraModule::peft(&module_config, inp, out, &s.weight()?, spec.scales_input, init)?)))
            }
            (AdapterConfig::LoRA(c), SlotRef::Lora(location, s)) => {
                if !c.targets(*location) {
                    return Ok(None);
                }
                let (inp, out) = s.dims();
                let module = match s.qkv_size() {
                    Some(size) => LoraModule::merged_qkv(c, inp, size, init)?,
                    None => LoraModule::new(c, inp, out, &s.weight()?, planning.shared.vera.as_ref(), init)?,
                };
                Some(Planned(PlannedModule::Lora(module)))
            }
            _ => None,
        })
    }

    /// The slot, whatever its family.
    pub fn adapter_slot(&self) -> &dyn AdapterSlot {
        match self {
            SlotRef::Lora(_, s) => *s,
            SlotRef::Bottleneck(_, s) => *s,
            SlotRef::Prefix(_, s) => *s,
            SlotRef::Reft(s) => *s,
        }
    }
}

impl SlotMut<'_> {
    /// The slot, whatever its family.
    pub fn adapter_slot(&mut self) -> &mut dyn AdapterSlot {
        match self {
            SlotMut::Lora(_, s) => *s,
            SlotMut::Bottleneck(_, s) => *s,
            SlotMut::Prefix(_, s) => *s,
            SlotMut::Reft(s) => *s,
        }
    }
}
