//! BERT, RoBERTa, DistilBERT, Llama, Mistral, Qwen2, Qwen3, Gemma 2, GPT-2, ViT, BART, MBART, T5 and MT5 as candle models annotated for adapters, and a loader for
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
pub mod bart;
pub mod bert;
pub mod bert_decoder;
pub mod distilbert;
pub mod encoder_decoder;
pub mod gemma2;
pub mod gguf;
pub mod gpt2;
pub mod llama;
mod load;
pub mod qwen;
pub mod roberta;
mod seq2seq;
pub mod static_heads;
pub mod t5;
pub mod vit;

pub use bart::{BartConfig, BartModel, MBartConfig, MBartModel};
pub use bert::{BertConfig, BertModel};
pub use distilbert::{DistilBertConfig, DistilBertModel};
pub use encoder_decoder::{Bert2BertModel, BertPairConfig, EncoderDecoderModel};
pub use gemma2::Gemma2Model;
pub use gpt2::{Gpt2Config, Gpt2Model};
pub use llama::{LlamaConfig, LlamaModel, MistralConfig, MistralModel, QuantizedSource};
pub use load::{
    load_model, load_model_with, load_typed, resolve_model_path, BaseWeights, Build, GgufWeights, Layout, LoadOptions, GPT2_LAYOUT, LLAMA_LAYOUT,
    MODEL_WEIGHTS, SUPPORTED_MODEL_TYPES, VIT_LAYOUT,
};
pub use qwen::{Qwen2Model, Qwen3Model};
pub use roberta::{RobertaConfig, RobertaModel};
pub use t5::{MT5Model, T5Config, T5Model};
pub use vit::{ViTConfig, ViTModel};

use adapters_runtime::{AdaptableModel, ModelMapping};

/// The mapping entries of every model in this crate (for docs and generic tests).
pub fn all_mappings() -> Vec<ModelMapping> {
    vec![
        BertModel::MAPPING,
        RobertaModel::MAPPING,
        DistilBertModel::MAPPING,
        LlamaModel::MAPPING,
        MistralModel::MAPPING,
        Qwen2Model::MAPPING,
        Qwen3Model::MAPPING,
        Gemma2Model::MAPPING,
        Gpt2Model::MAPPING,
        ViTModel::MAPPING,
        BartModel::MAPPING,
        MBartModel::MAPPING,
        T5Model::MAPPING,
        MT5Model::MAPPING,
        Bert2BertModel::MAPPING,
    ]
}

/// `docs/model_overview.md`, generated from the mapping entries the macros produce.
pub fn overview_markdown() -> String {
    let mappings = all_mappings();
    let methods: Vec<&str> = {
        let mut all: Vec<&str> = Vec::new();
        for m in &mappings {
            for method in m.supported_methods() {
                if !all.contains(&method) {
                    all.push(method);
                }
            }
        }
        all
    };
    let mut out = String::from(
        "# Model overview\n\n\
         Generated from the mapping entries of `#[with_adapters]` and `#[adapter_mixin]` \
         (`adapters_models::overview_markdown`); `tests/tests/docs.rs` fails when this file drifts \
         (regenerate with `UPDATE_DOCS=1 cargo test --release -p adapters-tests --test docs`).\n\n",
    );
    out.push_str("| model | with heads | model_type | layer | mixin |");
    for method in &methods {
        out.push_str(&format!(" {method} |"));
    }
    out.push_str("\n| --- | --- | --- | --- | --- |");
    out.push_str(&" :---: |".repeat(methods.len()));
    out.push('\n');
    for m in &mappings {
        let mixins = match m.decoder_mixin {
            Some(decoder) => format!("{} + {}", m.layer_mixin.name, decoder.name),
            None => m.layer_mixin.name.to_string(),
        };
        out.push_str(&format!("| {} | {} | `{}` | {} | {mixins} |", m.model_class, m.adapter_model_class, m.model_type, m.layer_type));
        let supported = m.supported_methods();
        for method in &methods {
            out.push_str(if supported.contains(method) { " ✅ |" } else { " |" });
        }
        out.push('\n');
    }
    out.push_str(
        "\nEvery model takes every head type (classification, multilabel classification, tagging, \
         question answering, multiple choice, masked LM, causal LM and seq2seq LM, whose decoders are tied to the input \
         embeddings when the config ties word embeddings, and image classification); heads with `use_pooler` need a pooler, which BERT, \
         RoBERTa and ViT checkpoints carry and the others have not. Sequence-level heads read the first token of \
         an encoder (ViT: the CLS position, or the first prompt position under prompt tuning) and the last non-padding \
         token of a decoder (Llama, Mistral), as in Python. Decoders keep a KV cache for generation \
         (`AdaptedModel::generate`); encoder-decoders run the encoder once and keep the decoder's. Encoder-decoders \
         list two mixins (encoder + decoder layer); their decoder layers also mark cross-attention (`cross_*` \
         locations). `EncoderDecoderModel` combines two annotated submodels (here BERT to BERT) and numbers each \
         half's layers from 0, as Python does; it takes no invertible adapters here.\n",
    );
    out.push_str("\n## Insertion points per mixin\n\n| mixin | family | location | field |\n| --- | --- | --- | --- |\n");
    let mut seen = Vec::new();
    for mixin in mappings.iter().flat_map(|m| std::iter::once(m.layer_mixin).chain(m.decoder_mixin)) {
        if seen.contains(&mixin.name) {
            continue;
        }
        seen.push(mixin.name);
        for slot in mixin.slots {
            out.push_str(&format!("| {} | {:?} | `{}` | `{}` |\n", mixin.name, slot.family, slot.location, slot.field));
        }
    }
    out.push_str("\n## Config key mapping\n\n| model | key adapters read | config field |\n| --- | --- | --- |\n");
    for m in &mappings {
        for (key, field) in m.config_keys {
            if key != field {
                out.push_str(&format!("| {} | `{key}` | `{field}` |\n", m.model_class));
            }
        }
    }
    out
}
