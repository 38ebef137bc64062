//! Task checkpoints load with their head converted into the flexible head `default`, as
//! Python's `AutoAdapterModel.from_pretrained` converts it (`tests/fixtures/generate_static_heads.py`):
//! the same head config key for key and the same outputs; a `LlamaForCausalLM`'s `lm_head` becomes
//! a causal LM head; an adapter folder with its own head still takes precedence.

use adapters_models::load_model;
use adapters_runtime::{AdapterSetup, HeadOutput};
use adapters_tests::*;

#[test]
fn converted_heads_match_python() {
    let manifest = read_json(&fixtures().join("static_heads_manifest.json"));
    let cases = manifest["cases"].as_object().unwrap();
    for (case, entry) in cases {
        let model = load_model(&fixtures().join(entry["model_dir"].as_str().unwrap())).unwrap_or_else(|e| panic!("{case}: {e}"));
        let head = model.head_config("default").unwrap_or_else(|| panic!("{case}: no converted head"));
        assert_eq!(head.to_value(), entry["head_config"], "{case}: head config");
        let (ids, mask) = {
            let t = read(&fixtures().join(entry["inputs"].as_str().unwrap()));
            (t["input_ids"].clone(), t["attention_mask"].clone())
        };
        let out = model.forward_with_head(&ids, &mask).unwrap();
        let expected = read(&fixtures().join("static_heads").join(case).join("output.safetensors"));
        let diff = max_abs_diff(&out.last_hidden_state, &expected["last_hidden_state"]);
        assert!(diff <= TOLERANCE, "{case}: hidden {diff:e}");
        match out.head.unwrap_or_else(|| panic!("{case}: no head output")) {
            HeadOutput::Logits(logits) => {
                let diff = max_abs_diff(&logits, &expected["logits"]);
                assert!(diff <= TOLERANCE, "{case}: logits {diff:e}");
            }
            HeadOutput::Span { start, end } => {
                let diff = max_abs_diff(&start, &expected["start_logits"]).max(max_abs_diff(&end, &expected["end_logits"]));
                assert!(diff <= TOLERANCE, "{case}: span logits {diff:e}");
            }
        }
    }
    assert_eq!(cases.len(), 5);
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
