//! Prediction heads on an adapted model: Python's `*AdapterModel` classes are an
//! [`AdaptedModel`] with heads. Heads are named like adapters; the head named after the active
//! adapter becomes the active head, and `save_adapter` / `load_adapter` carry it along.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Tensor, Var};

use super::{AdaptedModel, PYTHON_ADAPTERS_VERSION};
use crate::body::BaseModel;
use crate::error::{AdapterError, Result};
use crate::heads::{head_loss, HeadConfig, HeadDims, HeadFile, HeadOutput, HeadSetup, HeadType, PredictionHead};
use crate::heads::{HEAD_WEIGHTS_PICKLE, HEAD_WEIGHTS_SAFE};
use crate::model_io::ModelInputs;
use crate::setup::AdapterSetup;
use crate::state_dict::{Expected, Resolved};

/// Python's default `initializer_range`: new head weights are drawn from N(0, 0.02).
const INIT_STD: f32 = 0.02;

/// The outputs of a forward with heads.
#[derive(Clone, Debug)]
pub struct ModelOutput {
    /// `[batch, seq, hidden]` (`[channels * batch, ...]` under Parallel).
    pub last_hidden_state: Tensor,
    /// An encoder-decoder's encoder output.
    pub encoder_last_hidden_state: Option<Tensor>,
    /// The active head's output when exactly one head is active.
    pub head: Option<HeadOutput>,
    /// Every active head's output with the rows it read.
    pub heads: Vec<HeadResult>,
    pub head_setup: Option<HeadSetup>,
}

/// One head's output in a forward.
#[derive(Clone, Debug)]
pub struct HeadResult {
    pub name: String,
    /// `(first row, rows)` of `last_hidden_state` the head read.
    pub rows: (usize, usize),
    pub output: HeadOutput,
}

impl<M: BaseModel + ?Sized> AdaptedModel<M> {
    /// The config of head `name`, if the model has it.
    pub fn head_config(&self, name: &str) -> Option<&HeadConfig> {
        self.heads.get(name).map(PredictionHead::config)
    }

    /// Whether the base model ties its word embeddings (language-model heads then decode with
    /// the input embeddings).
    pub fn ties_word_embeddings(&self) -> bool {
        self.model.tie_word_embeddings()
    }

    /// The head called `name`, or the error that says there is none.
    pub(crate) fn head_named(&self, name: &str) -> Result<&PredictionHead> {
        self.heads.get(name).ok_or_else(|| AdapterError::InvalidConfig(format!("no head named `{name}` in this model")))
    }

    /// Head parameters under the names Python's state dict gives them (`heads.NAME.1.weight`).
    pub fn head_params(&self, name: &str) -> Result<Vec<(String, Var)>> {
        let head = self.head_named(name)?;
        Ok(head.params().iter().map(|p| (format!("heads.{name}.{}", p.name), p.var.clone())).collect())
    }

    /// Writes `head_config.json` and `model_head.safetensors` for head `name` into `dir`.
    pub fn save_head(&self, dir: impl AsRef<Path>, name: &str) -> Result<()> {
        let dir = dir.as_ref();
        self.head_named(name)?;
        std::fs::create_dir_all(dir).map_err(|e| AdapterError::io(dir, e))?;
        let mut batch = crate::io::FileBatch::new();
        self.stage_head(&mut batch, dir, name)?;
        batch.commit()
    }

    /// Adds the head's two files to a batch of files saved together.
    pub(crate) fn stage_head(&self, batch: &mut crate::io::FileBatch, dir: &Path, name: &str) -> Result<()> {
        let head = self.head_named(name)?;
        let tensors: HashMap<String, Tensor> = self.head_params(name)?.into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
        batch.add_safetensors(&dir.join(HEAD_WEIGHTS_SAFE), &tensors)?;
        let mapping = self.model.mapping();
        HeadFile {
            config: head.config().clone(),
            name: name.to_string(),
            hidden_size: Some(self.model.dims().hidden_size),
            model_type: Some(mapping.model_type.into()),
            model_class: Some(mapping.adapter_model_class.into()),
            model_name: None,
            version: format!("adapters.{PYTHON_ADAPTERS_VERSION}"),
            extra: Default::default(),
        }
        .stage(batch, dir)
    }
}

impl<M: BaseModel + ?Sized> AdaptedModel<M> {
    /// Loads an adapter folder written by `save_adapter` here or in Python (`adapter.safetensors`
    /// or `pytorch_adapter.bin`), under its own name or `load_as`, with its head if the folder
    /// holds one (`head_config.json`). Returns the name. Either everything loads or the model is
    /// unchanged.
    pub fn load_adapter(&mut self, dir: impl AsRef<Path>, load_as: Option<&str>) -> Result<String> {
        let dir = dir.as_ref();
        let name = self.load_adapter_only(dir, load_as)?;
        if HeadFile::exists(dir) {
            if let Err(e) = self.load_head(dir, Some(&name)) {
                self.delete_adapter(&name)?;
                return Err(e);
            }
        }
        Ok(name)
    }

    fn head_dims(&self) -> HeadDims {
        let dims = self.model.dims();
        HeadDims {
            hidden_size: dims.hidden_size,
            dropout: self.model.classifier_dropout().unwrap_or(dims.hidden_dropout_prob),
            layer_norm_eps: self.model.layer_norm_eps(),
            init_std: INIT_STD,
            tie_word_embeddings: self.model.tie_word_embeddings(),
        }
    }

    /// Adds a head built from `config` and makes it the active head (Python's
    /// `add_prediction_head(..., set_active=True)`). An existing head of that name is an error
    /// unless `overwrite` is set.
    pub fn add_head(&mut self, name: &str, config: HeadConfig, overwrite: bool) -> Result<()> {
        if self.heads.contains_key(name) && !overwrite {
            return Err(AdapterError::InvalidConfig(format!("a head named `{name}` already exists; delete it first or pass overwrite")));
        }
        if name.is_empty() || name.contains('.') {
            return Err(AdapterError::InvalidConfig(format!("head name `{name}` may not be empty or contain `.`")));
        }
        if config.use_pooler() && !self.model.has_pooler() {
            return Err(AdapterError::InvalidConfig(format!(
                "head `{name}` sets use_pooler, but this {} model has no pooler; use the first token instead (use_pooler = false)",
                self.model.mapping().model_type
            )));
        }
        let mut init = self.init_for(name, 0x4845_4144);
        let head = PredictionHead::new(config, self.head_dims(), &mut init)?;
        self.heads.insert(name.to_string(), head);
        self.active_head = Some(HeadSetup::Single(name.to_string()));
        Ok(())
    }

    /// `add_classification_head(name, num_labels, layers=2, activation_function="tanh")`, with
    /// optional label names (index = class id).
    ///
    /// ```no_run
    /// # fn demo(model: &mut adapters_runtime::DynAdaptedModel) -> adapters_runtime::Result<()> {
    /// let labels = ["negative".to_string(), "positive".to_string()];
    /// model.add_classification_head("mr", 2, Some(&labels))?;
    /// # Ok(()) }
    /// ```
    pub fn add_classification_head(&mut self, name: &str, num_labels: usize, id2label: Option<&[String]>) -> Result<()> {
        self.add_head(name, HeadConfig::classification(num_labels, 2, "tanh", id2label, false, false), false)
    }

    /// `add_classification_head(..., multilabel=True)`.
    pub fn add_multilabel_classification_head(&mut self, name: &str, num_labels: usize, id2label: Option<&[String]>) -> Result<()> {
        self.add_head(name, HeadConfig::classification(num_labels, 2, "tanh", id2label, false, true), false)
    }

    /// `add_image_classification_head(name, num_labels, layers=1, activation_function="tanh")`
    /// on a vision model, with optional label names (index = class id).
    pub fn add_image_classification_head(&mut self, name: &str, num_labels: usize, id2label: Option<&[String]>) -> Result<()> {
        self.add_head(name, HeadConfig::image_classification(num_labels, 1, "tanh", id2label, false, false), false)
    }

    /// `add_seq2seq_lm_head(name)` on an encoder-decoder: the decoder output to vocabulary logits,
    /// tied to the input embeddings.
    pub fn add_seq2seq_lm_head(&mut self, name: &str) -> Result<()> {
        let vocab = self.model.input_embeddings().map_or(0, |e| e.dims()[0]);
        self.add_head(name, HeadConfig::seq2seq_lm(vocab), false)
    }

    /// `add_tagging_head(name, num_labels, layers=1)`.
    pub fn add_tagging_head(&mut self, name: &str, num_labels: usize, id2label: Option<&[String]>) -> Result<()> {
        self.add_head(name, HeadConfig::token_level(HeadType::Tagging, num_labels, 1, "tanh", id2label), false)
    }

    /// `add_qa_head(name)`: start and end logits per token.
    pub fn add_qa_head(&mut self, name: &str) -> Result<()> {
        self.add_head(name, HeadConfig::token_level(HeadType::QuestionAnswering, 2, 1, "tanh", None), false)
    }

    /// `add_multiple_choice_head(name, num_choices, layers=2)`: inputs are `[batch * choices, seq]`.
    pub fn add_multiple_choice_head(&mut self, name: &str, num_choices: usize) -> Result<()> {
        self.add_head(name, HeadConfig::multiple_choice(num_choices, 2, "tanh"), false)
    }

    /// `add_masked_lm_head(name)`: decoder tied to the input embeddings.
    pub fn add_masked_lm_head(&mut self, name: &str) -> Result<()> {
        let vocab = self.vocab_size("a masked LM head")?;
        let hidden = self.model.dims().hidden_size;
        self.add_head(name, HeadConfig::masked_lm(vocab, hidden, 2, "gelu"), false)
    }

    /// `add_causal_lm_head(name)` with Python's defaults (`gelu`, 2 layers: dense, activation,
    /// LayerNorm, then the decoder with a bias), its decoder tied to the input embeddings when
    /// the model ties its word embeddings.
    pub fn add_causal_lm_head(&mut self, name: &str) -> Result<()> {
        let vocab = self.vocab_size("a causal LM head")?;
        let hidden = self.model.dims().hidden_size;
        self.add_head(name, HeadConfig::causal_lm(vocab, hidden, 2, Some("gelu"), true, true), false)
    }

    /// The vocabulary size, from the input embeddings.
    fn vocab_size(&self, what: &str) -> Result<usize> {
        self.model.input_embeddings().map(|e| e.dim(0)).transpose()?.ok_or_else(|| {
            AdapterError::InvalidConfig(format!(
                "{what} decodes to the vocabulary of the input embeddings, and this {} model exposes none",
                self.model.mapping().model_type
            ))
        })
    }

    pub fn delete_head(&mut self, name: &str) -> Result<()> {
        self.head_named(name)?;
        self.heads.remove(name);
        if self.active_head.as_ref().is_some_and(|h| h.names().contains(&name)) {
            self.active_head = None;
        }
        Ok(())
    }

    /// The base output and the active heads' outputs: one head over the batch, or one per
    /// Parallel channel or BatchSplit part over its rows (Python's `MultiHeadOutput`).
    pub fn forward_with_head(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<ModelOutput> {
        self.forward_inputs_with_head(&ModelInputs::text(input_ids.clone(), attention_mask.clone()))
    }

    /// [`AdaptedModel::forward_with_head`] on any inputs the model takes (a KV cache, position
    /// ids, ...).
    pub fn forward_inputs_with_head(&self, inputs: &ModelInputs<'_>) -> Result<ModelOutput> {
        self.forward_heads(inputs, false)
    }

    /// [`AdaptedModel::forward_inputs_with_head`]; with `last_position_only`, token-level heads
    /// read only each row's last position (generation needs no more: a vocabulary-sized output
    /// per prompt position is the largest product of a prompt pass).
    pub(crate) fn forward_heads(&self, inputs: &ModelInputs<'_>, last_position_only: bool) -> Result<ModelOutput> {
        let (inputs, ctx) = self.prepare(inputs)?;
        let outputs = self.model.forward_with(&inputs, &ctx)?;
        let hidden = outputs.last_hidden_state;
        let head_input = if self.active_head.is_some() { self.model.head_input(&hidden)? } else { hidden.clone() };
        let rows = hidden.dim(0)?;
        let mut heads = Vec::new();
        if let Some(setup) = &self.active_head {
            let names = setup.names();
            let ranges: Vec<(usize, usize)> = match setup {
                HeadSetup::Single(_) => vec![(0, rows)],
                HeadSetup::Parallel(heads) => {
                    let channels = self.active.as_deref().map_or(1, AdapterSetup::parallel_channels);
                    if heads.len() != channels {
                        return Err(AdapterError::Setup {
                            setup: format!("heads {heads:?}"),
                            reason: format!("{} heads for {channels} parallel channels; the numbers must match", heads.len()),
                        });
                    }
                    (0..channels).map(|i| (i * rows / channels, rows / channels)).collect()
                }
                HeadSetup::BatchSplit { batch_sizes, .. } => {
                    if batch_sizes.iter().sum::<usize>() != rows {
                        return Err(AdapterError::Setup {
                            setup: format!("heads {names:?}"),
                            reason: format!("batch_sizes {batch_sizes:?} do not add up to the batch of {rows} rows"),
                        });
                    }
                    crate::composition::consecutive(batch_sizes)
                }
            };
            for (name, (start, len)) in names.into_iter().zip(ranges) {
                let head = self.head_named(name)?;
                let part = if len == rows { head_input.clone() } else { head_input.narrow(0, start, len)? };
                let head_type = head.config().head_type();
                let part = if last_position_only && !head_type.is_sequence_level() { part.narrow(1, part.dim(1)? - 1, 1)? } else { part };
                // The vector per sequence: the pooler output, or what the model reads (the first
                // token of an encoder, the last real token of a decoder).
                let summary = match (head_type.is_sequence_level(), head.config().use_pooler()) {
                    (false, _) => None,
                    (true, true) => self.model.pooled_output(&part).transpose()?,
                    (true, false) => {
                        // Vision models have no ids (and read the CLS position).
                        let ids = match &inputs.input_ids {
                            Some(ids) if len != rows => Some(ids.narrow(0, start, len)?),
                            ids => ids.clone(),
                        };
                        Some(self.model.sequence_output(&part, ids.as_ref())?)
                    }
                };
                let embeddings = if head.is_tied() { self.model.input_embeddings() } else { None };
                let inverse = if head_type.is_language_model() { self.active_invertible() } else { None };
                let output = head.forward(&part, summary.as_ref(), embeddings, inverse, &ctx)?;
                heads.push(HeadResult { name: name.to_string(), rows: (start, len), output });
            }
        }
        let head = match (&self.active_head, heads.as_slice()) {
            (Some(HeadSetup::Single(_)), [one]) => Some(one.output.clone()),
            _ => None,
        };
        Ok(ModelOutput {
            last_hidden_state: hidden,
            encoder_last_hidden_state: outputs.encoder_last_hidden_state,
            head,
            heads,
            head_setup: self.active_head.clone(),
        })
    }

    /// The invertible adapter of the active setup's first adapter, which language-model heads run
    /// in reverse before their decoder (as Python's do).
    pub(crate) fn active_invertible(&self) -> Option<&crate::methods::invertible::InvertibleAdapter> {
        let first = self.active.as_deref()?.first()?;
        self.model.embedding_slot()?.invertible(first)
    }

    /// The prompt length of the active setup's first adapter (the one whose prompt runs).
    fn prompt_length(&self) -> Option<usize> {
        let first = self.active.as_deref()?.first()?;
        self.model.embedding_slot()?.prompts.get(first).map(|p| p.length())
    }

    /// The active heads' loss on `labels` (see [`head_loss`] for the label shapes). With one
    /// head per Parallel channel, each head's loss is taken on the same labels (of the original
    /// batch); with BatchSplit, each on its rows' labels; the losses are summed, as in Python.
    /// Under prompt tuning, token-level labels get the prompt's positions as ignored labels.
    pub fn head_loss(&self, output: &ModelOutput, labels: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        if output.heads.is_empty() {
            return Err(AdapterError::InvalidConfig("no head is active".into()));
        }
        let mut total: Option<Tensor> = None;
        for result in &output.heads {
            let head = self.head_named(&result.name)?;
            let (start, len) = result.rows;
            let (labels, mask) = match &output.head_setup {
                Some(HeadSetup::BatchSplit { .. }) => (labels.narrow(0, start, len)?, attention_mask.map(|m| m.narrow(0, start, len)).transpose()?),
                _ => (labels.clone(), attention_mask.cloned()),
            };
            // A prompt lengthens token-level outputs: its positions get ignored labels and count
            // as attended, as in Python's heads.
            let (labels, mask) = match self.prompt_length() {
                Some(p) if !head.config().head_type().is_sequence_level() && labels.rank() == 2 => {
                    let rows = labels.dim(0)?;
                    let ignored = Tensor::full(crate::heads::IGNORE_INDEX, (rows, p), labels.device())?.to_dtype(labels.dtype())?;
                    let labels = Tensor::cat(&[&ignored, &labels], 1)?;
                    let mask = match mask {
                        Some(m) => Some(Tensor::cat(&[&Tensor::ones((rows, p), m.dtype(), m.device())?, &m], 1)?),
                        None => None,
                    };
                    (labels, mask)
                }
                _ => (labels, mask),
            };
            let loss = head_loss(head.config(), &result.output, &labels, mask.as_ref())?;
            total = Some(match total {
                None => loss,
                Some(t) => (t + loss)?,
            });
        }
        total.ok_or_else(|| AdapterError::InvalidConfig("no head is active".into()))
    }

    /// Loads a head saved here or by Python (`model_head.safetensors` or
    /// `pytorch_model_head.bin`) under its name or `load_as`, and makes it active. All tensors
    /// load or the model is unchanged.
    pub fn load_head(&mut self, dir: impl AsRef<Path>, load_as: Option<&str>) -> Result<String> {
        let dir = dir.as_ref();
        let file = HeadFile::read(dir)?;
        let config_path = dir.join(crate::heads::HEAD_CONFIG_NAME).display().to_string();
        if let Some(h) = file.hidden_size.filter(|h| *h != self.model.dims().hidden_size) {
            return Err(AdapterError::ConfigKey {
                file: config_path,
                key: "hidden_size".into(),
                reason: format!("the head was saved for hidden size {h}, this model has {}", self.model.dims().hidden_size),
            });
        }
        let weights_path = crate::io::find_weights(dir, HEAD_WEIGHTS_SAFE, HEAD_WEIGHTS_PICKLE)?;
        let weights = crate::io::read_weights(&weights_path, &self.placement.device)?;
        let origin = weights_path.display().to_string();
        let name = load_as.unwrap_or(&file.name).to_string();
        let mut init = self.init_for(&name, 0x4845_4144);
        let head = PredictionHead::new(file.config.clone(), self.head_dims(), &mut init)?;
        let prefix = format!("heads.{}.", file.name);
        let params = head.params().iter().map(|p| (p.name.clone(), p.var.clone())).collect();
        let expected = Expected { origin: &origin, owner: format!("head {}", file.name), params };
        let resolve = |key: &str| match key.strip_prefix(&prefix) {
            Some(local) if expected.params.contains_key(local) => Resolved::Param(local.into()),
            // The tied decoder weight is the embedding matrix, which Python may save too.
            Some(local) if head.is_tied() && local.ends_with(".weight") => Resolved::Ignored,
            _ => Resolved::Unknown,
        };
        expected.load(&weights, resolve, |local| AdapterError::MissingTensor { file: origin.clone(), tensor: format!("{prefix}{local}") })?;
        self.heads.insert(name.clone(), head);
        self.active_head = Some(HeadSetup::Single(name.clone()));
        Ok(name)
    }
}
