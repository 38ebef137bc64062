//! A real decoder: SmolLM2-135M-Instruct from its Q4_1 GGUF file (scripts/fetch_smollm2.sh),
//! dequantized to f32 here and by transformers' GGUF loader in Python
//! (`tests/fixtures/generate_smollm2.py`), with adapters the Python library saved. Hidden states
//! reach about 50 in magnitude; the tolerance there is 3e-4 (Python's own merged LoRA differs
//! from unmerged by about 1e-4; the last-bit order of the softmax sums moves prefix tuning, the
//! most sensitive case, between 1.9e-4 and 2.6e-4 with exactly rounded exponentials), at every
//! attended position (the tokenizer pads left).

use adapters_models::{load_model, load_model_with, GgufWeights, LoadOptions};
use adapters_runtime::model::GenerateOptions;
use adapters_runtime::{AdapterSetup, DynAdaptedModel, ModelInputs};
use adapters_tests::*;
use candle_core::{DType, IndexOp, Tensor};
use serde_json::Value;

fn smollm2_manifest() -> Value {
    read_json(&fixtures().join("smollm2_manifest.json"))
}

/// Dequantized to f32, as the Python reference ran it.
fn load() -> Box<DynAdaptedModel> {
    load_model_with(&fixture_path(&smollm2_gguf()), LoadOptions { gguf: GgufWeights::Dequantized, ..LoadOptions::default() }).unwrap()
}

/// The logits at each row's last attended position, as the generator stores them.
fn last_logits(model: &DynAdaptedModel, ids: &Tensor, mask: &Tensor) -> Tensor {
    let logits = model.lm_logits(&ModelInputs::text(ids.clone(), mask.clone())).unwrap();
    let rows: Vec<Vec<i64>> = mask.to_vec2().unwrap();
    let last: Vec<Tensor> = rows.iter().enumerate().map(|(row, m)| logits.i((row, m.iter().rposition(|&v| v == 1).unwrap())).unwrap()).collect();
    Tensor::stack(&last, 0).unwrap()
}

/// `t` with the padded positions zeroed: their outputs (queries with every sequence key masked)
/// carry no meaning, and with a prefix they average the prefix values in whatever order the
/// kernels sum.
fn attended(t: &Tensor, mask: &Tensor) -> Tensor {
    t.broadcast_mul(&mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap()).unwrap()
}

fn check(label: &str, model: &DynAdaptedModel, reference: &std::path::Path, tolerance: f32) {
    let (ids, mask) = inputs(&fixtures().join("smollm2"));
    let expected = read(reference);
    let hidden = model.forward(&ids, &mask).unwrap_or_else(|e| panic!("{label}: {e}"));
    let diff = max_abs_diff(&attended(&hidden, &mask), &attended(&expected["last_hidden_state"], &mask));
    assert!(diff <= tolerance, "{label}: last_hidden_state max |diff| {diff:e}");
    let diff = max_abs_diff(&last_logits(model, &ids, &mask), &expected["last_logits"]);
    assert!(diff <= tolerance, "{label}: last logits max |diff| {diff:e}");
}

#[test]
fn smollm2_from_gguf_matches_python_with_every_adapter() {
    let manifest = smollm2_manifest();
    let tolerance = manifest["tolerance"].as_f64().unwrap() as f32;
    let dir = fixtures().join("smollm2");
    check("base", &load(), &dir.join("base.safetensors"), tolerance);
    let cases = manifest["cases"].as_object().unwrap();
    for (case, entry) in cases {
        let mut model = load();
        let name = model.load_adapter(fixtures().join(entry["adapter"].as_str().unwrap()), None).unwrap_or_else(|e| panic!("{case}: {e}"));
        model.set_active_adapters(AdapterSetup::from(name.as_str())).unwrap();
        check(case, &model, &dir.join(case).join("output.safetensors"), tolerance);
        let merged = dir.join(case).join("output_merged.safetensors");
        if merged.exists() {
            model.merge_adapter(case).unwrap();
            check(&format!("{case} merged"), &model, &merged, tolerance);
        }
    }
    assert_eq!(cases.len(), 5);
}

#[test]
fn smollm2_greedy_generation_matches_python() {
    let manifest = smollm2_manifest();
    for (case, entry) in manifest["generate"].as_object().unwrap() {
        let mut model = load();
        if let Some(dir) = entry["adapter"].as_str() {
            let name = model.load_adapter(fixtures().join(dir), None).unwrap();
            model.set_active_adapters(AdapterSetup::from(name.as_str())).unwrap();
        }
        let data = read(&fixtures().join(entry["file"].as_str().unwrap()));
        let prompt = &data["prompt_ids"];
        let new = data["sequences"].dim(1).unwrap() - prompt.dim(1).unwrap();
        let out = model.generate(prompt, None, &GenerateOptions::greedy(new), |_| Ok(())).unwrap();
        assert_eq!(out.to_vec2::<i64>().unwrap(), data["sequences"].to_dtype(DType::I64).unwrap().to_vec2::<i64>().unwrap(), "{case}");
    }
}

/// The GGUF file's own tokenizer (byte-level BPE from its metadata) gives the ids transformers'
/// GGUF tokenizer gave the fixtures (which prepends a BOS the file's `add_bos_token` leaves out).
#[test]
fn smollm2_gguf_tokenizer_matches_transformers() {
    use adapters_runtime::training::{ByteLevelBpe, TextEncoder};
    let gguf = fixture_path(&smollm2_gguf());
    let t = adapters_models::gguf::read_gguf_tokenizer(&gguf).unwrap();
    assert!(!t.add_bos && t.bos == Some(1) && t.eos == Some(2), "{:?} {:?} {:?}", t.add_bos, t.bos, t.eos);
    let spec = ByteLevelBpe { tokens: t.tokens, merges: t.merges, special_ids: t.special_ids, add_bos: None };
    let encoder = TextEncoder::from_byte_level_bpe(&spec, "smollm2").unwrap();
    let manifest = smollm2_manifest();
    let (ids, mask) = inputs(&fixtures().join("smollm2"));
    let (ids, mask): (Vec<Vec<i64>>, Vec<Vec<i64>>) = (ids.to_vec2().unwrap(), mask.to_vec2().unwrap());
    for (row, text) in manifest["texts"].as_array().unwrap().iter().enumerate() {
        let python: Vec<u32> = ids[row].iter().zip(&mask[row]).filter(|(_, m)| **m == 1).map(|(id, _)| *id as u32).skip(1).collect();
        let ours = encoder.ids(text.as_str().unwrap(), true).unwrap();
        assert_eq!(ours, python, "{text}");
        assert_eq!(encoder.decode(&ours).unwrap(), text.as_str().unwrap());
    }
    // Control tokens stay whole.
    assert_eq!(encoder.ids("<|im_start|>user", true).unwrap()[0], 1);
}

/// QLoRA: the base stays quantized (the default for a GGUF file) and frozen; LoRA on top trains
/// in f32, its gradients flowing back through every quantized layer. Batches multiply with each
/// weight dequantized for the call (the dequantized model's output); a single row (decoding)
/// takes candle's quantized kernels, which also round the activations to 8 bits.
#[test]
fn smollm2_quantized_base_trains_lora() {
    let (ids, mask) = inputs(&fixtures().join("smollm2"));
    let mut model = load_model(&fixture_path(&smollm2_gguf())).unwrap();
    let exact = load();
    // The summary's "% of base" counts the weights kept quantized too: 134.5 M either way.
    assert_eq!(model.base_parameter_count(), exact.base_parameter_count());
    assert!((134_000_000..135_000_000).contains(&exact.base_parameter_count()), "{}", exact.base_parameter_count());
    let diff = max_abs_diff(&model.forward(&ids, &mask).unwrap(), &exact.forward(&ids, &mask).unwrap());
    assert!(diff <= 1e-4, "batch through the quantized base vs the dequantized model: {diff:e}");
    let one = ids.narrow(0, 0, 1).unwrap().narrow(1, 0, 1).unwrap();
    let one_mask = one.ones_like().unwrap();
    let rel = max_rel_diff(&model.forward(&one, &one_mask).unwrap(), &exact.forward(&one, &one_mask).unwrap());
    assert!(rel > 1e-5 && rel < 0.1, "one row through the quantized kernels vs dequantized: {rel:e}");
    model.add_adapter("qlora", adapters_runtime::AdapterConfig::parse("lora[r=8,alpha=16]").unwrap()).unwrap();
    let vars = model.train_adapter(AdapterSetup::from("qlora")).unwrap();
    let before: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().copy().unwrap()).collect();
    let mut opt = adapters_runtime::training::AdamWStep::new(vars.clone(), 2e-3, 0.0).unwrap();
    let text = Tensor::new(&[[1i64, 504, 3575, 282, 4649, 314, 7042, 30, 2]], &candle_core::Device::Cpu).unwrap();
    let inputs = ModelInputs::text(text.clone(), text.ones_like().unwrap());
    let mut losses = Vec::new();
    for _ in 0..8 {
        let loss = model.lm_loss(&inputs, &text).unwrap();
        losses.push(loss.to_scalar::<f32>().unwrap());
        opt.step(&loss, 2e-3, Some(1.0)).unwrap();
    }
    eprintln!("QLoRA losses: {losses:?}");
    assert!(losses[7] < 0.5 * losses[0], "{losses:?}");
    let moved = vars.iter().zip(&before).filter(|(v, b)| max_abs_diff(v.as_tensor(), b) > 0.0).count();
    // Every LoRA matrix of all 30 layers moved: gradients reached layer 0 through the quantized layers above it.
    assert_eq!(moved, vars.len(), "{moved} of {} LoRA tensors trained", vars.len());
    assert_eq!(vars.len(), 30 * 2 * 2);
}
