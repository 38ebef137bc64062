//! One LoRA-family module on one linear layer. Follows `LoRA`, `IA3` and the DoRA helpers in
//! `methods/lora.py`.

use candle_core::{DType, Result, Tensor, Var};

use crate::config::{LoRAConfig, LoraKind};
use crate::methods::init::Init;
use crate::methods::NamedParam;
use crate::nn::{dropout, linear};

/// VeRA's shared frozen random matrices (`shared_parameters.NAME.lora_A` `[r, in]` and
/// `lora_B` `[out, r]`), one pair for every layer of an adapter.
#[derive(Clone)]
pub struct SharedVera {
    pub a: Var,
    pub b: Var,
}

/// The fused q/k/v layout of Python's `LoRAMergedLinear` (GPT-2's `c_attn`, output `[q | k | v]`,
/// `size` columns each): the module carries one group per matrix `attn_matrices` enables, in the
/// order q, k, v. `lora_A` is `[r * n, in]` and `lora_B` `[size * n, r]` (IA3: `[size * n, 1]`);
/// group `j` reads rows `j * r..` of A and `j * size..` of B (Python's grouped `conv1d`) and
/// writes its matrix's columns, the others stay 0 (IA3: 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QkvGroups {
    enabled: [bool; 3],
    size: usize,
}

impl QkvGroups {
    fn count(&self) -> usize {
        self.enabled.iter().filter(|e| **e).count()
    }
}

pub struct LoraModule {
    pub(crate) kind: LoraKind,
    /// Set on a fused q/k/v projection (see [`QkvGroups`]).
    groups: Option<QkvGroups>,
    /// VeRA: the shared matrices and the trainable `vera_D` `[r, r]` and `vera_B` `[out, out]`.
    vera: Option<(SharedVera, Var, Var)>,
    /// `lora_A` (r, in); absent for IA3.
    a: Option<Var>,
    /// `lora_B` (out, r), or the IA3 vector (out, 1).
    b: Var,
    /// DoRA's magnitude `m.weight` (out, 1).
    magnitude: Option<Var>,
    /// The same variables under their Python names, for training, saving and loading.
    params: Vec<NamedParam>,
    /// alpha / r for LoRA and DoRA; alpha for IA3.
    scaling: f64,
    dropout: f64,
    /// UniPELT's gate `Linear(in, 1)`: `mean_seq(sigmoid(gate(x)))` replaces the scaling.
    gate: Option<(Var, Var)>,
    /// Built from a PEFT layout: DoRA and IA3 merging follow PEFT (see [`crate::config::PeftLayout`]).
    from_peft: bool,
    /// IA3 on the input (PEFT's `feedforward_modules`): `b` is `[1, in]` and the linear computes
    /// `W (x * b) + bias`.
    scales_input: bool,
}

impl LoraModule {
    /// A fresh module for a linear with `in_features -> out_features`. DoRA needs the base weight
    /// to initialise its magnitude from the row norms.
    /// `shared` is VeRA's shared pair (required when the config is VeRA).
    pub fn new(
        config: &LoRAConfig,
        in_features: usize,
        out_features: usize,
        base_weight: &Tensor,
        shared: Option<&SharedVera>,
        init: &mut Init,
    ) -> Result<Self> {
        let r = config.r;
        Self::build(config, in_features, ([r, in_features], [out_features, r]), 1, None, Some(base_weight), shared, init)
    }

    /// A module on a fused q/k/v projection with `size` output columns per matrix (GPT-2's
    /// `c_attn`: `size` = hidden), as Python's `LoRAMergedLinear` builds it: one group per matrix
    /// `attn_matrices` names among q, k and v, and a gate `Linear(in, groups)` with `use_gating`.
    /// Python fails on DoRA and VeRA there; they are refused here.
    pub fn merged_qkv(config: &LoRAConfig, in_features: usize, size: usize, init: &mut Init) -> Result<Self> {
        let enabled = ["q", "k", "v"].map(|m| config.attn_matrices.iter().any(|a| a == m));
        let groups = QkvGroups { enabled, size };
        let n = groups.count();
        let refuse = |what: &str| {
            crate::error::AdapterError::InvalidConfig(format!("{what} is not supported on a fused q/k/v projection (Python's LoRAMergedLinear, GPT-2's c_attn); set selfattn_lora=false to keep it to the other linears")).into_candle()
        };
        if n == 0 {
            return Err(refuse("a LoRA module without q, k or v in attn_matrices"));
        }
        if config.is_vera() {
            return Err(refuse("VeRA"));
        }
        if config.kind() == LoraKind::DoRA {
            return Err(refuse("DoRA"));
        }
        let r = config.r;
        Self::build(config, in_features, ([r * n, in_features], [size * n, r]), n, Some(groups), None, None, init)
    }

    /// A module of a PEFT layout ([`crate::config::PeftLayout`]) on a plain linear: LoRA, DoRA
    /// (PEFT's formula) or IA3, on the input (`[1, in]` vector) when `scales_input`.
    pub fn peft(config: &LoRAConfig, in_features: usize, out_features: usize, base_weight: &Tensor, scales_input: bool, init: &mut Init) -> Result<Self> {
        let r = config.r;
        let b_shape = if scales_input { [1, in_features] } else { [out_features, r] };
        if config.is_vera() || config.use_gating || (scales_input && config.kind() != LoraKind::IA3) {
            return Err(crate::error::internal("a PEFT layout holds LoRA, DoRA or IA3 modules"));
        }
        let module = Self::build(config, in_features, ([r, in_features], b_shape), 1, None, Some(base_weight), None, init)?;
        Ok(LoraModule { from_peft: true, scales_input, ..module })
    }

    /// IA3 on the input (PEFT's `feedforward_modules`): the linear's input is scaled, not its output.
    pub fn scales_input(&self) -> bool {
        self.scales_input
    }

    /// `x * (b * alpha)` for IA3 on the input.
    pub fn scale_input(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&(self.b().flatten_all()? * self.scaling)?)
    }

    #[allow(clippy::too_many_arguments)]
    fn build(
        config: &LoRAConfig,
        in_features: usize,
        (a_shape, b_shape): ([usize; 2], [usize; 2]),
        gate_outputs: usize,
        groups: Option<QkvGroups>,
        base_weight: Option<&Tensor>,
        shared: Option<&SharedVera>,
        init: &mut Init,
    ) -> Result<Self> {
        let kind = config.kind();
        let r = config.r;
        let out_features = b_shape[0];
        let base_weight = || base_weight.ok_or_else(|| crate::error::internal("DoRA needs the base weight"));
        let mut params = Vec::new();
        let mut vera = None;
        match kind {
            _ if config.is_vera() => {
                let shared = shared.ok_or_else(|| crate::error::internal("VeRA module without its shared matrices"))?;
                if shared.a.dims() != a_shape || shared.b.dims() != b_shape {
                    return Err(crate::error::AdapterError::InvalidConfig(format!(
                        "VeRA shares one A {:?} and B {:?} across an adapter; this linear needs A {a_shape:?} and B {b_shape:?}: target linears of one shape only",
                        shared.a.dims(),
                        shared.b.dims()
                    )).into_candle());
                }
                let d = init.eye(r, config.vera_d.unwrap_or(0.1))?;
                let b = init.eye(out_features, config.vera_b.unwrap_or(0.0))?;
                let d = NamedParam::new("vera_D", d)?;
                let b = NamedParam::new("vera_B", b)?;
                vera = Some((shared.clone(), d.var.clone(), b.var.clone()));
                params.push(d);
                params.push(b);
                if kind == LoraKind::DoRA {
                    params.push(NamedParam::new("m.weight", base_weight()?.sqr()?.sum_keepdim(1)?.sqrt()?)?);
                }
            }
            LoraKind::IA3 => {
                let b = match config.init_weights.as_str() {
                    "lora" => init.zeros(&b_shape)?,
                    "bert" => init.normal(&b_shape, 0.02)?,
                    _ => init.ones(&b_shape)?,
                };
                params.push(NamedParam::new("lora_B", b)?);
            }
            LoraKind::LoRA | LoraKind::DoRA => {
                let (a, b) = match config.init_weights.as_str() {
                    "bert" => (init.normal(&a_shape, 0.02)?, init.normal(&b_shape, 0.02)?),
                    "ia3" => (init.ones(&a_shape)?, init.ones(&b_shape)?),
                    _ => (init.kaiming_uniform(&a_shape)?, init.zeros(&b_shape)?),
                };
                params.push(NamedParam::new("lora_A", a)?);
                params.push(NamedParam::new("lora_B", b)?);
                if kind == LoraKind::DoRA {
                    // `m` is an nn.Linear(1, out): weight (out, 1) = ||W||_row.
                    let m = base_weight()?.sqr()?.sum_keepdim(1)?.sqrt()?;
                    params.push(NamedParam::new("m.weight", m)?);
                }
            }
        }
        if config.use_gating {
            let bias = init.uniform(&[gate_outputs], 1.0 / (in_features as f32).sqrt())?;
            params.push(NamedParam::new("gate.weight", init.normal(&[gate_outputs, in_features], 0.02)?)?);
            params.push(NamedParam::new("gate.bias", bias)?);
        }
        let scaling = match kind {
            LoraKind::IA3 => config.alpha,
            _ => config.alpha / r as f64,
        };
        let handle = |name: &str| params.iter().find(|p| p.name == name).map(|p| p.var.clone());
        let (a, magnitude) = (handle("lora_A"), handle("m.weight"));
        let gate = handle("gate.weight").zip(handle("gate.bias"));
        let b = match &vera {
            Some((_, _, vera_b)) => vera_b.clone(),
            None => handle("lora_B").ok_or_else(|| crate::error::internal("lora_B is always created"))?,
        };
        Ok(LoraModule { kind, groups, vera, a, b, magnitude, params, scaling, dropout: config.dropout, gate, from_peft: false, scales_input: false })
    }

    pub fn params(&self) -> &[NamedParam] {
        &self.params
    }

    fn b(&self) -> &Tensor {
        self.b.as_tensor()
    }

    /// `B A` (LoRA, DoRA; unscaled) or the IA3 vector `B` (out, 1). On a fused q/k/v projection,
    /// the groups' `B_j A_j` (or vectors) at their matrices' rows, 0 (IA3: 1) elsewhere.
    pub fn delta_w(&self) -> Result<Tensor> {
        if let Some(groups) = &self.groups {
            return self.grouped_delta_w(groups);
        }
        if let Some((shared, d, b)) = &self.vera {
            return b.as_tensor().matmul(shared.b.as_tensor())?.matmul(d.as_tensor())?.matmul(shared.a.as_tensor());
        }
        match &self.a {
            Some(a) => self.b().matmul(a.as_tensor()),
            None => Ok(self.b().clone()),
        }
    }

    fn magnitude(&self) -> Result<&Tensor> {
        self.magnitude.as_ref().map(Var::as_tensor).ok_or_else(|| crate::error::internal("DoRA module without magnitude"))
    }

    /// Python's padded `conv1d` delta of `LoRAMergedLinear` (`[out, in]`, or `[out, 1]` for IA3).
    fn grouped_delta_w(&self, groups: &QkvGroups) -> Result<Tensor> {
        let size = groups.size;
        let b = self.b();
        let mut rows = Vec::with_capacity(3);
        let mut j = 0;
        for enabled in groups.enabled {
            rows.push(match (&self.a, enabled) {
                (Some(a), true) => {
                    let r = a.dim(0)? / groups.count();
                    b.narrow(0, j * size, size)?.matmul(&a.as_tensor().narrow(0, j * r, r)?)?
                }
                (None, true) => b.narrow(0, j * size, size)?,
                (Some(a), false) => Tensor::zeros((size, a.dim(1)?), b.dtype(), b.device())?,
                (None, false) => Tensor::ones((size, b.dim(1)?), b.dtype(), b.device())?,
            });
            j += usize::from(enabled);
        }
        Tensor::cat(&rows, 0)
    }

    /// Python's `LoRAMergedLinear.forward` for one module: each group's `x A_j^T B_j^T` (LoRA) or
    /// vector (IA3) at its matrix's columns, 0 (IA3: 1) elsewhere, times the scaling or the
    /// gate (one per group, 1 elsewhere).
    fn grouped_forward(&self, groups: &QkvGroups, layer_input: &Tensor, ctx: &crate::context::ForwardContext) -> Result<Tensor> {
        let (size, n) = (groups.size, groups.count());
        let (batch, seq, _) = layer_input.dims3()?;
        let (dtype, device) = (layer_input.dtype(), layer_input.device());
        let padded = match &self.a {
            Some(a) => {
                let low = linear(&dropout(layer_input, self.dropout, ctx)?, a.as_tensor(), None)?;
                let r = a.dim(0)? / n;
                let mut parts = Vec::with_capacity(3);
                let mut j = 0;
                for enabled in groups.enabled {
                    parts.push(if enabled {
                        linear(&low.narrow(2, j * r, r)?, &self.b().narrow(0, j * size, size)?, None)?
                    } else {
                        Tensor::zeros((batch, seq, size), dtype, device)?
                    });
                    j += usize::from(enabled);
                }
                Tensor::cat(&parts, 2)?
            }
            None => self.grouped_delta_w(groups)?.reshape((1, 1, ()))?,
        };
        match &self.gate {
            None => padded * self.scaling,
            Some((w, b)) => {
                // mean over the sequence of sigmoid(gate(x)): one value per group and row.
                let gate = candle_nn::ops::sigmoid(&linear(layer_input, w.as_tensor(), Some(b.as_tensor()))?)?.mean_keepdim(1)?;
                let mut parts = Vec::with_capacity(3);
                let mut j = 0;
                for enabled in groups.enabled {
                    parts.push(if enabled {
                        gate.narrow(2, j, 1)?.broadcast_as((batch, 1, size))?.contiguous()?
                    } else {
                        Tensor::ones((batch, 1, size), gate.dtype(), device)?
                    });
                    j += usize::from(enabled);
                }
                padded.broadcast_mul(&Tensor::cat(&parts, 2)?)
            }
        }
    }

    /// The composed module output given the previous module's output in a stack (`None` first).
    pub fn forward(&self, hidden: Option<&Tensor>, layer_input: &Tensor, ctx: &crate::context::ForwardContext) -> Result<Tensor> {
        if let Some(groups) = &self.groups {
            // A fused projection runs one module alone (no stack): `hidden` is always `None`.
            return self.grouped_forward(groups, layer_input, ctx);
        }
        if self.vera.is_some() {
            let x = dropout(hidden.unwrap_or(layer_input), self.dropout, ctx)?;
            return self.scale(&linear(&x, &self.delta_w()?, None)?, layer_input);
        }
        match &self.a {
            None => {
                let vector = ctx.param(&self.b).flatten_all()?;
                let hidden = match hidden {
                    Some(h) => h.broadcast_mul(&vector)?,
                    None => {
                        let (b, _, _) = layer_input.dims3()?;
                        vector.reshape((1, 1, ()))?.repeat((b, 1, 1))?
                    }
                };
                self.scale(&hidden, layer_input)
            }
            Some(a) => {
                let x = dropout(hidden.unwrap_or(layer_input), self.dropout, ctx)?;
                let low = linear(&x, &ctx.param(a), None)?;
                let out = linear(&low, &ctx.param(&self.b), None)?;
                self.scale(&out, layer_input)
            }
        }
    }

    /// `x * scaling`, or `x * mean_seq(sigmoid(gate(layer_input)))` with a gate.
    fn scale(&self, x: &Tensor, layer_input: &Tensor) -> Result<Tensor> {
        match &self.gate {
            None => crate::nn::elementwise::scale(x, self.scaling),
            Some((w, b)) => {
                let gate = candle_nn::ops::sigmoid(&linear(layer_input, w.as_tensor(), Some(b.as_tensor()))?)?.mean_keepdim(1)?;
                x.broadcast_mul(&gate)
            }
        }
    }

    /// Whether a gate replaces the scaling (such modules cannot be merged).
    pub fn is_gated(&self) -> bool {
        self.gate.is_some()
    }

    /// Combines the base output with the composed module output, as the last module of a stack.
    pub fn combine(&self, layer_output: &Tensor, hidden: &Tensor, base_weight: &crate::nn::BaseWeight, bias: Option<&Tensor>) -> Result<Tensor> {
        match self.kind {
            LoraKind::LoRA => crate::nn::elementwise::add(layer_output, hidden),
            LoraKind::IA3 => layer_output.broadcast_mul(hidden),
            LoraKind::DoRA if self.from_peft => {
                // PEFT: m / ||W + s B A||_row * (W x + s B A x) + b (`hidden` carries the scaling).
                let norm = (base_weight.dense()? + (self.delta_w()? * self.scaling)?)?.sqr()?.sum(1)?.sqrt()?;
                let scale = self.magnitude()?.flatten_all()?.div(&norm)?;
                match bias {
                    Some(b) => (layer_output.broadcast_sub(b)? + hidden)?.broadcast_mul(&scale)?.broadcast_add(b),
                    None => (layer_output + hidden)?.broadcast_mul(&scale),
                }
            }
            LoraKind::DoRA => {
                // m / ||W + B A||_row * (W x + b + s B A x); the norm uses the unscaled delta.
                let norm = (base_weight.dense()? + self.delta_w()?)?.sqr()?.sum(1)?.sqrt()?;
                let scale = self.magnitude()?.flatten_all()?.div(&norm)?;
                (layer_output + hidden)?.broadcast_mul(&scale)
            }
        }
    }

    /// The bias with this module folded in: PEFT's IA3 on an output scales it with the rows;
    /// the Python library's merge leaves it (and so does every other module).
    pub fn merged_bias(&self, bias: &Tensor) -> Result<Tensor> {
        if self.kind == LoraKind::IA3 && self.from_peft && !self.scales_input {
            let dtype = bias.dtype();
            let scale = (self.b().flatten_all()?.to_dtype(DType::F32)? * self.scaling)?;
            return bias.to_dtype(DType::F32)?.mul(&scale)?.to_dtype(dtype);
        }
        Ok(bias.clone())
    }

    /// The weight with this module folded in (`merge_adapter`).
    pub fn merged_weight(&self, weight: &Tensor) -> Result<Tensor> {
        // Computed in f32 and rounded once, so a half-precision merge is one rounding off.
        let dtype = weight.dtype();
        let weight = weight.to_dtype(DType::F32)?;
        let delta = self.delta_w()?.to_dtype(DType::F32)?;
        let merged = match self.kind {
            LoraKind::LoRA => (weight + (delta * self.scaling)?)?,
            // `[1, in]` on the input scales the columns, `[out, 1]` on the output the rows.
            LoraKind::IA3 => weight.broadcast_mul(&(delta * self.scaling)?)?,
            LoraKind::DoRA if self.from_peft => {
                let v = (weight + (delta * self.scaling)?)?;
                let norm = v.sqr()?.sum_keepdim(1)?.sqrt()?;
                v.broadcast_mul(&self.magnitude()?.to_dtype(DType::F32)?.div(&norm)?)?
            }
            LoraKind::DoRA => {
                let v = (weight + delta)?;
                let norm = v.sqr()?.sum_keepdim(1)?.sqrt()?;
                v.broadcast_mul(&self.magnitude()?.to_dtype(DType::F32)?.div(&norm)?)?
            }
        };
        merged.to_dtype(dtype)
    }
}
