//! The one interpreter of the composition blocks, as the Python library's `compose_*` methods:
//! each slot kind says what its state is and how one adapter runs on it ([`Composer`]); the
//! blocks (Stack, Parallel, BatchSplit, Average, Split, Fuse) are walked here, the same way for
//! every method, and [`supported_blocks`] is the one table of which method takes which block
//! (checked at activation, and again here for blocks that hold none of a slot's adapters).
//!
//! Parallel is executed by replicating the whole batch once per channel before the model runs
//! (`AdaptedModel::forward`); Python replicates at the first slot that holds one of the adapters.
//! Every layer before that slot computes the same rows either way, so the outputs are identical,
//! and no model has to know about Parallel.

use candle_core::{Result, Tensor};

use crate::context::ForwardContext;
use crate::error::{internal, invalid_input, AdapterError};
use crate::mixin::SlotFamily;
use crate::setup::{AdapterSetup, BlockKind};

/// Python's `supported_compositions`: the blocks a method family composes with, and how
/// messages name the family. Bottleneck adapters take every block; ReFT and prompt tuning have
/// no block rule in Python, and none here.
pub(crate) fn supported_blocks(family: SlotFamily) -> Option<(&'static str, &'static [BlockKind])> {
    use BlockKind::*;
    match family {
        SlotFamily::Lora => Some(("is a LoRA-family adapter", &[Stack, Parallel, BatchSplit, Average])),
        SlotFamily::Prefix => Some(("has prefix tuning", &[Stack, Parallel, BatchSplit])),
        SlotFamily::Bottleneck | SlotFamily::Reft => None,
    }
}

/// What a slot kind gives the interpreter: its state, how one adapter runs, and how states are
/// sliced and joined. The hooks with defaults are where kinds differ from plain slicing.
pub(crate) trait Composer {
    type State: Clone;
    const FAMILY: SlotFamily;

    /// Whether adapter `name` has a module at this slot.
    fn has(&self, name: &str) -> bool;
    /// One adapter on the state; the state unchanged when it has no module here.
    fn single(&self, name: &str, state: Self::State, ctx: &ForwardContext) -> Result<Self::State>;
    /// A plain adapter as a child of a Stack (bottleneck adapters run their `pre_forward` first).
    fn stack_child(&self, name: &str, state: Self::State, ctx: &ForwardContext) -> Result<Self::State> {
        self.single(name, state, ctx)
    }
    /// Before the children of a Parallel, BatchSplit, Average or Split block run.
    fn open_block(&self, _setup: &AdapterSetup, state: Self::State) -> Result<Self::State> {
        Ok(state)
    }
    /// The batch rows and sequence positions of the state.
    fn rows(&self, state: &Self::State) -> Result<usize>;
    fn positions(&self, state: &Self::State) -> Result<usize>;
    /// Rows (`dim` 0) or positions (`dim` 1) `start..start + len` of the state.
    fn narrow(&self, state: &Self::State, dim: usize, start: usize, len: usize) -> Result<Self::State>;
    /// The children's states joined along `dim`; `opened` is the state they were cut from.
    fn join(&self, setup: &AdapterSetup, parts: Vec<Self::State>, dim: usize, opened: &Self::State) -> Result<Self::State>;
    /// Average: every child ran on `opened`; their outputs weighted.
    fn average(&self, _outs: Vec<Self::State>, _weights: &[f64], _opened: Self::State) -> Result<Self::State> {
        Err(internal("Average reached a slot kind that does not take it"))
    }
    /// Fuse (bottleneck adapters only).
    fn fuse(&self, _setup: &AdapterSetup, _children: &[AdapterSetup], _state: Self::State, _ctx: &ForwardContext) -> Result<Self::State> {
        Err(internal("Fuse reached a slot kind that does not take it"))
    }
}

/// Runs `setup` on `state` at a slot: the single interpreter of the blocks.
pub(crate) fn run<C: Composer>(c: &C, setup: &AdapterSetup, state: C::State, ctx: &ForwardContext) -> Result<C::State> {
    let kind = setup.kind();
    if let Some((what, blocks)) = supported_blocks(C::FAMILY).filter(|(_, blocks)| kind != BlockKind::Single && !blocks.contains(&kind)) {
        // Activation refuses these when they hold an adapter of this family; a block holding
        // none of them leaves the slot alone (Python's compose).
        if !setup.any_adapter(&|n| c.has(n)) {
            return Ok(state);
        }
        let list: Vec<&str> = blocks.iter().map(|b| b.name()).collect();
        return Err(AdapterError::Setup {
            setup: setup.to_string(),
            reason: format!("an adapter here {what}, which composes with {}, not {}", list.join(", "), kind.name()),
        }
        .into_candle());
    }
    match setup {
        AdapterSetup::Single(name) => c.single(name, state, ctx),
        AdapterSetup::Stack(children) => children.iter().try_fold(state, |state, child| match child {
            AdapterSetup::Single(name) => c.stack_child(name, state, ctx),
            block => run(c, block, state, ctx),
        }),
        AdapterSetup::Parallel(children) | AdapterSetup::BatchSplit { children, .. } => {
            let opened = c.open_block(setup, state)?;
            let ranges = row_ranges(setup, c.rows(&opened)?)?;
            let parts =
                children.iter().zip(ranges).map(|(child, (start, len))| run(c, child, c.narrow(&opened, 0, start, len)?, ctx)).collect::<Result<Vec<_>>>()?;
            c.join(setup, parts, 0, &opened)
        }
        AdapterSetup::Average { children, weights } => {
            let opened = c.open_block(setup, state)?;
            let outs = children.iter().map(|child| run(c, child, opened.clone(), ctx)).collect::<Result<Vec<_>>>()?;
            c.average(outs, weights, opened)
        }
        AdapterSetup::Split { children, splits } => {
            let opened = c.open_block(setup, state)?;
            let ranges = split_ranges(splits, c.positions(&opened)?, setup)?;
            let parts =
                children.iter().zip(ranges).map(|(child, (start, len))| run(c, child, c.narrow(&opened, 1, start, len)?, ctx)).collect::<Result<Vec<_>>>()?;
            c.join(setup, parts, 1, &opened)
        }
        AdapterSetup::Fuse { children, .. } => c.fuse(setup, children, state, ctx),
    }
}

/// Row ranges `(start, len)` of the children of a Parallel or BatchSplit block over a batch of
/// `rows` rows.
pub(crate) fn row_ranges(setup: &AdapterSetup, rows: usize) -> Result<Vec<(usize, usize)>> {
    match setup {
        AdapterSetup::Parallel(children) => {
            let n = children.len();
            if n == 0 || !rows.is_multiple_of(n) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A slot whose state records, per batch row, which adapters ran on it.
    struct Trace {
        here: &'static [&'static str],
    }

    impl Composer for Trace {
        type State = Vec<Vec<String>>;
        const FAMILY: SlotFamily = SlotFamily::Lora;

        fn has(&self, name: &str) -> bool {
            self.here.contains(&name)
        }
        fn single(&self, name: &str, mut state: Self::State, _ctx: &ForwardContext) -> Result<Self::State> {
            if self.has(name) {
                state.iter_mut().for_each(|row| row.push(name.to_string()));
            }
            Ok(state)
        }
        fn rows(&self, state: &Self::State) -> Result<usize> {
            Ok(state.len())
        }
        fn positions(&self, _state: &Self::State) -> Result<usize> {
            Ok(1)
        }
        fn narrow(&self, state: &Self::State, _dim: usize, start: usize, len: usize) -> Result<Self::State> {
            Ok(state[start..start + len].to_vec())
        }
        fn join(&self, _setup: &AdapterSetup, parts: Vec<Self::State>, _dim: usize, _opened: &Self::State) -> Result<Self::State> {
            Ok(parts.concat())
        }
        fn average(&self, outs: Vec<Self::State>, _weights: &[f64], opened: Self::State) -> Result<Self::State> {
            let ran: Vec<String> = outs.iter().filter_map(|o| o[0].last().cloned()).collect();
            Ok(opened
                .into_iter()
                .map(|mut row| {
                    row.push(format!("avg({})", ran.join("+")));
                    row
                })
                .collect())
        }
    }

    fn trace(setup: &str, rows: usize, here: &'static [&'static str]) -> Result<Vec<String>> {
        let setup = AdapterSetup::parse(setup).unwrap();
        let out = run(&Trace { here }, &setup, vec![Vec::new(); rows], &ForwardContext::default())?;
        Ok(out.into_iter().map(|row| row.join(">")).collect())
    }

    #[test]
    fn blocks_slice_run_and_join_the_same_way_for_every_slot_kind() {
        let all: &[&str] = &["a", "b", "c"];
        assert_eq!(trace("Stack[a, b]", 2, all).unwrap(), ["a>b", "a>b"]);
        assert_eq!(trace("Parallel[a, b]", 4, all).unwrap(), ["a", "a", "b", "b"]);
        assert_eq!(trace("BatchSplit[a, b, batch_sizes=[1, 3]]", 4, all).unwrap(), ["a", "b", "b", "b"]);
        assert_eq!(trace("Stack[a, Parallel[b, c]]", 2, all).unwrap(), ["a>b", "a>c"]);
        assert_eq!(trace("Average[a, b]", 1, all).unwrap(), ["avg(a+b)"]);
        // Adapters without a module here leave their rows alone.
        assert_eq!(trace("Parallel[a, c]", 2, &["a"]).unwrap(), ["a", ""]);
        // Rows that do not fit the block are an input error.
        assert!(trace("Parallel[a, b]", 3, all).unwrap_err().to_string().contains("not a multiple"));
    }

    #[test]
    fn the_block_table_governs_every_slot_kind() {
        // LoRA takes no Split: a Split holding none of its adapters passes; one holding one is
        // refused with the rule.
        assert_eq!(trace("Split[x, y, splits=[1, 1]]", 1, &["a"]).unwrap(), [""]);
        let refused = crate::AdapterError::from(trace("Split[a, y, splits=[1, 1]]", 1, &["a"]).unwrap_err());
        assert!(matches!(&refused, crate::AdapterError::Setup { reason, .. } if reason.contains("LoRA-family") && reason.contains("not Split")), "{refused}");
        assert_eq!(supported_blocks(SlotFamily::Bottleneck), None);
    }
}
