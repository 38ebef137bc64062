//! What every slot offers the model-level API, whatever its method family: the adapters it
//! holds, their parameters under the module path Python names them by, and removal. The model
//! walks slots through this trait where an operation is the same for every family.

use crate::methods::bottleneck::BottleneckSlot;
use crate::methods::lora::LoRALinear;
use crate::methods::prefix::PrefixSlot;
use crate::methods::reft::ReftSlot;
use crate::methods::NamedParam;
use crate::mixin::{SlotMut, SlotRef};

pub trait AdapterSlot {
    /// The parameters adapter `name` holds here, with the module path they hang under
    /// (`encoder.layer.0.output.adapters`; the adapter's name and the parameter's follow).
    fn adapter_params(&self, name: &str) -> Option<(String, &[NamedParam])>;
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
}

impl AdapterSlot for BottleneckSlot {
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
