//! Task checkpoints load with their head converted into the flexible head `default`, as
//! Python's `AutoAdapterModel.from_pretrained` converts it (`tests/fixtures/generate_static_heads.py`):
//! the same head config key for key and the same outputs, for classification, tagging, question
//! answering, multiple choice and masked LM checkpoints; a `LlamaForCausalLM`'s `lm_head` becomes
//! a causal LM head; the Qwen2, Qwen3 and Gemma 2 causal LMs, which Python does not convert, keep
//! their own `lm_head`; an adapter folder with its own head still takes precedence.

use adapters_models::load_model;
use adapters_runtime::{AdapterSetup, HeadOutput, HeadType, ModelInputs};
use adapters_tests::*;
use candle_core::Tensor;
use serde_json::Value;

fn static_heads_manifest() -> Value {
    read_json(&fixtures().join("static_heads_manifest.json"))
}

#[test]
fn converted_heads_match_python() {
    let manifest = static_heads_manifest();
    let cases = manifest["cases"].as_object().unwrap();
    let mut worst = Vec::new();
    for (case, entry) in cases {
        let model = load_model(&fixtures().join(entry["model_dir"].as_str().unwrap())).unwrap_or_else(|e| panic!("{case}: {e}"));
        let head = model.head_config("default").unwrap_or_else(|| panic!("{case}: no converted head"));
        assert_eq!(head.to_value(), entry["head_config"], "{case}: head config");
        assert_eq!(model.active_head(), Some("default"), "{case}: the converted head is active");
        let (ids, mask) = {
            let t = read(&fixtures().join(entry["inputs"].as_str().unwrap()));
            (t["input_ids"].clone(), t["attention_mask"].clone())
        };
        // Multiple choice: [batch, choices, seq], which Python's AdapterModel flattens to
        // [batch * choices, seq] for the encoder; the head views its scores as [batch, choices].
        let (ids, mask) = match *ids.dims() {
            [b, c, s] => (ids.reshape((b * c, s)).unwrap(), mask.reshape((b * c, s)).unwrap()),
            _ => (ids, mask),
        };
        let out = model.forward_with_head(&ids, &mask).unwrap();
        let expected = read(&fixtures().join("static_heads").join(case).join("output.safetensors"));
        let hidden = max_abs_diff(&out.last_hidden_state, &expected["last_hidden_state"]);
        assert!(hidden <= TOLERANCE, "{case}: hidden {hidden:e}");
        let logits = match out.head.unwrap_or_else(|| panic!("{case}: no head output")) {
            HeadOutput::Logits(logits) => {
                let diff = max_abs_diff(&logits, &expected["logits"]);
                assert!(diff <= TOLERANCE, "{case}: logits {diff:e}");
                diff
            }
            HeadOutput::Span { start, end } => {
                let diff = max_abs_diff(&start, &expected["start_logits"]).max(max_abs_diff(&end, &expected["end_logits"]));
                assert!(diff <= TOLERANCE, "{case}: span logits {diff:e}");
                diff
            }
        };
        // What Python's load left at its init: `heads.default.*` keys it reports missing (the
        // BERT and RoBERTa masked LM decoder bias, which HF saves under `cls.predictions.bias` /
        // `lm_head.bias`, names the map does not rename) are biases, zero here too.
        let params: std::collections::HashMap<String, Tensor> =
            model.head_params("default").unwrap().into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect();
        for key in entry["python_loading_info"]["missing_keys"].as_array().unwrap().iter().filter_map(Value::as_str) {
            if !key.starts_with("heads.") {
                continue;
            }
            assert!(key.ends_with(".bias"), "{case}: Python left the head weight {key} random; no output could match");
            let zeros = params[key].zeros_like().unwrap();
            assert_eq!(max_abs_diff(&params[key], &zeros), 0.0, "{case}: {key} keeps its zero init, as in Python");
        }
        // Language-model decoders are tied to the word embeddings (the checkpoints tie them).
        let language_model = head.head_type().is_language_model();
        assert_eq!(model.head("default").unwrap().is_tied(), language_model, "{case}: tied decoder");
        if head.head_type() == HeadType::MultipleChoice {
            assert_eq!(expected["logits"].dims(), [ids.dim(0).unwrap() / 2, 2], "{case}: [batch, choices] logits");
        }
        worst.push(format!("{case}: hidden {hidden:.1e}, logits {logits:.1e}"));
    }
    println!("static heads, max |diff| against Python:\n  {}", worst.join("\n  "));
    // BERT: sequence/token classification, QA, multiple choice, masked LM; RoBERTa and DistilBERT:
    // sequence classification, multiple choice, masked LM.
    assert_eq!(cases.len(), 11);
}

/// Python's map has no Qwen2, Qwen3 or Gemma 2 class and `AutoAdapterModel` refuses their configs
/// (the generator records both): their `*ForCausalLM` checkpoints get no converted head, and the
/// language-model logits come from the checkpoint's own `lm_head` (Gemma 2's soft-capped, as HF's
/// `Gemma2ForCausalLM` computes them under Python's plugin interface).
#[test]
fn decoders_python_does_not_convert_keep_their_lm_head() {
    let manifest = static_heads_manifest();
    let classes = manifest["not_converted"].as_object().unwrap();
    let names: Vec<&str> = classes.keys().map(String::as_str).collect();
    assert_eq!(names, ["Gemma2ForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"]);
    for (class, info) in classes {
        assert_eq!(info["in_static_to_flex_head_map"], Value::Bool(false), "{class}");
        let error = info["auto_adapter_model_error"].as_str().unwrap_or_else(|| panic!("{class}: Python's AutoAdapterModel took it"));
        assert!(error.contains("AutoAdapterModel"), "{class}: {error}");
        let arch = info["model_type"].as_str().unwrap();
        let dir = fixtures().join("decoders").join(arch);
        let checkpoint = checkpoint_with(class, &dir.join("model"), None, &[("architectures", serde_json::json!([class]))]);
        let model = load_model(&checkpoint).unwrap_or_else(|e| panic!("{class}: {e}"));
        assert!(model.head_config("default").is_none(), "{class}: Python converts no head");
        assert_eq!(model.active_head(), None, "{class}");
        let (ids, mask) = inputs(&dir);
        let logits = model.lm_logits(&ModelInputs::text(ids.clone(), mask.clone())).unwrap_or_else(|e| panic!("{class}: {e}"));
        if let Some(reference) = read(&dir.join("base.safetensors")).get("logits") {
            let diff = max_abs_diff(&logits, reference);
            assert!(diff <= TOLERANCE, "{class}: lm_head logits {diff:e}");
        }
        let config = read_json(&dir.join("model").join("config.json"));
        if let Some(cap) = config["final_logit_softcapping"].as_f64() {
            let max = logits.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(f64::from(max) < cap, "{class}: logits {max} are soft-capped at {cap}");
        }
        let _ = std::fs::remove_dir_all(&checkpoint);
    }
}

/// A `LlamaForCausalLM` checkpoint's `lm_head` becomes the causal LM head `default` (Python's
/// conversion), whose logits are the checkpoint's; an adapter folder with its own head takes over.
#[test]
fn causal_lm_checkpoints_convert_and_adapter_heads_take_precedence() {
    let llama = fixtures().join("decoders").join("llama");
    let mut model = load_model(&llama.join("model")).unwrap();
    assert_eq!(model.head_config("default").map(|h| h.head_type().name()), Some("causal_lm"));
    let (ids, mask) = inputs(&llama);
    let logits = model.forward_with_head(&ids, &mask).unwrap().head.unwrap().logits().clone();
    let diff = max_abs_diff(&logits, &read(&llama.join("base.safetensors"))["logits"]);
    assert!(diff <= TOLERANCE, "{diff:e}");
    let name = model.load_adapter(llama.join("lm_head").join("a"), None).unwrap();
    model.set_active_adapters(AdapterSetup::from(name.as_str())).unwrap();
    let out = model.forward_with_head(&ids, &mask).unwrap();
    let diff = max_abs_diff(out.head.unwrap().logits(), &read(&llama.join("lm_head").join("output.safetensors"))["logits"]);
    assert!(diff <= TOLERANCE, "adapter head: {diff:e}");
}

/// An encoder here always decodes masked LM logits with its word embeddings: a masked LM
/// checkpoint that unties them (`tie_word_embeddings: false`, its own decoder weight) is refused,
/// not converted with the wrong decoder.
#[test]
fn untied_masked_lm_checkpoints_are_refused() {
    let model_dir = fixtures().join("static_heads").join("bert_masked_lm").join("model");
    let untied = checkpoint_with("untied-mlm", &model_dir, None, &[("tie_word_embeddings", Value::Bool(false))]);
    let err = load_model(&untied).err().expect("an untied masked LM checkpoint loads").to_string();
    assert!(err.contains("tie_word_embeddings"), "{err}");
    let _ = std::fs::remove_dir_all(&untied);
}
