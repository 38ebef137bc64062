//! Gemma 2: Llama's attention with soft-capped scores and `query_pre_attn_scalar`, a GELU (tanh)
//! MLP, RMSNorms of `(1 + weight)`, a norm after each sublayer as well as before, embeddings
//! scaled by `sqrt(hidden_size)`, sliding-window attention on alternate layers and soft-capped
//! LM logits. Integrated as Python's plugin interface does (`CUSTOM_INTERFACES["gemma2"]`):
//! Qwen's LoRA locations, bottleneck adapters hooked on `o_proj` / `down_proj` and given the
//! post-sublayer norms, no prefix or prompt tuning.
//!
//! Python's `init_bottleneck` binds those norms late (every layer reads the last layer's); this
//! model gives each layer its own, as the interface declares (see tests/fixtures/README.md).

use adapters_runtime::nn::{Norm, RmsNorm};
use adapters_runtime::{adapter_mixin, with_adapters, BottleneckSlot, ForwardContext, InputKind, KvCache, ModelForward, ModelInputs, ModelOutputs, ReftSlot};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::llama::{last_token, llama_family, DecoderLayer, LlamaAttention, LlamaConfig, LlamaMlp, LlamaStack, QuantizedSource, DECODER_ONLY_INPUTS};

/// Gemma's RMSNorm: the stored weight is the offset from 1.
fn gemma_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<RmsNorm> {
    let weight = (vb.get(size, "weight")? + 1.0)?;
    Ok(RmsNorm::new(weight, eps))
}

/// One Gemma 2 decoder layer.
#[adapter_mixin(
    lora(
        q = self_attn.q_proj,
        k = self_attn.k_proj,
        v = self_attn.v_proj,
        intermediate = mlp.up_proj,
        output = mlp.down_proj,
        attn_output = self_attn.o_proj,
        gate = mlp.gate_proj,
    ),
    bottleneck(mh_adapter = attention_adapters, output_adapter = output_adapters),
    reft(output = reft),
)]
pub struct Gemma2DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: LlamaAttention,
    /// Hooked on `o_proj`'s output, with `post_attention_layernorm` (the interface's `layer_ln_1`).
    attention_adapters: BottleneckSlot,
    post_attention_layernorm: RmsNorm,
    pre_feedforward_layernorm: RmsNorm,
    mlp: LlamaMlp,
    /// Hooked on `down_proj`'s output, with `post_feedforward_layernorm` (`layer_ln_2`).
    output_adapters: BottleneckSlot,
    post_feedforward_layernorm: RmsNorm,
    reft: ReftSlot,
}

impl DecoderLayer for Gemma2DecoderLayer {
    const SCALES_EMBEDDINGS: bool = true;

    fn load_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<RmsNorm> {
        gemma_norm(size, eps, vb)
    }

    fn load(vb: VarBuilder, cfg: &LlamaConfig, q: Option<&dyn QuantizedSource>) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        let post_attention_layernorm = gemma_norm(h, eps, vb.pp("post_attention_layernorm"))?;
        let post_feedforward_layernorm = gemma_norm(h, eps, vb.pp("post_feedforward_layernorm"))?;
        Ok(Gemma2DecoderLayer {
            input_layernorm: gemma_norm(h, eps, vb.pp("input_layernorm"))?,
            self_attn: LlamaAttention::load(vb.pp("self_attn"), cfg, q)?,
            attention_adapters: BottleneckSlot::hooked(h, Some(Norm::Rms(post_attention_layernorm.clone())), &vb.pp("attention_adapters")),
            post_attention_layernorm,
            pre_feedforward_layernorm: gemma_norm(h, eps, vb.pp("pre_feedforward_layernorm"))?,
            mlp: LlamaMlp::load(vb.pp("mlp"), cfg, q)?,
            output_adapters: BottleneckSlot::hooked(h, Some(Norm::Rms(post_feedforward_layernorm.clone())), &vb.pp("output_adapters")),
            post_feedforward_layernorm,
            reft: ReftSlot::new(&vb, h),
        })
    }

    fn forward(&self, x: &Tensor, rope: (&Tensor, &Tensor), mask: &Tensor, cache: Option<(&KvCache, usize)>, ctx: &ForwardContext) -> Result<Tensor> {
        let attended = self.self_attn.forward(&self.input_layernorm.forward(x)?, rope, mask, cache, ctx)?;
        let attended = self.attention_adapters.forward_parts(&attended, x, ctx)?;
        let hidden = (x + self.post_attention_layernorm.forward(&attended)?)?;
        let projected = self.mlp.forward(&self.pre_feedforward_layernorm.forward(&hidden)?, ctx)?;
        let projected = self.output_adapters.forward_parts(&projected, &hidden, ctx)?;
        let out = (&hidden + self.post_feedforward_layernorm.forward(&projected)?)?;
        self.reft.forward(&out, ctx)
    }
}

/// Gemma 2 (`Gemma2Model` / `Gemma2ForCausalLM` checkpoints): `last_hidden_state` after the final
/// norm.
#[with_adapters(
    model_type = "gemma2",
    layers = stack.layers,
    layer_mixin = Gemma2DecoderLayer,
    config = config,
    embeddings = stack.embedding_adapters,
    prompt_tuning = false
)]
pub struct Gemma2Model {
    stack: LlamaStack<Gemma2DecoderLayer>,
    config: LlamaConfig,
}

llama_family!(Gemma2Model, true);
