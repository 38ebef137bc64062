//! The training loop for sequence classification on labelled text: shuffled batches, AdamW with
//! linear warm-up and decay, optional gradient clipping, evaluation after each epoch, the best
//! epoch's weights kept, fixed seeds, and a progress bar with loss and throughput.

use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::optim::AdamWStep;
use super::schedule::LinearSchedule;
use super::text::TextEncoder;
use crate::error::{AdapterError, Result};
use crate::methods::init::Rng;
use crate::DynAdaptedModel;

/// Hyper-parameters. The defaults are the protocol of the reference results on MR
/// (REFERENCE.md): batch 32, max length 64, warm-up ratio 0.06, no weight decay, no clipping,
/// 3 epochs, seed 42; only the learning rate depends on the method.
#[derive(Clone, Debug, Serialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub max_grad_norm: Option<f64>,
    pub seed: u64,
    pub max_length: usize,
    /// Show a progress bar on stderr.
    #[serde(skip)]
    pub progress: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 3,
            batch_size: 32,
            learning_rate: 1e-4,
            warmup_ratio: 0.06,
            weight_decay: 0.0,
            max_grad_norm: None,
            seed: 42,
            max_length: 64,
            progress: true,
        }
    }
}

/// Texts with class ids.
pub struct LabelledTexts<'a> {
    pub texts: Vec<&'a str>,
    pub labels: Vec<u32>,
}

/// One epoch's numbers.
#[derive(Clone, Debug, Serialize)]
pub struct EpochReport {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_seconds: f64,
    pub examples_per_second: f64,
    pub dev_accuracy: Option<f64>,
    pub dev_loss: Option<f64>,
}

/// What a run did.
#[derive(Clone, Debug, Serialize)]
pub struct TrainReport {
    pub config: TrainConfig,
    pub trainable_parameters: usize,
    pub epochs: Vec<EpochReport>,
    /// The earliest epoch with the best dev accuracy (1-based); its weights are restored.
    pub best_epoch: Option<usize>,
}

/// Accuracy, mean loss and predicted ids over a labelled set.
#[derive(Clone, Debug, Serialize)]
pub struct Evaluation {
    pub accuracy: f64,
    pub loss: f64,
    pub examples: usize,
    pub seconds: f64,
    #[serde(skip)]
    pub predictions: Vec<u32>,
}

pub(crate) fn progress_bar(len: usize, show: bool, prefix: String) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64).with_prefix(prefix);
    let style = ProgressStyle::with_template("{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}

fn labels_tensor(labels: &[u32], device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(labels.iter().map(|&l| i64::from(l)).collect::<Vec<_>>(), labels.len(), device)?)
}

/// Runs the active head over `data` in evaluation mode (dropout off) and scores it.
pub fn evaluate(model: &mut DynAdaptedModel, encoder: &TextEncoder, data: &LabelledTexts<'_>, batch_size: usize, progress: bool) -> Result<Evaluation> {
    let was_training = model.is_training();
    model.set_training(false);
    let start = Instant::now();
    let batches = data.texts.len().div_ceil(batch_size.max(1));
    let bar = progress_bar(batches, progress, "eval".into());
    let mut predictions = Vec::with_capacity(data.texts.len());
    let mut loss_sum = 0f64;
    let result = (|| -> Result<()> {
        for (texts, labels) in data.texts.chunks(batch_size.max(1)).zip(data.labels.chunks(batch_size.max(1))) {
            let enc = encoder.encode(texts, &model.placement().device)?;
            let out = model.forward_with_head(&enc.input_ids, &enc.attention_mask)?;
            let loss = model.head_loss(&out, &labels_tensor(labels, &model.placement().device)?, Some(&enc.attention_mask))?;
            loss_sum += f64::from(loss.to_scalar::<f32>()?) * labels.len() as f64;
            let logits = out.head.as_ref().ok_or_else(|| AdapterError::InvalidConfig("no head is active".into()))?.logits().clone();
            predictions.extend(logits.argmax(candle_core::D::Minus1)?.to_dtype(DType::U32)?.to_vec1::<u32>()?);
            bar.inc(1);
        }
        Ok(())
    })();
    bar.finish_and_clear();
    model.set_training(was_training);
    result?;
    let correct = predictions.iter().zip(&data.labels).filter(|(p, l)| p == l).count();
    let n = data.labels.len().max(1);
    Ok(Evaluation {
        accuracy: correct as f64 / n as f64,
        loss: loss_sum / n as f64,
        examples: data.labels.len(),
        seconds: start.elapsed().as_secs_f64(),
        predictions,
    })
}

/// Trains `vars` (from `train_adapter` or `train_full`) on `train` through the active head,
/// evaluating on `dev` after each epoch and restoring the best epoch's weights at the end.
///
/// ```no_run
/// use adapters_runtime::training::{train_classifier, Dataset, LabelledTexts, TextEncoder, TrainConfig};
/// use adapters_runtime::{AdapterConfig, AdapterSetup, DynAdaptedModel, HeadConfig};
/// # fn demo(model: &mut DynAdaptedModel) -> adapters_runtime::Result<()> {
/// let train = Dataset::read_tsv("data/mr/train.tsv".as_ref())?;
/// let labels = train.labels();
/// model.add_adapter("mr", AdapterConfig::parse("seq_bn")?)?;
/// model.add_head("mr", HeadConfig::classification(labels.len(), 2, "tanh", Some(&labels), false, false), false)?;
/// let vars = model.train_adapter(AdapterSetup::from("mr"))?;
/// let encoder = TextEncoder::from_model_dir("path/to/minilm".as_ref(), 64)?;
/// let set = LabelledTexts {
///     texts: train.examples.iter().map(|e| e.text.as_str()).collect(),
///     labels: train.label_ids(&labels, "data/mr/train.tsv")?,
/// };
/// let report = train_classifier(model, vars, &encoder, &set, None, &TrainConfig::default())?;
/// model.save_adapter("out/mr", "mr")?; // adapter + head, loadable in Python
/// # Ok(()) }
/// ```
pub fn train_classifier(
    model: &mut DynAdaptedModel,
    vars: Vec<Var>,
    encoder: &TextEncoder,
    train: &LabelledTexts<'_>,
    dev: Option<&LabelledTexts<'_>>,
    config: &TrainConfig,
) -> Result<TrainReport> {
    if config.batch_size == 0 || config.epochs == 0 {
        return Err(AdapterError::InvalidConfig("epochs and batch size must be at least 1".into()));
    }
    if train.texts.is_empty() {
        return Err(AdapterError::InvalidConfig("the training set is empty".into()));
    }
    let trainable_parameters = vars.iter().map(|v| v.elem_count()).sum();
    model.set_seed(config.seed);
    model.set_training(true);
    let batches_per_epoch = train.texts.len().div_ceil(config.batch_size);
    let schedule = LinearSchedule::with_ratio(config.learning_rate, config.warmup_ratio, batches_per_epoch * config.epochs);
    let mut optimiser = AdamWStep::new(vars, config.learning_rate, config.weight_decay)?;
    let mut rng = Rng::new(config.seed);
    let mut order: Vec<usize> = (0..train.texts.len()).collect();
    let mut step = 0usize;
    let mut epochs = Vec::new();
    let mut best: Option<(f64, usize, Vec<Tensor>)> = None;
    for epoch in 1..=config.epochs {
        shuffle(&mut order, &mut rng);
        let bar = progress_bar(batches_per_epoch, config.progress, format!("epoch {epoch}/{}", config.epochs));
        let start = Instant::now();
        let (mut loss_sum, mut seen) = (0f64, 0usize);
        for chunk in order.chunks(config.batch_size) {
            let texts: Vec<&str> = chunk.iter().map(|&i| train.texts[i]).collect();
            let labels: Vec<u32> = chunk.iter().map(|&i| train.labels[i]).collect();
            let enc = encoder.encode(&texts, &model.placement().device)?;
            let out = model.forward_with_head(&enc.input_ids, &enc.attention_mask)?;
            let loss = model.head_loss(&out, &labels_tensor(&labels, &model.placement().device)?, Some(&enc.attention_mask))?;
            // Training a dynamic fusion adds its regularisation, as Python's AdapterTrainer does.
            let objective = match model.fusion_regularization_loss()? {
                Some(reg) if model.active_adapters().is_some_and(has_fuse) => (&loss + reg)?,
                _ => loss.clone(),
            };
            optimiser.step(&objective, schedule.rate(step), config.max_grad_norm)?;
            step += 1;
            loss_sum += f64::from(loss.to_scalar::<f32>()?) * labels.len() as f64;
            seen += labels.len();
            let rate = seen as f64 / start.elapsed().as_secs_f64().max(1e-9);
            bar.set_message(format!("loss {:.4}  {rate:.1} ex/s", loss_sum / seen as f64));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let train_seconds = start.elapsed().as_secs_f64();
        let (dev_accuracy, dev_loss) = match dev {
            Some(dev) => {
                let e = evaluate(model, encoder, dev, config.batch_size.max(64), config.progress)?;
                (Some(e.accuracy), Some(e.loss))
            }
            None => (None, None),
        };
        let report = EpochReport {
            epoch,
            train_loss: loss_sum / seen.max(1) as f64,
            train_seconds,
            examples_per_second: seen as f64 / train_seconds.max(1e-9),
            dev_accuracy,
            dev_loss,
        };
        if config.progress {
            eprintln!(
                "epoch {epoch}: train loss {:.4}, {:.0} s ({:.1} ex/s){}",
                report.train_loss,
                report.train_seconds,
                report.examples_per_second,
                dev_accuracy.map(|a| format!(", dev accuracy {:.2} %", 100.0 * a)).unwrap_or_default()
            );
        }
        if let Some(acc) = dev_accuracy {
            if best.as_ref().is_none_or(|(b, _, _)| acc > *b) {
                let snapshot = optimiser.vars().iter().map(|v| v.as_tensor().copy()).collect::<candle_core::Result<Vec<_>>>()?;
                best = Some((acc, epoch, snapshot));
            }
        }
        epochs.push(report);
    }
    let best_epoch = match best {
        Some((_, epoch, snapshot)) => {
            for (var, value) in optimiser.vars().iter().zip(snapshot) {
                var.set(&value)?;
            }
            Some(epoch)
        }
        None => None,
    };
    model.set_training(false);
    Ok(TrainReport { config: config.clone(), trainable_parameters, epochs, best_epoch })
}

/// Fisher-Yates with the run's generator.
pub(crate) fn shuffle(order: &mut [usize], rng: &mut Rng) {
    for i in (1..order.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
}

fn has_fuse(setup: &crate::setup::AdapterSetup) -> bool {
    matches!(setup, crate::setup::AdapterSetup::Fuse { .. }) || setup.children().iter().any(has_fuse)
}
