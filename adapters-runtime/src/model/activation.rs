//! Which adapters run: activation (with the block rules each method supports), deactivation,
//! training mode, and the setup file.

use std::path::Path;
use std::sync::Arc;

use candle_core::Var;

use crate::body::BaseModel;
use crate::composition::supported_blocks;
use crate::config::AdapterConfig;
use crate::error::{AdapterError, Result};
use crate::heads::HeadSetup;
use crate::mixin::SlotFamily;
use crate::setup::{AdapterSetup, BlockKind};

use super::{AdaptedModel, ADAPTER_SETUP_NAME, PYTHON_ADAPTERS_VERSION};

impl<M: BaseModel + ?Sized> AdaptedModel<M> {
    /// Activates a setup (`"a"`, `AdapterSetup::stack(["a", "b"])`, or a parsed repr). The
    /// setup must follow the Python library's nesting rules, name only adapters of this model,
    /// and use blocks their methods support; the error names the rule that is broken.
    ///
    /// ```no_run
    /// # fn demo(model: &mut adapters_runtime::DynAdaptedModel) -> adapters_runtime::Result<()> {
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
        let layers = self.adapter_layer_count();
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
    pub(super) fn check_method_support(&self, whole: &AdapterSetup, setup: &AdapterSetup) -> Result<()> {
        if let AdapterSetup::Fuse { .. } = setup {
            let name = setup.fusion_name().unwrap_or_default();
            if !self.fusions.contains_key(&name) {
                return Err(AdapterError::Setup {
                    setup: whole.to_string(),
                    reason: format!("no fusion layer named `{name}`; add it with add_adapter_fusion or load it with load_adapter_fusion"),
                });
            }
        }
        let kind = setup.kind();
        if kind != BlockKind::Single {
            for name in setup.flatten() {
                for member in self.configs.get(name).map(AdapterConfig::members).unwrap_or_default() {
                    if let Some((what, blocks)) = member_family(member).and_then(supported_blocks).filter(|(_, blocks)| !blocks.contains(&kind)) {
                        let list: Vec<&str> = blocks.iter().map(|b| b.name()).collect();
                        let list = match list.split_last() {
                            Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
                            _ => list.join(""),
                        };
                        return Err(AdapterError::Setup {
                            setup: whole.to_string(),
                            reason: format!("`{name}` {what}, which composes with {list}, not {}", kind.name()),
                        });
                    }
                }
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
        self.grad_enabled = true;
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
}

/// The slot family whose block rule (`composition::supported_blocks`) a member follows.
fn member_family(member: &AdapterConfig) -> Option<SlotFamily> {
    match member {
        AdapterConfig::LoRA(_) => Some(SlotFamily::Lora),
        AdapterConfig::PrefixTuning(_) => Some(SlotFamily::Prefix),
        _ => None,
    }
}
