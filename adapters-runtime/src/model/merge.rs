//! Folding LoRA-family adapters into the base weights and restoring them.

use candle_core::Tensor;

use crate::body::BaseModel;
use crate::config::AdapterConfig;
use crate::error::{AdapterError, Result};
use crate::mixin::SlotRef;

use super::AdaptedModel;

impl<M: BaseModel + ?Sized> AdaptedModel<M> {
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
            if let Some(m) = slot.adapter_slot().merged().filter(|m| *m != name) {
                conflict.get_or_insert_with(|| m.to_string());
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
        self.each_slot_mut(&mut |_, mut slot| {
            if let Err(e) = slot.adapter_slot().merge(name) {
                failure.get_or_insert(e);
            }
        });
        match failure {
            Some(error) => {
                self.reset_adapter();
                Err(error)
            }
            None => Ok(()),
        }
    }

    /// Undoes `merge_adapter`, restoring the exact base weights.
    /// The current weight of every linear layer that takes LoRA-family modules, under its
    /// parameter name on the bare base model (`encoder.layer.0.attention.self.query.weight`).
    /// After `merge_adapter` these are the merged weights, as Python's `merge_adapter` leaves them
    /// in the module's `weight`.
    /// Quantized base weights come dequantized.
    pub fn lora_linear_weights(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        self.each_slot(&mut |_, slot| {
            if let SlotRef::Lora(_, s) = slot {
                out.push((format!("{}.weight", self.strip_root(s.path())), s.weight()));
            }
        });
        out.into_iter().map(|(name, w)| Ok((name, w?))).collect()
    }

    /// The current bias of every linear layer that takes LoRA-family modules and has one, named
    /// as [`Self::lora_linear_weights`] names the weights (`...query.bias`). Merging changes only
    /// those an IA3 adapter from a PEFT file scales (PEFT merges the scaling into the bias).
    ///
    /// ```no_run
    /// # fn demo(model: &mut adapters_runtime::DynAdaptedModel) -> adapters_runtime::Result<()> {
    /// model.merge_adapter("ia3")?;
    /// let merged: Vec<_> = model.lora_linear_weights()?.into_iter().chain(model.lora_linear_biases()).collect();
    /// # Ok(()) }
    /// ```
    pub fn lora_linear_biases(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        self.each_slot(&mut |_, slot| {
            if let SlotRef::Lora(_, s) = slot {
                if let Some(bias) = s.bias() {
                    out.push((format!("{}.bias", self.strip_root(s.path())), bias.clone()));
                }
            }
        });
        out
    }

    pub fn reset_adapter(&mut self) {
        self.each_slot_mut(&mut |_, mut slot| slot.adapter_slot().unmerge());
    }
}
