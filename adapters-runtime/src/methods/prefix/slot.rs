//! The place in an attention module where keys and values are complete: prefix tuning prepends
//! its keys and values here and extends the attention mask. Follows `PrefixTuningLayer` of the
//! Python library.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor, Var};

use crate::composition::{self, Composer};
use crate::context::ForwardContext;
use crate::methods::NamedParam;
use crate::mixin::SlotFamily;
use crate::nn::linear;
use crate::setup::AdapterSetup;

/// How the padding of a shorter prefix is masked when Parallel or BatchSplit channels with
/// prefixes of different lengths are joined (Python pads the mask with `1.0` when the model's
/// mask is inverted, as in BERT, and `0.0` otherwise, as in DistilBERT).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrefixPadding {
    /// BERT, RoBERTa: Python adds `1.0` to the additive mask at padded prefix positions, so they
    /// stay attended (a known quirk, kept for parity).
    InvertedMask,
    /// DistilBERT: padded prefix positions are masked out.
    PlainMask,
}

/// A prefix gate (UniPELT): `Linear(hidden, 1 or 2)` over the attention input.
pub(crate) struct PrefixGate {
    weight: Var,
    bias: Var,
    pub(crate) params: Vec<NamedParam>,
}

impl PrefixGate {
    pub(crate) fn new(weight: Tensor, bias: Tensor) -> Result<Self> {
        let (w, b) = (NamedParam::new("weight", weight)?, NamedParam::new("bias", bias)?);
        Ok(PrefixGate { weight: w.var.clone(), bias: b.var.clone(), params: vec![w, b] })
    }

    /// `mean_seq(sigmoid(gate(x)))`: `[batch, outputs]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::sigmoid(&linear(x, self.weight.as_tensor(), Some(self.bias.as_tensor()))?)?.mean(1)
    }
}

pub struct PrefixSlot {
    path: String,
    heads: usize,
    head_dim: usize,
    hidden: usize,
    pad_value: f64,
    padding: PrefixPadding,
    /// The location key of the prefix modules (`self_prefix`), set from the model's mark.
    pub(crate) location: &'static str,
    /// The module holding this slot's prefix pool: `""` for the model's own, a submodel's path
    /// (`encoder`, `decoder.bert`) in a model made of submodels, each with its own pool.
    pool: String,
    /// `location`, or `pool:location`: the key of this slot's prefix modules and states.
    key: String,
    /// Adapter -> index of this layer among the layers holding that adapter's prefix here.
    pub(crate) prefixes: BTreeMap<String, usize>,
    pub(crate) gates: BTreeMap<String, PrefixGate>,
    /// The index of the layer this slot sits in (set when the model is wrapped).
    pub(crate) layer: usize,
}

/// Keys, values and mask as they travel through the composition blocks.
#[derive(Clone)]
pub(crate) struct PrefixState {
    keys: Tensor,
    values: Tensor,
    mask: Tensor,
    residual: Tensor,
    /// The first batch row of this state in the full batch (to pick the prefix rows).
    row: usize,
}

impl PrefixSlot {
    /// A slot in an attention module whose weights live under `vb` (the path prefix gates are
    /// named under). `heads` and `head_dim` are the key/value heads; `pad_token_id` is the
    /// model config's (Python pads shorter prefixes with it).
    pub fn new(vb: &candle_nn::VarBuilder, hidden: usize, heads: usize, pad_token_id: usize, padding: PrefixPadding) -> Self {
        Self::grouped(vb, hidden, heads, hidden / heads.max(1), pad_token_id, padding)
    }

    /// A slot in a grouped-query attention (Llama, Mistral): prefixes have the `kv_heads`
    /// key/value heads of `head_dim` each, as Python sizes them from `num_key_value_heads`.
    pub fn grouped(vb: &candle_nn::VarBuilder, hidden: usize, kv_heads: usize, head_dim: usize, pad_token_id: usize, padding: PrefixPadding) -> Self {
        PrefixSlot {
            path: vb.prefix(),
            heads: kv_heads,
            head_dim,
            hidden,
            pad_value: pad_token_id as f64,
            padding,
            location: "",
            pool: String::new(),
            key: String::new(),
            prefixes: BTreeMap::new(),
            gates: BTreeMap::new(),
            layer: 0,
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Puts this slot's prefixes in the pool of the submodel at `pool` (its module path, as the
    /// Python library names `<pool>.prefix_tuning.prefix_tunings.*`).
    pub fn set_pool(&mut self, pool: impl Into<String>) {
        self.pool = pool.into();
        self.key = pool_key(&self.pool, self.location);
    }

    pub(crate) fn set_location(&mut self, location: &'static str) {
        self.location = location;
        self.key = pool_key(&self.pool, location);
    }

    /// The submodel path of this slot's prefix pool (`""`: the model's own).
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// The key of this slot's prefix modules: its location, qualified by its pool.
    pub(crate) fn pool_key(&self) -> &str {
        &self.key
    }

    /// `(hidden, heads, head_dim)` of the attention.
    pub fn dims(&self) -> (usize, usize, usize) {
        (self.hidden, self.heads, self.head_dim)
    }

    /// Prepends the active prefixes to `keys` and `values` (`[batch, heads, seq, head_dim]`) and
    /// zeros (attend) to the additive `mask` (`[batch, 1, q, seq]`). `residual` is the attention
    /// input, which prefix gates read. Without an active prefix here, returns the inputs.
    pub fn forward(&self, keys: &Tensor, values: &Tensor, mask: &Tensor, residual: &Tensor, ctx: &ForwardContext) -> Result<(Tensor, Tensor, Tensor)> {
        let (keys, values, mask) = self.composed(keys, values, mask, residual, ctx)?;
        Ok((ctx.output(keys), ctx.output(values), ctx.output(mask)))
    }

    fn composed(&self, keys: &Tensor, values: &Tensor, mask: &Tensor, residual: &Tensor, ctx: &ForwardContext) -> Result<(Tensor, Tensor, Tensor)> {
        let Some(setup) = ctx.setup_at(self.layer).filter(|s| s.any_adapter(&|n| self.prefixes.contains_key(n))) else {
            return Ok((keys.clone(), values.clone(), mask.clone()));
        };
        let rows = keys.dim(0)?;
        let mask = if mask.dim(0)? == rows { mask.clone() } else { mask.broadcast_as((rows, mask.dim(1)?, mask.dim(2)?, mask.dim(3)?))?.contiguous()? };
        let state = PrefixState { keys: keys.clone(), values: values.clone(), mask, residual: residual.clone(), row: 0 };
        let state = composition::run(self, setup, state, ctx)?;
        Ok((state.keys, state.values, state.mask))
    }

    fn prefixed(&self, name: &str, state: PrefixState, ctx: &ForwardContext) -> Result<PrefixState> {
        let Some(&index) = self.prefixes.get(name) else { return Ok(state) };
        let all = ctx
            .prefix_states(name, &self.key)
            .ok_or_else(|| crate::error::internal(format!("no prefix states for adapter `{name}` at `{}` in this forward", self.key)))?;
        let rows = state.keys.dim(0)?;
        let mut prefix_keys = all.get(2 * index)?.narrow(0, state.row, rows)?;
        let mut prefix_values = all.get(2 * index + 1)?.narrow(0, state.row, rows)?;
        if let Some(gate) = self.gates.get(name) {
            let g = gate.forward(&state.residual)?;
            let outputs = g.dim(1)?;
            let key_gate = g.narrow(1, 0, 1)?.reshape((rows, 1, 1, 1))?;
            let value_gate = g.narrow(1, outputs - 1, 1)?.reshape((rows, 1, 1, 1))?;
            prefix_keys = prefix_keys.broadcast_mul(&key_gate)?;
            prefix_values = prefix_values.broadcast_mul(&value_gate)?;
        }
        // The pool's rows may be one broadcast row: copy this slot's rows so that the
        // concatenation below takes candle's contiguous path.
        let (prefix_keys, prefix_values) = (prefix_keys.contiguous()?, prefix_values.contiguous()?);
        let length = prefix_keys.dim(2)?;
        let (b, c, q, _) = state.mask.dims4()?;
        let zeros = Tensor::zeros((b, c, q, length), state.mask.dtype(), state.mask.device())?;
        Ok(PrefixState {
            keys: Tensor::cat(&[&prefix_keys, &state.keys], 2)?,
            values: Tensor::cat(&[&prefix_values, &state.values], 2)?,
            mask: Tensor::cat(&[&zeros, &state.mask], 3)?,
            ..state
        })
    }

    /// Left-pads every part to the longest key length (keys and values with the pad token id,
    /// the mask as Python does), then joins the rows.
    fn pad_and_concat(&self, parts: Vec<PrefixState>, row: usize) -> Result<PrefixState> {
        let longest = parts.iter().map(|p| p.keys.dim(2)).collect::<Result<Vec<_>>>()?.into_iter().max().unwrap_or(0);
        let mask_pad = match self.padding {
            PrefixPadding::InvertedMask => 1.0,
            PrefixPadding::PlainMask => crate::nn::mask_min(parts.first().map_or(candle_core::DType::F32, |p| p.mask.dtype())),
        };
        let mut keys = Vec::new();
        let mut values = Vec::new();
        let mut masks = Vec::new();
        let mut residuals = Vec::new();
        for part in parts {
            let missing = longest - part.keys.dim(2)?;
            if missing == 0 {
                keys.push(part.keys);
                values.push(part.values);
                masks.push(part.mask);
            } else {
                let (b, h, _, d) = part.keys.dims4()?;
                let pad = (Tensor::ones((b, h, missing, d), part.keys.dtype(), part.keys.device())? * self.pad_value)?;
                keys.push(Tensor::cat(&[&pad, &part.keys], 2)?);
                values.push(Tensor::cat(&[&pad, &part.values], 2)?);
                let (mb, mc, mq, _) = part.mask.dims4()?;
                let mpad = (Tensor::ones((mb, mc, mq, missing), part.mask.dtype(), part.mask.device())? * mask_pad)?;
                masks.push(Tensor::cat(&[&mpad, &part.mask], 3)?);
            }
            residuals.push(part.residual);
        }
        Ok(PrefixState {
            keys: Tensor::cat(&keys, 0)?,
            values: Tensor::cat(&values, 0)?,
            mask: Tensor::cat(&masks, 0)?,
            residual: Tensor::cat(&residuals, 0)?,
            row,
        })
    }
}

fn slice_rows(state: &PrefixState, start: usize, len: usize) -> Result<PrefixState> {
    Ok(PrefixState {
        keys: state.keys.narrow(0, start, len)?,
        values: state.values.narrow(0, start, len)?,
        mask: state.mask.narrow(0, start, len)?,
        residual: state.residual.narrow(0, start, len)?,
        row: state.row + start,
    })
}

impl Composer for PrefixSlot {
    type State = PrefixState;
    const FAMILY: SlotFamily = SlotFamily::Prefix;

    fn has(&self, name: &str) -> bool {
        self.prefixes.contains_key(name)
    }

    fn single(&self, name: &str, state: PrefixState, ctx: &ForwardContext) -> Result<PrefixState> {
        self.prefixed(name, state, ctx)
    }

    fn rows(&self, state: &PrefixState) -> Result<usize> {
        state.keys.dim(0)
    }

    fn positions(&self, state: &PrefixState) -> Result<usize> {
        state.keys.dim(2)
    }

    /// Rows only: prefix tuning takes no Split (the table says so; activation refuses it).
    fn narrow(&self, state: &PrefixState, _dim: usize, start: usize, len: usize) -> Result<PrefixState> {
        slice_rows(state, start, len)
    }

    fn join(&self, _setup: &AdapterSetup, parts: Vec<PrefixState>, _dim: usize, opened: &PrefixState) -> Result<PrefixState> {
        self.pad_and_concat(parts, opened.row)
    }
}

/// The key of the prefix modules at `location` in the pool at `pool`.
pub(crate) fn pool_key(pool: &str, location: &str) -> String {
    if pool.is_empty() {
        location.to_string()
    } else {
        format!("{pool}:{location}")
    }
}

/// `(pool, location)` of a prefix module key.
pub(crate) fn split_pool_key(key: &str) -> (&str, &str) {
    key.rsplit_once(':').unwrap_or(("", key))
}
