//! # adapters-runtime
//!
//! The methods, configs, files and model API of the AdapterHub toolbox for candle models.
//! Models are annotated with the macros of `adapters-macros` (re-exported here), which generate
//! the slots walk and the mapping; everything in this crate is written once for all models.
//!
//! ```
//! use adapters_runtime::{AdapterConfig, AdapterSetup};
//! let config = AdapterConfig::parse("double_seq_bn[reduction_factor=8]").unwrap();
//! assert_eq!(config.method_name(), "bottleneck");
//! let setup = AdapterSetup::parse("Stack[lang, task]").unwrap();
//! assert_eq!(setup.flatten(), vec!["lang", "task"]);
//! ```

#[cfg(feature = "mimalloc")]
pub mod allocator;
pub mod body;
pub mod compare;
pub mod composition;
pub mod config;
pub mod context;
pub mod error;
pub mod heads;
pub mod io;
pub mod methods;
pub mod mixin;
pub mod model;
pub mod model_io;
pub mod nn;
pub mod setup;
pub mod slot;
mod state_dict;
pub mod training;
pub mod vision;

pub use adapters_macros::{adapter_config, adapter_mixin, with_adapters};
pub use body::BaseModel;
pub use config::{AdapterConfig, AdapterFile, BnConfig, LoRAConfig, PrefixTuningConfig, PromptTuningConfig};
pub use context::{ForwardContext, FusionAttention};
pub use error::{AdapterError, Result};
pub use heads::{HeadConfig, HeadOutput, HeadSetup, HeadType};
pub use methods::bottleneck::{BottleneckInputs, BottleneckSlot};
pub use methods::lora::LoRALinear;
pub use methods::prefix::{PrefixPadding, PrefixSlot};
pub use methods::prompt::EmbeddingSlot;
pub use methods::reft::ReftSlot;
pub use mixin::{AdaptableModel, AdapterMixin, AdapterModelConfig, LayerSlots, ModelDims, ModelForward, ModelMapping};
pub use model::{AdaptedModel, AdapterSummary, AdapterSummaryRow, HeadResult, ModelOutput};
pub use model_io::{InputKind, KvCache, ModelInputs, ModelOutputs};

/// A model whose architecture is chosen at run time (what `load_model` returns): every method of
/// [`AdaptedModel`], on any model behind [`BaseModel`].
pub type DynAdaptedModel = AdaptedModel<dyn BaseModel>;
pub use nn::LayerNorm;
pub use setup::AdapterSetup;
