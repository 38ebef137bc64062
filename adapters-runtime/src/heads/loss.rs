//! The losses the Python heads compute from their labels.

use candle_core::{DType, Result, Tensor, D};

use super::config::{HeadConfig, HeadType};
use super::head::HeadOutput;

/// Label id that contributes nothing to a loss (PyTorch's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// Mean cross entropy of `logits` `[n, classes]` against `labels` `[n]` (I64), skipping rows
/// whose label is `ignore`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, ignore: i64) -> Result<Tensor> {
    let labels = labels.flatten_all()?.to_dtype(DType::I64)?;
    let keep = labels.ne(ignore)?;
    let safe = keep.where_cond(&labels, &labels.zeros_like()?)?;
    let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = log_probs.gather(&safe.to_dtype(DType::U32)?.unsqueeze(1)?, 1)?.squeeze(1)?;
    let keep = keep.to_dtype(DType::F32)?;
    let count = keep.sum_all()?.to_scalar::<f32>()?;
    picked.mul(&keep)?.sum_all()?.neg()? / f64::from(count.max(1.0))
}

/// `BCEWithLogitsLoss` (mean), in the stable form `max(x, 0) - x y + log(1 + exp(-|x|))`.
pub fn bce_with_logits(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let targets = targets.to_dtype(DType::F32)?;
    let softplus = ((logits.abs()?.neg()?.exp()? + 1.0)?).log()?;
    (logits.relu()? - logits.mul(&targets)? + softplus)?.mean_all()
}

/// The loss of a head's output against its labels, as the Python head computes it:
/// - classification: cross entropy (mean squared error with one label), labels `[batch]`;
/// - multilabel: BCE with logits, labels `[batch, labels]` of 0/1;
/// - multiple choice: cross entropy over choices, labels `[batch]`;
/// - causal LM: cross entropy of each position's logits against the next label
///   (`shift_labels`), labels `[batch, seq]`, `-100` ignored;
/// - tagging and masked LM: cross entropy over tokens, labels `[batch, seq]`, `-100` ignored;
///   tagging also ignores padded tokens (`attention_mask` 0);
/// - question answering: mean of start and end cross entropies, labels `[batch, 2]`; positions
///   outside the sequence are ignored.
pub fn head_loss(config: &HeadConfig, output: &HeadOutput, labels: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
    match (config.head_type(), output) {
        (HeadType::QuestionAnswering, HeadOutput::Span { start, end }) => {
            let seq = start.dim(1)? as i64;
            let labels = labels.to_dtype(DType::I64)?;
            // Python clamps to [0, seq] and ignores index seq.
            let clamp = |t: Tensor| -> Result<Tensor> { t.clamp(0i64, seq) };
            let starts = clamp(labels.narrow(1, 0, 1)?.squeeze(1)?)?;
            let ends = clamp(labels.narrow(1, 1, 1)?.squeeze(1)?)?;
            let a = cross_entropy(start, &starts, seq)?;
            let b = cross_entropy(end, &ends, seq)?;
            (a + b)? / 2.0
        }
        (HeadType::MultiLabelClassification, HeadOutput::Logits(logits)) => bce_with_logits(logits, labels),
        (HeadType::ImageClassification, HeadOutput::Logits(logits)) if config.multilabel() && config.num_labels() != 1 => bce_with_logits(logits, labels),
        (HeadType::Classification | HeadType::ImageClassification, HeadOutput::Logits(logits)) if config.num_labels() == 1 => {
            let diff = (logits.flatten_all()? - labels.to_dtype(DType::F32)?.flatten_all()?)?;
            diff.sqr()?.mean_all()
        }
        (HeadType::CausalLm | HeadType::Seq2SeqLm, HeadOutput::Logits(logits)) => {
            let classes = logits.dim(D::Minus1)?;
            let labels = labels.to_dtype(DType::I64)?;
            let (logits, labels) = if config.shift_labels() {
                let seq = logits.dim(1)?;
                if seq < 2 {
                    return Err(crate::error::invalid_input("a causal LM loss needs at least two positions (labels shift by one)"));
                }
                (logits.narrow(1, 0, seq - 1)?, labels.narrow(1, 1, seq - 1)?)
            } else {
                (logits.clone(), labels)
            };
            cross_entropy(&logits.reshape(((), classes))?, &labels.flatten_all()?, IGNORE_INDEX)
        }
        (HeadType::Tagging | HeadType::MaskedLm, HeadOutput::Logits(logits)) => {
            let classes = logits.dim(D::Minus1)?;
            let mut labels = labels.to_dtype(DType::I64)?.flatten_all()?;
            if let (HeadType::Tagging, Some(mask)) = (config.head_type(), attention_mask) {
                let active = mask.flatten_all()?.to_dtype(DType::I64)?.eq(1i64)?;
                labels = active.where_cond(&labels, &labels.ones_like()?.affine(0.0, IGNORE_INDEX as f64)?)?;
            }
            cross_entropy(&logits.reshape(((), classes))?, &labels, IGNORE_INDEX)
        }
        (_, HeadOutput::Logits(logits)) => cross_entropy(logits, labels, IGNORE_INDEX),
        (t, HeadOutput::Span { .. }) => Err(crate::error::internal(format!("a {} head does not give span logits", t.name()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cross_entropy_matches_hand_computation_and_ignores() {
        let logits = Tensor::new(&[[1.0f32, 2.0, 0.5], [0.0, 0.0, 3.0]], &Device::Cpu).unwrap();
        let labels = Tensor::new(&[1i64, -100], &Device::Cpu).unwrap();
        let loss = cross_entropy(&logits, &labels, -100).unwrap().to_scalar::<f32>().unwrap();
        let lse = (1f32.exp() + 2f32.exp() + 0.5f32.exp()).ln();
        assert!((loss - (lse - 2.0)).abs() < 1e-6, "{loss}");
    }

    #[test]
    fn bce_matches_definition() {
        let x = Tensor::new(&[[2.0f32, -1.0]], &Device::Cpu).unwrap();
        let y = Tensor::new(&[[1.0f32, 0.0]], &Device::Cpu).unwrap();
        let loss = bce_with_logits(&x, &y).unwrap().to_scalar::<f32>().unwrap();
        let s = |v: f32| 1.0 / (1.0 + (-v).exp());
        let expected = -(s(2.0).ln() + (1.0 - s(-1.0)).ln()) / 2.0;
        assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");
    }
}
