//! ViT as a candle model annotated for adapters: patch embeddings with a CLS token and learned
//! positions, pre-norm encoder layers, a final LayerNorm. The marks follow the Python library's
//! ViT mixins: LoRA on q/k/v and the feed-forward linears, bottleneck adapters after attention
//! (in the layer, with no LayerNorm of their own) and in `output`, prefixes on self-attention,
//! prompts after the embeddings.

use adapters_runtime::nn::activation::Activation;
use adapters_runtime::nn::dropout;
use adapters_runtime::nn::fused::linear_module;
use adapters_runtime::{adapter_config, adapter_mixin, with_adapters, AdapterError};
use adapters_runtime::{BottleneckSlot, EmbeddingSlot, ForwardContext, LayerNorm, LoRALinear, PrefixPadding, PrefixSlot, ReftSlot};
use adapters_runtime::{InputKind, ModelForward, ModelInputs, ModelOutputs};
use candle_core::{DType, Result, Tensor};
use candle_nn::{Linear, VarBuilder};
use serde::Deserialize;

use crate::attention::{additive_mask, attend, split_heads};
use crate::bert::BertPooler;

fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}
fn default_channels() -> usize {
    3
}
fn default_true() -> bool {
    true
}

/// `config.json` of ViT checkpoints.
#[adapter_config]
#[derive(Clone, Debug, Deserialize)]
pub struct ViTConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub hidden_dropout_prob: f64,
    #[serde(default)]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    pub image_size: usize,
    pub patch_size: usize,
    #[serde(default = "default_channels")]
    pub num_channels: usize,
    #[serde(default = "default_true")]
    pub qkv_bias: bool,
    #[serde(default)]
    pub model_type: Option<String>,
}

impl ViTConfig {
    fn patches(&self) -> usize {
        (self.image_size / self.patch_size).pow(2)
    }
}

/// CLS token, patch projection (a convolution with stride = kernel = patch size, computed as one
/// matrix product over the flattened patches) and learned positions.
struct ViTEmbeddings {
    cls_token: Tensor,
    position_embeddings: Tensor,
    /// The convolution's weight as `[hidden, channels * patch * patch]`, and its bias.
    projection: Linear,
    dropout: f64,
    /// Prompt tuning prepends its prompt to the embeddings output here.
    adapters: EmbeddingSlot,
}

impl ViTEmbeddings {
    fn load(vb: VarBuilder, cfg: &ViTConfig) -> Result<Self> {
        let (h, c, p) = (cfg.hidden_size, cfg.num_channels, cfg.patch_size);
        let proj = vb.pp("patch_embeddings").pp("projection");
        let weight = proj.get((h, c, p, p), "weight")?.reshape((h, c * p * p))?;
        let bias = proj.get(h, "bias")?;
        // Prompts start random (ViT has no vocabulary to copy them from).
        let no_vocabulary = Tensor::zeros((0, h), vb.dtype(), vb.device())?;
        Ok(ViTEmbeddings {
            cls_token: vb.get((1, 1, h), "cls_token")?,
            position_embeddings: vb.get((1, cfg.patches() + 1, h), "position_embeddings")?,
            projection: Linear::new(weight, Some(bias)),
            dropout: cfg.hidden_dropout_prob,
            adapters: EmbeddingSlot::new(&no_vocabulary, cfg.patches() + 1),
        })
    }

    /// `[batch, channels, height, width]` -> `[batch, 1 + patches, hidden]`.
    fn forward(&self, pixel_values: &Tensor, cfg: &ViTConfig, ctx: &ForwardContext) -> Result<Tensor> {
        let (batch, channels, height, width) = pixel_values.dims4()?;
        if channels != cfg.num_channels || height != cfg.image_size || width != cfg.image_size {
            return Err(AdapterError::InvalidInput(format!(
                "pixel_values have shape [{batch}, {channels}, {height}, {width}]; this ViT takes [batch, {}, {}, {}] (num_channels, image_size in config.json)",
                cfg.num_channels, cfg.image_size, cfg.image_size
            ))
            .into_candle());
        }
        let p = cfg.patch_size;
        let (rows, cols) = (height / p, width / p);
        // [b, c, rows, p, cols, p] -> [b, rows, cols, c, p, p]: one flattened patch per position,
        // in the convolution weight's (channel, y, x) order.
        let patches = pixel_values
            .to_dtype(self.cls_token.dtype())?
            .reshape((batch, channels, rows, p, cols, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((batch, rows * cols, channels * p * p))?;
        let embedded = linear_module(&patches, &self.projection)?;
        let cls = self.cls_token.broadcast_as((batch, 1, cfg.hidden_size))?;
        let sequence = Tensor::cat(&[&cls, &embedded], 1)?.broadcast_add(&self.position_embeddings)?;
        dropout(&sequence, self.dropout, ctx)
    }
}

struct ViTSelfAttention {
    query: LoRALinear,
    key: LoRALinear,
    value: LoRALinear,
    /// Prefix tuning prepends its keys and values here.
    prefix: PrefixSlot,
    heads: usize,
    dropout: f64,
}

impl ViTSelfAttention {
    fn load(vb: VarBuilder, cfg: &ViTConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        let linear = |name: &str| LoRALinear::load_with_bias(h, h, cfg.qkv_bias, vb.pp(name));
        Ok(ViTSelfAttention {
            query: linear("query")?,
            key: linear("key")?,
            value: linear("value")?,
            prefix: PrefixSlot::new(&vb, h, cfg.num_attention_heads, 0, PrefixPadding::InvertedMask),
            heads: cfg.num_attention_heads,
            dropout: cfg.attention_probs_dropout_prob,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        let q = split_heads(&self.query.forward(x, ctx)?, self.heads)?;
        let k = split_heads(&self.key.forward(x, ctx)?, self.heads)?;
        let v = split_heads(&self.value.forward(x, ctx)?, self.heads)?;
        let (k, v, mask) = self.prefix.forward(&k, &v, mask, x, ctx)?;
        let scale = 1.0 / (q.dim(3)? as f64).sqrt();
        attend(&q, &k, &v, &mask, scale, self.dropout, ctx)
    }
}

struct ViTAttention {
    attention: ViTSelfAttention,
    /// `attention.output.dense` (PEFT adapters only) and its dropout.
    output: LoRALinear,
}

struct ViTIntermediate {
    dense: LoRALinear,
    activation: Activation,
}

struct ViTOutput {
    dense: LoRALinear,
    /// Python's `output.output_adapters`: a bottleneck over `dense(x) + residual`, no LayerNorm.
    output_adapters: BottleneckSlot,
}

/// One pre-norm encoder layer (timm's `Block`).
#[adapter_mixin(
    lora(
        q = attention.attention.query,
        k = attention.attention.key,
        v = attention.attention.value,
        intermediate = intermediate.dense,
        output = output.dense,
        attn_output = attention.output,
    ),
    bottleneck(mh_adapter = attention_adapters, output_adapter = output.output_adapters),
    prefix(self_prefix = attention.attention.prefix),
    reft(output = reft),
)]
pub struct ViTLayer {
    layernorm_before: LayerNorm,
    attention: ViTAttention,
    /// Python puts ViT's attention bottleneck in the layer (not in `attention.output`).
    attention_adapters: BottleneckSlot,
    layernorm_after: LayerNorm,
    intermediate: ViTIntermediate,
    output: ViTOutput,
    /// ReFT intervenes on the layer's output here.
    reft: ReftSlot,
    dropout: f64,
}

impl ViTLayer {
    fn load(vb: VarBuilder, cfg: &ViTConfig) -> Result<Self> {
        let (h, i, eps) = (cfg.hidden_size, cfg.intermediate_size, cfg.layer_norm_eps);
        let act = Activation::parse(&cfg.hidden_act).map_err(AdapterError::into_candle)?;
        let out_vb = vb.pp("output");
        Ok(ViTLayer {
            layernorm_before: LayerNorm::load(h, eps, vb.pp("layernorm_before"))?,
            attention: ViTAttention {
                attention: ViTSelfAttention::load(vb.pp("attention").pp("attention"), cfg)?,
                output: LoRALinear::load(h, h, vb.pp("attention").pp("output").pp("dense"))?,
            },
            attention_adapters: BottleneckSlot::residual_only(h, &vb.pp("attention_adapters")),
            layernorm_after: LayerNorm::load(h, eps, vb.pp("layernorm_after"))?,
            intermediate: ViTIntermediate { dense: LoRALinear::load(h, i, vb.pp("intermediate").pp("dense"))?, activation: act },
            output: ViTOutput {
                dense: LoRALinear::load(i, h, out_vb.pp("dense"))?,
                output_adapters: BottleneckSlot::residual_only(h, &out_vb.pp("output_adapters")),
            },
            reft: ReftSlot::new(&vb, h),
            dropout: cfg.hidden_dropout_prob,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        let attended = self.attention.attention.forward(&self.layernorm_before.forward(x)?, mask, ctx)?;
        let attended = dropout(&self.attention.output.forward(&attended, ctx)?, self.dropout, ctx)?;
        let hidden = self.attention_adapters.forward_parts(&attended, x, ctx)?;
        let intermediate = self.intermediate.activation.forward(&self.intermediate.dense.forward(&self.layernorm_after.forward(&hidden)?, ctx)?)?;
        let projected = dropout(&self.output.dense.forward(&intermediate, ctx)?, self.dropout, ctx)?;
        self.reft.forward(&self.output.output_adapters.forward_parts(&projected, &hidden, ctx)?, ctx)
    }
}

/// The ViT encoder: `last_hidden_state` after the final LayerNorm (CLS position first), and the
/// pooler output when the checkpoint has a pooler.
/// Python's ViT takes prompt tuning but no invertible adapters.
#[with_adapters(model_type = "vit", layers = layers, layer_mixin = ViTLayer, config = config, embeddings = embeddings.adapters, invertible = false)]
pub struct ViTModel {
    embeddings: ViTEmbeddings,
    layers: Vec<ViTLayer>,
    layernorm: LayerNorm,
    pooler: Option<BertPooler>,
    config: ViTConfig,
}

impl ViTModel {
    /// Loads from a `VarBuilder` rooted at the base model (no `vit.` prefix).
    pub fn load(vb: VarBuilder, config: &ViTConfig) -> Result<Self> {
        let encoder = vb.pp("encoder").pp("layer");
        Ok(ViTModel {
            embeddings: ViTEmbeddings::load(vb.pp("embeddings"), config)?,
            layers: (0..config.num_hidden_layers).map(|i| ViTLayer::load(encoder.pp(i), config)).collect::<Result<_>>()?,
            layernorm: LayerNorm::load(config.hidden_size, config.layer_norm_eps, vb.pp("layernorm"))?,
            pooler: BertPooler::load_if_present(vb.pp("pooler"), config.hidden_size)?,
            config: config.clone(),
        })
    }

    pub fn config(&self) -> &ViTConfig {
        &self.config
    }
}

/// The images of a pass (required: the runtime checks `REQUIRES` first).
fn pixels<'a>(inputs: &'a ModelInputs<'_>) -> Result<&'a Tensor> {
    inputs.pixel_values.as_ref().ok_or_else(|| AdapterError::InvalidInput("ViT needs pixel_values".into()).into_candle())
}

/// What ViT takes: images only.
const VISION_INPUTS: &[InputKind] = &[InputKind::PixelValues];

impl ModelForward for ViTModel {
    const ACCEPTS: &'static [InputKind] = VISION_INPUTS;
    const REQUIRES: &'static [InputKind] = VISION_INPUTS;

    fn forward_with(&self, inputs: &ModelInputs<'_>, ctx: &ForwardContext) -> Result<ModelOutputs> {
        let embedded = self.embeddings.forward(pixels(inputs)?, &self.config, ctx)?;
        // Prompts extend the all-ones mask over the patch positions.
        let (mut hidden, attended) = self.embeddings.adapters.forward(&embedded, &self.attention_mask(inputs)?, ctx)?;
        let mask = additive_mask(&attended, hidden.dtype())?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &mask, ctx)?;
        }
        Ok(ModelOutputs::hidden(self.layernorm.forward(&hidden)?))
    }

    /// Every patch position and the CLS position are attended.
    fn attention_mask(&self, inputs: &ModelInputs<'_>) -> Result<Tensor> {
        let pixels = pixels(inputs)?;
        Tensor::ones((pixels.dim(0)?, self.config.patches() + 1), DType::I64, pixels.device())
    }

    fn has_pooler(&self) -> bool {
        self.pooler.is_some()
    }

    fn pooled_output(&self, last_hidden_state: &Tensor) -> Option<Result<Tensor>> {
        self.pooler.as_ref().map(|p| p.forward(last_hidden_state))
    }

    fn layer_norm_eps(&self) -> f64 {
        self.config.layer_norm_eps
    }

    fn tie_word_embeddings(&self) -> bool {
        false
    }
}
