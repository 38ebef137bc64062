//! RoBERTa: BERT's encoder (and so BERT's layer mixin, named below) under RoBERTa embeddings,
//! whose positions start after the padding index and skip padding.

use adapters_runtime::{with_adapters, ForwardContext, InputKind, ModelForward, ModelInputs, ModelOutputs};
use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use crate::bert::{forward_text, BertConfig, BertEmbeddings, BertEncoder, BertLayer, BertPooler, DECODER_INPUTS};

/// RoBERTa checkpoints use BERT's config keys.
pub type RobertaConfig = BertConfig;

/// The RoBERTa encoder: `last_hidden_state`, and the pooler output when the checkpoint has one.
#[with_adapters(model_type = "roberta", layers = encoder.layers, layer_mixin = BertLayer, layer_type = "RobertaLayer", config = config, embeddings = embeddings.adapters)]
pub struct RobertaModel {
    embeddings: BertEmbeddings,
    encoder: BertEncoder,
    pooler: Option<BertPooler>,
    config: RobertaConfig,
}

impl RobertaModel {
    pub fn load(vb: VarBuilder, config: &RobertaConfig) -> Result<Self> {
        Ok(RobertaModel {
            embeddings: BertEmbeddings::load(vb.pp("embeddings"), config)?,
            encoder: BertEncoder::load(vb.pp("encoder"), config)?,
            pooler: BertPooler::load_if_present(vb.pp("pooler"), config.hidden_size)?,
            config: config.clone(),
        })
    }
}

/// `(cumsum(ids != pad) + past) * (ids != pad) + pad`, as `create_position_ids_from_input_ids`
/// (`past`: positions already in the KV cache).
fn position_ids(input_ids: &Tensor, padding_idx: usize, past: usize) -> Result<Tensor> {
    let past = past as i64;
    let pad = padding_idx as i64;
    let rows: Vec<Vec<i64>> = input_ids.to_dtype(DType::I64)?.to_vec2()?;
    let positions: Vec<i64> = rows
        .iter()
        .flat_map(|row| {
            row.iter().scan(0i64, move |count, &id| {
                if id == pad {
                    Some(pad)
                } else {
                    *count += 1;
                    Some(*count + past + pad)
                }
            })
        })
        .collect();
    Tensor::from_vec(positions, input_ids.dims(), input_ids.device())
}

impl ModelForward for RobertaModel {
    /// Python's `RobertaModel` takes position ids, and as a decoder (`is_decoder`) is causal and
    /// keeps a KV cache.
    const ACCEPTS: &'static [InputKind] = DECODER_INPUTS;

    fn forward_with(&self, inputs: &ModelInputs<'_>, ctx: &ForwardContext) -> Result<ModelOutputs> {
        forward_text(&self.embeddings, &self.encoder, inputs, ctx, |ids, past| position_ids(ids, self.config.pad_token_id, past))
    }

    fn has_pooler(&self) -> bool {
        self.pooler.is_some()
    }

    fn pooled_output(&self, last_hidden_state: &Tensor) -> Option<Result<Tensor>> {
        self.pooler.as_ref().map(|p| p.forward(last_hidden_state))
    }

    fn input_embeddings(&self) -> Option<&Tensor> {
        Some(self.embeddings.word_embeddings())
    }

    fn layer_norm_eps(&self) -> f64 {
        self.config.layer_norm_eps
    }
}
