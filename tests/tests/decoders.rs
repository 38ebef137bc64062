//! Decoder-only models against the Python library (`tests/fixtures/generate_decoders.py`): tiny
//! Llama (saved as `LlamaForCausalLM`, untied `lm_head`, llama3 rope scaling), Mistral (a
//! bare `MistralModel`, tied embeddings, a sliding window shorter than the input), Qwen2 (q/k/v
//! biases, sliding-window layers) and Qwen3 (per-head q/k norms) with grouped-query attention,
//! GPT-2 (`GPT2LMHeadModel`: Conv1D weights, learned positions, fused `c_attn` under
//! `LoRAMergedLinear`),
//! every method Python supports on them (Qwen through its plugin interface), composition blocks, a causal LM head
//! saved with its adapter, merged LoRA, and greedy generation; generation with a KV cache equals
//! recomputation without one.

use std::path::Path;

use adapters_models::load_model;
use adapters_runtime::model::GenerateOptions;
use adapters_runtime::{AdapterSetup, DynAdaptedModel, ModelInputs};
use adapters_tests::*;
use candle_core::{DType, Tensor};
use serde_json::Value;

fn decoders_manifest() -> Value {
    read_json(&fixtures().join("decoders_manifest.json"))
}

/// The architectures built here, with the number of cases and generations Python ran on each.
/// Every architecture of the manifest is built here (`PENDING` lists any that are not yet).
const ARCHS: &[(&str, usize, usize)] = &[("llama", 15, 6), ("mistral", 15, 6), ("qwen2", 11, 6), ("qwen3", 11, 6), ("gemma2", 11, 6), ("gpt2", 14, 7)];
const PENDING: &[&str] = &[];

fn archs(manifest: &Value) -> Vec<(String, Value)> {
    let all = manifest["archs"].as_object().expect("decoders manifest: archs");
    let mut listed: Vec<&str> = ARCHS.iter().map(|a| a.0).chain(PENDING.iter().copied()).collect();
    listed.sort_unstable();
    assert_eq!(all.keys().map(String::as_str).collect::<Vec<_>>(), listed, "the manifest's architectures changed");
    ARCHS.iter().map(|(arch, _, _)| (arch.to_string(), all[*arch].clone())).collect()
}

fn expected_count(arch: &str, column: fn(&(&str, usize, usize)) -> usize) -> usize {
    ARCHS.iter().find(|a| a.0 == arch).map(column).unwrap()
}

/// The checkpoint with its static LM head, as the generator ran `*ForCausalLM` after
/// `adapters.init` (the head `AutoAdapterModel` would convert it into is set aside: a flexible
/// causal LM head also reverses invertible adapters, the static one does not).
fn load(info: &Value) -> Box<DynAdaptedModel> {
    let mut model = load_model(&fixtures().join(info["model_dir"].as_str().unwrap())).unwrap();
    model.set_active_head(None).unwrap();
    model
}

fn arch_inputs(arch: &str) -> (Tensor, Tensor) {
    inputs(&fixtures().join("decoders").join(arch))
}

/// Loads a case's adapters (and fusion layer), activates its setup.
fn with_case(model: &mut DynAdaptedModel, label: &str, case: &Value) {
    for (name, dir) in case["adapters"].as_object().unwrap() {
        let loaded = model.load_adapter(fixtures().join(dir.as_str().unwrap()), None).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(&loaded, name);
    }
    if let Some(fusion) = case["fusion"].as_str() {
        model.load_adapter_fusion(fixtures().join(fusion), None).unwrap_or_else(|e| panic!("{label}: {e}"));
    }
    let setup = AdapterSetup::parse(case["setup"].as_str().unwrap()).unwrap();
    model.set_active_adapters(setup).unwrap_or_else(|e| panic!("{label}: {e}"));
}

fn case_file(arch: &str, case: &str, file: &str) -> std::path::PathBuf {
    fixtures().join("decoders").join(arch).join(case).join(file)
}

#[test]
fn base_decoders_match_python() {
    for (arch, info) in archs(&decoders_manifest()) {
        let model = load(&info);
        let (ids, mask) = arch_inputs(&arch);
        let expected = read(&fixtures().join("decoders").join(&arch).join("base.safetensors"));
        let hidden = model.forward(&ids, &mask).unwrap();
        let diff = max_abs_diff(&hidden, &expected["last_hidden_state"]);
        assert!(diff <= TOLERANCE, "{arch} base: max |diff| {diff:e}");
        if let Some(reference) = expected.get("logits") {
            let logits = model.lm_logits(&ModelInputs::text(ids.clone(), mask.clone())).unwrap();
            let diff = max_abs_diff(&logits, reference);
            assert!(diff <= TOLERANCE, "{arch} lm_head logits: max |diff| {diff:e}");
        }
    }
}

#[test]
fn every_method_and_block_matches_python() {
    let manifest = decoders_manifest();
    for (arch, info) in archs(&manifest) {
        let (ids, mask) = arch_inputs(&arch);
        let base = load(&info).forward(&ids, &mask).unwrap();
        let mut checked = 0;
        for (case, entry) in info["cases"].as_object().unwrap() {
            let label = format!("{arch}/{case}");
            assert!(entry.get("python_error").is_none(), "{label}: the generator recorded a Python failure; choose a case Python runs");
            let mut model = load(&info);
            with_case(&mut model, &label, entry);
            // Gemma 2: Python's interface hands every layer's adapters the last layer's norms
            // (late-bound lambdas); the reference here is Python with each layer's own.
            let output = entry["per_layer_ln_output"]["file"].as_str().map_or_else(|| case_file(&arch, case, "output.safetensors"), |f| fixtures().join(f));
            let expected = read(&output);
            let out = model.forward_with_head(&ids, &mask).unwrap_or_else(|e| panic!("{label}: {e}"));
            let diff = max_abs_diff(&out.last_hidden_state, &expected["last_hidden_state"]);
            assert!(diff <= TOLERANCE, "{label}: max |diff| {diff:e}");
            if out.last_hidden_state.dims() == base.dims() {
                assert!(max_abs_diff(&out.last_hidden_state, &base) > 1e-3, "{label}: the adapter changed nothing");
            }
            if entry["head"].as_bool().unwrap() {
                let logits = out.head.as_ref().unwrap_or_else(|| panic!("{label}: no head output")).logits();
                let diff = max_abs_diff(logits, &expected["logits"]);
                assert!(diff <= TOLERANCE, "{label} logits: max |diff| {diff:e}");
            } else if entry["lm_logits"].as_bool() == Some(true) {
                // The checkpoint's own lm_head (through the reverse invertible adapter, as Python's
                // plugin interface hooks it).
                let logits = model.lm_logits(&ModelInputs::text(ids.clone(), mask.clone())).unwrap_or_else(|e| panic!("{label}: {e}"));
                let diff = max_abs_diff(&logits, &expected["logits"]);
                assert!(diff <= TOLERANCE, "{label} lm logits: max |diff| {diff:e}");
            }
            if entry["merged"].as_bool() == Some(true) {
                model.merge_adapter(case).unwrap();
                let merged = model.forward(&ids, &mask).unwrap();
                let reference = expected_tensor(&case_file(&arch, case, "output_merged.safetensors"));
                let diff = max_abs_diff(&merged, &reference);
                assert!(diff <= TOLERANCE, "{label} merged: max |diff| {diff:e}");
            }
            checked += 1;
        }
        // Llama, Mistral: 10 single methods, 4 blocks and the LM head case; Qwen: 8 methods,
        // Stack and Fuse (no prefix tuning, Parallel or flexible heads through the interface).
        assert_eq!(checked, expected_count(&arch, |a| a.1), "{arch}");
    }
}

fn expected_tensor(path: &Path) -> Tensor {
    expected(path)
}

#[test]
fn greedy_generation_matches_python() {
    let manifest = decoders_manifest();
    for (arch, info) in archs(&manifest) {
        let mut checked = 0;
        for (case, entry) in info["generate"].as_object().unwrap() {
            let label = format!("{arch}/generate/{case}");
            let mut model = load(&info);
            if let Some(dir) = entry["adapter"].as_str() {
                let name = model.load_adapter(fixtures().join(dir), None).unwrap();
                model.set_active_adapters(AdapterSetup::from(name.as_str())).unwrap();
            }
            let file = entry["per_layer_ln"].as_str().or(entry["file"].as_str()).unwrap();
            let data = read(&fixtures().join(file));
            let new = entry["new_tokens"].as_u64().unwrap() as usize;
            let out = model.generate(&data["prompt_ids"], Some(&data["prompt_mask"]), &GenerateOptions::greedy(new), |_| Ok(())).unwrap();
            let ours: Vec<Vec<i64>> = out.to_vec2().unwrap();
            let python: Vec<Vec<i64>> = data["sequences"].to_dtype(DType::I64).unwrap().to_vec2().unwrap();
            assert_eq!(ours, python, "{label}");
            checked += 1;
        }
        assert_eq!(checked, expected_count(&arch, |a| a.2), "{arch}");
    }
}

/// The KV cache is an optimisation only: the same tokens and the same logits as recomputing the
/// whole sequence at every step, for every method whose output depends only on earlier positions.
#[test]
fn cached_generation_equals_recomputation() {
    let manifest = decoders_manifest();
    for (arch, info) in archs(&manifest) {
        for case in ["base", "seq_bn", "lora_all", "dora", "prefix_tuning", "seq_bn_inv", "lm_head", "stack"] {
            if case != "base" && info["cases"].get(case).is_none() {
                continue; // the interface models take no prefix tuning and no flexible heads
            }
            let label = format!("{arch}/{case}");
            let mut model = load(&info);
            if case != "base" {
                with_case(&mut model, &label, &info["cases"][case]);
            }
            let prompt = Tensor::new(&[[0i64, 1, 17, 33], [1, 45, 12, 87]], &candle_core::Device::Cpu).unwrap();
            let mask = Tensor::new(&[[0i64, 1, 1, 1], [1, 1, 1, 1]], &candle_core::Device::Cpu).unwrap();
            let run = |use_cache: bool| {
                let options = GenerateOptions { use_cache, ..GenerateOptions::greedy(8) };
                model.generate(&prompt, Some(&mask), &options, |_| Ok(())).unwrap_or_else(|e| panic!("{label}: {e}"))
            };
            let (cached, recomputed) = (run(true), run(false));
            assert_eq!(cached.to_vec2::<i64>().unwrap(), recomputed.to_vec2::<i64>().unwrap(), "{label}");
            // The logits of the whole generated sequence, in one pass and step by step.
            let full_mask = Tensor::cat(&[&mask, &Tensor::ones((2, 8), DType::I64, &candle_core::Device::Cpu).unwrap()], 1).unwrap();
            let one_pass = model.lm_logits(&ModelInputs::text(cached.clone(), full_mask.clone()).with_position_ids(positions(&full_mask))).unwrap();
            let cache = adapters_runtime::KvCache::new();
            let prompt_pass = model.lm_logits(&ModelInputs::text(prompt.clone(), mask.clone()).with_position_ids(positions(&mask)).with_cache(&cache)).unwrap();
            let step = cached.narrow(1, 4, 1).unwrap();
            let step_mask = full_mask.narrow(1, 0, 5).unwrap();
            let step_pass = model
                .lm_logits(&ModelInputs::text(step, step_mask.clone()).with_position_ids(positions(&step_mask).narrow(1, 4, 1).unwrap()).with_cache(&cache))
                .unwrap();
            // Position 0 of row 0 is padding: a query with every key masked, whose output is
            // meaningless (a uniform average over however many keys there are).
            let real = |t: &Tensor| t.narrow(1, 1, 3).unwrap();
            let diff =
                max_abs_diff(&real(&prompt_pass), &real(&one_pass.narrow(1, 0, 4).unwrap())).max(max_abs_diff(&step_pass, &one_pass.narrow(1, 4, 1).unwrap()));
            assert!(diff <= TOLERANCE, "{label}: cached logits differ by {diff:e}");
        }
    }
}

/// `cumsum(mask) - 1`, padded positions at 1 (as generation numbers them).
fn positions(mask: &Tensor) -> Tensor {
    let rows: Vec<Vec<i64>> = mask.to_vec2().unwrap();
    let mut out = Vec::new();
    for row in &rows {
        let mut count = 0;
        for &m in row {
            count += m;
            out.push(if m == 0 { 1 } else { count - 1 });
        }
    }
    Tensor::from_vec(out, mask.dims(), &candle_core::Device::Cpu).unwrap()
}

/// Llama-family models take no prompt tuning (as in Python), and say so.
#[test]
fn prompt_tuning_is_refused_on_decoders() {
    for (arch, info) in archs(&decoders_manifest()) {
        let mut model = load(&info);
        let err = model.add_adapter("p", adapters_runtime::AdapterConfig::parse("prompt_tuning").unwrap()).unwrap_err().to_string();
        assert!(err.contains("prompt tuning"), "{arch}: {err}");
        assert!(!model.mapping().supported_methods().contains(&"prompt_tuning"), "{arch}");
    }
}

/// A prompt that runs past the position limit is a typed error naming the limit.
#[test]
fn positions_past_the_limit_are_refused() {
    let (arch, info) = archs(&decoders_manifest()).remove(0);
    let model = load(&info);
    let ids = Tensor::ones((1, 65), DType::I64, &candle_core::Device::Cpu).unwrap();
    let err = model.forward(&ids, &ids.ones_like().unwrap()).unwrap_err().to_string();
    assert!(err.contains("max_position_embeddings 64"), "{arch}: {err}");
}

/// Parallel and BatchSplit work per row in generation: under `Parallel[a, b]` each channel
/// continues its own copy of the batch exactly as generating with that adapter alone does, and
/// under `BatchSplit[a, b]` each row continues as with its part's adapter alone.
#[test]
fn parallel_and_batch_split_generate_per_row() {
    let manifest = decoders_manifest();
    let info = &manifest["archs"]["llama"];
    let case = &info["cases"]["parallel"];
    let prompt = Tensor::new(&[[0i64, 1, 17, 33], [1, 45, 12, 87]], &candle_core::Device::Cpu).unwrap();
    let mask = Tensor::new(&[[0i64, 1, 1, 1], [1, 1, 1, 1]], &candle_core::Device::Cpu).unwrap();
    let run = |setup: &str| {
        let mut model = load(info);
        with_case(&mut model, setup, &serde_json::json!({"adapters": case["adapters"], "setup": setup}));
        let out = model.generate(&prompt, Some(&mask), &GenerateOptions::greedy(6), |_| Ok(())).unwrap_or_else(|e| panic!("{setup}: {e}"));
        out.to_vec2::<i64>().unwrap()
    };
    let (a, b) = (run("a"), run("b"));
    assert_ne!(a, b, "the two adapters should continue differently");
    let parallel = run("Parallel[a, b]");
    assert_eq!(parallel, [a.clone(), b.clone()].concat(), "Parallel rows: channel a, then channel b");
    let split = run("BatchSplit[a, b, batch_sizes=[1, 1]]");
    assert_eq!(split, vec![a[0].clone(), b[1].clone()], "BatchSplit: row 0 with a, row 1 with b");
}

/// What Python refuses or fails on with GPT-2 (the manifest's `unsupported`) is an error here
/// too, naming the reason: DoRA on the fused `c_attn` when added, prompt tuning when added, and
/// a composition block that reaches a LoRA module on `c_attn` when the model runs.
#[test]
fn gpt2_refuses_what_python_fails_on() {
    let manifest = decoders_manifest();
    let info = &manifest["archs"]["gpt2"];
    let (ids, mask) = arch_inputs("gpt2");
    let cases = info["unsupported"].as_object().unwrap();
    assert_eq!(cases.len(), 4, "the manifest's GPT-2 failures changed");
    for (case, entry) in cases {
        let mut model = load(info);
        let mut outcome = || -> adapters_runtime::Result<Tensor> {
            for (name, config) in entry["adapters"].as_object().unwrap() {
                model.add_adapter(name, adapters_runtime::AdapterConfig::parse(config.as_str().unwrap())?)?;
            }
            model.set_active_adapters(AdapterSetup::parse(entry["setup"].as_str().unwrap())?)?;
            model.forward(&ids, &mask)
        };
        let err = outcome().expect_err(case).to_string();
        let expected = match case.as_str() {
            "dora" | "dora_config" => "DoRA is not supported on a fused q/k/v projection",
            "prompt_tuning" => "prompt tuning",
            "stack_lora_on_c_attn" => "transformer.h.0.attn.c_attn` fuses q, k and v",
            other => panic!("{other}: a GPT-2 failure this test does not know"),
        };
        assert!(err.contains(expected), "{case}: {err}");
    }
    // Python's GPT-2 takes no `lora_delta_w_svd` averaging (`support_lora_delta_w_svd = False`):
    // `c_attn` holds one factor pair per matrix.
    let mut model = load(info);
    for name in ["a", "b"] {
        model.add_adapter(name, adapters_runtime::AdapterConfig::parse("lora").unwrap()).unwrap();
    }
    let svd = adapters_runtime::model::CombineStrategy::LoraDeltaWSvd { rank: 4 };
    let err = model.average_adapter("avg", &["a", "b"], None, true, svd).unwrap_err().to_string();
    assert!(err.contains("transformer.h.0.attn.c_attn"), "{err}");
    assert!(!model.adapter_names().any(|n| n == "avg"), "a failed average leaves no adapter behind");
}
