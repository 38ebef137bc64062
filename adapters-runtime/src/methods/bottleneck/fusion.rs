//! An AdapterFusion layer (Python's `BertFusion`): attention of the sublayer output (query)
//! over the up-projections of the fused adapters (keys and values), one per bottleneck slot.

use std::sync::Mutex;

use candle_core::{Result, Tensor, Var};

use crate::config::FusionConfig;
use crate::context::ForwardContext;
use crate::methods::init::Init;
use crate::methods::NamedParam;
use crate::nn::{dropout, linear};

pub struct FusionLayer {
    config: FusionConfig,
    query: Option<(Var, Var)>,
    key: Option<(Var, Var)>,
    value: Option<Var>,
    params: Vec<NamedParam>,
    dropout: f64,
    /// The softmax temperature. Python lowers it by T/1000 on every forward, training or not,
    /// down to 1; kept here to give the same numbers.
    temperature: Mutex<f64>,
    reduction: f64,
}

impl FusionLayer {
    /// A new layer for hidden size `h`: query and key N(0, 0.02) with zero bias, value the
    /// identity (plus 1e-6 elsewhere) when `value_initialized`, as Python initialises them.
    pub fn new(config: FusionConfig, hidden: usize, model_dropout: f64, init: &mut Init) -> Result<Self> {
        let mut params = Vec::new();
        let mut linear_param = |name: &str, bias: bool, init: &mut Init| -> Result<(Var, Option<Var>)> {
            let w = NamedParam::new(format!("{name}.weight"), init.normal(&[hidden, hidden], 0.02)?)?;
            let wv = w.var.clone();
            params.push(w);
            let b = if bias {
                let b = NamedParam::new(format!("{name}.bias"), init.zeros(hidden)?)?;
                let bv = b.var.clone();
                params.push(b);
                Some(bv)
            } else {
                None
            };
            Ok((wv, b))
        };
        let query = if config.query { Some(linear_param("query", true, init)?) } else { None };
        let key = if config.key { Some(linear_param("key", true, init)?) } else { None };
        let value = if config.value { Some(linear_param("value", false, init)?.0) } else { None };
        if !(config.query || config.key || config.value) {
            // Python then registers a `dense` Linear(h, 1) that its forward never uses.
            let w = NamedParam::new("dense.weight", init.normal(&[1, hidden], 0.02)?)?;
            let b = NamedParam::new("dense.bias", init.zeros(1)?)?;
            params.extend([w, b]);
        }
        if let (Some(v), true) = (&value, config.value_initialized) {
            let eye = init.eye(hidden, 1.0)?;
            let start = ((eye.ones_like()? - &eye)? * 1e-6)?.add(&eye)?;
            v.set(&start)?;
        }
        let query = query.map(|(w, b)| (w, b.expect("query has a bias")));
        let key = key.map(|(w, b)| (w, b.expect("key has a bias")));
        let t = if config.temperature { 50.0 } else { 1.0 };
        let dropout = config.dropout_prob.unwrap_or(model_dropout);
        Ok(FusionLayer { config, query, key, value, params, dropout, temperature: Mutex::new(t), reduction: t / 1000.0 })
    }

    pub fn config(&self) -> &FusionConfig {
        &self.config
    }

    pub fn params(&self) -> &[NamedParam] {
        &self.params
    }

    /// The value matrix, if the config has one (for the regularisation loss).
    pub fn value_weight(&self) -> Option<&Var> {
        self.value.as_ref()
    }

    /// `query` `[b, s, h]`, `ups` the adapters' up-projections `[b, s, n, h]`, `residual`
    /// `[b, s, h]`. Returns the fused hidden states and the attention over the adapters `[b, s, n]`.
    pub fn forward(&self, query: &Tensor, ups: &Tensor, residual: &Tensor, ctx: &ForwardContext) -> Result<(Tensor, Tensor)> {
        let c = &self.config;
        // Python adds the residual in place to the tensor that is both key and value.
        let kv = if c.residual_before { ups.broadcast_add(&residual.unsqueeze(2)?)? } else { ups.clone() };
        let q = match &self.query {
            Some((w, b)) => linear(query, w.as_tensor(), Some(b.as_tensor()))?,
            None => query.clone(),
        };
        let k = match &self.key {
            Some((w, b)) => linear(&kv, w.as_tensor(), Some(b.as_tensor()))?,
            None => kv.clone(),
        };
        let v = match (&self.value, c.value_before_softmax) {
            (Some(w), true) => linear(&kv, w.as_tensor(), None)?,
            _ => kv,
        };
        // [b, s, 1, h] x [b, s, h, n] -> [b, s, n]
        let scores = q.unsqueeze(2)?.contiguous()?.matmul(&k.transpose(2, 3)?.contiguous()?)?.squeeze(2)?;
        let scores = dropout(&scores, self.dropout, ctx)?;
        let t = {
            let mut t = self.temperature.lock().map_err(|_| crate::error::internal("fusion temperature poisoned"))?;
            let current = *t;
            *t = (current - self.reduction).max(1.0);
            current
        };
        let probs = crate::nn::fused::softmax_last_dim(&(scores / t)?)?;
        // [b, s, 1, n] x [b, s, n, h] -> [b, s, h]
        let mut context = probs.unsqueeze(2)?.contiguous()?.matmul(&v.contiguous()?)?.squeeze(2)?;
        if let (Some(w), false) = (&self.value, c.value_before_softmax) {
            context = linear(&context, w.as_tensor(), None)?;
        }
        if !c.residual_before {
            context = (context + residual)?;
        }
        Ok((context, probs))
    }
}
