//! The place at the end of a layer where ReFT interventions run on the layer's output (Python
//! hooks the whole layer's output). Only the first adapter of the active setup intervenes, as in
//! Python.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor};

use super::ReftUnit;
use crate::config::ReftConfig;
use crate::context::ForwardContext;
use crate::methods::init::Init;
use crate::methods::NamedParam;

/// The interventions of one adapter in one layer: unit 0 for the prefix, unit 1 for the suffix
/// (one unit for both with `tied_weights`).
pub struct ReftModule {
    prefix_positions: usize,
    suffix_positions: usize,
    tied: bool,
    units: Vec<ReftUnit>,
    params: Vec<NamedParam>,
}

impl ReftModule {
    pub fn new(config: &ReftConfig, hidden: usize, init: &mut Init) -> Result<Self> {
        let mut params = Vec::new();
        let count = if config.tied_weights { 1 } else { 2 };
        let units = (0..count).map(|u| ReftUnit::new(config, hidden, &format!("units.{u}"), &mut params, init)).collect::<Result<_>>()?;
        Ok(ReftModule { prefix_positions: config.prefix_positions, suffix_positions: config.suffix_positions, tied: config.tied_weights, units, params })
    }

    pub fn params(&self) -> &[NamedParam] {
        &self.params
    }
}

pub struct ReftSlot {
    path: String,
    hidden: usize,
    pub(crate) refts: BTreeMap<String, ReftModule>,
    /// The index of the layer this slot sits in (set when the model is wrapped).
    pub(crate) layer: usize,
}

impl ReftSlot {
    /// A slot at the output of the layer whose weights live under `vb` (interventions are named
    /// `<layer path>.reft_layer.refts.NAME.*`), for hidden states of width `hidden`.
    pub fn new(vb: &candle_nn::VarBuilder, hidden: usize) -> Self {
        ReftSlot { path: vb.prefix(), hidden, refts: BTreeMap::new(), layer: 0 }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden
    }

    /// Intervenes on `hidden` (`[batch, seq, D]`) at the prefix and suffix positions of every
    /// row (suffixes end at the row's last real token); other positions stay as they are.
    pub fn forward(&self, hidden: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        Ok(ctx.output(self.intervened(hidden, ctx)?))
    }

    fn intervened(&self, hidden: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        let Some((name, module)) = ctx.setup_at(self.layer).and_then(|s| s.first()).and_then(|n| self.refts.get_key_value(n)) else {
            return Ok(hidden.clone());
        };
        let (batch, seq, d) = hidden.dims3()?;
        let rows: Vec<(usize, usize)> = match ctx.sequence_rows() {
            Some(rows) if rows.len() == batch => rows.to_vec(),
            _ => vec![(0, seq); batch],
        };
        let p = module.prefix_positions.min(seq);
        let s = module.suffix_positions.min(seq);
        let mut prefix_idx = Vec::with_capacity(batch * p);
        let mut suffix_idx = Vec::with_capacity(batch * s);
        check_positions(name, module.prefix_positions, module.suffix_positions, &rows, seq).map_err(crate::error::AdapterError::into_candle)?;
        for (b, &(offset, length)) in rows.iter().enumerate() {
            prefix_idx.extend((offset..offset + p).map(|i| (b * seq + i) as u32));
            suffix_idx.extend((offset + length - s..offset + length).map(|i| (b * seq + i) as u32));
        }
        let flat = hidden.reshape((batch * seq, d))?;
        let prefix_idx = Tensor::from_vec(prefix_idx, batch * p, hidden.device())?;
        let suffix_idx = Tensor::from_vec(suffix_idx, batch * s, hidden.device())?;
        let prefix = flat.index_select(&prefix_idx, 0)?.reshape((batch, p, d))?;
        let suffix = flat.index_select(&suffix_idx, 0)?.reshape((batch, s, d))?;
        let (new_prefix, new_suffix) = if module.tied {
            let both = module.units[0].forward(&Tensor::cat(&[&prefix, &suffix], 1)?, ctx)?;
            (both.narrow(1, 0, p)?, both.narrow(1, p, s)?)
        } else {
            let new_prefix = if p > 0 { module.units[0].forward(&prefix, ctx)? } else { prefix.clone() };
            let new_suffix = if s > 0 { module.units[1].forward(&suffix, ctx)? } else { suffix.clone() };
            (new_prefix, new_suffix)
        };
        // Write the prefix, then the suffix (which wins where they overlap, as in Python).
        let mut out = flat;
        if p > 0 {
            out = out.index_add(&prefix_idx, &(new_prefix - prefix)?.reshape((batch * p, d))?, 0)?;
        }
        if s > 0 {
            let current = out.index_select(&suffix_idx, 0)?;
            out = out.index_add(&suffix_idx, &new_suffix.reshape((batch * s, d))?.sub(&current)?, 0)?;
        }
        out.reshape((batch, seq, d))
    }
}

/// Python gathers prefix positions from each row's first real token and suffix positions back
/// from its last; positions outside the sequence make it fail with an index error. Says which
/// row does not fit and what would.
pub(crate) fn check_positions(name: &str, prefix_positions: usize, suffix_positions: usize, rows: &[(usize, usize)], seq: usize) -> crate::error::Result<()> {
    let (prefix, suffix) = (prefix_positions.min(seq), suffix_positions.min(seq));
    for (row, &(offset, length)) in rows.iter().enumerate() {
        if offset + prefix > seq {
            return Err(crate::error::AdapterError::InvalidInput(format!(
                "ReFT adapter `{name}`: prefix_positions {prefix_positions} from the first token of row {row} (position {offset}) run past the sequence length {seq}; use at most {}",
                seq - offset
            )));
        }
        if suffix > offset + length {
            return Err(crate::error::AdapterError::InvalidInput(format!(
                "ReFT adapter `{name}`: suffix_positions {suffix_positions} reach before the first token of row {row}, which has {length} tokens; use at most {length}"
            )));
        }
    }
    Ok(())
}
