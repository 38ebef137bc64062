//! BERT, RoBERTa and DistilBERT as candle models annotated for adapters, and a loader for
//! Hugging Face checkpoint folders (`config.json` + `model.safetensors`).
//!
//! ```no_run
//! use adapters_models::load_model;
//! use adapters_runtime::AdapterConfig;
//! let mut model = load_model("path/to/minilm".as_ref())?;
//! model.add_adapter("sst2", AdapterConfig::parse("seq_bn")?)?;
//! # Ok::<(), adapters_runtime::AdapterError>(())
//! ```

mod attention;
pub mod bert;
pub mod distilbert;
mod load;
pub mod roberta;

pub use bert::{BertConfig, BertModel};
pub use distilbert::{DistilBertConfig, DistilBertModel};
pub use load::{load_model, load_typed, MODEL_WEIGHTS};
pub use roberta::{RobertaConfig, RobertaModel};

use adapters_runtime::{AdaptableModel, ModelMapping};

/// The mapping entries of every model in this crate (for docs and generic tests).
pub fn all_mappings() -> Vec<ModelMapping> {
    vec![BertModel::MAPPING, RobertaModel::MAPPING, DistilBertModel::MAPPING]
}
