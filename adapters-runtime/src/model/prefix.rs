//! The model-level parts of prefix and prompt tuning: building an adapter's prefix modules from
//! the slots that hold its prefix, computing the prefixes once per forward, ejecting, and the
//! prompt at the embedding slot.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::{DType, Tensor};

use super::AdaptedModel;
use crate::body::BaseModel;
use crate::config::AdapterConfig;
use crate::context::ForwardContext;
use crate::error::{AdapterError, Result};
use crate::methods::init::Init;
use crate::methods::invertible::InvertibleAdapter;
use crate::methods::prefix::{PrefixGroup, PrefixModule, PrefixShape, PrefixStates};
use crate::methods::prompt::PromptTuning;
use crate::mixin::SlotRef;
use crate::slot::{Planned, PlannedModule};

impl<M: BaseModel + ?Sized> AdaptedModel<M> {
    /// The prefix modules of a new adapter: one per location key, producing the prefixes of the
    /// layers `planned` puts a prefix on (Python's `confirm_prefix`).
    pub(super) fn plan_prefix_group(&self, config: &AdapterConfig, planned: &[Option<Planned>], init: &mut Init) -> Result<Option<PrefixGroup>> {
        let Some(prefix_config) = config.prefix_tuning() else { return Ok(None) };
        let mut shapes: BTreeMap<String, PrefixShape> = BTreeMap::new();
        let mut planned = planned.iter();
        self.each_slot(&mut |_, slot| {
            let here = planned.next();
            if let (Some(Some(Planned(PlannedModule::Prefix { .. }))), SlotRef::Prefix(_, s)) = (here, slot) {
                let (hidden, n_heads, head_dim) = s.dims();
                shapes.entry(s.pool_key().to_string()).or_insert(PrefixShape { n_layers: 0, n_heads, head_dim, hidden }).n_layers += 1;
            }
        });
        if shapes.is_empty() {
            return Ok(None);
        }
        let mut group = PrefixGroup::default();
        for (key, shape) in shapes {
            group.modules.insert(key, PrefixModule::new(prefix_config, shape, init)?);
        }
        Ok(Some(group))
    }

    /// The prompt of a new prompt-tuning adapter, if the config has one.
    pub(super) fn plan_prompt(&self, name: &str, config: &AdapterConfig, prompt_ids: Option<&[u32]>, init: &mut Init) -> Result<Option<PromptTuning>> {
        let Some(prompt_config) = config.prompt_tuning() else { return Ok(None) };
        let Some(slot) = self.model.embedding_slot() else {
            return Err(AdapterError::NothingToAdd {
                adapter: name.into(),
                method: "prompt_tuning".into(),
                reason: format!("{} marks no embedding slot (`#[with_adapters(..., embeddings = ...)]`)", self.model.mapping().model_class),
            });
        };
        if !self.model.mapping().supports_prompt_tuning {
            return Err(AdapterError::NothingToAdd {
                adapter: name.into(),
                method: "prompt_tuning".into(),
                reason: format!("{} does not take prompt tuning (as in the Python library)", self.model.mapping().model_class),
            });
        }
        let (length, hidden) = (prompt_config.prompt_length, slot.hidden_size());
        if length > slot.max_positions() {
            return Err(AdapterError::InvalidConfig(format!(
                "adapter `{name}`: prompt_length {length} is longer than the model's position table ({} positions); use at most {}",
                slot.max_positions(),
                slot.max_positions()
            )));
        }
        let initial = match (prompt_config.prompt_init.as_str(), prompt_ids) {
            ("from_string", Some(ids)) => {
                if ids.is_empty() {
                    return Err(AdapterError::InvalidConfig(format!("adapter `{name}`: prompt_init_text tokenizes to no ids")));
                }
                let embeddings = slot.word_embeddings();
                let vocab = embeddings.dim(0)?;
                if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
                    return Err(AdapterError::InvalidConfig(format!("adapter `{name}`: prompt token id {bad} is outside the vocabulary of {vocab}")));
                }
                let repeated: Vec<u32> = ids.iter().cycle().take(length).copied().collect();
                init.placement().place(&embeddings.index_select(&Tensor::new(repeated.as_slice(), embeddings.device())?, 0)?)?.detach()
            }
            _ => {
                let scale = crate::config::PromptTuningConfig::RANDOM_UNIFORM_SCALE as f32;
                init.uniform(&[length, hidden], scale)?
            }
        };
        Ok(Some(PromptTuning::new(prompt_config, initial)?))
    }

    /// The invertible adapter of a new adapter whose bottleneck config names `inv_adapter`.
    pub(super) fn plan_invertible(&self, name: &str, config: &AdapterConfig, init: &mut Init) -> Result<Option<InvertibleAdapter>> {
        let Some(c) = config.bottleneck().filter(|c| c.inv_adapter.is_some()) else { return Ok(None) };
        let Some(slot) = self.model.embedding_slot() else {
            return Err(AdapterError::NothingToAdd {
                adapter: name.into(),
                method: "invertible adapter".into(),
                reason: format!("{} marks no embedding slot (`#[with_adapters(..., embeddings = ...)]`)", self.model.mapping().model_class),
            });
        };
        if !self.model.mapping().supports_invertible {
            return Err(AdapterError::NothingToAdd {
                adapter: name.into(),
                method: "invertible adapter".into(),
                reason: format!("{} takes no invertible adapters (as in the Python library)", self.model.mapping().model_class),
            });
        }
        let reduction = c.inv_adapter_reduction_factor.as_ref().and_then(serde_json::Number::as_f64).unwrap_or(2.0);
        let activation = crate::nn::activation::Activation::parse(&c.non_linearity)?;
        Ok(Some(InvertibleAdapter::nice(slot.hidden_size(), reduction, activation, init)?))
    }

    /// The context of one forward over `batch` rows: the active setup, and the prefixes of its
    /// prefix-tuning adapters (computed once, shared by every layer).
    pub(crate) fn forward_context(&self, attention_mask: &Tensor) -> Result<ForwardContext> {
        let batch = attention_mask.dim(0)?;
        let ctx = self.context();
        let Some(setup) = self.active.as_deref() else { return Ok(ctx) };
        // ReFT runs only the setup's first adapter (as Python); its positions must fit every row.
        let reft = setup.first().and_then(|n| self.configs.get(n).and_then(AdapterConfig::reft).map(|c| (n, c)));
        let ctx = match reft {
            Some((name, config)) => {
                let rows = sequence_rows(attention_mask)?;
                crate::methods::reft::check_positions(name, config.prefix_positions, config.suffix_positions, &rows, attention_mask.dim(1)?)?;
                ctx.with_sequence_rows(Some(rows.into()))
            }
            None => ctx,
        };
        let mut states = PrefixStates::new();
        for name in setup.flatten() {
            if let Some(group) = self.prefixes.get(name) {
                states.insert(name.to_string(), group.forward(batch, &ctx)?);
            }
        }
        Ok(if states.is_empty() { ctx } else { ctx.with_prefix_states(Some(Arc::new(states))) })
    }

    /// Python's `eject_prefix_tuning`: replaces the embedding-and-MLP prefix modules of `name` by
    /// flat ones holding their output. The forward stays the same; the saved adapter then has
    /// `flat: true` and one `control_trans` tensor per location.
    ///
    /// ```no_run
    /// # fn demo(model: &mut adapters_runtime::DynAdaptedModel) -> adapters_runtime::Result<()> {
    /// use adapters_runtime::AdapterConfig;
    /// model.add_adapter("p", AdapterConfig::parse("prefix_tuning[prefix_length=30]")?)?;
    /// // ... train ...
    /// model.eject_prefix_tuning("p")?;
    /// model.save_adapter("out/p", "p")?;
    /// # Ok(()) }
    /// ```
    pub fn eject_prefix_tuning(&mut self, name: &str) -> Result<()> {
        let group = self.prefixes.get_mut(name).ok_or_else(|| match self.configs.contains_key(name) {
            true => AdapterError::Unsupported { adapter: name.into(), operation: "eject_prefix_tuning".into(), reason: "it has no prefix tuning".into() },
            false => AdapterError::NoSuchAdapter(name.into()),
        })?;
        let mut ejected = BTreeMap::new();
        for (location, module) in &group.modules {
            if let Some(flat) = module.ejected()? {
                ejected.insert(location.clone(), flat);
            }
        }
        group.modules.extend(ejected);
        if let Some(config) = self.configs.get_mut(name) {
            set_flat(config);
        }
        Ok(())
    }
}

/// `(first attended position, number of attended positions)` per row, as Python's ReFT reads
/// them (`argmax` and `sum` of the mask).
fn sequence_rows(attention_mask: &Tensor) -> Result<Vec<(usize, usize)>> {
    let rows = attention_mask.to_dtype(DType::I64)?.to_vec2::<i64>()?;
    Ok(rows.iter().map(|r| (r.iter().position(|&m| m == 1).unwrap_or(0), r.iter().filter(|&&m| m == 1).count())).collect())
}

fn set_flat(config: &mut AdapterConfig) {
    match config {
        AdapterConfig::PrefixTuning(c) => c.flat = true,
        AdapterConfig::Union(members) => members.iter_mut().for_each(set_flat),
        _ => {}
    }
}
