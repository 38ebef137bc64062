//! Encoder-decoders against the Python library (`tests/fixtures/generate_seq2seq.py`): tiny BART
//! (post-norm), MBART (pre-norm), T5 (ReLU, tied), T5 v1.1 (gated GELU, untied lm_head) and MT5,
//! saved as `*ForConditionalGeneration`, with every method and block Python supports on them:
//! bottleneck adapters in encoder, decoder and `cross_adapter` positions, LoRA on self- and
//! cross-attention, prefix tuning at `encoder_prefix`, `self_prefix` and `cross_prefix`, `leave_out`
//! across both stacks, Stack, Parallel and Fuse, a seq2seq LM head. Both outputs (the decoder's
//! `last_hidden_state`, `encoder_last_hidden_state`) and the checkpoint's LM logits are compared.
//! `bert2bert` is an `EncoderDecoderModel` of two annotated BERTs (the decoder with
//! cross-attention): each half numbers its layers and keeps its prefix pool, as in Python.

use std::path::PathBuf;

use adapters_models::load_model;
use adapters_runtime::{AdapterSetup, DynAdaptedModel, ModelInputs};
use adapters_tests::*;
use candle_core::Tensor;
use serde_json::Value;

fn seq2seq_manifest() -> Value {
    read_json(&fixtures().join("seq2seq_manifest.json"))
}

/// The architectures built here with the number of cases Python ran on each; `PENDING` lists
/// the manifest's architectures not yet built.
const ARCHS: &[(&str, usize)] = &[("bart", 19), ("mbart", 19), ("t5", 19), ("t5_v1_1", 19), ("mt5", 19), ("bert2bert", 5)];
const PENDING: &[&str] = &[];

fn archs(manifest: &Value) -> Vec<(String, Value)> {
    let all = manifest["archs"].as_object().expect("seq2seq manifest: archs");
    let mut listed: Vec<&str> = ARCHS.iter().map(|a| a.0).chain(PENDING.iter().copied()).collect();
    listed.sort_unstable();
    let mut found: Vec<&str> = all.keys().map(String::as_str).collect();
    found.sort_unstable();
    assert_eq!(found, listed, "the manifest's architectures changed");
    ARCHS.iter().map(|(arch, _)| (arch.to_string(), all[*arch].clone())).collect()
}

fn load(info: &Value) -> Box<DynAdaptedModel> {
    load_model(&fixtures().join(info["model_dir"].as_str().unwrap())).unwrap()
}

/// The arch's inputs, leaving out the tensors `without` names.
fn arch_inputs(arch: &str, without: &[&str]) -> ModelInputs<'static> {
    let data = read(&fixtures().join("seq2seq").join(arch).join("inputs.safetensors"));
    let mask = (!without.contains(&"decoder_attention_mask")).then(|| data["decoder_attention_mask"].clone());
    ModelInputs::text(data["input_ids"].clone(), data["attention_mask"].clone()).with_decoder_input_ids(data["decoder_input_ids"].clone(), mask)
}

/// A case's adapter folder, with the tensors Python's `save_adapter` left out added back where
/// the manifest records them (T5's Compacter `phm_rule`).
fn adapter_dir(label: &str, case: &Value, name: &str, dir: &str) -> PathBuf {
    let dir = fixtures().join(dir);
    match case["unsaved_by_save_adapter"][name]["file"].as_str() {
        Some(extra) => with_shared(label, &dir, &fixtures().join(extra)),
        None => dir,
    }
}

fn with_case(model: &mut DynAdaptedModel, label: &str, case: &Value) {
    for (name, dir) in case["adapters"].as_object().unwrap() {
        let dir = adapter_dir(label, case, name, dir.as_str().unwrap());
        let loaded = model.load_adapter(&dir, None).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(&loaded, name);
    }
    if let Some(fusion) = case["fusion"].as_str() {
        model.load_adapter_fusion(fixtures().join(fusion), None).unwrap_or_else(|e| panic!("{label}: {e}"));
    }
    if let Some(head) = case["active_head"].as_str() {
        model.set_active_head(Some(head)).unwrap_or_else(|e| panic!("{label}: {e}"));
    }
    model.set_active_adapters(AdapterSetup::parse(case["setup"].as_str().unwrap()).unwrap()).unwrap_or_else(|e| panic!("{label}: {e}"));
}

fn check(label: &str, what: &str, ours: &Tensor, reference: &Tensor) {
    let diff = max_abs_diff(ours, reference);
    assert!(diff <= TOLERANCE, "{label} {what}: max |diff| {diff:e}");
}

/// Logits at 1e-5 of their own scale when that exceeds 1: the untied T5 v1.1 / MT5 `lm_head`
/// (random, initializer factor 1.0) gives logits up to 19, where f32 rounding of the hidden
/// states (matched at 1e-6) alone moves them by 1e-5.
fn check_logits(label: &str, what: &str, ours: &Tensor, reference: &Tensor) {
    let scale = max_abs_diff(reference, &reference.zeros_like().unwrap()).max(1.0);
    let diff = max_abs_diff(ours, reference);
    assert!(diff <= TOLERANCE * scale, "{label} {what}: max |diff| {diff:e} (logits up to {scale})");
}

fn case_file(arch: &str, case: &str, file: &str) -> PathBuf {
    fixtures().join("seq2seq").join(arch).join(case).join(file)
}

#[test]
fn base_encoder_decoders_match_python() {
    for (arch, info) in archs(&seq2seq_manifest()) {
        let mut model = load(&info);
        let inputs = arch_inputs(&arch, &[]);
        let expected = read(&fixtures().join("seq2seq").join(&arch).join("base.safetensors"));
        // The checkpoint's lm_head became the `default` seq2seq head, as Python converts it:
        // the same logits without BART's final_logits_bias.
        assert_eq!(model.active_head(), Some("default"), "{arch}");
        let converted = model.lm_logits(&inputs).unwrap();
        if model.base().lm_head().is_none() {
            // An EncoderDecoderModel decodes only through its decoder's prediction head.
            check_logits(&arch, "converted head logits", &converted, &expected["logits"]);
            let out = model.forward_inputs(&inputs).unwrap();
            check(&arch, "decoder", &out.last_hidden_state, &expected["last_hidden_state"]);
            continue;
        }
        model.set_active_head(None).unwrap();
        let out = model.forward_inputs(&inputs).unwrap();
        check(&arch, "decoder", &out.last_hidden_state, &expected["last_hidden_state"]);
        check(&arch, "encoder", out.encoder_last_hidden_state.as_ref().unwrap(), &expected["encoder_last_hidden_state"]);
        // The checkpoint's own LM head (BART: plus final_logits_bias; tied T5: scaled input).
        let logits = model.lm_logits(&inputs).unwrap();
        check_logits(&arch, "lm logits", &logits, &expected["logits"]);
        let bias = read(&fixtures().join(info["model_dir"].as_str().unwrap()).join("model.safetensors")).remove("final_logits_bias");
        let without_bias = match bias {
            Some(bias) => logits.broadcast_sub(&bias).unwrap(),
            None => logits,
        };
        check_logits(&arch, "converted head logits", &converted, &without_bias);
    }
}

#[test]
fn every_method_and_block_matches_python() {
    let manifest = seq2seq_manifest();
    for (arch, info) in archs(&manifest) {
        let base = load(&info).forward_inputs(&arch_inputs(&arch, &[])).unwrap().last_hidden_state;
        let mut checked = 0;
        for (case, entry) in info["cases"].as_object().unwrap() {
            let label = format!("{arch}/{case}");
            let without: Vec<&str> = entry["inputs_without"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
            let inputs = arch_inputs(&arch, &without);
            let mut model = load(&info);
            // The checkpoint's own LM head: its lm_head where it has one (BART's with
            // final_logits_bias), else the converted `default` head (EncoderDecoderModel).
            let static_lm = model.base().lm_head().is_some();
            if entry["head"].as_bool() != Some(true) && static_lm {
                model.set_active_head(None).unwrap();
            }
            with_case(&mut model, &label, entry);
            let expected = read(&case_file(&arch, case, "output.safetensors"));
            let out = model.forward_inputs_with_head(&inputs).unwrap_or_else(|e| panic!("{label}: {e}"));
            check(&label, "decoder", &out.last_hidden_state, &expected["last_hidden_state"]);
            check(&label, "encoder", out.encoder_last_hidden_state.as_ref().unwrap(), &expected["encoder_last_hidden_state"]);
            if out.last_hidden_state.dims() == base.dims() {
                assert!(max_abs_diff(&out.last_hidden_state, &base) > 1e-3, "{label}: the adapter changed nothing");
            }
            if entry["head"].as_bool() == Some(true) {
                let logits = out.head.as_ref().unwrap_or_else(|| panic!("{label}: no head output")).logits();
                check_logits(&label, "head logits", logits, &expected["logits"]);
            } else if entry["lm_logits"].as_bool() == Some(true) && !without.contains(&"decoder_attention_mask") {
                let logits = if static_lm { model.lm_logits(&inputs).unwrap() } else { out.head.as_ref().unwrap().logits().clone() };
                check_logits(&label, "lm logits", &logits, &expected["logits"]);
            }
            if entry["merged"].as_bool() == Some(true) {
                model.merge_adapter(case).unwrap();
                let merged = model.forward_inputs(&inputs).unwrap().last_hidden_state;
                check(&label, "merged", &merged, &expected_merged(&arch, case));
            }
            checked += 1;
        }
        let expected = ARCHS.iter().find(|a| a.0 == arch).unwrap().1;
        assert_eq!(checked, expected, "{arch}");
    }
}

fn expected_merged(arch: &str, case: &str) -> Tensor {
    read(&case_file(arch, case, "output_merged.safetensors"))["last_hidden_state"].clone()
}

/// What Python refuses on encoder-decoders is refused here: prompt tuning (no prompt slot),
/// and Compacter whose bottleneck is narrower than its PHM dimension.
#[test]
fn encoder_decoders_refuse_what_python_refuses() {
    for (arch, info) in archs(&seq2seq_manifest()) {
        let mut model = load(&info);
        let err = model.add_adapter("p", adapters_runtime::AdapterConfig::parse("prompt_tuning").unwrap()).unwrap_err().to_string();
        assert!(err.contains("prompt tuning") || err.contains("prompt_tuning"), "{arch}: {err}");
        assert!(!model.mapping().supported_methods().contains(&"prompt_tuning"), "{arch}");
        let err = model.add_adapter("c", adapters_runtime::AdapterConfig::parse("compacter").unwrap()).unwrap_err().to_string();
        assert!(err.contains("phm_dim") || err.contains("phm"), "{arch}: {err}");
    }
}

/// Bad input is a typed error naming what is missing or wrong.
#[test]
fn encoder_decoder_inputs_are_checked() {
    let manifest = seq2seq_manifest();
    let info = &manifest["archs"]["bart"];
    let model = load(info);
    let data = read(&fixtures().join("seq2seq/bart/inputs.safetensors"));
    let err = model.forward(&data["input_ids"], &data["attention_mask"]).unwrap_err().to_string();
    assert!(err.contains("DecoderInputIds"), "{err}");
    let short_mask = data["decoder_attention_mask"].narrow(1, 0, 3).unwrap();
    let inputs = ModelInputs::text(data["input_ids"].clone(), data["attention_mask"].clone())
        .with_decoder_input_ids(data["decoder_input_ids"].clone(), Some(short_mask));
    let err = model.forward_inputs(&inputs).unwrap_err().to_string();
    assert!(err.contains("decoder_attention_mask covers 3 positions"), "{err}");
    // A cross_adapter config on a model without cross-attention.
    let mut encoder = load_model(&fixtures().join("tiny/bert/model")).unwrap();
    let err = encoder.add_adapter("x", adapters_runtime::AdapterConfig::parse("seq_bn[cross_adapter=True]").unwrap()).unwrap_err().to_string();
    assert!(err.contains("cross_adapter") && err.contains("no cross-attention"), "{err}");
}

/// Saving and reloading keeps every encoder-decoder case's output (file names round-trip,
/// cross-attention slots and the prefix pool's three locations included).
#[test]
fn saved_encoder_decoder_adapters_reload() {
    let manifest = seq2seq_manifest();
    let cases = [
        ("bart", "seq_bn_cross"),
        ("bart", "lora_all"),
        ("bart", "prefix_tuning"),
        ("bart", "seq_bn_inv"),
        ("bart", "leave_out"),
        ("t5", "prefix_tuning"),
        ("bert2bert", "prefix_tuning"),
        ("bert2bert", "lora"),
    ];
    for (arch, case) in cases {
        let info = &manifest["archs"][arch];
        let inputs = arch_inputs(arch, &[]);
        let entry = &info["cases"][case];
        let mut model = load(info);
        with_case(&mut model, case, entry);
        let before = model.forward_inputs(&inputs).unwrap().last_hidden_state;
        let dir = std::env::temp_dir().join(format!("adapters-seq2seq-{}-{arch}-{case}", std::process::id()));
        model.save_adapter(&dir, case).unwrap();
        let mut fresh = load(info);
        fresh.load_adapter(&dir, None).unwrap();
        fresh.set_active_adapters(AdapterSetup::from(case)).unwrap();
        let after = fresh.forward_inputs(&inputs).unwrap().last_hidden_state;
        assert_eq!(max_abs_diff(&before, &after), 0.0, "{arch}/{case}");
        // The file holds the names Python's holds (each half's prefix pool under its path).
        let python = adapters_runtime::io::read_weights(
            &adapters_runtime::io::find_weights(&fixtures().join(entry["adapters"][case].as_str().unwrap()), "adapter.safetensors", "pytorch_adapter.bin")
                .unwrap(),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let ours = read(&dir.join("adapter.safetensors"));
        let strip = |k: &String| k.strip_prefix("model.").unwrap_or(k).to_string();
        // (Python's `.bin` also holds each attention module's copy of its prefix pool.)
        let mut python_names: Vec<String> = python.keys().filter(|k| !k.contains(".prefix_tuning.pool.")).map(strip).collect();
        let mut our_names: Vec<String> = ours.keys().map(strip).collect();
        python_names.sort();
        our_names.sort();
        assert_eq!(our_names, python_names, "{arch}/{case}: saved tensor names");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Greedy generation with the encoder run once and a decoder KV cache matches Python's
/// `generate` token for token, and equals generation that recomputes the decoder every step.
#[test]
fn greedy_generation_matches_python_and_cache_changes_nothing() {
    use adapters_runtime::model::GenerateOptions;
    let manifest = seq2seq_manifest();
    for (arch, info) in archs(&manifest) {
        let generations = info["generate"].as_object().unwrap();
        assert!(generations.len() >= 5, "{arch}: the manifest's generations changed");
        for (case, entry) in generations {
            let label = format!("{arch}/generate/{case}");
            if let Some(error) = entry["python_error"].as_str() {
                // bert2bert with prefix tuning: Python's generate fails; ours runs, and the
                // cache changes nothing.
                assert!(error.contains("prefix_states"), "{label}: {error}");
                let mut model = load(&info);
                let name = model.load_adapter(fixtures().join(info["cases"][case]["adapters"][case].as_str().unwrap()), None).unwrap();
                model.set_active_adapters(AdapterSetup::from(name.as_str())).unwrap();
                let data = read(&fixtures().join("seq2seq").join(&arch).join("inputs.safetensors"));
                let run = |use_cache: bool| {
                    let options = GenerateOptions { use_cache, ..GenerateOptions::greedy(6) };
                    model.generate(&data["input_ids"], Some(&data["attention_mask"]), &options, |_| Ok(())).unwrap().to_vec2::<i64>().unwrap()
                };
                assert_eq!(run(true), run(false), "{label}: with and without the cache");
                continue;
            }
            let mut model = load(&info);
            if model.base().lm_head().is_some() {
                model.set_active_head(None).unwrap();
            }
            if let Some(dir) = entry["adapter"].as_str() {
                let name = model.load_adapter(fixtures().join(dir), None).unwrap();
                model.set_active_adapters(AdapterSetup::from(name.as_str())).unwrap();
            }
            let data = read(&fixtures().join(entry["file"].as_str().unwrap()));
            let new = entry["new_tokens"].as_u64().unwrap() as usize;
            let run = |use_cache: bool| {
                let options = GenerateOptions { use_cache, ..GenerateOptions::greedy(new) };
                let out = model.generate(&data["input_ids"], Some(&data["attention_mask"]), &options, |_| Ok(())).unwrap_or_else(|e| panic!("{label}: {e}"));
                out.to_vec2::<i64>().unwrap()
            };
            let cached = run(true);
            let python: Vec<Vec<i64>> = data["sequences"].to_dtype(candle_core::DType::I64).unwrap().to_vec2().unwrap();
            assert_eq!(cached, python, "{label}");
            assert_eq!(run(false), cached, "{label}: without the cache");
        }
    }
}
