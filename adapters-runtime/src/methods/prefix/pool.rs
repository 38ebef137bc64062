//! The model-level prefix modules (Python's `PrefixTuningPool`): per adapter and location key, one
//! module that produces the keys and values of every layer's prefix at once.

use std::collections::BTreeMap;

use candle_core::{Result as CResult, Tensor, Var};

use crate::config::PrefixTuningConfig;
use crate::context::ForwardContext;
use crate::methods::init::Init;
use crate::methods::NamedParam;
use crate::nn::activation::Activation;
use crate::nn::{dropout, linear};

/// How many layers hold a prefix at one location key, and their attention shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixShape {
    pub n_layers: usize,
    pub n_heads: usize,
    pub head_dim: usize,
    pub hidden: usize,
}

/// One prefix module: an embedding of `prefix_length` positions through an MLP (`PrefixTuning`),
/// or the flat vector of all key and value entries (`FlatPrefixTuning`).
pub struct PrefixModule {
    shape: PrefixShape,
    prefix_length: usize,
    dropout: f64,
    kind: PrefixKind,
    params: Vec<NamedParam>,
}

enum PrefixKind {
    Mlp { wte: Var, w1: Var, b1: Var, activation: Activation, w2: Var, b2: Var },
    Flat { control_trans: Var },
}

fn param(params: &mut Vec<NamedParam>, name: &str, tensor: Tensor) -> CResult<Var> {
    let p = NamedParam::new(name, tensor)?;
    let var = p.var.clone();
    params.push(p);
    Ok(var)
}

impl PrefixModule {
    /// A freshly initialised module (PyTorch's defaults: N(0, 1) embedding and flat vector,
    /// Kaiming-uniform linears).
    pub fn new(config: &PrefixTuningConfig, shape: PrefixShape, init: &mut Init) -> CResult<Self> {
        let mut params = Vec::new();
        let p = &mut params;
        let out = shape.n_layers * 2 * shape.n_heads * shape.head_dim;
        let kind = if config.flat {
            PrefixKind::Flat { control_trans: param(p, "control_trans", init.normal(&[config.prefix_length * out], 1.0)?)? }
        } else {
            let (h, b) = (shape.hidden, config.bottleneck_size);
            // PyTorch's Linear bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
            let bias = |init: &mut Init, n: usize, fan_in: usize| init.uniform(&[n], 1.0 / (fan_in as f32).sqrt());
            PrefixKind::Mlp {
                wte: param(p, "wte.weight", init.normal(&[config.prefix_length, h], 1.0)?)?,
                w1: param(p, "control_trans.0.weight", init.kaiming_uniform(&[b, h])?)?,
                b1: param(p, "control_trans.0.bias", bias(init, b, h)?)?,
                activation: Activation::parse(&config.non_linearity).map_err(crate::error::AdapterError::into_candle)?,
                w2: param(p, "control_trans.2.weight", init.kaiming_uniform(&[out, b])?)?,
                b2: param(p, "control_trans.2.bias", bias(init, out, b)?)?,
            }
        };
        Ok(PrefixModule { shape, prefix_length: config.prefix_length, dropout: config.dropout, kind, params })
    }

    pub fn params(&self) -> &[NamedParam] {
        &self.params
    }

    /// The key/value entries of every layer for one batch row, `[prefix_length, n_layers * 2 *
    /// heads * head_dim]` (before dropout), from detached variables when nothing is trained.
    fn entries(&self, ctx: &ForwardContext) -> CResult<Tensor> {
        match &self.kind {
            PrefixKind::Mlp { wte, w1, b1, activation, w2, b2 } => {
                let hidden = activation.forward(&linear(&ctx.param(wte), &ctx.param(w1), Some(&ctx.param(b1)))?)?;
                linear(&hidden, &ctx.param(w2), Some(&ctx.param(b2)))
            }
            PrefixKind::Flat { control_trans } => ctx.param(control_trans).reshape((self.prefix_length, ())),
        }
    }

    /// `[n_layers * 2, batch, heads, prefix_length, head_dim]`: entry `2 i` holds the keys and
    /// `2 i + 1` the values of the `i`-th layer with this prefix (Python's permute and split).
    /// Every row is the same unless dropout draws per row (training), so otherwise the batch
    /// dimension is a broadcast of one row, not a copy.
    pub fn forward(&self, batch: usize, ctx: &ForwardContext) -> CResult<Tensor> {
        let s = self.shape;
        let entries = self.entries(ctx)?.reshape((1, self.prefix_length, s.n_layers * 2, s.n_heads, s.head_dim))?;
        if !(ctx.train() && self.dropout > 0.0) {
            let one = entries.permute((2, 0, 3, 1, 4))?.contiguous()?;
            return one.broadcast_as((s.n_layers * 2, batch, s.n_heads, self.prefix_length, s.head_dim));
        }
        let entries = entries.broadcast_as((batch, self.prefix_length, s.n_layers * 2, s.n_heads, s.head_dim))?;
        let entries = dropout(&entries.contiguous()?, self.dropout, ctx)?;
        entries.permute((2, 0, 3, 1, 4))?.contiguous()
    }

    /// Python's `eject_prefix_tuning`: the MLP's output as a flat module (same prefixes).
    pub fn ejected(&self) -> CResult<Option<PrefixModule>> {
        if matches!(self.kind, PrefixKind::Flat { .. }) {
            return Ok(None);
        }
        let flat = self.entries(&ForwardContext::default())?.flatten_all()?.detach();
        let mut params = Vec::new();
        let control_trans = param(&mut params, "control_trans", flat)?;
        Ok(Some(PrefixModule { shape: self.shape, prefix_length: self.prefix_length, dropout: self.dropout, kind: PrefixKind::Flat { control_trans }, params }))
    }
}

/// The prefix modules of one adapter, by location key (`self_prefix`, `self`, ...).
#[derive(Default)]
pub struct PrefixGroup {
    pub modules: BTreeMap<String, PrefixModule>,
}

impl PrefixGroup {
    /// Every location's prefixes for a batch.
    pub fn forward(&self, batch: usize, ctx: &ForwardContext) -> CResult<BTreeMap<String, Tensor>> {
        self.modules.iter().map(|(key, m)| Ok((key.clone(), m.forward(batch, ctx)?))).collect()
    }
}

/// The prefix states of one forward: adapter -> location key -> `[n_layers * 2, batch, heads,
/// prefix_length, head_dim]`.
pub type PrefixStates = BTreeMap<String, BTreeMap<String, Tensor>>;
