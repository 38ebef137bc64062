//! Training data for causal LMs (packing, completion-only labels, the file formats), the
//! next-token loss against a hand computation, and the bad inputs a decoder user meets: a
//! checkpoint missing a layer, a GGUF file of another architecture.

use std::path::PathBuf;

use adapters_models::load_model;
use adapters_runtime::heads::IGNORE_INDEX;
use adapters_runtime::training::{instruction_sequences, pack_texts, LmData, TextEncoder};
use adapters_runtime::ModelInputs;
use adapters_tests::*;
use candle_core::{DType, IndexOp, Tensor, D};

fn tiny_llama() -> PathBuf {
    fixtures().join("decoders").join("llama").join("model")
}

/// The tiny Llama's word-level tokenizer spells id `i` as `w<i>`; `</s>` is 2.
fn encoder() -> TextEncoder {
    TextEncoder::from_model_dir(&tiny_llama(), usize::MAX).unwrap()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("adapters-causal-lm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn texts_are_packed_into_blocks_with_end_tokens() {
    let seqs = pack_texts(&encoder(), &["w10 w11 w12", "w13 w14"], 4, 2).unwrap();
    let ids: Vec<Vec<u32>> = seqs.iter().map(|s| s.ids.clone()).collect();
    assert_eq!(ids, vec![vec![10, 11, 12, 2], vec![13, 14, 2]]);
    assert!(seqs.iter().all(|s| s.labels == s.ids.iter().map(|&t| i64::from(t)).collect::<Vec<_>>()));
}

#[test]
fn instruction_pairs_take_the_loss_on_completions_only() {
    let seqs = instruction_sequences(&encoder(), &[("w17 w33", "w5 w6"), ("w9", "w8")], 16, 2).unwrap();
    assert_eq!(seqs[0].ids, vec![17, 33, 5, 6, 2]);
    assert_eq!(seqs[0].labels, vec![IGNORE_INDEX, IGNORE_INDEX, 5, 6, 2]);
    assert_eq!(seqs[1].labels, vec![IGNORE_INDEX, 8, 2]);
    // Truncated from the right; a pair whose completion is cut off entirely is dropped.
    let cut = instruction_sequences(&encoder(), &[("w1 w2 w3 w4", "w5")], 3, 2).unwrap();
    assert!(cut.is_empty(), "{cut:?}");
}

#[test]
fn data_files_are_read_by_their_header() {
    let tsv = temp("pairs.tsv");
    std::fs::write(&tsv, "prompt\tcompletion\nw1 w2\tw3\n").unwrap();
    assert_eq!(LmData::read(&tsv).unwrap(), LmData::Pairs(vec![("w1 w2".into(), "w3".into())]));
    let labelled = temp("labelled.tsv");
    std::fs::write(&labelled, "label\ttext\npos\tw4 w5\n").unwrap();
    assert_eq!(LmData::read(&labelled).unwrap(), LmData::Texts(vec!["w4 w5".into()]));
    let plain = temp("plain.txt");
    std::fs::write(&plain, "w6 w7\n\nw8\n").unwrap();
    assert_eq!(LmData::read(&plain).unwrap(), LmData::Texts(vec!["w6 w7".into(), "w8".into()]));
    let bad = temp("bad.tsv");
    std::fs::write(&bad, "prompt\tcompletion\nno tab here\n").unwrap();
    let err = LmData::read(&bad).unwrap_err().to_string();
    assert!(err.contains("bad.tsv") && err.contains("line 2"), "{err}");
}

/// `lm_loss` is the mean cross entropy of position i's logits against label i + 1, over the
/// labels that are not -100.
#[test]
fn next_token_loss_matches_a_hand_computation() {
    let model = load_model(&tiny_llama()).unwrap();
    let ids = Tensor::new(&[[1i64, 17, 33, 5, 6]], &candle_core::Device::Cpu).unwrap();
    let inputs = ModelInputs::text(ids.clone(), ids.ones_like().unwrap());
    let labels = Tensor::new(&[[IGNORE_INDEX, IGNORE_INDEX, 33, 5, IGNORE_INDEX]], &candle_core::Device::Cpu).unwrap();
    let loss = model.lm_loss(&inputs, &labels).unwrap().to_scalar::<f32>().unwrap();
    let log_probs = candle_nn::ops::log_softmax(&model.lm_logits(&inputs).unwrap(), D::Minus1).unwrap();
    let pick = |pos: usize, token: usize| log_probs.i((0, pos, token)).unwrap().to_dtype(DType::F32).unwrap().to_scalar::<f32>().unwrap();
    // labels 33 (at 2) and 5 (at 3) are predicted by positions 1 and 2
    let expected = -(pick(1, 33) + pick(2, 5)) / 2.0;
    assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
}

/// A checkpoint whose config promises more layers than its weights hold fails with the file and
/// the missing tensor named, and loads nothing.
#[test]
fn a_checkpoint_missing_a_layer_names_the_tensor() {
    let dir = temp("missing-layer");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(tiny_llama().join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    let mut config: serde_json::Value = read_json(&tiny_llama().join("config.json"));
    config["num_hidden_layers"] = serde_json::json!(4);
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let err = load_model(&dir).err().expect("a layer is missing").to_string();
    assert!(err.contains("model.safetensors") && err.contains("layers.3"), "{err}");
}

/// A GGUF file of an architecture not built here is refused by name, with the supported ones.
#[test]
fn a_gguf_of_another_architecture_is_refused() {
    use candle_core::quantized::gguf_file::{write, Value};
    let path = temp("other.gguf");
    let arch = Value::String("falcon".into());
    let mut file = std::fs::File::create(&path).unwrap();
    write(&mut file, &[("general.architecture", &arch)], &[]).unwrap();
    drop(file);
    let err = load_model(&path).err().expect("falcon is not built").to_string();
    assert!(err.contains("general.architecture") && err.contains("`falcon` is not supported") && err.contains("llama"), "{err}");
}
