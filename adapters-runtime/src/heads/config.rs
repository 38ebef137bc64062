//! Head configs, as the Python library keeps them (`head.config`, saved under `config` in
//! `head_config.json`). The raw JSON object is kept so that a config loaded from Python is written
//! back key for key; typed accessors read it.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::error::{AdapterError, Result};

/// The head types built here, by their Python `head_type` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadType {
    Classification,
    MultiLabelClassification,
    Tagging,
    QuestionAnswering,
    MultipleChoice,
    MaskedLm,
    CausalLm,
    /// `add_image_classification_head`: a classification head over the CLS position of a vision
    /// model, `multilabel` a key of its config rather than a type of its own.
    ImageClassification,
    /// `add_seq2seq_lm_head`: an encoder-decoder's decoder to the vocabulary (a causal LM head
    /// that does not shift its labels: the decoder's inputs are already shifted).
    Seq2SeqLm,
}

impl HeadType {
    pub const ALL: [HeadType; 9] = [
        HeadType::Classification,
        HeadType::MultiLabelClassification,
        HeadType::Tagging,
        HeadType::QuestionAnswering,
        HeadType::MultipleChoice,
        HeadType::MaskedLm,
        HeadType::CausalLm,
        HeadType::ImageClassification,
        HeadType::Seq2SeqLm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            HeadType::Classification => "classification",
            HeadType::MultiLabelClassification => "multilabel_classification",
            HeadType::Tagging => "tagging",
            HeadType::QuestionAnswering => "question_answering",
            HeadType::MultipleChoice => "multiple_choice",
            HeadType::MaskedLm => "masked_lm",
            HeadType::CausalLm => "causal_lm",
            HeadType::ImageClassification => "image_classification",
            HeadType::Seq2SeqLm => "seq2seq_lm",
        }
    }

    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|t| t.name()).collect();
            AdapterError::InvalidConfig(format!("unknown head type `{name}`; known: {}", known.join(", ")))
        })
    }

    /// Language-modeling heads: a decoder to the vocabulary, tied to the input embeddings
    /// when the model ties its word embeddings.
    pub fn is_language_model(self) -> bool {
        matches!(self, HeadType::MaskedLm | HeadType::CausalLm | HeadType::Seq2SeqLm)
    }

    /// Heads that read one vector per sequence (the first token or the pooler output).
    pub fn is_sequence_level(self) -> bool {
        matches!(self, HeadType::Classification | HeadType::MultiLabelClassification | HeadType::MultipleChoice | HeadType::ImageClassification)
    }
}

/// A head config: the head type plus its keys, exactly as Python writes them.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadConfig {
    head_type: HeadType,
    raw: Map<String, Value>,
}

fn labels_map(id2label: Option<&[String]>, count: usize) -> Value {
    // Python fills a missing map with LABEL_i when the head is added.
    let labels: Vec<String> = match id2label {
        Some(names) => names.to_vec(),
        None => (0..count).map(|i| format!("LABEL_{i}")).collect(),
    };
    Value::Object(labels.into_iter().enumerate().map(|(i, l)| (l, json!(i))).collect())
}

impl HeadConfig {
    /// `add_classification_head(num_labels, layers, activation_function, id2label, use_pooler)`;
    /// `multilabel` gives Python's `MultiLabelClassificationHead`.
    ///
    /// ```
    /// use adapters_runtime::{HeadConfig, HeadType};
    /// let labels = ["negative".to_string(), "positive".to_string()];
    /// let head = HeadConfig::classification(2, 2, "tanh", Some(&labels), false, false);
    /// assert_eq!(head.head_type(), HeadType::Classification);
    /// assert_eq!(head.label_name(1), "positive");
    /// // The JSON Python writes under `config` in head_config.json.
    /// assert_eq!(head.to_value()["label2id"]["negative"], 0);
    /// ```
    pub fn classification(num_labels: usize, layers: usize, activation: &str, id2label: Option<&[String]>, use_pooler: bool, multilabel: bool) -> Self {
        let head_type = if multilabel { HeadType::MultiLabelClassification } else { HeadType::Classification };
        let raw = json!({
            "head_type": head_type.name(),
            "num_labels": num_labels,
            "layers": layers,
            "activation_function": activation,
            "label2id": labels_map(id2label, num_labels),
            "use_pooler": use_pooler,
            "bias": true,
            "dropout_prob": null,
        });
        Self::built(head_type, raw)
    }

    /// `add_image_classification_head(num_labels, layers, activation_function, multilabel,
    /// id2label, use_pooler)`, with Python's keys.
    pub fn image_classification(num_labels: usize, layers: usize, activation: &str, id2label: Option<&[String]>, multilabel: bool, use_pooler: bool) -> Self {
        let raw = json!({
            "head_type": HeadType::ImageClassification.name(),
            "num_labels": num_labels,
            "layers": layers,
            "activation_function": activation,
            "multilabel": multilabel,
            "label2id": labels_map(id2label, num_labels),
            "use_pooler": use_pooler,
            "bias": true,
            "dropout_prob": null,
        });
        Self::built(HeadType::ImageClassification, raw)
    }

    /// `add_tagging_head` (`tagging`) or `add_qa_head` (`question_answering`, two labels: start, end).
    pub fn token_level(head_type: HeadType, num_labels: usize, layers: usize, activation: &str, id2label: Option<&[String]>) -> Self {
        let raw = json!({
            "head_type": head_type.name(),
            "num_labels": num_labels,
            "layers": layers,
            "activation_function": activation,
            "label2id": labels_map(id2label, num_labels),
            "dropout_prob": null,
        });
        Self::built(head_type, raw)
    }

    /// `add_multiple_choice_head(num_choices, layers, activation_function)`.
    pub fn multiple_choice(num_choices: usize, layers: usize, activation: &str) -> Self {
        let raw = json!({
            "head_type": "multiple_choice",
            "num_choices": num_choices,
            "layers": layers,
            "activation_function": activation,
            "label2id": labels_map(None, num_choices),
            "use_pooler": false,
            "dropout_prob": null,
        });
        Self::built(HeadType::MultipleChoice, raw)
    }

    /// `add_masked_lm_head`: dense, activation, LayerNorm, then a decoder tied to the input
    /// embeddings.
    pub fn masked_lm(vocab_size: usize, hidden_size: usize, layers: usize, activation: &str) -> Self {
        let raw = json!({
            "head_type": "masked_lm",
            "vocab_size": vocab_size,
            "embedding_size": hidden_size,
            "layers": layers,
            "activation_function": activation,
            "layer_norm": true,
            "bias": true,
            "shift_labels": false,
            "label2id": null,
        });
        Self::built(HeadType::MaskedLm, raw)
    }

    /// `add_seq2seq_lm_head` (Python's defaults: one layer, no activation, no bias): the decoder
    /// output times the vocabulary matrix, tied to the input embeddings.
    pub fn seq2seq_lm(vocab_size: usize) -> Self {
        let raw = json!({
            "head_type": "seq2seq_lm",
            "vocab_size": vocab_size,
            "layers": 1,
            "activation_function": null,
            "layer_norm": false,
            "bias": false,
            "shift_labels": false,
            "label2id": null,
        });
        Self::built(HeadType::Seq2SeqLm, raw)
    }

    /// `add_causal_lm_head(activation_function, layers)` (Python's defaults: `gelu`, 2): dense,
    /// activation and LayerNorm per extra layer, then a decoder with a bias. A checkpoint's own
    /// `lm_head` converts to `causal_lm(vocab, hidden, 1, None, false, false)`.
    pub fn causal_lm(vocab_size: usize, hidden_size: usize, layers: usize, activation: Option<&str>, layer_norm: bool, bias: bool) -> Self {
        let raw = json!({
            "head_type": "causal_lm",
            "vocab_size": vocab_size,
            "embedding_size": hidden_size,
            "layers": layers,
            "activation_function": activation,
            "layer_norm": layer_norm,
            "bias": bias,
            "shift_labels": true,
            "label2id": null,
            "dropout_prob": null,
        });
        Self::built(HeadType::CausalLm, raw)
    }

    /// Whether the loss compares position `i`'s logits with label `i + 1` (causal LM).
    pub fn shift_labels(&self) -> bool {
        self.raw.get("shift_labels").and_then(Value::as_bool).unwrap_or(self.head_type == HeadType::CausalLm)
    }

    /// A config the constructors build: the keys are right by construction; the activation name
    /// is checked when the head is built.
    fn built(head_type: HeadType, raw: Value) -> Self {
        let raw = match raw {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        HeadConfig { head_type, raw }
    }

    /// Reads a config object (`head_config.json`'s `config`), checking the keys its type needs.
    pub fn from_value(value: Value) -> Result<Self> {
        let Value::Object(raw) = value else {
            return Err(AdapterError::InvalidConfig("a head config is a JSON object".into()));
        };
        let head_type = match raw.get("head_type") {
            Some(Value::String(s)) => HeadType::parse(s)?,
            _ => return Err(AdapterError::InvalidConfig("head config has no string `head_type`".into())),
        };
        let config = HeadConfig { head_type, raw };
        config.usize_key("layers")?;
        match head_type {
            HeadType::MultipleChoice => {
                config.usize_key("num_choices")?;
            }
            HeadType::MaskedLm | HeadType::CausalLm | HeadType::Seq2SeqLm => {
                config.usize_key("vocab_size")?;
            }
            _ => {
                config.usize_key("num_labels")?;
            }
        }
        if let Some(name) = config.activation() {
            crate::nn::activation::Activation::parse(name)?;
        }
        Ok(config)
    }

    pub fn to_value(&self) -> Value {
        Value::Object(self.raw.clone())
    }

    pub fn head_type(&self) -> HeadType {
        self.head_type
    }

    fn usize_key(&self, key: &str) -> Result<usize> {
        self.raw
            .get(key)
            .and_then(Value::as_u64)
            .map(|v| v as usize)
            .ok_or_else(|| AdapterError::InvalidConfig(format!("{} head config needs a non-negative integer `{key}`", self.head_type.name())))
    }

    pub fn layers(&self) -> usize {
        self.usize_key("layers").unwrap_or(1)
    }

    /// Outputs of the last linear: labels, 1 for multiple choice, the vocabulary for masked LM.
    pub fn out_features(&self) -> usize {
        match self.head_type {
            HeadType::MultipleChoice => 1,
            HeadType::MaskedLm | HeadType::CausalLm | HeadType::Seq2SeqLm => self.usize_key("vocab_size").unwrap_or(0),
            _ => self.usize_key("num_labels").unwrap_or(0),
        }
    }

    pub fn num_labels(&self) -> usize {
        match self.head_type {
            HeadType::MultipleChoice => self.usize_key("num_choices").unwrap_or(0),
            _ => self.out_features(),
        }
    }

    pub fn activation(&self) -> Option<&str> {
        self.raw.get("activation_function").and_then(Value::as_str).filter(|s| !s.is_empty())
    }

    /// `multilabel` of an image classification head (a binary cross-entropy loss).
    pub fn multilabel(&self) -> bool {
        self.raw.get("multilabel").and_then(Value::as_bool).unwrap_or(false)
    }

    pub fn use_pooler(&self) -> bool {
        self.raw.get("use_pooler").and_then(Value::as_bool).unwrap_or(false)
    }

    pub fn bias(&self) -> bool {
        self.raw.get("bias").and_then(Value::as_bool).unwrap_or(true)
    }

    pub fn layer_norm(&self) -> bool {
        self.raw.get("layer_norm").and_then(Value::as_bool).unwrap_or(false)
    }

    /// `dropout_prob` if set; otherwise the model's (Python falls back to `hidden_dropout_prob`).
    pub fn dropout_prob(&self) -> Option<f64> {
        self.raw.get("dropout_prob").and_then(Value::as_f64)
    }

    /// Label names by id, from `label2id`.
    pub fn id2label(&self) -> BTreeMap<usize, String> {
        let mut out = BTreeMap::new();
        if let Some(Value::Object(map)) = self.raw.get("label2id") {
            for (label, id) in map {
                if let Some(id) = id.as_u64() {
                    out.insert(id as usize, label.clone());
                }
            }
        }
        out
    }

    /// The label name of class `id` (`LABEL_id` when the config has none).
    pub fn label_name(&self, id: usize) -> String {
        self.id2label().remove(&id).unwrap_or_else(|| format!("LABEL_{id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_config_matches_python_keys() {
        let c = HeadConfig::classification(2, 2, "tanh", Some(&["negative".into(), "positive".into()]), false, false);
        let v = c.to_value();
        assert_eq!(v["head_type"], "classification");
        assert_eq!(v["label2id"], json!({"negative": 0, "positive": 1}));
        assert_eq!(v["dropout_prob"], Value::Null);
        assert_eq!(c.label_name(1), "positive");
        assert_eq!(HeadConfig::from_value(v).unwrap(), c);
    }

    #[test]
    fn bad_configs_name_the_key() {
        let err = HeadConfig::from_value(json!({"head_type": "classification", "layers": 2})).unwrap_err();
        assert!(err.to_string().contains("num_labels"), "{err}");
        let err = HeadConfig::from_value(json!({"head_type": "regression"})).unwrap_err();
        assert!(err.to_string().contains("unknown head type `regression`"), "{err}");
    }
}
