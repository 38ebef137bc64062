//! RoBERTa: BERT's encoder (and so BERT's layer mixin, named below) under RoBERTa embeddings,
//! whose positions start after the padding index and skip padding.

use adapters_runtime::{with_adapters, EncoderForward, ForwardContext};
use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use crate::bert::{BertConfig, BertEmbeddings, BertEncoder, BertLayer};

/// RoBERTa checkpoints use BERT's config keys.
pub type RobertaConfig = BertConfig;

/// The bare RoBERTa encoder: `last_hidden_state`.
#[with_adapters(model_type = "roberta", layers = encoder.layers, layer_mixin = BertLayer, layer_type = "RobertaLayer", config = config)]
pub struct RobertaModel {
    embeddings: BertEmbeddings,
    encoder: BertEncoder,
    config: RobertaConfig,
}

impl RobertaModel {
    pub fn load(vb: VarBuilder, config: &RobertaConfig) -> Result<Self> {
        Ok(RobertaModel {
            embeddings: BertEmbeddings::load(vb.pp("embeddings"), config)?,
            encoder: BertEncoder::load(vb.pp("encoder"), config)?,
            config: config.clone(),
        })
    }
}

/// `cumsum(ids != pad) * (ids != pad) + pad`, as `create_position_ids_from_input_ids`.
fn position_ids(input_ids: &Tensor, padding_idx: usize) -> Result<Tensor> {
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
                    Some(*count + pad)
                }
            })
        })
        .collect();
    Tensor::from_vec(positions, input_ids.dims(), input_ids.device())
}

impl EncoderForward for RobertaModel {
    fn forward_with(&self, input_ids: &Tensor, attention_mask: &Tensor, ctx: &ForwardContext) -> Result<Tensor> {
        let positions = position_ids(input_ids, self.config.pad_token_id)?;
        let embeddings = self.embeddings.forward(input_ids, &positions, ctx.train())?;
        self.encoder.forward(&embeddings, attention_mask, ctx)
    }
}
