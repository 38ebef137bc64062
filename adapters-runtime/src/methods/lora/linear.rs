//! A linear layer that LoRA-family modules attach to. With nothing active (or a module merged)
//! it is a plain `x W^T + b`.

use std::collections::BTreeMap;

use candle_core::{Result, Tensor};

use super::LoraModule;
use crate::composition::{self, Composer};
use crate::context::ForwardContext;
use crate::mixin::SlotFamily;
use crate::nn::BaseWeight;
use crate::setup::AdapterSetup;

pub struct LoRALinear {
    weight: BaseWeight,
    bias: Option<Tensor>,
    path: String,
    pub(crate) loras: BTreeMap<String, LoraModule>,
    /// The merged module's name and the weight and bias before merging (restored exactly on reset).
    merged: Option<(String, BaseWeight, Option<Tensor>)>,
    /// The index of the layer this slot sits in (set when the model is wrapped; AdapterDrop).
    pub(crate) layer: usize,
    /// A fused q/k/v projection: the output columns per matrix (see [`LoRALinear::merged_qkv`]).
    qkv: Option<usize>,
    /// The base weight packed for the bf16 kernel on first use (`None` inside: it does not take
    /// it); reset whenever the weight changes (merge, reset).
    packed: std::sync::OnceLock<Option<std::sync::Arc<crate::nn::bf16_matmul::PackedWeight>>>,
}

impl LoRALinear {
    pub fn new(weight: Tensor, bias: Option<Tensor>, path: impl Into<String>) -> Self {
        Self::over(BaseWeight::Dense(weight), bias, path)
    }

    /// Over any base weight, e.g. one kept quantized (a GGUF base).
    pub fn over(weight: BaseWeight, bias: Option<Tensor>, path: impl Into<String>) -> Self {
        LoRALinear { weight, bias, path: path.into(), loras: BTreeMap::new(), merged: None, layer: 0, qkv: None, packed: Default::default() }
    }

    /// A fused q/k/v projection `[out, in]` whose output is `[q | k | v]`, `out / 3` columns each
    /// (GPT-2's `c_attn`, transposed from its Conv1D `[in, out]`), as Python's `LoRAMergedLinear`:
    /// a module holds one group per matrix its `attn_matrices` selects among q, k and v, and
    /// the slot runs one adapter alone (a composition block that reaches it is an error).
    pub fn merged_qkv(weight: Tensor, bias: Option<Tensor>, path: impl Into<String>) -> Result<Self> {
        let (out, _) = weight.dims2()?;
        if out % 3 != 0 {
            candle_core::bail!("a fused q/k/v projection needs an output size divisible by 3, not {out}");
        }
        Ok(LoRALinear { qkv: Some(out / 3), ..Self::new(weight, bias, path) })
    }

    /// The output columns per matrix of a fused q/k/v projection ([`LoRALinear::merged_qkv`]).
    pub fn qkv_size(&self) -> Option<usize> {
        self.qkv
    }

    /// Loads `weight` (out, in) and `bias` from `vb`, as `candle_nn::linear` does, and records
    /// the module path so adapter weights get the Python library's names.
    pub fn load(in_features: usize, out_features: usize, vb: candle_nn::VarBuilder) -> Result<Self> {
        Self::load_with_bias(in_features, out_features, true, vb)
    }

    /// [`LoRALinear::load`] of a linear that has a bias only when `bias` says so (T5's have none,
    /// ViT's q/k/v follow `qkv_bias`).
    pub fn load_with_bias(in_features: usize, out_features: usize, bias: bool, vb: candle_nn::VarBuilder) -> Result<Self> {
        let weight = vb.get((out_features, in_features), "weight")?;
        let bias = if bias { Some(vb.get(out_features, "bias")?) } else { None };
        Ok(Self::new(weight, bias, vb.prefix()))
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// The base weight `[out, in]` as a dense tensor (dequantized when the base is quantized).
    pub fn weight(&self) -> Result<Tensor> {
        self.weight.dense()
    }

    /// The current bias (after `merge_adapter`, the merged one: PEFT's IA3 scales it).
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn base_weight(&self) -> &BaseWeight {
        &self.weight
    }

    /// (in_features, out_features)
    pub fn dims(&self) -> (usize, usize) {
        let (out, inp) = self.weight.dims().unwrap_or((0, 0));
        (inp, out)
    }

    pub fn merged(&self) -> Option<&str> {
        self.merged.as_ref().map(|(n, _, _)| n.as_str())
    }

    pub fn adapter_names(&self) -> impl Iterator<Item = &str> {
        self.loras.keys().map(String::as_str)
    }

    /// `x W^T + b` with the active setup's LoRA-family modules composed in (Python's
    /// `LoRALinear.forward`): the modules' outputs are composed block by block, then the last
    /// module that ran combines them with the base output (for every row, as in Python).
    pub fn forward(&self, x: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        Ok(ctx.output(self.composed(x, ctx)?))
    }

    /// `x W^T + b` with the base weight: through the weight packed once for the bf16 kernel when
    /// it applies, else [`BaseWeight::linear`].
    fn base_linear(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        if let BaseWeight::Dense(w) = &self.weight {
            if x.dtype() == candle_core::DType::BF16 && !x.track_op() && !bias.is_some_and(Tensor::track_op) {
                let packed = self.packed.get_or_init(|| crate::nn::bf16_matmul::pack_weight(w).ok().flatten());
                if let Some(packed) = packed {
                    if let Some(out) = crate::nn::bf16_matmul::matmul_nt_packed(x, w, packed, bias)? {
                        return Ok(out);
                    }
                }
            }
        }
        self.weight.linear(x, bias)
    }

    fn composed(&self, x: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        let setup = match self.merged {
            Some(_) => None,
            None => ctx.setup_at(self.layer).filter(|s| s.any_adapter(&|n| self.loras.contains_key(n))),
        };
        let Some(setup) = setup else {
            return self.base_linear(x, self.bias.as_ref());
        };
        if self.qkv.is_some() || setup.any_adapter(&|n| self.loras.get(n).is_some_and(LoraModule::scales_input)) {
            return self.single_forward(x, setup, ctx);
        }
        let layer_output = self.base_linear(x, self.bias.as_ref())?;
        let state = LoraState { input: x.clone(), hidden: None, output: layer_output, last: None };
        let state = composition::run(self, setup, state, ctx)?;
        match (state.last.as_deref().and_then(|n| self.loras.get(n)), state.hidden) {
            (Some(module), Some(hidden)) => module.combine(&state.output, &hidden, &self.weight, self.bias.as_ref()),
            _ => Ok(state.output),
        }
    }

    /// One adapter alone (`"a"`, `Stack[a]`), where modules do not compose: Python's
    /// `LoRAMergedLinear.forward` on a fused q/k/v projection (any other setup holding one of this
    /// slot's adapters raises there, and is an error here), and IA3 on the input (PEFT's
    /// feed-forward modules), which scales what the linear reads.
    fn single_forward(&self, x: &Tensor, setup: &AdapterSetup, ctx: &ForwardContext) -> Result<Tensor> {
        let single = match setup {
            AdapterSetup::Single(name) => Some(name),
            AdapterSetup::Stack(children) => match children.as_slice() {
                [AdapterSetup::Single(name)] => Some(name),
                _ => None,
            },
            _ => None,
        };
        let Some(module) = single.and_then(|name| self.loras.get(name)) else {
            let what = match self.qkv {
                Some(_) => "fuses q, k and v (Python's LoRAMergedLinear), which runs one LoRA adapter alone",
                None => "holds IA3 on its input (a PEFT feed-forward module), which runs one adapter alone",
            };
            return Err(crate::error::AdapterError::Setup { setup: setup.to_string(), reason: format!("`{}` {what}, not in a composition block", self.path) }
                .into_candle());
        };
        if module.scales_input() {
            return self.base_linear(&module.scale_input(x)?, self.bias.as_ref());
        }
        let layer_output = self.base_linear(x, self.bias.as_ref())?;
        let hidden = module.forward(None, x, ctx)?;
        module.combine(&layer_output, &hidden, &self.weight, self.bias.as_ref())
    }

    pub(crate) fn merge(&mut self, name: &str) -> crate::error::Result<bool> {
        let refuse = |reason: String| crate::error::AdapterError::Unsupported { adapter: name.into(), operation: "merge_adapter".into(), reason };
        let Some(module) = self.loras.get(name) else { return Ok(false) };
        if module.is_gated() {
            return Err(refuse("a gated LoRA module (UniPELT) cannot be merged: its gate depends on the input".into()));
        }
        match &self.merged {
            Some((merged, _, _)) if merged == name => return Ok(true),
            Some((merged, _, _)) => return Err(refuse(format!("`{merged}` is already merged here; reset it first"))),
            None => {}
        }
        if self.weight.is_quantized() {
            return Err(refuse(format!(
                "the base weight of `{}` is quantized (a GGUF base); load the model dequantized to merge, or keep the adapter unmerged",
                self.path
            )));
        }
        let merged = BaseWeight::Dense(module.merged_weight(&self.weight.dense()?)?);
        let merged_bias = self.bias.as_ref().map(|b| module.merged_bias(b)).transpose()?;
        let original = std::mem::replace(&mut self.weight, merged);
        let original_bias = std::mem::replace(&mut self.bias, merged_bias);
        self.packed = Default::default();
        self.merged = Some((name.to_string(), original, original_bias));
        Ok(true)
    }

    pub(crate) fn reset(&mut self) {
        if let Some((_, weight, bias)) = self.merged.take() {
            self.weight = weight;
            self.bias = bias;
            self.packed = Default::default();
        }
    }
}

impl Composer for LoRALinear {
    type State = LoraState;
    const FAMILY: SlotFamily = SlotFamily::Lora;

    fn has(&self, name: &str) -> bool {
        self.loras.contains_key(name)
    }

    fn single(&self, name: &str, state: LoraState, ctx: &ForwardContext) -> Result<LoraState> {
        match self.loras.get(name) {
            Some(module) => {
                let hidden = module.forward(state.hidden.as_ref(), &state.input, ctx)?;
                Ok(LoraState { hidden: Some(hidden), last: Some(name.to_string()), ..state })
            }
            None => Ok(state),
        }
    }

    fn rows(&self, state: &LoraState) -> Result<usize> {
        state.input.dim(0)
    }

    fn positions(&self, state: &LoraState) -> Result<usize> {
        state.input.dim(1)
    }

    fn narrow(&self, state: &LoraState, dim: usize, start: usize, len: usize) -> Result<LoraState> {
        state.narrow(dim, start, len)
    }

    fn join(&self, setup: &AdapterSetup, parts: Vec<LoraState>, dim: usize, _opened: &LoraState) -> Result<LoraState> {
        LoraState::cat(parts, dim).map_err(|e| crate::error::invalid_input(format!("{setup} at `{}`: {e}", self.path)))
    }

    fn average(&self, outs: Vec<LoraState>, weights: &[f64], opened: LoraState) -> Result<LoraState> {
        let hiddens: Option<Vec<Tensor>> = outs.iter().map(|s| s.hidden.clone()).collect();
        let hidden = hiddens.map(|h| composition::weighted_mean(&h, weights)).transpose()?;
        let last = outs.last().and_then(|s| s.last.clone());
        Ok(LoraState { hidden, last, ..opened })
    }
}

/// Python's `LoRAState`: the layer input, the composed module output so far, the base output,
/// and the last module that ran.
#[derive(Clone)]
pub(crate) struct LoraState {
    input: Tensor,
    hidden: Option<Tensor>,
    output: Tensor,
    last: Option<String>,
}

impl LoraState {
    fn narrow(&self, dim: usize, start: usize, len: usize) -> Result<Self> {
        Ok(LoraState {
            input: self.input.narrow(dim, start, len)?,
            hidden: self.hidden.as_ref().map(|h| h.narrow(dim, start, len)).transpose()?,
            output: self.output.narrow(dim, start, len)?,
            last: self.last.clone(),
        })
    }

    fn cat(states: Vec<LoraState>, dim: usize) -> Result<Self> {
        let hidden = composition::cat_optional(&states.iter().map(|s| s.hidden.clone()).collect::<Vec<_>>(), dim)?;
        Ok(LoraState {
            input: Tensor::cat(&states.iter().map(|s| &s.input).collect::<Vec<_>>(), dim)?,
            hidden,
            output: Tensor::cat(&states.iter().map(|s| &s.output).collect::<Vec<_>>(), dim)?,
            last: states.last().and_then(|s| s.last.clone()),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use candle_core::{DType, Device, D};

    use super::*;
    use crate::config::{AdapterConfig, LoRAConfig};
    use crate::methods::init::{Init, Placement, Rng};

    fn config(text: &str) -> LoRAConfig {
        let parsed = AdapterConfig::parse(text).unwrap();
        parsed.lora().cloned().expect("a LoRA config string")
    }

    fn init() -> Init {
        Init::new(Rng::new(3), Placement::new(Device::Cpu, DType::F32))
    }

    /// A fused projection 6 -> 3 x 4 with module `a` of `text` (its B drawn at random, so it is
    /// not the identity), run as `setup`.
    fn fused(text: &str) -> (LoRALinear, Tensor) {
        let mut init = init();
        let mut slot = LoRALinear::merged_qkv(init.normal(&[12, 6], 1.0).unwrap(), Some(init.normal(&[12], 1.0).unwrap()), "attn.c_attn").unwrap();
        let module = LoraModule::merged_qkv(&config(text), 6, 4, &mut init).unwrap();
        let b = param(&module, "lora_B");
        b.set(&init.normal(b.dims(), 1.0).unwrap()).unwrap();
        slot.loras.insert("a".into(), module);
        (slot, init.normal(&[2, 3, 6], 1.0).unwrap())
    }

    fn run(slot: &LoRALinear, x: &Tensor, setup: &str) -> Result<Tensor> {
        slot.forward(x, &ForwardContext::with_setup(Some(Arc::new(AdapterSetup::parse(setup).unwrap())), false))
    }

    fn param(module: &LoraModule, name: &str) -> candle_core::Var {
        module.params().iter().find(|p| p.name == name).map(|p| p.var.clone()).unwrap()
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(D::Minus1).unwrap().to_scalar().unwrap()
    }

    fn columns(t: &Tensor, matrix: usize) -> Tensor {
        t.narrow(2, matrix * 4, 4).unwrap()
    }

    /// Python's `LoRAMergedLinear` shapes: one group per enabled matrix among q, k and v.
    #[test]
    fn fused_module_shapes_follow_the_enabled_matrices() {
        let shapes = |text: &str| {
            let module = LoraModule::merged_qkv(&config(text), 6, 4, &mut init()).unwrap();
            module.params().iter().map(|p| (p.name.clone(), p.var.dims().to_vec())).collect::<Vec<_>>()
        };
        let named = |v: &[(&str, &[usize])]| v.iter().map(|(n, d)| (n.to_string(), d.to_vec())).collect::<Vec<_>>();
        assert_eq!(shapes("lora[r=2]"), named(&[("lora_A", &[4, 6]), ("lora_B", &[8, 2])]));
        assert_eq!(shapes(r#"lora[r=2,attn_matrices=["v","q","k"]]"#), named(&[("lora_A", &[6, 6]), ("lora_B", &[12, 2])]));
        assert_eq!(shapes("ia3"), named(&[("lora_B", &[8, 1])]));
        assert_eq!(shapes("lora[r=2,use_gating=True]"), named(&[("lora_A", &[4, 6]), ("lora_B", &[8, 2]), ("gate.weight", &[2, 6]), ("gate.bias", &[2])]));
        for refused in ["dora", "vera", r#"lora[attn_matrices=[]]"#] {
            assert!(LoraModule::merged_qkv(&config(refused), 6, 4, &mut init()).is_err(), "{refused}");
        }
    }

    /// q and v change by `x (B_j A_j)^T * scaling`, k keeps the base output, and merging gives
    /// the same outputs.
    #[test]
    fn fused_lora_adds_each_group_to_its_columns_and_merges_to_the_same() {
        let (mut slot, x) = fused("lora[r=2,alpha=4]");
        let base = slot.weight.linear(&x, slot.bias.as_ref()).unwrap();
        let out = run(&slot, &x, "a").unwrap();
        let module = &slot.loras["a"];
        let (a, b) = (param(module, "lora_A").as_tensor().clone(), param(module, "lora_B").as_tensor().clone());
        for (matrix, group) in [(0, Some(0)), (1, None), (2, Some(1))] {
            let expected = match group {
                None => columns(&base, matrix),
                Some(j) => {
                    let delta = b.narrow(0, j * 4, 4).unwrap().matmul(&a.narrow(0, j * 2, 2).unwrap()).unwrap();
                    (columns(&base, matrix) + (x.broadcast_matmul(&delta.t().unwrap()).unwrap() * 2.0).unwrap()).unwrap()
                }
            };
            assert!(max_diff(&columns(&out, matrix), &expected) < 1e-5, "matrix {matrix}");
        }
        assert_eq!(max_diff(&run(&slot, &x, "Stack[a]").unwrap(), &out), 0.0);
        assert!(slot.merge("a").unwrap());
        assert!(max_diff(&run(&slot, &x, "a").unwrap(), &out) < 1e-5);
    }

    /// IA3 scales the enabled matrices' columns by `B_j * alpha` and, as Python pads with 1
    /// before scaling, the others by `alpha`.
    #[test]
    fn fused_ia3_scales_every_column_by_alpha() {
        let (slot, x) = fused("ia3[alpha=2]");
        let base = slot.weight.linear(&x, slot.bias.as_ref()).unwrap();
        let out = run(&slot, &x, "a").unwrap();
        let vector = param(&slot.loras["a"], "lora_B").flatten_all().unwrap();
        assert!(max_diff(&columns(&out, 0), &(columns(&base, 0) * 2.0).unwrap()) < 1e-5);
        for (matrix, j) in [(1, 0), (2, 1)] {
            let expected = (columns(&base, matrix).broadcast_mul(&vector.narrow(0, j * 4, 4).unwrap()).unwrap() * 2.0).unwrap();
            assert!(max_diff(&columns(&out, matrix), &expected) < 1e-5, "matrix {matrix}");
        }
    }

    /// Python's `LoRAMergedLinear` raises for any setup but one adapter.
    #[test]
    fn fused_slot_refuses_composition_blocks() {
        let (mut slot, x) = fused("lora[r=2]");
        let other = LoraModule::merged_qkv(&config("lora[r=2]"), 6, 4, &mut init()).unwrap();
        slot.loras.insert("b".into(), other);
        for setup in ["Stack[a, b]", "Parallel[a, b]", "Average[a, b]"] {
            let err = run(&slot, &x, setup).unwrap_err().to_string();
            assert!(err.contains("fuses q, k and v"), "{setup}: {err}");
        }
    }
}
