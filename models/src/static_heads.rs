//! Task checkpoints' heads as flexible heads, as the Python library's `AutoAdapterModel` converts
//! them (`head_utils.STATIC_TO_FLEX_HEAD_MAP`): a `BertForSequenceClassification`'s `classifier`
//! becomes a classification head named `default`, a `LlamaForCausalLM`'s `lm_head` a causal LM
//! head, and so on, with the checkpoint's weights at the head's module indices. The converted
//! head is active until an adapter folder brings its own.

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

fn one_layer(head_type: &str) -> Value {
    json!({"head_type": head_type, "layers": 1, "activation_function": null})
}

const TABLE: &[StaticHead] = &[
    StaticHead {
        class: "BertForSequenceClassification",
        config: || json!({"head_type": "classification", "layers": 1, "activation_function": null, "use_pooler": true}),
        layers: CLASSIFIER,
    },
    StaticHead { class: "BertForTokenClassification", config: || one_layer("tagging"), layers: CLASSIFIER },
    StaticHead { class: "BertForQuestionAnswering", config: || one_layer("question_answering"), layers: QA },
    StaticHead {
        class: "RobertaForSequenceClassification",
        config: || json!({"head_type": "classification", "layers": 2, "activation_function": "tanh", "use_pooler": false}),
        layers: ROBERTA_CLASSIFIER,
    },
    StaticHead { class: "RobertaForTokenClassification", config: || one_layer("tagging"), layers: CLASSIFIER },
    StaticHead { class: "RobertaForQuestionAnswering", config: || one_layer("question_answering"), layers: QA },
    StaticHead {
        class: "DistilBertForSequenceClassification",
        config: || json!({"head_type": "classification", "layers": 2, "activation_function": "relu"}),
        layers: DISTILBERT_CLASSIFIER,
    },
    StaticHead { class: "DistilBertForTokenClassification", config: || one_layer("tagging"), layers: CLASSIFIER },
    StaticHead { class: "DistilBertForQuestionAnswering", config: || one_layer("question_answering"), layers: QA },
    StaticHead { class: "LlamaForCausalLM", config: || json!({"head_type": "causal_lm"}), layers: LM_HEAD },
    StaticHead { class: "MistralForCausalLM", config: || json!({"head_type": "causal_lm"}), layers: LM_HEAD },
    StaticHead { class: "GPT2LMHeadModel", config: || json!({"head_type": "causal_lm"}), layers: LM_HEAD },
];

/// Adds the converted head of a task checkpoint (its `architectures[0]` in the table, and its
/// head weights in `tensors`) to `model` and activates it; does nothing for a bare model or a
/// class Python does not convert. `origin` names the weight file in errors.
pub fn add_static_head(model: &mut DynAdaptedModel, config: &Value, tensors: &HashMap<String, Tensor>, origin: &str) -> Result<bool> {
    let Some(class) = config["architectures"].as_array().and_then(|a| a.first()).and_then(Value::as_str) else { return Ok(false) };
    let Some(entry) = TABLE.iter().find(|e| e.class == class) else { return Ok(false) };
    let mut head = (entry.config)();
    let head_type = head["head_type"].as_str().unwrap_or_default().to_string();
    if head_type == "causal_lm" {
        let vocab = config["vocab_size"].clone();
        let hidden = config.get("hidden_size").or_else(|| config.get("n_embd")).cloned().unwrap_or(Value::Null);
        if let Some(h) = head.as_object_mut() {
            h.extend([
                ("vocab_size".into(), vocab),
                ("embedding_size".into(), hidden),
                ("layers".into(), json!(1)),
                ("activation_function".into(), Value::Null),
                ("layer_norm".into(), json!(false)),
                ("bias".into(), json!(false)),
                ("shift_labels".into(), json!(true)),
                ("label2id".into(), Value::Null),
                ("dropout_prob".into(), Value::Null),
            ]);
        }
    } else {
        // HF configs keep `id2label` ({"0": "LABEL_0", ...}); Python converts it to `label2id`.
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
        let h = head.as_object_mut().ok_or_else(|| AdapterError::InvalidConfig("static head config".into()))?;
        h.insert("num_labels".into(), json!(num_labels));
        h.insert("label2id".into(), Value::Object(label2id));
        // The keys Python's head classes add when built.
        if head_type == "classification" {
            h.entry("use_pooler").or_insert(json!(false));
            h.insert("bias".into(), json!(true));
        }
        h.insert("dropout_prob".into(), Value::Null);
    }
    // Without the head's weights in the file (a tied LM decoder aside) there is nothing to convert.
    let tied = head_type == "causal_lm" && model.ties_word_embeddings();
    let weight_of = |module: &str| tensors.get(&format!("{module}.weight"));
    if !tied && entry.layers.iter().flatten().any(|m| weight_of(m).is_none()) {
        return Ok(false);
    }
    model.add_head(STATIC_HEAD_NAME, HeadConfig::from_value(head)?, true)?;
    let params: HashMap<String, candle_core::Var> = model.head_params(STATIC_HEAD_NAME)?.into_iter().collect();
    for (index, module) in entry.layers.iter().enumerate() {
        let Some(module) = module else { continue };
        for kind in ["weight", "bias"] {
            let Some(var) = params.get(&format!("heads.{STATIC_HEAD_NAME}.{index}.{kind}")) else { continue };
            let tensor = tensors
                .get(&format!("{module}.{kind}"))
                .ok_or_else(|| AdapterError::MissingTensor { file: origin.into(), tensor: format!("{module}.{kind}") })?;
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

/// Reads the head tensors of a checkpoint folder's weight file (only those the table names).
pub fn head_tensors(dir: &Path) -> Result<HashMap<String, Tensor>> {
    let path = dir.join(crate::MODEL_WEIGHTS);
    let origin = path.display().to_string();
    // SAFETY: mapped read-only; a checkpoint is not modified while it is read.
    let file = unsafe { candle_core::safetensors::MmapedSafetensors::new(&path) }
        .map_err(|e| AdapterError::File { file: origin.clone(), reason: format!("not a readable safetensors file: {e}") })?;
    let wanted: Vec<&str> = TABLE.iter().flat_map(|e| e.layers.iter().flatten().copied()).collect();
    let mut out = HashMap::new();
    for (name, _) in file.tensors() {
        let module = name.rsplit_once('.').map_or(name.as_str(), |(m, _)| m);
        if wanted.contains(&module) {
            out.insert(name.clone(), file.load(&name, &candle_core::Device::Cpu)?);
        }
    }
    Ok(out)
}
