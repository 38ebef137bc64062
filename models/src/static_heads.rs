//! Task checkpoints' heads as flexible heads, as the Python library's `AutoAdapterModel` converts
//! them (`head_utils.STATIC_TO_FLEX_HEAD_MAP`): a `BertForSequenceClassification`'s `classifier`
//! becomes a classification head named `default`, a `BertForMultipleChoice`'s a multiple-choice
//! head, a `BertForMaskedLM`'s prediction head a masked LM head, a `LlamaForCausalLM`'s `lm_head`
//! a causal LM head, and so on, with the checkpoint's weights at the head's module indices. The
//! converted head is active until an adapter folder brings its own.
//!
//! Python's map has no Qwen2, Qwen3 or Gemma 2 classes (and `AutoAdapterModel` has no class for
//! them: Python runs them through the plugin interface with their own `lm_head`), so their
//! `*ForCausalLM` checkpoints get no head here either: [`adapters_runtime::AdaptedModel::lm_logits`]
//! uses the checkpoint's `lm_head` (with Gemma 2's final logit soft-capping, which HF's
//! `Gemma2ForCausalLM` applies and a flexible causal LM head would not).

use std::collections::HashMap;
use std::path::Path;

use adapters_runtime::{AdapterError, DynAdaptedModel, HeadConfig, Result};
use candle_core::Tensor;
use serde_json::{json, Value};

/// The name Python gives a converted head.
pub const STATIC_HEAD_NAME: &str = "default";

/// One entry of Python's map: the checkpoint class, the head config it implies, and the
/// checkpoint module behind each index of the head (`None`: dropout or activation).
struct StaticHead {
    class: &'static str,
    config: fn() -> Value,
    layers: &'static [Option<&'static str>],
}

const CLASSIFIER: &[Option<&str>] = &[None, Some("classifier")];
const QA: &[Option<&str>] = &[None, Some("qa_outputs")];
const ROBERTA_CLASSIFIER: &[Option<&str>] = &[None, Some("classifier.dense"), None, None, Some("classifier.out_proj")];
const DISTILBERT_CLASSIFIER: &[Option<&str>] = &[None, Some("pre_classifier"), None, None, Some("classifier")];
const LM_HEAD: &[Option<&str>] = &[Some("lm_head")];
// A BERT-to-BERT EncoderDecoderModel decodes with its `BertLMHeadModel`'s prediction head:
// dense, activation, LayerNorm, then the decoder tied to the decoder's word embeddings, whose
// bias HF saves as `cls.predictions.bias`.
const BERT_DECODER_LM: &[Option<&str>] =
    &[Some("decoder.cls.predictions.transform.dense"), None, Some("decoder.cls.predictions.transform.LayerNorm"), Some("decoder.cls.predictions")];
// Masked LM: dense, activation, LayerNorm, decoder (tied to the word embeddings when the model ties
// them). HF saves the decoder bias of BERT and RoBERTa, shared with `cls.predictions.bias` /
// `lm_head.bias`, under that name only, which the map does not rename: Python's converted decoder
// keeps its zero bias (`heads.default.3.bias` is a missing key, `cls.predictions.bias` an unexpected
// one in `output_loading_info`), and so does ours.
const BERT_MLM: &[Option<&str>] =
    &[Some("cls.predictions.transform.dense"), None, Some("cls.predictions.transform.LayerNorm"), Some("cls.predictions.decoder")];
const ROBERTA_MLM: &[Option<&str>] = &[Some("lm_head.dense"), None, Some("lm_head.layer_norm"), Some("lm_head.decoder")];
const DISTILBERT_MLM: &[Option<&str>] = &[Some("vocab_transform"), None, Some("vocab_layer_norm"), Some("vocab_projector")];

fn one_layer(head_type: &str) -> Value {
    json!({"head_type": head_type, "layers": 1, "activation_function": null})
}

fn masked_lm() -> Value {
    json!({"head_type": "masked_lm", "layers": 2, "activation_function": "gelu", "layer_norm": true, "bias": true})
}

fn pooled_multiple_choice() -> Value {
    json!({"head_type": "multiple_choice", "layers": 1, "activation_function": null, "use_pooler": true})
}

const TABLE: &[StaticHead] = &[
    StaticHead {
        class: "BertForSequenceClassification",
        config: || json!({"head_type": "classification", "layers": 1, "activation_function": null, "use_pooler": true}),
        layers: CLASSIFIER,
    },
    StaticHead { class: "BertForMultipleChoice", config: pooled_multiple_choice, layers: CLASSIFIER },
    StaticHead { class: "BertForTokenClassification", config: || one_layer("tagging"), layers: CLASSIFIER },
    StaticHead { class: "BertForQuestionAnswering", config: || one_layer("question_answering"), layers: QA },
    StaticHead { class: "BertForMaskedLM", config: masked_lm, layers: BERT_MLM },
    StaticHead {
        class: "RobertaForSequenceClassification",
        config: || json!({"head_type": "classification", "layers": 2, "activation_function": "tanh", "use_pooler": false}),
        layers: ROBERTA_CLASSIFIER,
    },
    StaticHead { class: "RobertaForMultipleChoice", config: pooled_multiple_choice, layers: CLASSIFIER },
    StaticHead { class: "RobertaForTokenClassification", config: || one_layer("tagging"), layers: CLASSIFIER },
    StaticHead { class: "RobertaForQuestionAnswering", config: || one_layer("question_answering"), layers: QA },
    StaticHead { class: "RobertaForMaskedLM", config: masked_lm, layers: ROBERTA_MLM },
    StaticHead {
        class: "DistilBertForSequenceClassification",
        config: || json!({"head_type": "classification", "layers": 2, "activation_function": "relu"}),
        layers: DISTILBERT_CLASSIFIER,
    },
    StaticHead {
        class: "DistilBertForMultipleChoice",
        config: || json!({"head_type": "multiple_choice", "layers": 2, "activation_function": "relu"}),
        layers: DISTILBERT_CLASSIFIER,
    },
    StaticHead { class: "DistilBertForTokenClassification", config: || one_layer("tagging"), layers: CLASSIFIER },
    StaticHead { class: "DistilBertForQuestionAnswering", config: || one_layer("question_answering"), layers: QA },
    StaticHead { class: "DistilBertForMaskedLM", config: masked_lm, layers: DISTILBERT_MLM },
    StaticHead { class: "LlamaForCausalLM", config: || json!({"head_type": "causal_lm"}), layers: LM_HEAD },
    StaticHead { class: "MistralForCausalLM", config: || json!({"head_type": "causal_lm"}), layers: LM_HEAD },
    StaticHead { class: "GPT2LMHeadModel", config: || json!({"head_type": "causal_lm"}), layers: LM_HEAD },
    // Encoder-decoders: the `lm_head` (tied to the shared embeddings unless the config unties
    // it; BART's `final_logits_bias` is not part of the converted head, as in Python).
    StaticHead { class: "BartForConditionalGeneration", config: || json!({"head_type": "seq2seq_lm"}), layers: LM_HEAD },
    StaticHead { class: "MBartForConditionalGeneration", config: || json!({"head_type": "seq2seq_lm"}), layers: LM_HEAD },
    StaticHead { class: "T5ForConditionalGeneration", config: || json!({"head_type": "seq2seq_lm"}), layers: LM_HEAD },
    StaticHead { class: "MT5ForConditionalGeneration", config: || json!({"head_type": "seq2seq_lm"}), layers: LM_HEAD },
    StaticHead { class: "ViTForImageClassification", config: || one_layer("image_classification"), layers: CLASSIFIER },
    // Python's map has no EncoderDecoderModel (no AutoAdapterModel class); converting its LM
    // head gives the model's logits through the same head code.
    StaticHead {
        class: "EncoderDecoderModel",
        config: || json!({"head_type": "causal_lm", "layers": 2, "activation_function": "gelu", "layer_norm": true, "bias": true}),
        layers: BERT_DECODER_LM,
    },
];

/// The entry of Python's map for a checkpoint config's class (`architectures[0]`), if any.
fn entry_of(config: &Value) -> Option<&'static StaticHead> {
    let class = config["architectures"].as_array().and_then(|a| a.first()).and_then(Value::as_str)?;
    TABLE.iter().find(|e| e.class == class)
}

/// Sets `key` where the map's config does not.
fn default(h: &mut serde_json::Map<String, Value>, key: &str, value: Value) {
    h.entry(key).or_insert(value);
}

/// The head config Python ends up with: the map's config, the labels
/// `get_head_config_and_rename_list` adds, and the keys the head class's constructor fills in
/// (`ClassificationHead`, `MultipleChoiceHead`, `TaggingHead`, `QuestionAnsweringHead`,
/// `BertStyleMaskedLMHead`, `CausalLMHead`), its defaults where the map sets none.
fn python_head_config(entry: &StaticHead, config: &Value) -> Result<Value> {
    let mut head = (entry.config)();
    let head_type = head["head_type"].as_str().unwrap_or_default().to_string();
    let h = head.as_object_mut().ok_or_else(|| AdapterError::InvalidConfig("static head config".into()))?;
    match head_type.as_str() {
        "seq2seq_lm" => {
            // `Seq2SeqLMHead`'s constructor keys.
            default(h, "vocab_size", config["vocab_size"].clone());
            default(h, "layers", json!(1));
            default(h, "activation_function", Value::Null);
            default(h, "layer_norm", json!(false));
            default(h, "bias", json!(false));
            default(h, "shift_labels", json!(false));
            default(h, "label2id", Value::Null);
        }
        "causal_lm" | "masked_lm" => {
            let causal = head_type == "causal_lm";
            // `model.config.vocab_size`, and `getattr(model.config, "embedding_size", hidden_size)`
            // (GPT-2's `hidden_size` is `n_embd`, DistilBERT's `dim`).
            default(h, "vocab_size", config["vocab_size"].clone());
            // An EncoderDecoderModel's sizes are its decoder's.
            let sizes = if config["decoder"].is_object() { &config["decoder"] } else { config };
            let embedding = ["embedding_size", "hidden_size", "n_embd", "dim"].iter().find_map(|k| sizes.get(*k).filter(|v| v.is_u64())).cloned();
            default(h, "embedding_size", embedding.unwrap_or(Value::Null));
            default(h, "layers", json!(if causal { 1 } else { 2 }));
            default(h, "activation_function", if causal { Value::Null } else { json!("gelu") });
            default(h, "layer_norm", json!(!causal));
            default(h, "bias", json!(!causal));
            default(h, "shift_labels", json!(causal));
            default(h, "label2id", Value::Null);
            // `BertStyleMaskedLMHead` has no `dropout_prob` key.
            if causal {
                default(h, "dropout_prob", Value::Null);
            }
        }
        _ => {
            // Python passes `model.config.label2id`; HF's config.json keeps `id2label`
            // ({"0": "LABEL_0", ...}, left out when it is the default of two labels).
            let mut label2id = serde_json::Map::new();
            if let Some(map) = config["id2label"].as_object() {
                for (id, label) in map {
                    if let (Ok(id), Some(label)) = (id.parse::<u64>(), label.as_str()) {
                        label2id.insert(label.to_string(), json!(id));
                    }
                }
            }
            if label2id.is_empty() {
                label2id = (0..2u64).map(|i| (format!("LABEL_{i}"), json!(i))).collect();
            }
            let num_labels = config["num_labels"].as_u64().map_or(label2id.len(), |n| n as usize);
            // Multiple choice: `num_choices` is the label count, not the choices of the inputs.
            let count = if head_type == "multiple_choice" { "num_choices" } else { "num_labels" };
            h.insert(count.into(), json!(num_labels));
            h.insert("label2id".into(), Value::Object(label2id));
            if matches!(head_type.as_str(), "classification" | "multiple_choice") {
                default(h, "use_pooler", json!(false));
            }
            if head_type == "image_classification" {
                default(h, "multilabel", json!(false));
                default(h, "use_pooler", json!(false));
            }
            if matches!(head_type.as_str(), "classification" | "image_classification") {
                default(h, "bias", json!(true));
            }
            default(h, "dropout_prob", Value::Null);
        }
    }
    Ok(head)
}

/// Adds the converted head of a task checkpoint (its `architectures[0]` in the table, and its
/// head weights in `tensors`) to `model` and activates it; does nothing for a bare model or a
/// class Python does not convert. `origin` names the weight file in errors.
pub fn add_static_head(model: &mut DynAdaptedModel, config: &Value, tensors: &HashMap<String, Tensor>, origin: &str) -> Result<bool> {
    let Some(entry) = entry_of(config) else { return Ok(false) };
    let class = entry.class;
    let head = HeadConfig::from_value(python_head_config(entry, config)?)?;
    // A language-model head's decoder (its last module) is the word embedding matrix when the
    // model ties them (HF then leaves the decoder weight out of the file).
    let tied = head.head_type().is_language_model() && model.ties_word_embeddings();
    if tied && config["tie_word_embeddings"] == json!(false) {
        return Err(AdapterError::File {
            file: origin.into(),
            reason: format!("the {class} checkpoint has `tie_word_embeddings: false`, but this model always ties its LM decoder to the word embeddings"),
        });
    }
    let decoder = entry.layers.len() - 1;
    // Without the head's weights in the file there is nothing to convert.
    let weight_of = |module: &str| tensors.get(&format!("{module}.weight"));
    let needed = entry.layers.iter().enumerate().filter(|(i, _)| !(tied && *i == decoder));
    if needed.filter_map(|(_, m)| *m).any(|m| weight_of(m).is_none()) {
        return Ok(false);
    }
    model.add_head(STATIC_HEAD_NAME, head, true)?;
    let params: HashMap<String, candle_core::Var> = model.head_params(STATIC_HEAD_NAME)?.into_iter().collect();
    for (index, module) in entry.layers.iter().enumerate() {
        let Some(module) = module else { continue };
        for kind in ["weight", "bias"] {
            let Some(var) = params.get(&format!("heads.{STATIC_HEAD_NAME}.{index}.{kind}")) else { continue };
            let Some(tensor) = tensors.get(&format!("{module}.{kind}")) else {
                // Python leaves a bias the file lacks at its init, zero (the BERT and RoBERTa
                // masked LM decoders above), as the head here starts.
                if kind == "bias" {
                    continue;
                }
                return Err(AdapterError::MissingTensor { file: origin.into(), tensor: format!("{module}.{kind}") });
            };
            if tensor.dims() != var.dims() {
                return Err(AdapterError::File {
                    file: origin.into(),
                    reason: format!("`{module}.{kind}` has shape {:?}, the {class} head expects {:?}", tensor.dims(), var.dims()),
                });
            }
            var.set(&tensor.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
    }
    Ok(true)
}

/// Reads the head tensors of a checkpoint folder's weight file: those of the modules the table
/// names for its class (none for a class Python does not convert).
pub fn head_tensors(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| AdapterError::Io { path: config_path.clone(), source: e })?;
    let config: Value =
        serde_json::from_str(&text).map_err(|e| AdapterError::File { file: config_path.display().to_string(), reason: format!("not valid JSON: {e}") })?;
    let Some(entry) = entry_of(&config) else { return Ok(HashMap::new()) };
    let path = dir.join(crate::MODEL_WEIGHTS);
    let origin = path.display().to_string();
    // SAFETY: mapped read-only; a checkpoint is not modified while it is read.
    let file = unsafe { candle_core::safetensors::MmapedSafetensors::new(&path) }
        .map_err(|e| AdapterError::File { file: origin.clone(), reason: format!("not a readable safetensors file: {e}") })?;
    let wanted: Vec<&str> = entry.layers.iter().flatten().copied().collect();
    let mut out = HashMap::new();
    for (name, _) in file.tensors() {
        let module = name.rsplit_once('.').map_or(name.as_str(), |(m, _)| m);
        if wanted.contains(&module) {
            out.insert(name.clone(), file.load(&name, &candle_core::Device::Cpu)?);
        }
    }
    Ok(out)
}
