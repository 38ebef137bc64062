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

/// A byte-level BPE vocabulary as GGUF files carry it (`tokenizer.ggml.model = "gpt2"`): tokens
/// by id, merges as `"a b"`, the ids of special (control) tokens, and the BOS id when the
/// tokenizer adds one.
#[derive(Clone, Debug, Default)]
pub struct ByteLevelBpe {
    pub tokens: Vec<String>,
    pub merges: Vec<String>,
    pub special_ids: Vec<u32>,
    pub add_bos: Option<u32>,
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

    /// A tokenizer from a byte-level BPE vocabulary (a GGUF file's): GPT-2's byte-level
    /// pre-tokenizer and decoder, the special tokens kept whole, BOS prepended when the
    /// vocabulary says so. `origin` names the file in errors.
    pub fn from_byte_level_bpe(spec: &ByteLevelBpe, origin: &str) -> Result<Self> {
        use tokenizers::models::bpe::{Vocab, BPE};
        use tokenizers::pre_tokenizers::byte_level::ByteLevel;
        let bad = |reason: String| AdapterError::file(origin, reason);
        let vocab: Vocab = spec.tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let merges = spec
            .merges
            .iter()
            .map(|m| m.split_once(' ').map(|(a, b)| (a.to_string(), b.to_string())).ok_or_else(|| bad(format!("merge `{m}` is not two tokens"))))
            .collect::<Result<Vec<_>>>()?;
        let bpe = BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| bad(format!("not a usable BPE vocabulary: {e}")))?;
        let mut tokenizer = Tokenizer::new(bpe);
        tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
        tokenizer.with_decoder(Some(ByteLevel::default()));
        let token = |id: u32| spec.tokens.get(id as usize).cloned().ok_or_else(|| bad(format!("special token id {id} is outside the vocabulary")));
        let special = spec.special_ids.iter().map(|&id| Ok(tokenizers::AddedToken::from(token(id)?, true))).collect::<Result<Vec<_>>>()?;
        tokenizer.add_special_tokens(special).map_err(|e| bad(format!("special tokens: {e}")))?;
        if let Some(bos) = spec.add_bos {
            let name = token(bos)?;
            let template = tokenizers::processors::template::TemplateProcessing::builder()
                .try_single(format!("{name} $A"))
                .and_then(|b| b.try_pair(format!("{name} $A {name} $B")))
                .map_err(|e| bad(format!("BOS template: {e}")))?
                .special_tokens(vec![(name.clone(), bos)])
                .build()
                .map_err(|e| bad(format!("BOS template: {e}")))?;
            tokenizer.with_post_processor(Some(template));
        }
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
