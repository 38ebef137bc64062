//! `average_adapter` and AdapterDrop (`skip_layers`) against the Python library
//! (`tests/fixtures/generate_averaging.py`) on tiny BERT, RoBERTa and DistilBERT.

use std::path::Path;

use adapters_models::load_model;
use adapters_runtime::model::CombineStrategy;
use adapters_runtime::{AdapterSetup, DynAdaptedModel};
use adapters_tests::*;
use serde_json::Value;

fn manifest() -> Value {
    read_json(&fixtures().join("averaging_manifest.json"))
}

fn load_sources(arch: &str, dir: &Path) -> Box<DynAdaptedModel> {
    let mut model = load_model(&fixtures().join("tiny").join(arch).join("model")).unwrap();
    for name in ["a", "b", "c"] {
        if dir.join(name).is_dir() {
            model.load_adapter(dir.join(name), None).unwrap();
        }
    }
    model
}

#[test]
fn averaged_adapters_match_python() {
    let m = manifest();
    let mut checked = 0;
    for (arch, cases) in m["averaging"].as_object().unwrap() {
        let (ids, mask) = inputs(&fixtures().join("tiny").join(arch));
        for (case, info) in cases.as_object().unwrap() {
            let label = format!("{arch}/{case}");
            let dir = fixtures().join("averaging").join(arch).join(case);
            let kwargs = &info["kwargs"];
            let sources: Vec<&str> = kwargs["adapter_list"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
            let weights: Option<Vec<f64>> = kwargs.get("weights").map(|w| w.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect());
            let normalize = kwargs.get("normalize_weights").and_then(Value::as_bool).unwrap_or(true);
            let strategy = CombineStrategy::parse(
                kwargs.get("combine_strategy").and_then(Value::as_str).unwrap_or("linear"),
                kwargs.get("svd_rank").and_then(Value::as_u64).map(|r| r as usize),
            )
            .unwrap();
            let mut model = load_sources(arch, &dir);
            model.average_adapter("avg", &sources, weights.as_deref(), normalize, strategy).unwrap_or_else(|e| panic!("{label}: {e}"));
            model.set_active_adapters(AdapterSetup::from("avg")).unwrap();
            let expected = read(&fixtures().join(info["output"].as_str().unwrap()));
            let out = model.forward(&ids, &mask).unwrap();
            // The SVD factors are unique only up to signs, and float64 here vs float32 in
            // PyTorch moves the truncated product by up to 4e-6 where singular values are close.
            let diff = max_abs_diff(&out, &expected["last_hidden_state"]);
            assert!(diff <= TOLERANCE, "{label}: max |diff| {diff}");
            if matches!(strategy, CombineStrategy::LoraDeltaWSvd { .. }) {
                // Compare the averaged update B A (times the new scaling) per module, sign-free.
                let ours: std::collections::HashMap<String, candle_core::Var> = model.named_params("avg").unwrap().into_iter().collect();
                let mut compared = 0;
                for (key, want) in expected.iter().filter(|(k, _)| k.starts_with("delta_w.")) {
                    let path = key.trim_start_matches("delta_w.");
                    let a = &ours[&format!("{path}.loras.avg.lora_A")];
                    let b = &ours[&format!("{path}.loras.avg.lora_B")];
                    let config: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("avg/adapter_config.json")).unwrap()).unwrap();
                    let scaling = config["config"]["alpha"].as_f64().unwrap() / config["config"]["r"].as_f64().unwrap();
                    let delta = (b.as_tensor().matmul(a.as_tensor()).unwrap() * scaling).unwrap();
                    let d = max_abs_diff(&delta, want);
                    assert!(d <= TOLERANCE, "{label}: delta_w of {path} differs by {d}");
                    compared += 1;
                }
                assert!(compared > 0, "{label}: compared the averaged updates");
            }
            // Python's saved averaged adapter loads into the same numbers.
            let mut fresh = load_model(&fixtures().join("tiny").join(arch).join("model")).unwrap();
            fresh.load_adapter(dir.join("avg"), None).unwrap();
            fresh.set_active_adapters(AdapterSetup::from("avg")).unwrap();
            assert!(max_abs_diff(&fresh.forward(&ids, &mask).unwrap(), &expected["last_hidden_state"]) <= TOLERANCE, "{label}: Python's file");
            checked += 1;
        }
    }
    assert_eq!(checked, 21, "7 strategies x 3 models");
}

#[test]
fn adapter_drop_matches_python_and_resets() {
    let m = manifest();
    let mut checked = 0;
    for (arch, cases) in m["adapterdrop"].as_object().unwrap() {
        let (ids, mask) = inputs(&fixtures().join("tiny").join(arch));
        for (case, info) in cases.as_object().unwrap() {
            let label = format!("{arch}/{case}");
            let dir = fixtures().join("averaging").join(arch).join(case);
            let mut model = load_sources(arch, &dir);
            let setup = AdapterSetup::parse(info["setup"].as_str().unwrap()).unwrap();
            let skip: Vec<usize> = info["skip_layers"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
            let expected = read(&fixtures().join(info["output"].as_str().unwrap()));
            model.set_active_adapters_skipping(setup.clone(), Some(skip)).unwrap();
            let d = max_abs_diff(&model.forward(&ids, &mask).unwrap(), &expected["last_hidden_state"]);
            assert!(d <= TOLERANCE, "{label}: {d}");
            // A later set_active_adapters without skip_layers runs every layer again.
            model.set_active_adapters(setup).unwrap();
            let d = max_abs_diff(&model.forward(&ids, &mask).unwrap(), &expected["last_hidden_state_no_skip"]);
            assert!(d <= TOLERANCE, "{label} (reset): {d}");
            checked += 1;
        }
    }
    assert_eq!(checked, 9);
}

#[test]
fn averaging_errors_name_the_problem() {
    let dir = fixtures().join("averaging/bert/lora_linear");
    let mut model = load_sources("bert", &dir);
    let err = model.average_adapter("x", &["a", "b"], Some(&[0.5, -0.5]), true, CombineStrategy::LoraLinearOnlyNegateB).unwrap_err().to_string();
    assert!(err.contains("sum to 0") && err.contains("normalize"), "{err}");
    assert!(model.adapter_names().all(|n| n != "x"), "nothing half-added");
    let err = CombineStrategy::parse("lora_delta_w_svd", None).unwrap_err().to_string();
    assert!(err.contains("svd_rank must be set"), "{err}");
    model.add_adapter("r4", adapters_runtime::AdapterConfig::parse("lora[r=4]").unwrap()).unwrap();
    let err = model.average_adapter("x", &["a", "r4"], None, true, CombineStrategy::Linear).unwrap_err().to_string();
    assert!(err.contains("different configurations"), "{err}");
    let bn = fixtures().join("averaging/bert/bn_linear");
    let mut model = load_sources("bert", &bn);
    let err = model.average_adapter("x", &["a", "b"], None, true, CombineStrategy::LoraLinearOnlyNegateB).unwrap_err().to_string();
    assert!(err.contains("for LoRA adapters"), "{err}");
}
