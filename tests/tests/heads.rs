//! Prediction heads against the Python library: heads of every type saved by Python
//! (`save_adapter(..., with_head=True)`, both file formats) load here with their adapters and
//! give the same logits; heads saved here load back with the same outputs and Python's tensor
//! names; bad head files are typed errors.

use std::path::{Path, PathBuf};

use adapters_models::load_model;
use adapters_runtime::{AdapterError, AdapterSetup, DynAdaptedModel, HeadConfig};
use adapters_tests::*;
use candle_core::Tensor;
use serde_json::Value;

fn base_checkpoint(arch: &str) -> PathBuf {
    if arch == "minilm" {
        return minilm_dir();
    }
    let model_dir = fixtures().join("tiny").join(arch).join("model");
    let pooler = fixtures().join("heads").join(arch).join("pooler.safetensors");
    checkpoint_with(&format!("heads-{arch}"), &model_dir, pooler.is_file().then_some(pooler.as_path()), &[])
}

fn case_inputs(arch: &str) -> (Tensor, Tensor) {
    if arch == "minilm" {
        inputs(&fixtures().join("minilm"))
    } else {
        inputs(&fixtures().join("tiny").join(arch))
    }
}

fn check_outputs(label: &str, model: &dyn DynAdaptedModel, ids: &Tensor, mask: &Tensor, expected: &std::collections::HashMap<String, Tensor>) -> f32 {
    let out = model.forward_with_head(ids, mask).unwrap();
    let head = out.head.as_ref().unwrap_or_else(|| panic!("{label}: no head output"));
    let mut worst = max_abs_diff(&out.last_hidden_state, &expected["last_hidden_state"]);
    for (name, tensor) in head.named() {
        let want = expected.get(name).unwrap_or_else(|| panic!("{label}: fixture has no `{name}`"));
        worst = worst.max(max_abs_diff(&tensor, want));
    }
    assert!(worst <= TOLERANCE, "{label}: max |diff| {worst}");
    worst
}

fn cases() -> Vec<(String, String, Value)> {
    let m = heads_manifest();
    let mut out = Vec::new();
    for (arch, cases) in m["archs"].as_object().unwrap() {
        for (case, info) in cases.as_object().unwrap() {
            out.push((arch.clone(), case.clone(), info.clone()));
        }
    }
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out
}

#[test]
fn python_heads_load_and_match() {
    let mut checked = 0;
    let mut worst = 0f32;
    for (arch, case, info) in cases() {
        if arch == "minilm" && !minilm_dir().is_dir() {
            panic!("MiniLM is missing: run scripts/fetch_minilm.sh");
        }
        let base = base_checkpoint(&arch);
        let (ids, mask) = case_inputs(&arch);
        let expected = read(&fixtures().join(info["files"]["output"].as_str().unwrap()));
        for folder in ["adapter", "adapter_bin"] {
            let dir = fixtures().join("heads").join(&arch).join(&case).join(folder);
            if !dir.is_dir() {
                continue;
            }
            let label = format!("{arch}/{case}/{folder}");
            let mut model = load_model(&base).unwrap();
            let name = model.load_adapter(&dir, None).unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(name, case);
            model.set_active_adapters(AdapterSetup::from(case.as_str())).unwrap();
            assert_eq!(model.active_head().as_deref(), Some(case.as_str()), "{label}: the head follows the adapter");
            assert_eq!(model.head(&case).unwrap().config().to_value(), info["head_config"], "{label}: head config kept key for key");
            worst = worst.max(check_outputs(&label, model.as_ref(), &ids, &mask, &expected));
            checked += 1;

            // Saved here, loaded into a fresh model under another name: same outputs, and the
            // head tensors carry Python's names.
            if folder == "adapter" {
                let out_dir = std::env::temp_dir().join(format!("adapters-heads-{}-{arch}-{case}", std::process::id()));
                let _ = std::fs::remove_dir_all(&out_dir);
                model.save_adapter(&out_dir, &case).unwrap();
                let ours: std::collections::BTreeSet<String> = read(&out_dir.join("model_head.safetensors")).into_keys().collect();
                let python: std::collections::BTreeSet<String> = info["head_weight_names"].as_object().unwrap().keys().cloned().collect();
                let tied: std::collections::BTreeSet<String> = info["tied_head_weights"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
                let python_untied: std::collections::BTreeSet<String> = python.difference(&tied).cloned().collect();
                assert_eq!(ours, python_untied, "{label}: head tensor names");
                let head_json: Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("head_config.json")).unwrap()).unwrap();
                assert_eq!(head_json["model_class"], info["model_class"], "{label}: model_class Python checks on load");
                let mut fresh = load_model(&base).unwrap();
                fresh.load_adapter(&out_dir, Some("again")).unwrap();
                fresh.set_active_adapters(AdapterSetup::from("again")).unwrap();
                check_outputs(&format!("{label} (saved here)"), fresh.as_ref(), &ids, &mask, &expected);
                let _ = std::fs::remove_dir_all(&out_dir);
            }
        }
    }
    eprintln!("heads: {checked} checks, worst max|diff| {worst:e}");
    assert!(checked >= 40, "expected every head case in both formats, ran {checked}");
}

#[test]
fn head_api_follows_python() {
    let base = base_checkpoint("bert");
    let (ids, mask) = case_inputs("bert");
    let mut model = load_model(&base).unwrap();
    model.add_adapter("a", adapters_runtime::AdapterConfig::parse("seq_bn").unwrap()).unwrap();
    model.add_adapter("b", adapters_runtime::AdapterConfig::parse("seq_bn").unwrap()).unwrap();
    model.add_head("a", HeadConfig::classification(3, 2, "tanh", None, false, false), false).unwrap();
    assert_eq!(model.active_head().as_deref(), Some("a"), "adding a head activates it");
    model.add_head("b", HeadConfig::token_level(adapters_runtime::HeadType::Tagging, 5, 1, "tanh", None), false).unwrap();
    model.set_active_adapters(AdapterSetup::parse("Stack[b, a]").unwrap()).unwrap();
    assert_eq!(model.active_head().as_deref(), Some("a"), "the head of the last adapter in a Stack");
    let out = model.forward_with_head(&ids, &mask).unwrap();
    assert_eq!(out.head.unwrap().logits().dims(), &[ids.dim(0).unwrap(), 3]);
    model.set_active_adapters(AdapterSetup::from("b")).unwrap();
    let out = model.forward_with_head(&ids, &mask).unwrap();
    assert_eq!(out.head.unwrap().logits().dims(), &[ids.dim(0).unwrap(), ids.dim(1).unwrap(), 5]);
    // Python freezes only the base model: train_adapter hands back the adapter and every head.
    let vars = model.train_adapter(AdapterSetup::from("a")).unwrap();
    let adapter: usize = model.named_params("a").unwrap().iter().map(|(_, v)| v.elem_count()).sum();
    let heads: usize = ["a", "b"].iter().flat_map(|h| model.head_params(h).unwrap()).map(|(_, v)| v.elem_count()).sum();
    assert_eq!(vars.iter().map(|v| v.elem_count()).sum::<usize>(), adapter + heads);
    assert!(model.add_head("a", HeadConfig::classification(2, 2, "tanh", None, false, false), false).is_err(), "no silent overwrite");
    model.delete_head("a").unwrap();
    assert_eq!(model.active_head(), None);
    assert!(model.delete_head("a").is_err());
}

#[test]
fn distilbert_rejects_pooler_heads() {
    // Python accepts the head and fails at forward (KeyError: 'pooled_output'); here it is an
    // error when the head is added.
    let mut model = load_model(&base_checkpoint("distilbert")).unwrap();
    let err = model.add_head("p", HeadConfig::classification(2, 2, "tanh", None, true, false), false).unwrap_err();
    assert!(err.to_string().contains("no pooler"), "{err}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn bad_head_files_are_typed_errors_and_load_nothing() {
    let base = base_checkpoint("bert");
    let src = fixtures().join("heads/bert/classification/adapter");
    let dir = std::env::temp_dir().join(format!("adapters-badhead-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    // A head tensor of the wrong shape: named, and the adapter is not left half-loaded.
    copy_dir(&src, &dir);
    let mut t = read(&dir.join("model_head.safetensors"));
    t.insert("heads.classification.4.weight".into(), Tensor::zeros((7, 32), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap());
    candle_core::safetensors::save(&t, dir.join("model_head.safetensors")).unwrap();
    let mut model = load_model(&base).unwrap();
    let err = model.load_adapter(&dir, None).unwrap_err();
    assert!(matches!(&err, AdapterError::ShapeMismatch { tensor, .. } if tensor == "heads.classification.4.weight"), "{err}");
    assert!(model.adapter_names().is_empty() && model.head_names().is_empty(), "nothing loaded");

    // A missing tensor.
    t.remove("heads.classification.4.weight");
    candle_core::safetensors::save(&t, dir.join("model_head.safetensors")).unwrap();
    let err = model.load_adapter(&dir, None).unwrap_err();
    assert!(matches!(&err, AdapterError::MissingTensor { tensor, .. } if tensor == "heads.classification.4.weight"), "{err}");

    // An unknown head type in head_config.json names the key.
    std::fs::remove_dir_all(&dir).unwrap();
    copy_dir(&src, &dir);
    let text = std::fs::read_to_string(dir.join("head_config.json")).unwrap().replace("\"classification\",\n", "\"regression\",\n");
    std::fs::write(dir.join("head_config.json"), text).unwrap();
    let err = model.load_adapter(&dir, None).unwrap_err().to_string();
    assert!(err.contains("head_config.json") && err.contains("unknown head type `regression`"), "{err}");
    assert!(model.adapter_names().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
