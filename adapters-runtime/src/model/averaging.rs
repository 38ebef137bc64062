//! `average_adapter`: a new adapter whose weights are a weighted combination of existing ones
//! (Python's `average_adapter` with the `linear`, `lora_linear_only_negate_b` and
//! `lora_delta_w_svd` strategies).

use std::collections::HashMap;

use candle_core::{DType, Tensor, Var};

use super::AdaptedModel;
use crate::body::BaseModel;
use crate::config::AdapterConfig;
use crate::error::{AdapterError, Result};
use crate::methods::svd::svd;
use crate::methods::NamedParam;

/// How the source adapters' weights combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CombineStrategy {
    /// `sum_i w_i p_i` for every parameter.
    Linear,
    /// LoRA: `lora_B` by `w_i`, `lora_A` by `|w_i|` (negation only through B).
    LoraLinearOnlyNegateB,
    /// LoRA: `sum_i w_i B_i A_i`, truncated to `rank` by SVD: `A = V^T`, `B = U S`. The new
    /// adapter has `r = rank` (and the sources' `alpha`, as in Python).
    LoraDeltaWSvd { rank: usize },
}

impl CombineStrategy {
    /// `linear`, `lora_linear_only_negate_b`, `lora_delta_w_svd` (with `svd_rank`).
    pub fn parse(name: &str, svd_rank: Option<usize>) -> Result<Self> {
        match (name, svd_rank) {
            ("linear", _) => Ok(CombineStrategy::Linear),
            ("lora_linear_only_negate_b", _) => Ok(CombineStrategy::LoraLinearOnlyNegateB),
            ("lora_delta_w_svd", Some(rank)) if rank > 0 => Ok(CombineStrategy::LoraDeltaWSvd { rank }),
            ("lora_delta_w_svd", _) => Err(AdapterError::InvalidConfig("svd_rank must be set (and positive) when using 'lora_delta_w_svd'".into())),
            (other, _) => {
                Err(AdapterError::InvalidConfig(format!("unknown combine strategy `{other}`; known: linear, lora_linear_only_negate_b, lora_delta_w_svd")))
            }
        }
    }
}

/// A config's JSON without the keys Python ignores when it compares configs for averaging.
fn comparable(config: &AdapterConfig) -> serde_json::Value {
    let mut v = config.to_json();
    if let Some(o) = v.as_object_mut() {
        o.remove("dropout");
        o.remove("init_weights");
    }
    v
}

impl<M: BaseModel + ?Sized> AdaptedModel<M> {
    /// Adds adapter `name` as a weighted combination of `sources` (equal weights when `weights`
    /// is `None`; weights normalised to sum to 1 when `normalize`). The sources must share one
    /// config (dropout and init aside). The new adapter is not activated.
    ///
    /// ```no_run
    /// # fn demo(model: &mut adapters_runtime::DynAdaptedModel) -> adapters_runtime::Result<()> {
    /// use adapters_runtime::model::CombineStrategy;
    /// model.average_adapter("avg", &["a", "b"], Some(&[0.3, 0.7]), true, CombineStrategy::Linear)?;
    /// # Ok(()) }
    /// ```
    pub fn average_adapter(&mut self, name: &str, sources: &[&str], weights: Option<&[f64]>, normalize: bool, strategy: CombineStrategy) -> Result<()> {
        if sources.is_empty() {
            return Err(AdapterError::InvalidConfig("average_adapter needs at least one source adapter".into()));
        }
        let mut config: Option<AdapterConfig> = None;
        for source in sources {
            let c = self.configs.get(*source).ok_or_else(|| AdapterError::NoSuchAdapter(source.to_string()))?;
            match &config {
                None => config = Some(c.clone()),
                Some(first) if comparable(first) != comparable(c) => {
                    return Err(AdapterError::InvalidConfig(format!(
                        "cannot average adapters with different configurations (`{}` and `{source}` differ)",
                        sources[0]
                    )))
                }
                _ => {}
            }
        }
        let mut config = config.expect("one source at least");
        let weights: Vec<f64> = match weights {
            None => vec![1.0 / sources.len() as f64; sources.len()],
            Some(w) if w.len() != sources.len() => return Err(AdapterError::InvalidConfig(format!("{} weights for {} adapters", w.len(), sources.len()))),
            Some(w) => {
                let sum: f64 = if normalize { w.iter().sum() } else { 1.0 };
                if sum == 0.0 {
                    return Err(AdapterError::InvalidConfig(format!(
                        "the weights {w:?} sum to 0 and cannot be normalised; pass normalize = false to use them as given"
                    )));
                }
                w.iter().map(|x| x / sum).collect()
            }
        };
        match (&mut config, strategy) {
            (_, CombineStrategy::Linear) => {}
            (AdapterConfig::LoRA(c), CombineStrategy::LoraDeltaWSvd { rank }) => c.r = rank,
            (AdapterConfig::LoRA(_), CombineStrategy::LoraLinearOnlyNegateB) => {}
            (other, s) => {
                return Err(AdapterError::InvalidConfig(format!("combine strategy {s:?} is for LoRA adapters; `{}` is {}", sources[0], other.method_name())))
            }
        }
        self.add_adapter_with(name, config, None)?;
        if let Err(e) = self.fill_average(name, sources, &weights, strategy) {
            self.delete_adapter(name)?;
            return Err(e);
        }
        Ok(())
    }

    fn fill_average(&self, name: &str, sources: &[&str], weights: &[f64], strategy: CombineStrategy) -> Result<()> {
        let mut failure: Option<AdapterError> = None;
        self.each_slot(&mut |_, slot| {
            if failure.is_some() {
                return;
            }
            if let (CombineStrategy::LoraDeltaWSvd { .. }, crate::mixin::SlotRef::Lora(_, lora)) = (strategy, &slot) {
                if lora.qkv_size().is_some() && lora.loras.contains_key(name) {
                    // Python refuses it on GPT-2 (`support_lora_delta_w_svd = False`).
                    failure = Some(AdapterError::InvalidConfig(format!(
                        "lora_delta_w_svd cannot average the fused q/k/v projection `{}` (one low-rank factor pair per matrix); use selfattn_lora=false or another strategy",
                        lora.path()
                    )));
                    return;
                }
            }
            let slot = slot.adapter_slot();
            let Some((_, target)) = slot.adapter_params(name) else { return };
            let inputs: Option<Vec<&[NamedParam]>> = sources.iter().map(|n| slot.adapter_params(n).map(|(_, params)| params)).collect();
            let Some(inputs) = inputs else {
                failure = Some(AdapterError::InvalidConfig(format!("a source adapter has no module where `{name}` has one; cannot average")));
                return;
            };
            if let Err(e) = average_params(target, &inputs, weights, strategy) {
                failure = Some(e);
            }
        });
        if let Some(e) = failure {
            return Err(e);
        }
        // Prefix modules live at the model level (Python averages them in the pool, linearly).
        if let Some(group) = self.prefixes.get(name) {
            for (location, module) in &group.modules {
                let inputs = sources
                    .iter()
                    .map(|n| self.prefixes.get(*n).and_then(|g| g.modules.get(location)).map(|m| m.params()))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| AdapterError::InvalidConfig(format!("a source adapter has no prefix at `{location}`; cannot average")))?;
                average_params(module.params(), &inputs, weights, strategy)?;
            }
        }
        // Model-level parts: prompts, invertible adapters, parameters shared across layers.
        let missing = |what: &str| AdapterError::InvalidConfig(format!("a source adapter has no {what} where `{name}` has one; cannot average"));
        if let Some(slot) = self.model.embedding_slot() {
            if let Some(prompt) = slot.prompts.get(name) {
                let inputs = sources.iter().map(|n| slot.prompts.get(*n).map(|p| p.params())).collect::<Option<Vec<_>>>().ok_or_else(|| missing("prompt"))?;
                average_params(prompt.params(), &inputs, weights, strategy)?;
            }
            if let Some(inv) = slot.invertibles.get(name) {
                let inputs = sources
                    .iter()
                    .map(|n| slot.invertibles.get(*n).map(|p| p.params()))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| missing("invertible adapter"))?;
                average_params(inv.params(), &inputs, weights, strategy)?;
            }
        }
        if let Some(shared) = self.shared.get(name) {
            let inputs =
                sources.iter().map(|n| self.shared.get(*n).map(Vec::as_slice)).collect::<Option<Vec<_>>>().ok_or_else(|| missing("shared parameters"))?;
            average_params(shared, &inputs, weights, CombineStrategy::Linear)?;
        }
        Ok(())
    }
}

fn by_name(params: &[NamedParam]) -> HashMap<&str, &Var> {
    params.iter().map(|p| (p.name.as_str(), &p.var)).collect()
}

fn average_params(target: &[NamedParam], inputs: &[&[NamedParam]], weights: &[f64], strategy: CombineStrategy) -> Result<()> {
    let inputs: Vec<HashMap<&str, &Var>> = inputs.iter().map(|p| by_name(p)).collect();
    let get = |i: usize, key: &str| -> Result<&Var> {
        inputs[i].get(key).copied().ok_or_else(|| AdapterError::InvalidConfig(format!("source adapter lacks parameter `{key}`")))
    };
    if let CombineStrategy::LoraDeltaWSvd { rank } = strategy {
        let t = by_name(target);
        let (Some(a), Some(b)) = (t.get("lora_A"), t.get("lora_B")) else {
            return Err(AdapterError::InvalidConfig("lora_delta_w_svd needs LoRA modules with lora_A and lora_B".into()));
        };
        if t.len() != 2 {
            return Err(AdapterError::InvalidConfig("lora_delta_w_svd averages plain LoRA modules (lora_A and lora_B only)".into()));
        }
        let mut delta: Option<Tensor> = None;
        for (i, w) in weights.iter().enumerate() {
            let d = (get(i, "lora_B")?.as_tensor().matmul(get(i, "lora_A")?.as_tensor())? * *w)?;
            delta = Some(match delta {
                None => d,
                Some(acc) => (acc + d)?,
            });
        }
        let delta = delta.expect("one source at least").to_dtype(DType::F64)?;
        let (rows, cols) = delta.dims2()?;
        let (u, s, vt) = svd(&delta.flatten_all()?.to_vec1::<f64>()?, rows, cols);
        let r = s.len();
        let rank = rank.min(r);
        let new_b: Vec<f32> = (0..rows).flat_map(|i| (0..rank).map(|k| (u[i * r + k] * s[k]) as f32).collect::<Vec<_>>()).collect();
        let new_a: Vec<f32> = (0..rank).flat_map(|k| (0..cols).map(|j| vt[k * cols + j] as f32).collect::<Vec<_>>()).collect();
        if b.dims() != [rows, rank] || a.dims() != [rank, cols] {
            return Err(AdapterError::InvalidConfig(format!("svd_rank {rank} does not fit the new module's shapes {:?} / {:?}", b.dims(), a.dims())));
        }
        b.set(&Tensor::from_vec(new_b, (rows, rank), b.device())?.to_dtype(b.dtype())?)?;
        a.set(&Tensor::from_vec(new_a, (rank, cols), a.device())?.to_dtype(a.dtype())?)?;
        return Ok(());
    }
    for p in target {
        let mut acc: Option<Tensor> = None;
        for (i, w) in weights.iter().enumerate() {
            let w = match strategy {
                CombineStrategy::LoraLinearOnlyNegateB if p.name == "lora_A" => w.abs(),
                CombineStrategy::LoraLinearOnlyNegateB if p.name != "lora_B" => {
                    return Err(AdapterError::InvalidConfig(format!(
                        "lora_linear_only_negate_b combines lora_A and lora_B only; this module also has `{}`",
                        p.name
                    )))
                }
                _ => *w,
            };
            let term = (get(i, &p.name)?.as_tensor() * w)?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
        if let Some(value) = acc {
            p.var.set(&value)?;
        }
    }
    Ok(())
}
