//! Composition blocks executed at a slot, as the Python library's `compose_*` methods: each
//! method's slot defines its state and how a single adapter runs; the blocks (Stack, Parallel,
//! BatchSplit, Average, Split) slice, run and join that state the same way for every method.
//!
//! Parallel is executed by replicating the whole batch once per channel before the model runs
//! (`AdaptedModel::forward`); Python replicates at the first slot that holds one of the adapters.
//! Every layer before that slot computes the same rows either way, so the outputs are identical,
//! and no model has to know about Parallel.

use candle_core::{Result, Tensor};

use crate::error::{internal, invalid_input};
use crate::setup::AdapterSetup;

/// Row ranges `(start, len)` of the children of a Parallel or BatchSplit block over a batch of
/// `rows` rows.
pub(crate) fn row_ranges(setup: &AdapterSetup, rows: usize) -> Result<Vec<(usize, usize)>> {
    match setup {
        AdapterSetup::Parallel(children) => {
            let n = children.len();
            if n == 0 || rows % n != 0 {
                return Err(invalid_input(format!("{setup}: the batch of {rows} rows is not a multiple of its {n} parallel channels")));
            }
            let each = rows / n;
            Ok((0..n).map(|i| (i * each, each)).collect())
        }
        AdapterSetup::BatchSplit { batch_sizes, .. } => {
            let total: usize = batch_sizes.iter().sum();
            if total != rows {
                return Err(invalid_input(format!("{setup}: the batch has {rows} rows, which is not the sum of batch_sizes {batch_sizes:?} ({total})")));
            }
            Ok(consecutive(batch_sizes))
        }
        other => Err(internal(format!("{other} does not split the batch"))),
    }
}

/// Position ranges of the children of a Split block over `positions` sequence positions.
pub(crate) fn split_ranges(splits: &[usize], positions: usize, setup: &AdapterSetup) -> Result<Vec<(usize, usize)>> {
    let total: usize = splits.iter().sum();
    if total != positions {
        return Err(invalid_input(format!("{setup}: the input has sequence length {positions}, which is not the sum of splits {splits:?} ({total})")));
    }
    Ok(consecutive(splits))
}

/// `(start, len)` of consecutive parts of the given lengths.
pub(crate) fn consecutive(lengths: &[usize]) -> Vec<(usize, usize)> {
    let mut start = 0;
    lengths
        .iter()
        .map(|&len| {
            start += len;
            (start - len, len)
        })
        .collect()
}

/// `sum_i w_i x_i / N`: Python's `torch.mean(stack(x) * weights, 0)`, which divides by the
/// number of children on top of weights that already sum to 1.
pub(crate) fn weighted_mean(items: &[Tensor], weights: &[f64]) -> Result<Tensor> {
    let n = items.len() as f64;
    let mut acc: Option<Tensor> = None;
    for (x, w) in items.iter().zip(weights) {
        let term = (x * (*w / n))?;
        acc = Some(match acc {
            None => term,
            Some(a) => (a + term)?,
        });
    }
    acc.ok_or_else(|| internal("Average over no outputs"))
}

/// Concatenates optional tensors along `dim`: all present, or all absent.
pub(crate) fn cat_optional(items: &[Option<Tensor>], dim: usize) -> Result<Option<Tensor>> {
    if items.iter().all(Option::is_none) {
        return Ok(None);
    }
    let present: Vec<&Tensor> = items.iter().flatten().collect();
    if present.len() != items.len() {
        return Err(invalid_input("some children have a module at this layer and some have none (Python raises here too)"));
    }
    Ok(Some(Tensor::cat(&present, dim)?))
}
