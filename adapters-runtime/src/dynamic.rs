//! An object-safe view of [`AdaptedModel`], for programs (such as the CLI) that choose the
//! architecture at run time.

use std::path::Path;

use candle_core::{Tensor, Var};

use crate::config::{AdapterConfig, FusionConfig};
use crate::context::FusionAttention;
use crate::error::Result;
use crate::heads::{HeadConfig, HeadSetup, PredictionHead};
use crate::methods::init::Placement;
use crate::mixin::{AdaptableModel, EncoderForward, ModelMapping};
use crate::model::{AdaptedModel, AdapterSummary};
use crate::model::{CombineStrategy, ModelOutput};
use crate::setup::AdapterSetup;

/// The model API without the model type.
pub trait DynAdaptedModel {
    fn mapping(&self) -> ModelMapping;
    fn placement(&self) -> &Placement;
    fn add_adapter(&mut self, name: &str, config: AdapterConfig) -> Result<()>;
    fn add_prompt_adapter_from_ids(&mut self, name: &str, config: AdapterConfig, prompt_ids: &[u32]) -> Result<()>;
    fn eject_prefix_tuning(&mut self, name: &str) -> Result<()>;
    fn adapter_config(&self, name: &str) -> Option<AdapterConfig>;
    fn delete_adapter(&mut self, name: &str) -> Result<()>;
    fn set_active_adapters(&mut self, setup: AdapterSetup) -> Result<()>;
    fn set_active_adapters_skipping(&mut self, setup: AdapterSetup, skip_layers: Option<Vec<usize>>) -> Result<()>;
    fn save_adapter_setup(&self, dir: &Path) -> Result<()>;
    fn average_adapter(&mut self, name: &str, sources: &[&str], weights: Option<&[f64]>, normalize: bool, strategy: CombineStrategy) -> Result<()>;
    fn deactivate_adapters(&mut self);
    fn active_adapters(&self) -> Option<AdapterSetup>;
    fn train_adapter(&mut self, setup: AdapterSetup) -> Result<Vec<Var>>;
    fn set_training(&mut self, training: bool);
    fn is_training(&self) -> bool;
    fn merge_adapter(&mut self, name: &str) -> Result<()>;
    fn reset_adapter(&mut self);
    fn lora_linear_weights(&self) -> Vec<(String, Tensor)>;
    fn save_adapter(&self, dir: &Path, name: &str) -> Result<()>;
    fn load_adapter(&mut self, dir: &Path, load_as: Option<&str>) -> Result<String>;
    fn adapter_names(&self) -> Vec<String>;
    fn adapter_summary(&self) -> AdapterSummary;
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor>;
    fn add_head(&mut self, name: &str, config: HeadConfig, overwrite: bool) -> Result<()>;
    fn delete_head(&mut self, name: &str) -> Result<()>;
    fn head_names(&self) -> Vec<String>;
    fn head(&self, name: &str) -> Option<&PredictionHead>;
    fn active_head(&self) -> Option<String>;
    fn active_heads(&self) -> Option<HeadSetup>;
    fn set_active_head(&mut self, name: Option<&str>) -> Result<()>;
    fn save_head(&self, dir: &Path, name: &str) -> Result<()>;
    fn load_head(&mut self, dir: &Path, load_as: Option<&str>) -> Result<String>;
    fn forward_with_head(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<ModelOutput>;
    fn head_loss(&self, output: &ModelOutput, labels: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor>;
    fn train_full(&mut self) -> Result<Vec<Var>>;
    fn set_seed(&mut self, seed: u64);
    fn named_params(&self, name: &str) -> Result<Vec<(String, Var)>>;
    fn head_params(&self, name: &str) -> Result<Vec<(String, Var)>>;
    fn base_vars(&self) -> Vec<(String, Var)>;
    fn add_adapter_fusion(&mut self, setup: AdapterSetup, config: FusionConfig) -> Result<()>;
    fn delete_adapter_fusion(&mut self, name: &str) -> Result<()>;
    fn fusion_names(&self) -> Vec<String>;
    fn train_adapter_fusion(&mut self, setup: AdapterSetup, unfreeze_adapters: bool) -> Result<Vec<Var>>;
    fn fusion_regularization_loss(&self) -> Result<Option<Tensor>>;
    fn save_adapter_fusion(&self, dir: &Path, name: &str) -> Result<()>;
    fn load_adapter_fusion(&mut self, dir: &Path, load_as: Option<&str>) -> Result<String>;
    fn forward_with_fusion_attentions(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<(Tensor, Vec<FusionAttention>)>;
}

impl<M: AdaptableModel + EncoderForward> DynAdaptedModel for AdaptedModel<M> {
    fn mapping(&self) -> ModelMapping {
        M::MAPPING
    }
    fn placement(&self) -> &Placement {
        AdaptedModel::placement(self)
    }
    fn add_adapter(&mut self, name: &str, config: AdapterConfig) -> Result<()> {
        AdaptedModel::add_adapter(self, name, config)
    }
    fn delete_adapter(&mut self, name: &str) -> Result<()> {
        AdaptedModel::delete_adapter(self, name)
    }
    fn add_prompt_adapter_from_ids(&mut self, name: &str, config: AdapterConfig, prompt_ids: &[u32]) -> Result<()> {
        AdaptedModel::add_prompt_adapter_from_ids(self, name, config, prompt_ids)
    }
    fn eject_prefix_tuning(&mut self, name: &str) -> Result<()> {
        AdaptedModel::eject_prefix_tuning(self, name)
    }
    fn adapter_config(&self, name: &str) -> Option<AdapterConfig> {
        AdaptedModel::adapter_config(self, name).cloned()
    }
    fn set_active_adapters(&mut self, setup: AdapterSetup) -> Result<()> {
        AdaptedModel::set_active_adapters(self, setup)
    }
    fn set_active_adapters_skipping(&mut self, setup: AdapterSetup, skip_layers: Option<Vec<usize>>) -> Result<()> {
        AdaptedModel::set_active_adapters_skipping(self, setup, skip_layers)
    }
    fn save_adapter_setup(&self, dir: &Path) -> Result<()> {
        AdaptedModel::save_adapter_setup(self, dir)
    }
    fn average_adapter(&mut self, name: &str, sources: &[&str], weights: Option<&[f64]>, normalize: bool, strategy: CombineStrategy) -> Result<()> {
        AdaptedModel::average_adapter(self, name, sources, weights, normalize, strategy)
    }
    fn deactivate_adapters(&mut self) {
        AdaptedModel::deactivate_adapters(self)
    }
    fn active_adapters(&self) -> Option<AdapterSetup> {
        AdaptedModel::active_adapters(self).cloned()
    }
    fn train_adapter(&mut self, setup: AdapterSetup) -> Result<Vec<Var>> {
        AdaptedModel::train_adapter(self, setup)
    }
    fn set_training(&mut self, training: bool) {
        AdaptedModel::set_training(self, training)
    }
    fn is_training(&self) -> bool {
        AdaptedModel::is_training(self)
    }
    fn merge_adapter(&mut self, name: &str) -> Result<()> {
        AdaptedModel::merge_adapter(self, name)
    }
    fn reset_adapter(&mut self) {
        AdaptedModel::reset_adapter(self)
    }
    fn lora_linear_weights(&self) -> Vec<(String, Tensor)> {
        AdaptedModel::lora_linear_weights(self)
    }
    fn save_adapter(&self, dir: &Path, name: &str) -> Result<()> {
        AdaptedModel::save_adapter(self, dir, name)
    }
    fn load_adapter(&mut self, dir: &Path, load_as: Option<&str>) -> Result<String> {
        AdaptedModel::load_adapter(self, dir, load_as)
    }
    fn adapter_names(&self) -> Vec<String> {
        AdaptedModel::adapter_names(self).map(String::from).collect()
    }
    fn adapter_summary(&self) -> AdapterSummary {
        AdaptedModel::adapter_summary(self)
    }
    fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        AdaptedModel::forward(self, input_ids, attention_mask)
    }
    fn add_head(&mut self, name: &str, config: HeadConfig, overwrite: bool) -> Result<()> {
        AdaptedModel::add_head(self, name, config, overwrite)
    }
    fn delete_head(&mut self, name: &str) -> Result<()> {
        AdaptedModel::delete_head(self, name)
    }
    fn head_names(&self) -> Vec<String> {
        AdaptedModel::head_names(self).map(String::from).collect()
    }
    fn head(&self, name: &str) -> Option<&PredictionHead> {
        AdaptedModel::head(self, name)
    }
    fn active_head(&self) -> Option<String> {
        AdaptedModel::active_head(self).map(String::from)
    }
    fn active_heads(&self) -> Option<HeadSetup> {
        AdaptedModel::active_heads(self).cloned()
    }
    fn set_active_head(&mut self, name: Option<&str>) -> Result<()> {
        AdaptedModel::set_active_head(self, name)
    }
    fn save_head(&self, dir: &Path, name: &str) -> Result<()> {
        AdaptedModel::save_head(self, dir, name)
    }
    fn load_head(&mut self, dir: &Path, load_as: Option<&str>) -> Result<String> {
        AdaptedModel::load_head(self, dir, load_as)
    }
    fn forward_with_head(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<ModelOutput> {
        AdaptedModel::forward_with_head(self, input_ids, attention_mask)
    }
    fn head_loss(&self, output: &ModelOutput, labels: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        AdaptedModel::head_loss(self, output, labels, attention_mask)
    }
    fn train_full(&mut self) -> Result<Vec<Var>> {
        AdaptedModel::train_full(self)
    }
    fn set_seed(&mut self, seed: u64) {
        AdaptedModel::set_seed(self, seed)
    }
    fn named_params(&self, name: &str) -> Result<Vec<(String, Var)>> {
        AdaptedModel::named_params(self, name)
    }
    fn head_params(&self, name: &str) -> Result<Vec<(String, Var)>> {
        AdaptedModel::head_params(self, name)
    }
    fn base_vars(&self) -> Vec<(String, Var)> {
        AdaptedModel::base_vars(self).to_vec()
    }
    fn add_adapter_fusion(&mut self, setup: AdapterSetup, config: FusionConfig) -> Result<()> {
        AdaptedModel::add_adapter_fusion(self, setup, config)
    }
    fn delete_adapter_fusion(&mut self, name: &str) -> Result<()> {
        AdaptedModel::delete_adapter_fusion(self, name)
    }
    fn fusion_names(&self) -> Vec<String> {
        AdaptedModel::fusion_names(self).map(String::from).collect()
    }
    fn train_adapter_fusion(&mut self, setup: AdapterSetup, unfreeze_adapters: bool) -> Result<Vec<Var>> {
        AdaptedModel::train_adapter_fusion(self, setup, unfreeze_adapters)
    }
    fn fusion_regularization_loss(&self) -> Result<Option<Tensor>> {
        AdaptedModel::fusion_regularization_loss(self)
    }
    fn save_adapter_fusion(&self, dir: &Path, name: &str) -> Result<()> {
        AdaptedModel::save_adapter_fusion(self, dir, name)
    }
    fn load_adapter_fusion(&mut self, dir: &Path, load_as: Option<&str>) -> Result<String> {
        AdaptedModel::load_adapter_fusion(self, dir, load_as)
    }
    fn forward_with_fusion_attentions(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<(Tensor, Vec<FusionAttention>)> {
        AdaptedModel::forward_with_fusion_attentions(self, input_ids, attention_mask)
    }
}
