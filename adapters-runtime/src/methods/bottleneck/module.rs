//! One bottleneck adapter: `adapter_down` (optional LayerNorm, Linear, activation),
//! `adapter_up`, scaling, optional gate and LayerNorm after. Follows `methods/modeling.py`.

use candle_core::{Result as CResult, Tensor};

use crate::config::{BnConfig, ResidualBeforeLn, Scaling};
use crate::methods::activation::Activation;
use crate::methods::init::{self, Rng};
use crate::methods::norm::layer_norm_slow;
use crate::methods::{dropout, linear, LayerNorm, NamedParam};

/// Adapter LayerNorms use PyTorch's default eps.
const ADAPTER_LN_EPS: f64 = 1e-5;

pub struct BottleneckAdapter {
    params: Vec<NamedParam>,
    activation: Activation,
    fixed_scaling: Option<f64>,
    ln_before: bool,
    ln_after: bool,
    use_gating: bool,
    is_parallel: bool,
    residual_before_ln: ResidualBeforeLn,
    adapter_residual_before_ln: bool,
    original_ln_before: bool,
    original_ln_after: bool,
    dropout: f64,
}

impl BottleneckAdapter {
    /// Builds a freshly initialised adapter for a hidden size and a bottleneck size.
    pub fn new(config: &BnConfig, hidden: usize, down: usize, rng: &mut Rng) -> CResult<Self> {
        let mut params = Vec::new();
        let linear_index = usize::from(config.ln_before);
        if config.ln_before {
            params.push(NamedParam::new("adapter_down.0.weight", Tensor::ones(hidden, candle_core::DType::F32, &candle_core::Device::Cpu)?)?);
            params.push(NamedParam::new("adapter_down.0.bias", Tensor::zeros(hidden, candle_core::DType::F32, &candle_core::Device::Cpu)?)?);
        }
        let (down_w, up_w) = match config.init_weights.as_str() {
            "mam_adapter" => (init::kaiming_uniform(rng, &[down, hidden])?, Tensor::zeros((hidden, down), candle_core::DType::F32, &candle_core::Device::Cpu)?),
            "houlsby" => (init::truncated_normal(rng, &[down, hidden], 1e-2)?, init::truncated_normal(rng, &[hidden, down], 1e-2)?),
            _ => (init::normal(rng, &[down, hidden], 0.02)?, init::normal(rng, &[hidden, down], 0.02)?),
        };
        params.push(NamedParam::new(format!("adapter_down.{linear_index}.weight"), down_w)?);
        params.push(NamedParam::new(format!("adapter_down.{linear_index}.bias"), Tensor::zeros(down, candle_core::DType::F32, &candle_core::Device::Cpu)?)?);
        params.push(NamedParam::new("adapter_up.weight", up_w)?);
        params.push(NamedParam::new("adapter_up.bias", Tensor::zeros(hidden, candle_core::DType::F32, &candle_core::Device::Cpu)?)?);
        let fixed_scaling = match &config.scaling {
            Scaling::Fixed(s) => Some(*s),
            Scaling::Mode(mode) => {
                let size = if mode == "channel" { hidden } else { 1 };
                params.push(NamedParam::new("scaling", Tensor::ones(size, candle_core::DType::F32, &candle_core::Device::Cpu)?)?);
                None
            }
        };
        if config.ln_after {
            params.push(NamedParam::new("adapter_norm_after.weight", Tensor::ones(hidden, candle_core::DType::F32, &candle_core::Device::Cpu)?)?);
            params.push(NamedParam::new("adapter_norm_after.bias", Tensor::zeros(hidden, candle_core::DType::F32, &candle_core::Device::Cpu)?)?);
        }
        if config.use_gating {
            params.push(NamedParam::new("gate.weight", init::normal(rng, &[1, hidden], 0.02)?)?);
            params.push(NamedParam::new("gate.bias", Tensor::zeros(1, candle_core::DType::F32, &candle_core::Device::Cpu)?)?);
        }
        Ok(BottleneckAdapter {
            params,
            activation: Activation::parse(&config.non_linearity).map_err(candle_core::Error::wrap)?,
            fixed_scaling,
            ln_before: config.ln_before,
            ln_after: config.ln_after,
            use_gating: config.use_gating,
            is_parallel: config.is_parallel,
            residual_before_ln: config.residual_before_ln.clone(),
            adapter_residual_before_ln: config.adapter_residual_before_ln,
            original_ln_before: config.original_ln_before,
            original_ln_after: config.original_ln_after,
            dropout: config.dropout,
        })
    }

    pub fn params(&self) -> &[NamedParam] {
        &self.params
    }

    /// Second names under which the Python module registers a parameter: with `ln_before`, the
    /// LayerNorm at `adapter_down.0` is also the attribute `adapter_norm_before`, and PyTorch's
    /// state dict (so `pytorch_adapter.bin`) lists it under both. Returns (alias, parameter name).
    pub fn aliases(&self) -> &'static [(&'static str, &'static str)] {
        if self.ln_before {
            &[("adapter_norm_before.weight", "adapter_down.0.weight"), ("adapter_norm_before.bias", "adapter_down.0.bias")]
        } else {
            &[]
        }
    }

    fn get(&self, name: &str) -> Tensor {
        // Every name looked up here was pushed by `new` for the same flags.
        self.params.iter().find(|p| p.name == name).map(|p| p.var.as_tensor().clone()).expect("parameter created with the adapter")
    }

    fn adapter_ln(&self, x: &Tensor, prefix: &str) -> CResult<Tensor> {
        let (w, b) = (self.get(&format!("{prefix}.weight")), self.get(&format!("{prefix}.bias")));
        if x.track_op() || w.track_op() {
            layer_norm_slow(x, &w, &b, ADAPTER_LN_EPS)
        } else {
            LayerNorm::new(w, b, ADAPTER_LN_EPS).forward(x)
        }
    }

    /// `pre_forward`: the adapter input and the residual, from the sublayer output `hidden`
    /// and the sublayer input `input_tensor`.
    pub fn pre_forward(&self, hidden: &Tensor, input_tensor: &Tensor, layer_norm: &LayerNorm) -> CResult<(Tensor, Tensor)> {
        if self.is_parallel {
            return Ok((input_tensor.clone(), input_tensor.clone()));
        }
        let mut residual = None;
        if self.residual_before_ln == ResidualBeforeLn::Flag(true) {
            residual = Some(hidden.clone());
        }
        let mut hidden = hidden.clone();
        if self.original_ln_before {
            hidden = (hidden + input_tensor)?;
            if matches!(self.residual_before_ln, ResidualBeforeLn::Mode(_)) {
                residual = Some(hidden.clone());
            }
            hidden = layer_norm.forward(&hidden)?;
        }
        if self.residual_before_ln == ResidualBeforeLn::Flag(false) {
            residual = Some(hidden.clone());
        }
        let residual = residual.ok_or_else(|| {
            candle_core::Error::Msg("residual_before_ln = \"post_add\" needs original_ln_before = true".into())
        })?;
        Ok((hidden, residual))
    }

    /// The adapter itself: bottleneck, scaling, gate, optional LayerNorm and residual.
    pub fn forward(&self, x: &Tensor, residual: &Tensor, train: bool) -> CResult<Tensor> {
        let linear_index = usize::from(self.ln_before);
        let mut down_in = x.clone();
        if self.ln_before {
            down_in = self.adapter_ln(&down_in, "adapter_down.0")?;
        }
        let down = linear(
            &down_in,
            &self.get(&format!("adapter_down.{linear_index}.weight")),
            Some(&self.get(&format!("adapter_down.{linear_index}.bias"))),
        )?;
        let down = self.activation.forward(&down)?;
        let up = linear(&down, &self.get("adapter_up.weight"), Some(&self.get("adapter_up.bias")))?;
        let up = match self.fixed_scaling {
            Some(s) => (up * s)?,
            None => up.broadcast_mul(&self.get("scaling"))?,
        };
        let mut output = dropout(&up, self.dropout, train)?;
        if self.use_gating {
            let gate = candle_nn::ops::sigmoid(&linear(x, &self.get("gate.weight"), Some(&self.get("gate.bias")))?)?;
            // Mean over the sequence: one gate per example, [batch, 1, 1].
            let gate = gate.mean_keepdim(1)?;
            output = output.broadcast_mul(&gate)?;
        }
        if self.is_parallel {
            if self.ln_after {
                output = self.adapter_ln(&output, "adapter_norm_after")?;
            }
            return Ok(output);
        }
        if self.adapter_residual_before_ln {
            output = (output + residual)?;
        }
        if self.ln_after {
            output = self.adapter_ln(&output, "adapter_norm_after")?;
        }
        if !self.adapter_residual_before_ln {
            output = (output + residual)?;
        }
        Ok(output)
    }

    /// `post_forward`: the original residual and LayerNorm after the adapter(s).
    pub fn post_forward(&self, hidden: &Tensor, input_hidden: &Tensor, input_tensor: &Tensor, layer_norm: &LayerNorm) -> CResult<Tensor> {
        let hidden = if self.is_parallel { (hidden + input_hidden)? } else { hidden.clone() };
        if self.original_ln_after {
            layer_norm.forward(&(hidden + input_tensor)?)
        } else {
            Ok(hidden)
        }
    }
}
