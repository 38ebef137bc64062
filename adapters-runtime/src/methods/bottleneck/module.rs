//! One bottleneck adapter: `adapter_down` (optional LayerNorm, Linear, activation),
//! `adapter_up`, scaling, optional gate and LayerNorm after. Follows `methods/modeling.py`.

use candle_core::{Result as CResult, Tensor, Var};

use crate::config::{BnConfig, ResidualBeforeLn, Scaling};
use crate::context::ForwardContext;
use crate::methods::init::Init;
use crate::methods::NamedParam;
use crate::nn::activation::Activation;
use crate::nn::elementwise::add;
use crate::nn::{dropout, linear, Norm};

use super::phm::{PhmLayer, SharedPhm};

/// Adapter LayerNorms use PyTorch's default eps.
const ADAPTER_LN_EPS: f64 = 1e-5;

/// The weight and bias of one Linear or LayerNorm of the adapter.
struct Affine {
    weight: Var,
    bias: Var,
}

impl Affine {
    fn linear(&self, x: &Tensor, ctx: &ForwardContext) -> CResult<Tensor> {
        linear(x, &ctx.param(&self.weight), Some(&ctx.param(&self.bias)))
    }

    fn layer_norm(&self, x: &Tensor, ctx: &ForwardContext) -> CResult<Tensor> {
        crate::nn::LayerNorm::new(ctx.param(&self.weight), ctx.param(&self.bias), ADAPTER_LN_EPS).forward(x)
    }
}

/// Registers a parameter under its Python name and returns a typed handle to the same variable.
fn param(params: &mut Vec<NamedParam>, name: String, tensor: Tensor) -> CResult<Var> {
    let p = NamedParam::new(name, tensor)?;
    let var = p.var.clone();
    params.push(p);
    Ok(var)
}

fn affine(params: &mut Vec<NamedParam>, prefix: &str, weight: Tensor, bias: Tensor) -> CResult<Affine> {
    Ok(Affine { weight: param(params, format!("{prefix}.weight"), weight)?, bias: param(params, format!("{prefix}.bias"), bias)? })
}

/// A down or up projection: a Linear, or a PHM layer (Compacter).
enum Projection {
    Linear(Affine),
    Phm(PhmLayer),
}

impl Projection {
    fn forward(&self, x: &Tensor, ctx: &ForwardContext) -> CResult<Tensor> {
        match self {
            Projection::Linear(a) => a.linear(x, ctx),
            Projection::Phm(p) => p.forward(x),
        }
    }
}

pub struct BottleneckAdapter {
    norm_before: Option<Affine>,
    down: Projection,
    up: Projection,
    /// `None`: the fixed `fixed_scaling`; `Some`: learned (one value or one per channel).
    learned_scaling: Option<Var>,
    fixed_scaling: f64,
    norm_after: Option<Affine>,
    gate: Option<Affine>,
    /// The same variables under their Python names, for training, saving and loading.
    params: Vec<NamedParam>,
    activation: Activation,
    is_parallel: bool,
    residual_before_ln: ResidualBeforeLn,
    adapter_residual_before_ln: bool,
    original_ln_before: bool,
    original_ln_after: bool,
    dropout: f64,
    /// AdapterPlus: in training, drop the whole up-projection of a row with this probability.
    stochastic_depth: f64,
}

impl BottleneckAdapter {
    /// Builds a freshly initialised adapter for a hidden size and a bottleneck size.
    /// `shared` holds the Compacter parameters shared by every layer (empty otherwise).
    pub fn new(config: &BnConfig, hidden: usize, down: usize, shared: &SharedPhm, init: &mut Init) -> CResult<Self> {
        let mut params = Vec::new();
        let p = &mut params;
        let norm_before = if config.ln_before { Some(affine(p, "adapter_down.0", init.ones(hidden)?, init.zeros(hidden)?)?) } else { None };
        let (down_w, up_w) = match config.init_weights.as_str() {
            "mam_adapter" => (init.kaiming_uniform(&[down, hidden])?, init.zeros((hidden, down))?),
            "houlsby" => (init.truncated_normal(&[down, hidden], 1e-2)?, init.truncated_normal(&[hidden, down], 1e-2)?),
            _ => (init.normal(&[down, hidden], 0.02)?, init.normal(&[hidden, down], 0.02)?),
        };
        let down_prefix = format!("adapter_down.{}", usize::from(config.ln_before));
        let (down_layer, up) = if config.phm_layer {
            (
                Projection::Phm(PhmLayer::new(config, (hidden, down), false, &format!("{down_prefix}."), shared, p, init)?),
                Projection::Phm(PhmLayer::new(config, (down, hidden), true, "adapter_up.", shared, p, init)?),
            )
        } else {
            (Projection::Linear(affine(p, &down_prefix, down_w, init.zeros(down)?)?), Projection::Linear(affine(p, "adapter_up", up_w, init.zeros(hidden)?)?))
        };
        let (fixed_scaling, learned_scaling) = match &config.scaling {
            Scaling::Fixed(s) => (*s, None),
            Scaling::Mode(mode) => {
                let size = if mode == "channel" { hidden } else { 1 };
                (1.0, Some(param(p, "scaling".into(), init.ones(size)?)?))
            }
        };
        let norm_after = if config.ln_after { Some(affine(p, "adapter_norm_after", init.ones(hidden)?, init.zeros(hidden)?)?) } else { None };
        let gate = if config.use_gating { Some(affine(p, "gate", init.normal(&[1, hidden], 0.02)?, init.zeros(1)?)?) } else { None };
        Ok(BottleneckAdapter {
            norm_before,
            down: down_layer,
            up,
            learned_scaling,
            fixed_scaling,
            norm_after,
            gate,
            params,
            activation: Activation::parse(&config.non_linearity).map_err(crate::error::AdapterError::into_candle)?,
            is_parallel: config.is_parallel,
            residual_before_ln: config.residual_before_ln.clone(),
            adapter_residual_before_ln: config.adapter_residual_before_ln,
            original_ln_before: config.original_ln_before,
            original_ln_after: config.original_ln_after,
            dropout: config.dropout,
            stochastic_depth: config.stochastic_depth.unwrap_or(0.0),
        })
    }

    pub fn params(&self) -> &[NamedParam] {
        &self.params
    }

    /// Second names under which the Python module registers a parameter: with `ln_before`, the
    /// LayerNorm at `adapter_down.0` is also the attribute `adapter_norm_before`, and PyTorch's
    /// state dict (so `pytorch_adapter.bin`) lists it under both. Returns (alias, parameter name).
    pub fn aliases(&self) -> &'static [(&'static str, &'static str)] {
        if self.norm_before.is_some() {
            &[("adapter_norm_before.weight", "adapter_down.0.weight"), ("adapter_norm_before.bias", "adapter_down.0.bias")]
        } else {
            &[]
        }
    }

    /// `pre_forward`: the adapter input and the residual, from the sublayer output `hidden`
    /// and the sublayer input `input_tensor`.
    /// Without a `layer_norm` (pre-norm models) the original residual is added and nothing is
    /// normalised, as Python does for `layer_norm=None`.
    pub fn pre_forward(&self, hidden: &Tensor, input_tensor: &Tensor, layer_norm: Option<&Norm>) -> CResult<(Tensor, Tensor)> {
        if self.is_parallel {
            return Ok((input_tensor.clone(), input_tensor.clone()));
        }
        let mut residual = None;
        if self.residual_before_ln == ResidualBeforeLn::Flag(true) {
            residual = Some(hidden.clone());
        }
        let mut hidden = hidden.clone();
        if self.original_ln_before {
            hidden = add(&hidden, input_tensor)?;
            if matches!(self.residual_before_ln, ResidualBeforeLn::Mode(_)) {
                residual = Some(hidden.clone());
            }
            if let Some(norm) = layer_norm {
                hidden = norm.forward(&hidden)?;
            }
        }
        if self.residual_before_ln == ResidualBeforeLn::Flag(false) {
            residual = Some(hidden.clone());
        }
        let residual = residual.ok_or_else(|| {
            crate::error::AdapterError::InvalidConfig("residual_before_ln = \"post_add\" needs original_ln_before = true".into()).into_candle()
        })?;
        Ok((hidden, residual))
    }

    /// `pre_forward` for AdapterFusion: also the fusion query, the sublayer output before
    /// (`query_before_ln`) or after the original residual and LayerNorm.
    pub fn pre_forward_with_query(
        &self,
        hidden: &Tensor,
        input_tensor: &Tensor,
        layer_norm: Option<&Norm>,
        query_before_ln: bool,
    ) -> CResult<(Tensor, Tensor, Tensor)> {
        let (out, residual) = self.pre_forward(hidden, input_tensor, layer_norm)?;
        let query = if query_before_ln { hidden.clone() } else { out.clone() };
        Ok((out, query, residual))
    }

    /// The adapter itself: bottleneck, scaling, gate, optional LayerNorm and residual.
    pub fn forward(&self, x: &Tensor, residual: &Tensor, ctx: &crate::context::ForwardContext) -> CResult<Tensor> {
        Ok(self.forward_with_up(x, residual, ctx)?.0)
    }

    /// [`BottleneckAdapter::forward`] and the scaled up-projection (before dropout and gate),
    /// which AdapterFusion attends over.
    pub fn forward_with_up(&self, x: &Tensor, residual: &Tensor, ctx: &crate::context::ForwardContext) -> CResult<(Tensor, Tensor)> {
        let down_in = match &self.norm_before {
            Some(norm) => norm.layer_norm(x, ctx)?,
            None => x.clone(),
        };
        let down = self.activation.forward(&self.down.forward(&down_in, ctx)?)?;
        // Python's parallel adapters have no stochastic depth.
        let depth = if self.is_parallel { 0.0 } else { self.stochastic_depth };
        let up = drop_rows(&self.up.forward(&down, ctx)?, depth, ctx)?;
        let up = match &self.learned_scaling {
            Some(scaling) => up.broadcast_mul(&ctx.param(scaling))?,
            None => crate::nn::elementwise::scale(&up, self.fixed_scaling)?,
        };
        let mut output = dropout(&up, self.dropout, ctx)?;
        if let Some(gate) = &self.gate {
            // Mean over the sequence: one gate per example, [batch, 1, 1].
            let gate = candle_nn::ops::sigmoid(&gate.linear(x, ctx)?)?.mean_keepdim(1)?;
            output = output.broadcast_mul(&gate)?;
        }
        if self.is_parallel {
            if let Some(norm) = &self.norm_after {
                output = norm.layer_norm(&output, ctx)?;
            }
            return Ok((output, up));
        }
        if self.adapter_residual_before_ln {
            output = add(&output, residual)?;
        }
        if let Some(norm) = &self.norm_after {
            output = norm.layer_norm(&output, ctx)?;
        }
        if !self.adapter_residual_before_ln {
            output = add(&output, residual)?;
        }
        Ok((output, up))
    }

    /// `post_forward`: the original residual and LayerNorm after the adapter(s).
    /// `ln_after` off: Python's hook mode, which forces `original_ln_after = False`.
    pub fn post_forward(&self, hidden: &Tensor, input_hidden: &Tensor, input_tensor: &Tensor, layer_norm: Option<&Norm>, ln_after: bool) -> CResult<Tensor> {
        let hidden = if self.is_parallel { add(hidden, input_hidden)? } else { hidden.clone() };
        match (self.original_ln_after && ln_after, layer_norm) {
            (true, Some(norm)) => norm.forward(&add(&hidden, input_tensor)?),
            (true, None) => add(&hidden, input_tensor),
            (false, _) => Ok(hidden),
        }
    }
}

/// Stochastic depth in `"row"` mode (torchvision's `StochasticDepth`): in training, each batch
/// row is zeroed with probability `p` and the kept rows scaled by `1 / (1 - p)`.
fn drop_rows(x: &Tensor, p: f64, ctx: &crate::context::ForwardContext) -> CResult<Tensor> {
    if !ctx.train() || p <= 0.0 {
        return Ok(x.clone());
    }
    let rows = x.dim(0)?;
    let keep = 1.0 - p;
    let draws: Vec<f32> = match ctx.dropout_rng() {
        Some(rng) => {
            let mut rng = rng.lock().map_err(|_| crate::error::internal("dropout generator poisoned"))?;
            (0..rows).map(|_| if f64::from(rng.uniform()) < keep { (1.0 / keep) as f32 } else { 0.0 }).collect()
        }
        None => vec![1.0; rows],
    };
    let mut shape = vec![1; x.rank()];
    shape[0] = rows;
    x.broadcast_mul(&Tensor::from_vec(draws, shape, x.device())?.to_dtype(x.dtype())?)
}
