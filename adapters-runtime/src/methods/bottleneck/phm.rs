//! Parameterized hypercomplex multiplication layers (Compacter): `y = x H + b` with
//! `H = Σ_i rule_i ⊗ W_i`, the rule and W optionally factorised and optionally shared by every
//! layer of an adapter. Follows `PHMLayer` and `init_shared_parameters` of `methods/modeling.py`.

use candle_core::{Result, Tensor, Var};

use crate::config::BnConfig;
use crate::methods::init::Init;
use crate::methods::NamedParam;

/// A full tensor or the batched product of two factors.
#[derive(Clone)]
pub(crate) enum Factor {
    Full(Var),
    Factorized(Var, Var),
}

impl Factor {
    fn value(&self) -> Result<Tensor> {
        match self {
            Factor::Full(v) => Ok(v.as_tensor().clone()),
            Factor::Factorized(l, r) => l.as_tensor().matmul(r.as_tensor()),
        }
    }
}

fn push(params: &mut Vec<NamedParam>, name: String, tensor: Tensor, learn: bool) -> Result<Var> {
    let p = if learn { NamedParam::new(name, tensor)? } else { NamedParam::buffer(name, tensor)? };
    let var = p.var.clone();
    params.push(p);
    Ok(var)
}

/// Xavier-normal init of each `[n, m]` slice (Python initialises W slice by slice).
fn xavier(init: &mut Init, shape: &[usize; 3]) -> Result<Tensor> {
    let std = (2.0 / (shape[1] + shape[2]) as f32).sqrt();
    init.normal(shape, std)
}

struct Phm<'a> {
    config: &'a BnConfig,
    p: usize,
    rank: usize,
}

impl Phm<'_> {
    fn factorized_w(&self) -> bool {
        self.config.factorized_phm_W.unwrap_or(true)
    }

    /// W of an `in -> out` layer, named `{prefix}W...`.
    fn w(&self, params: &mut Vec<NamedParam>, prefix: &str, suffix: &str, (i, o): (usize, usize), init: &mut Init) -> Result<Factor> {
        let p = self.p;
        Ok(if self.factorized_w() {
            Factor::Factorized(
                push(params, format!("{prefix}W{suffix}_left"), xavier(init, &[p, i / p, self.rank])?, true)?,
                push(params, format!("{prefix}W{suffix}_right"), xavier(init, &[p, self.rank, o / p])?, true)?,
            )
        } else {
            Factor::Full(push(params, format!("{prefix}W{suffix}"), xavier(init, &[p, i / p, o / p])?, true)?)
        })
    }

    /// The rule, named `{prefix}phm_rule...`; `shared` selects the shared initialisation.
    fn rule(&self, params: &mut Vec<NamedParam>, prefix: &str, shared: bool, init: &mut Init) -> Result<Factor> {
        let p = self.p;
        let learn = self.config.learn_phm.unwrap_or(true);
        let normal = self.config.phm_c_init.as_deref() != Some("uniform");
        let std = if shared { self.config.phm_init_range.unwrap_or(1e-4) as f32 } else { 0.01 };
        let bound = if shared { 1.0 } else { 0.01 };
        let mut draw = |shape: &[usize]| if normal { init.normal(shape, std) } else { init.uniform(shape, bound) };
        Ok(if self.config.factorized_phm_rule.unwrap_or(false) {
            let left = draw(&[p, p, 1])?;
            let right = draw(&[p, 1, p])?;
            Factor::Factorized(push(params, format!("{prefix}phm_rule_left"), left, learn)?, push(params, format!("{prefix}phm_rule_right"), right, learn)?)
        } else {
            Factor::Full(push(params, format!("{prefix}phm_rule"), draw(&[p, p, p])?, learn)?)
        })
    }
}

fn phm<'a>(config: &'a BnConfig) -> Phm<'a> {
    Phm { config, p: config.phm_dim as usize, rank: config.phm_rank.unwrap_or(1) as usize }
}

/// The parameters an adapter's PHM layers share (`shared_parameters.NAME.*`).
#[derive(Clone, Default)]
pub struct SharedPhm {
    rule: Option<Factor>,
    w_down: Option<Factor>,
    w_up: Option<Factor>,
}

impl SharedPhm {
    /// Creates the shared rule and W of a config (none unless `shared_phm_rule` /
    /// `shared_W_phm`), appending them to `params` under their Python names.
    pub fn new(config: &BnConfig, hidden: usize, down: usize, params: &mut Vec<NamedParam>, init: &mut Init) -> Result<Self> {
        let mut shared = SharedPhm::default();
        if !config.phm_layer {
            return Ok(shared);
        }
        let phm = phm(config);
        if config.shared_phm_rule.unwrap_or(true) {
            shared.rule = Some(phm.rule(params, "", true, init)?);
        }
        if config.shared_W_phm.unwrap_or(false) {
            shared.w_down = Some(phm.w(params, "", "_down", (hidden, down), init)?);
            shared.w_up = Some(phm.w(params, "", "_up", (down, hidden), init)?);
        }
        Ok(shared)
    }
}

/// One PHM layer replacing a bottleneck Linear.
pub struct PhmLayer {
    w: Factor,
    rule: Factor,
    bias: Option<Var>,
}

impl PhmLayer {
    /// An `in -> out` layer named under `prefix` (`adapter_down.0.`, `adapter_up.`); `up`
    /// selects the shared W of the up projection.
    pub fn new(
        config: &BnConfig,
        (i, o): (usize, usize),
        up: bool,
        prefix: &str,
        shared: &SharedPhm,
        params: &mut Vec<NamedParam>,
        init: &mut Init,
    ) -> Result<Self> {
        let phm = phm(config);
        let p = phm.p;
        if p == 0 || i % p != 0 || o % p != 0 {
            return Err(crate::error::AdapterError::InvalidConfig(format!(
                "Compacter: in_features {i} and out_features {o} must both be divisible by phm_dim {p}; choose a reduction_factor that gives a bottleneck divisible by {p}"
            )).into_candle());
        }
        let w = match (if up { &shared.w_up } else { &shared.w_down }, config.shared_W_phm.unwrap_or(false)) {
            (Some(w), true) => w.clone(),
            _ => phm.w(params, prefix, "", (i, o), init)?,
        };
        let rule = match &shared.rule {
            Some(rule) => rule.clone(),
            None => phm.rule(params, prefix, false, init)?,
        };
        let bias = if config.phm_bias.unwrap_or(true) { Some(push(params, format!("{prefix}b"), init.zeros(o)?, true)?) } else { None };
        Ok(PhmLayer { w, rule, bias })
    }

    /// `H = Σ_i kron(rule_i, W_i)`: `[in, out]`.
    fn weight(&self) -> Result<Tensor> {
        let rule = self.rule.value()?; // [p, p, p]: (i, a, b)
        let w = self.w.value()?; // [p, n, m]: (i, c, e)
        let (p, n, m) = w.dims3()?;
        let sum = rule.reshape((p, p * p))?.t()?.matmul(&w.reshape((p, n * m))?)?; // [(a b), (c e)]
        sum.reshape((p, p, n, m))?.permute((0, 2, 1, 3))?.reshape((p * n, p * m))
    }

    /// `x H + b`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.weight()?;
        let dims = x.dims().to_vec();
        let flat = x.reshape(((), dims[dims.len() - 1]))?.matmul(&h)?;
        let flat = match &self.bias {
            Some(b) => flat.broadcast_add(b.as_tensor())?,
            None => flat,
        };
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = h.dim(1)?;
        flat.reshape(out_dims)
    }
}
