//! Training a decoder's adapters on text: next-token loss over packed text, or over the
//! completions of prompt/completion pairs (instruction data), with the same AdamW, schedule,
//! seeds and progress bar as the classifier trainer; held-out loss and perplexity.

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use serde::Serialize;

use super::optim::AdamWStep;
use super::schedule::LinearSchedule;
use super::text::TextEncoder;
use crate::error::{AdapterError, Result};
use crate::heads::IGNORE_INDEX;
use crate::methods::init::Rng;
use crate::model_io::ModelInputs;
use crate::DynAdaptedModel;

/// What a causal-LM data file holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LmData {
    /// Documents to model whole (packed): the `text` column of a `label<TAB>text` TSV, or the
    /// non-empty lines of any other file.
    Texts(Vec<String>),
    /// Instruction data: a TSV with a `prompt<TAB>completion` header; the loss is taken on the
    /// completions.
    Pairs(Vec<(String, String)>),
}

impl LmData {
    /// Reads a data file (see [`LmData`]); a bad line is an error naming the file and line.
    pub fn read(path: &std::path::Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| AdapterError::io(path, e))?;
        let origin = path.display().to_string();
        let text = String::from_utf8(bytes).map_err(|e| AdapterError::file(&origin, format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to())))?;
        let header = text.lines().next().unwrap_or_default().trim_end_matches('\r');
        let data = match header {
            "label\ttext" => LmData::Texts(super::Dataset::parse(&text, &origin)?.examples.into_iter().map(|e| e.text).collect()),
            "prompt\tcompletion" => {
                let mut pairs = Vec::new();
                for (i, line) in text.lines().enumerate().skip(1) {
                    let line = line.trim_end_matches('\r');
                    if line.is_empty() {
                        continue;
                    }
                    let (prompt, completion) = line
                        .split_once('\t')
                        .filter(|(_, c)| !c.contains('\t') && !c.is_empty())
                        .ok_or_else(|| AdapterError::file(&origin, format!("line {}: expected `prompt<TAB>completion` with a non-empty completion", i + 1)))?;
                    pairs.push((prompt.to_string(), completion.to_string()));
                }
                LmData::Pairs(pairs)
            }
            _ => LmData::Texts(text.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.trim().is_empty()).map(String::from).collect()),
        };
        if data.is_empty() {
            return Err(AdapterError::file(&origin, "holds no text"));
        }
        Ok(data)
    }

    pub fn len(&self) -> usize {
        match self {
            LmData::Texts(t) => t.len(),
            LmData::Pairs(p) => p.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Training sequences: packed blocks of `max_length` tokens, or one sequence per pair.
    pub fn sequences(&self, encoder: &TextEncoder, max_length: usize, eos: u32) -> Result<Vec<LmSequence>> {
        match self {
            LmData::Texts(texts) => pack_texts(encoder, &texts.iter().map(String::as_str).collect::<Vec<_>>(), max_length, eos),
            LmData::Pairs(pairs) => instruction_sequences(encoder, &pairs.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect::<Vec<_>>(), max_length, eos),
        }
    }
}

/// One training sequence: token ids and the label per position (`-100`: no loss there).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LmSequence {
    pub ids: Vec<u32>,
    pub labels: Vec<i64>,
}

/// Text documents as one token stream (each ended by `eos`), cut into blocks of `block` tokens;
/// every token is a label. The last, shorter block is kept.
pub fn pack_texts(encoder: &TextEncoder, texts: &[&str], block: usize, eos: u32) -> Result<Vec<LmSequence>> {
    if block < 2 {
        return Err(AdapterError::InvalidConfig(format!("block size {block}: a next-token loss needs at least 2 positions")));
    }
    let mut stream = Vec::new();
    for text in texts {
        stream.extend(encoder.ids(text, false)?);
        stream.push(eos);
    }
    Ok(stream.chunks(block).filter(|c| c.len() >= 2).map(|c| LmSequence { ids: c.to_vec(), labels: c.iter().map(|&t| i64::from(t)).collect() }).collect())
}

/// Prompt/completion pairs: `prompt completion eos`, the loss on the completion (and its end)
/// only; truncated to `max_length` tokens from the right.
pub fn instruction_sequences(encoder: &TextEncoder, pairs: &[(&str, &str)], max_length: usize, eos: u32) -> Result<Vec<LmSequence>> {
    let mut out = Vec::with_capacity(pairs.len());
    for (prompt, completion) in pairs {
        let prompt_ids = encoder.ids(prompt, false)?;
        let mut completion_ids = encoder.ids(completion, false)?;
        completion_ids.push(eos);
        let mut ids = prompt_ids.clone();
        ids.extend(&completion_ids);
        let mut labels: Vec<i64> = std::iter::repeat_n(IGNORE_INDEX, prompt_ids.len()).chain(completion_ids.iter().map(|&t| i64::from(t))).collect();
        ids.truncate(max_length);
        labels.truncate(max_length);
        if labels.iter().any(|&l| l != IGNORE_INDEX) && ids.len() >= 2 {
            out.push(LmSequence { ids, labels });
        }
    }
    Ok(out)
}

/// A batch padded on the right: ids (`pad`), mask, labels (`-100` at padding).
fn batch(seqs: &[&LmSequence], pad: u32, device: &Device) -> Result<(Tensor, Tensor, Tensor)> {
    let len = seqs.iter().map(|s| s.ids.len()).max().unwrap_or(0);
    let (mut ids, mut mask, mut labels) = (Vec::new(), Vec::new(), Vec::new());
    for s in seqs {
        let missing = len - s.ids.len();
        ids.extend(s.ids.iter().map(|&t| i64::from(t)).chain(std::iter::repeat_n(i64::from(pad), missing)));
        mask.extend(std::iter::repeat_n(1i64, s.ids.len()).chain(std::iter::repeat_n(0, missing)));
        labels.extend(s.labels.iter().copied().chain(std::iter::repeat_n(IGNORE_INDEX, missing)));
    }
    let shape = (seqs.len(), len);
    Ok((Tensor::from_vec(ids, shape, device)?, Tensor::from_vec(mask, shape, device)?, Tensor::from_vec(labels, shape, device)?))
}

/// Positions that carry a loss (labels after the first, which no position predicts).
fn counted(seqs: &[&LmSequence]) -> usize {
    seqs.iter().map(|s| s.labels.iter().skip(1).filter(|&&l| l != IGNORE_INDEX).count()).sum()
}

/// Hyper-parameters of a causal-LM run.
#[derive(Clone, Debug, Serialize)]
pub struct LmTrainConfig {
    pub steps: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub max_grad_norm: Option<f64>,
    pub seed: u64,
    pub pad_token_id: u32,
    #[serde(skip)]
    pub progress: bool,
}

/// Mean next-token loss over a held-out set, and its perplexity.
#[derive(Clone, Debug, Serialize)]
pub struct LmEvaluation {
    pub loss: f64,
    pub perplexity: f64,
    pub tokens: usize,
    pub seconds: f64,
}

/// What a run did.
#[derive(Clone, Debug, Serialize)]
pub struct LmTrainReport {
    pub config: LmTrainConfig,
    pub trainable_parameters: usize,
    pub train_sequences: usize,
    /// Mean training loss per tenth of the run.
    pub train_loss_curve: Vec<f64>,
    pub seconds: f64,
    pub seconds_per_step: f64,
    pub tokens_per_second: f64,
}

/// The token-weighted mean next-token loss of the active setup over `seqs` (dropout off).
pub fn evaluate_lm(model: &mut DynAdaptedModel, seqs: &[LmSequence], batch_size: usize, pad: u32) -> Result<LmEvaluation> {
    let was_training = model.is_training();
    model.set_training(false);
    let start = Instant::now();
    let device = model.placement().device.clone();
    let (mut sum, mut tokens) = (0f64, 0usize);
    let result = (|| -> Result<()> {
        for chunk in seqs.chunks(batch_size.max(1)) {
            let refs: Vec<&LmSequence> = chunk.iter().collect();
            let n = counted(&refs);
            if n == 0 {
                continue;
            }
            let (ids, mask, labels) = batch(&refs, pad, &device)?;
            let loss = model.lm_loss(&ModelInputs::text(ids, mask), &labels)?;
            sum += f64::from(loss.to_scalar::<f32>()?) * n as f64;
            tokens += n;
        }
        Ok(())
    })();
    model.set_training(was_training);
    result?;
    let loss = sum / tokens.max(1) as f64;
    Ok(LmEvaluation { loss, perplexity: loss.exp(), tokens, seconds: start.elapsed().as_secs_f64() })
}

/// Trains `vars` (from `train_adapter`) on `train` for `config.steps` batches drawn from shuffled
/// passes over the set.
pub fn train_causal_lm(model: &mut DynAdaptedModel, vars: Vec<Var>, train: &[LmSequence], config: &LmTrainConfig) -> Result<LmTrainReport> {
    if train.is_empty() || config.steps == 0 || config.batch_size == 0 {
        return Err(AdapterError::InvalidConfig("causal-LM training needs sequences, at least one step and a batch size of at least 1".into()));
    }
    let trainable_parameters = vars.iter().map(|v| v.elem_count()).sum();
    model.set_seed(config.seed);
    model.set_training(true);
    let device = model.placement().device.clone();
    let schedule = LinearSchedule::with_ratio(config.learning_rate, config.warmup_ratio, config.steps);
    let mut optimiser = AdamWStep::new(vars, config.learning_rate, config.weight_decay)?;
    let mut rng = Rng::new(config.seed);
    let mut order: Vec<usize> = Vec::new();
    let bar = super::trainer::progress_bar(config.steps, config.progress, "causal lm".into());
    let start = Instant::now();
    let (mut losses, mut tokens) = (Vec::with_capacity(config.steps), 0usize);
    for step in 0..config.steps {
        if order.len() < config.batch_size {
            let mut pass: Vec<usize> = (0..train.len()).collect();
            super::trainer::shuffle(&mut pass, &mut rng);
            order.extend(pass);
        }
        let picked: Vec<usize> = order.drain(..config.batch_size.min(order.len())).collect();
        let refs: Vec<&LmSequence> = picked.iter().map(|&i| &train[i]).collect();
        let (ids, mask, labels) = batch(&refs, config.pad_token_id, &device)?;
        tokens += refs.iter().map(|s| s.ids.len()).sum::<usize>();
        let loss = model.lm_loss(&ModelInputs::text(ids, mask), &labels)?;
        let value = f64::from(loss.to_scalar::<f32>()?);
        optimiser.step(&loss, schedule.rate(step), config.max_grad_norm)?;
        losses.push(value);
        bar.set_message(format!("loss {value:.4}"));
        bar.inc(1);
    }
    bar.finish_and_clear();
    model.set_training(false);
    let seconds = start.elapsed().as_secs_f64();
    let tenth = config.steps.div_ceil(10);
    Ok(LmTrainReport {
        config: config.clone(),
        trainable_parameters,
        train_sequences: train.len(),
        train_loss_curve: losses.chunks(tenth).map(|c| c.iter().sum::<f64>() / c.len() as f64).collect(),
        seconds,
        seconds_per_step: seconds / config.steps as f64,
        tokens_per_second: tokens as f64 / seconds.max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_carries_no_loss() {
        let a = LmSequence { ids: vec![5, 6, 7], labels: vec![-100, 6, 7] };
        let b = LmSequence { ids: vec![8, 9], labels: vec![8, 9] };
        let (ids, mask, labels) = batch(&[&a, &b], 0, &Device::Cpu).unwrap();
        assert_eq!(ids.to_vec2::<i64>().unwrap(), vec![vec![5, 6, 7], vec![8, 9, 0]]);
        assert_eq!(mask.to_vec2::<i64>().unwrap(), vec![vec![1, 1, 1], vec![1, 1, 0]]);
        assert_eq!(labels.to_vec2::<i64>().unwrap(), vec![vec![-100, 6, 7], vec![8, 9, -100]]);
        assert_eq!(counted(&[&a, &b]), 2 + 1);
    }
}
