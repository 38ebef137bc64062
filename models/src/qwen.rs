//! Qwen2 and Qwen3: Llama's attention and MLP (Qwen2 with q/k/v biases and sliding-window
//! layers, Qwen3 with a per-head RMSNorm on queries and keys), integrated as the Python library's
//! plugin interface does (`interfaces.py`, `CUSTOM_INTERFACES["qwen2"|"qwen3"]`): LoRA's
//! `intermediate` is `mlp.up_proj` and `output` is `mlp.down_proj` (the other way round from
//! Llama's mixin), bottleneck adapters hook the outputs of `o_proj` and `down_proj` with the
//! sublayer input as residual and no norm, and neither prefix nor prompt tuning is offered.

use adapters_runtime::{adapter_mixin, with_adapters, BottleneckSlot, ForwardContext, InputKind, KvCache, ModelForward, ModelInputs, ModelOutputs, ReftSlot};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::llama::{last_token, llama_family, DecoderLayer, LlamaAttention, LlamaConfig, LlamaMlp, LlamaStack, QuantizedSource, DECODER_ONLY_INPUTS};
use adapters_runtime::nn::RmsNorm;

/// One Qwen decoder layer, marked as Python's interface wires it.
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
pub struct QwenDecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: LlamaAttention,
    /// Hooked on `o_proj`'s output (residual: the layer input).
    attention_adapters: BottleneckSlot,
    post_attention_layernorm: RmsNorm,
    mlp: LlamaMlp,
    /// Hooked on `down_proj`'s output (residual: the stream after attention).
    output_adapters: BottleneckSlot,
    reft: ReftSlot,
}

impl DecoderLayer for QwenDecoderLayer {
    fn load(vb: VarBuilder, cfg: &LlamaConfig, q: Option<&dyn QuantizedSource>) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(QwenDecoderLayer {
            input_layernorm: RmsNorm::load(h, eps, vb.pp("input_layernorm"))?,
            self_attn: LlamaAttention::load(vb.pp("self_attn"), cfg, q)?,
            attention_adapters: BottleneckSlot::hooked(h, None, &vb.pp("attention_adapters")),
            post_attention_layernorm: RmsNorm::load(h, eps, vb.pp("post_attention_layernorm"))?,
            mlp: LlamaMlp::load(vb.pp("mlp"), cfg, q)?,
            output_adapters: BottleneckSlot::hooked(h, None, &vb.pp("output_adapters")),
            reft: ReftSlot::new(&vb, h),
        })
    }

    fn forward(&self, x: &Tensor, rope: (&Tensor, &Tensor), mask: &Tensor, cache: Option<(&KvCache, usize)>, ctx: &ForwardContext) -> Result<Tensor> {
        let attended = self.self_attn.forward(&self.input_layernorm.forward(x)?, rope, mask, cache, ctx)?;
        let hidden = (x + self.attention_adapters.forward_parts(&attended, x, ctx)?)?;
        let projected = self.mlp.forward(&self.post_attention_layernorm.forward(&hidden)?, ctx)?;
        let out = (&hidden + self.output_adapters.forward_parts(&projected, &hidden, ctx)?)?;
        self.reft.forward(&out, ctx)
    }
}

/// Qwen2 (`Qwen2Model` / `Qwen2ForCausalLM` checkpoints): `last_hidden_state` after the final norm.
#[with_adapters(
    model_type = "qwen2",
    layers = stack.layers,
    layer_mixin = QwenDecoderLayer,
    layer_type = "Qwen2DecoderLayer",
    config = config,
    embeddings = stack.embedding_adapters,
    prompt_tuning = false
)]
pub struct Qwen2Model {
    stack: LlamaStack<QwenDecoderLayer>,
    config: LlamaConfig,
}

/// Qwen3: Qwen2's layers with per-head query/key norms and an explicit `head_dim`.
#[with_adapters(
    model_type = "qwen3",
    layers = stack.layers,
    layer_mixin = QwenDecoderLayer,
    layer_type = "Qwen3DecoderLayer",
    config = config,
    embeddings = stack.embedding_adapters,
    prompt_tuning = false
)]
pub struct Qwen3Model {
    stack: LlamaStack<QwenDecoderLayer>,
    config: LlamaConfig,
}

// Python's interface hooks the reverse invertible adapter on the checkpoint's `lm_head` too.
llama_family!(Qwen2Model, true);
llama_family!(Qwen3Model, true);
