//! Text to model inputs: the checkpoint's `tokenizer.json`, truncation, per-batch padding.

use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::error::{AdapterError, Result};

/// The file a checkpoint folder keeps its tokenizer in.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// A tokenizer that pads each batch to its longest sequence and truncates to `max_length`.
pub struct TextEncoder {
    tokenizer: Tokenizer,
}

/// `input_ids` and `attention_mask`, I64 `[batch, seq]`.
#[derive(Clone, Debug)]
pub struct Encoded {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
}

impl TextEncoder {
    /// Loads `DIR/tokenizer.json`.
    pub fn from_model_dir(dir: &Path, max_length: usize) -> Result<Self> {
        let path = dir.join(TOKENIZER_FILE);
        let origin = path.display().to_string();
        if !path.is_file() {
            return Err(AdapterError::file(&origin, "missing (text input needs the checkpoint's tokenizer.json)"));
        }
        let mut tokenizer = Tokenizer::from_file(&path).map_err(|e| AdapterError::file(&origin, format!("not a readable tokenizer: {e}")))?;
        let pad_id = tokenizer.get_padding().map(|p| p.pad_id).unwrap_or(0);
        let pad_token = tokenizer.get_padding().map(|p| p.pad_token.clone()).unwrap_or_else(|| "[PAD]".into());
        tokenizer.with_padding(Some(PaddingParams { strategy: PaddingStrategy::BatchLongest, pad_id, pad_token, ..Default::default() }));
        tokenizer
            .with_truncation(Some(TruncationParams { max_length, ..Default::default() }))
            .map_err(|e| AdapterError::file(&origin, format!("cannot truncate to {max_length}: {e}")))?;
        Ok(TextEncoder { tokenizer })
    }

    /// The ids of one text, with the tokenizer's special tokens (a BOS for Llama-family
    /// tokenizers) when `special` is set.
    pub fn ids(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let encoding = self.tokenizer.encode(text, special).map_err(|e| AdapterError::InvalidConfig(format!("tokenizing failed: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer.decode(ids, true).map_err(|e| AdapterError::InvalidConfig(format!("detokenizing failed: {e}")))
    }

    /// Encodes a batch of texts (with special tokens), as tensors on `device`.
    pub fn encode(&self, texts: &[&str], device: &Device) -> Result<Encoded> {
        let encodings = self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| AdapterError::InvalidConfig(format!("tokenizing failed: {e}")))?;
        let batch = encodings.len();
        let seq = encodings.first().map(|e| e.get_ids().len()).unwrap_or(0);
        let ids: Vec<i64> = encodings.iter().flat_map(|e| e.get_ids().iter().map(|&i| i64::from(i))).collect();
        let mask: Vec<i64> = encodings.iter().flat_map(|e| e.get_attention_mask().iter().map(|&m| i64::from(m))).collect();
        Ok(Encoded { input_ids: Tensor::from_vec(ids, (batch, seq), device)?, attention_mask: Tensor::from_vec(mask, (batch, seq), device)? })
    }
}
