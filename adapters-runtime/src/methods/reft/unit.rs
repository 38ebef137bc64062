//! One intervention: `h + (φ(h W_sᵀ + b_s) - h W_pᵀ) W_p` (LoReft, NoReft) or
//! `h + φ(h W_sᵀ + b_s) W_p` (DiReft), with LoReft's `W_p` orthogonal. Follows `ReftUnit`.

use candle_core::{Result, Tensor, Var};

use super::orthogonal;
use crate::config::ReftConfig;
use crate::context::ForwardContext;
use crate::methods::init::Init;
use crate::methods::NamedParam;
use crate::nn::activation::Activation;
use crate::nn::{dropout, linear};

enum Projection {
    Plain(Var),
    /// `parametrizations.weight.original` and the buffer `parametrizations.weight.0.base`.
    Orthogonal {
        original: Var,
        base: Var,
    },
}

pub struct ReftUnit {
    source_weight: Var,
    source_bias: Var,
    projection: Projection,
    activation: Activation,
    subtract_projection: bool,
    dropout: f64,
}

impl ReftUnit {
    /// A fresh unit; its parameters are appended to `params` under `prefix` (`units.0`).
    pub fn new(config: &ReftConfig, hidden: usize, prefix: &str, params: &mut Vec<NamedParam>, init: &mut Init) -> Result<Self> {
        let r = config.r;
        let mut push = |p: NamedParam| {
            let var = p.var.clone();
            params.push(p);
            var
        };
        let source_weight = push(NamedParam::new(format!("{prefix}.learned_source.weight"), init.kaiming_uniform(&[r, hidden])?)?);
        let bias = init.uniform(&[r], 1.0 / (hidden as f32).sqrt())?;
        let source_bias = push(NamedParam::new(format!("{prefix}.learned_source.bias"), bias)?);
        let projection = if config.orthogonality {
            let (original, base) = orthogonal::initial(r, hidden, init)?;
            Projection::Orthogonal {
                original: push(NamedParam::new(format!("{prefix}.projection.parametrizations.weight.original"), original)?),
                base: push(NamedParam::buffer(format!("{prefix}.projection.parametrizations.weight.0.base"), base)?),
            }
        } else {
            Projection::Plain(push(NamedParam::new(format!("{prefix}.projection.weight"), init.kaiming_uniform(&[r, hidden])?)?))
        };
        let activation = match &config.non_linearity {
            Some(name) => Activation::parse(name).map_err(crate::error::AdapterError::into_candle)?,
            None => Activation::Identity,
        };
        Ok(ReftUnit { source_weight, source_bias, projection, activation, subtract_projection: config.subtract_projection, dropout: config.dropout })
    }

    /// `W_p` `[r, D]`.
    pub fn projection_weight(&self) -> Result<Tensor> {
        match &self.projection {
            Projection::Plain(w) => Ok(w.as_tensor().clone()),
            Projection::Orthogonal { original, base } => orthogonal::effective_weight(original.as_tensor(), base.as_tensor()),
        }
    }

    /// `x`: `[batch, positions, D]`.
    pub fn forward(&self, x: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        let w_p = self.projection_weight()?;
        let mut source = self.activation.forward(&linear(x, self.source_weight.as_tensor(), Some(self.source_bias.as_tensor()))?)?;
        if self.subtract_projection {
            source = source.sub(&linear(x, &w_p, None)?)?;
        }
        let (b, p, r) = source.dims3()?;
        let delta = source.reshape((b * p, r))?.matmul(&w_p)?.reshape((b, p, ()))?;
        dropout(&x.add(&delta)?, self.dropout, ctx)
    }
}
