//! The tokenizer of a `--model`: `tokenizer.json` in a checkpoint folder, or the vocabulary in a
//! GGUF file's metadata; with the ids that end and pad generated text.

use std::path::Path;

use adapters_runtime::training::{ByteLevelBpe, TextEncoder};

pub struct Tokenizer {
    pub encoder: TextEncoder,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: u32,
}

impl Tokenizer {
    pub fn load(model: &Path) -> Result<Self, String> {
        let gguf = model.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        let (encoder, (eos_token_ids, pad_token_id)) =
            if gguf { gguf_tokenizer(model)? } else { (TextEncoder::from_model_dir(model, usize::MAX).map_err(|e| e.to_string())?, special_ids(model)?) };
        Ok(Tokenizer { encoder, eos_token_ids, pad_token_id })
    }
}

/// The tokenizer a GGUF file carries, and its end-of-sequence and padding ids.
fn gguf_tokenizer(path: &Path) -> Result<(TextEncoder, (Vec<u32>, u32)), String> {
    let t = adapters_models::gguf::read_gguf_tokenizer(path).map_err(|e| e.to_string())?;
    let spec = ByteLevelBpe { tokens: t.tokens, merges: t.merges, special_ids: t.special_ids, add_bos: t.bos.filter(|_| t.add_bos) };
    let encoder = TextEncoder::from_byte_level_bpe(&spec, &path.display().to_string()).map_err(|e| e.to_string())?;
    let eos: Vec<u32> = t.eos.into_iter().collect();
    Ok((encoder, (eos.clone(), t.pad.or(t.eos).unwrap_or(0))))
}

/// End-of-sequence ids (config.json's `eos_token_id`, one or a list, and generation_config.json's
/// when present) and the padding id for rows that ended.
fn special_ids(dir: &Path) -> Result<(Vec<u32>, u32), String> {
    let mut eos = Vec::new();
    let mut pad = None;
    for file in ["config.json", "generation_config.json"] {
        let path = dir.join(file);
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: not valid JSON: {e}", path.display()))?;
        match &value["eos_token_id"] {
            serde_json::Value::Number(n) => eos.extend(n.as_u64().map(|v| v as u32)),
            serde_json::Value::Array(items) => eos.extend(items.iter().filter_map(|v| v.as_u64()).map(|v| v as u32)),
            _ => {}
        }
        pad = pad.or(value["pad_token_id"].as_u64().map(|v| v as u32));
    }
    eos.sort_unstable();
    eos.dedup();
    let pad = pad.or(eos.first().copied()).unwrap_or(0);
    Ok((eos, pad))
}
