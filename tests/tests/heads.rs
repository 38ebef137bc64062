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

fn check_outputs(label: &str, model: &DynAdaptedModel, ids: &Tensor, mask: &Tensor, expected: &std::collections::HashMap<String, Tensor>) -> f32 {
    let out = model.forward_with_head(ids, mask).unwrap();
    let head = out.head.as_ref().unwrap_or_else(|| panic!("{label}: no head output"));
    let mut worst = max_abs_diff(&out.last_hidden_state, &expected["last_hidden_state"]);
    let mut compared = std::collections::BTreeSet::from(["last_hidden_state".to_string()]);
    for (name, tensor) in head.named() {
        let want = expected.get(name).unwrap_or_else(|| panic!("{label}: fixture has no `{name}`"));
        worst = worst.max(max_abs_diff(&tensor, want));
        compared.insert(name.to_string());
    }
    if let (adapters_runtime::heads::HeadOutput::Span { start, end }, Some(want)) = (head, expected.get("logits")) {
        // The generator also records the QA head's raw output, stack([start, end], -1).
        worst = worst.max(max_abs_diff(&Tensor::stack(&[start, end], 2).unwrap(), want));
        compared.insert("logits".to_string());
    }
    // Every output Python recorded is compared.
    assert_eq!(compared, expected.keys().cloned().collect(), "{label}: outputs compared");
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

/// The adapter folders a heads-manifest case records (`files.adapter`, and `files.adapter_bin`
/// where the generator wrote `.bin` files: the tiny models, not MiniLM), as
/// `(folder name, path)`: the folder that holds the recorded `adapter_config.json`.
fn recorded_folders(label: &str, info: &Value) -> Vec<(String, PathBuf)> {
    let files = info["files"].as_object().unwrap_or_else(|| panic!("{label}: manifest has no `files`"));
    let mut out = Vec::new();
    for (folder, listing) in files {
        if folder == "output" {
            continue;
        }
        let config = listing["adapter_config.json"].as_str().unwrap_or_else(|| panic!("{label}: `files.{folder}` lists no adapter_config.json"));
        let dir = fixtures().join(config).parent().unwrap().to_path_buf();
        assert_eq!(dir.file_name().unwrap().to_str(), Some(folder.as_str()), "{label}: `files.{folder}` is the folder {}", dir.display());
        // Every file the manifest lists is there.
        for (file, path) in listing.as_object().unwrap() {
            let path = fixtures().join(path.as_str().unwrap());
            assert!(path.is_file(), "{label}: `files.{folder}.{file}` is missing: {}", path.display());
        }
        out.push((folder.clone(), dir));
    }
    out
}

#[test]
fn python_heads_load_and_match() {
    if !minilm_dir().is_dir() {
        panic!("MiniLM is missing at {}: run scripts/fetch_minilm.sh", minilm_dir().display());
    }
    // What the manifest implies: one load per recorded folder, one save-and-reload per case.
    let mut expected_loads = 0;
    for (arch, case, info) in cases() {
        let label = format!("{arch}/{case}");
        let folders: Vec<String> = recorded_folders(&label, &info).into_iter().map(|(f, _)| f).collect();
        // generate_heads.py writes `.bin` files for the tiny models only, and records a bin reload
        // exactly where it wrote them.
        let bin = arch != "minilm";
        assert_eq!(folders, if bin { vec!["adapter", "adapter_bin"] } else { vec!["adapter"] }, "{label}: recorded folders");
        assert_eq!(info["reload_bin_max_abs_diff"].is_number(), bin, "{label}: reload_bin_max_abs_diff");
        expected_loads += folders.len();
    }
    let expected_cases = cases().len();
    let mut loads = 0;
    let mut saved_here = 0;
    let mut worst = 0f32;
    for (arch, case, info) in cases() {
        let base = base_checkpoint(&arch);
        let (ids, mask) = case_inputs(&arch);
        let expected = read(&fixtures().join(info["files"]["output"].as_str().unwrap()));
        for (folder, dir) in recorded_folders(&format!("{arch}/{case}"), &info) {
            let label = format!("{arch}/{case}/{folder}");
            assert!(dir.is_dir(), "{label}: the manifest records {}, which is missing", dir.display());
            let mut model = load_model(&base).unwrap();
            let name = model.load_adapter(&dir, None).unwrap_or_else(|e| panic!("{label}: {e}"));
            assert_eq!(name, case);
            model.set_active_adapters(AdapterSetup::from(case.as_str())).unwrap();
            assert_eq!(model.active_head(), Some(case.as_str()), "{label}: the head follows the adapter");
            assert_eq!(model.head(&case).unwrap().config().to_value(), info["head_config"], "{label}: head config kept key for key");
            worst = worst.max(check_outputs(&label, model.as_ref(), &ids, &mask, &expected));
            loads += 1;

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
                saved_here += 1;
                let _ = std::fs::remove_dir_all(&out_dir);
            }
        }
    }
    println!("heads: {} checks ({loads} Python folders, {saved_here} saved here), worst max|diff| {worst:e}", loads + saved_here);
    assert_eq!(loads, expected_loads, "Python folders loaded");
    assert_eq!(saved_here, expected_cases, "cases saved here and reloaded");
    // 24 cases (bert, roberta: 8; distilbert: 7 without the pooler head; MiniLM: 1), 23 with .bin.
    assert_eq!((expected_cases, expected_loads), (24, 47), "heads_manifest.json cases and folders");
}

/// `x W^T + b` for `x` `[n, in]`.
fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    x.matmul(&w.t().unwrap()).unwrap().broadcast_add(b).unwrap()
}

/// A head's parameters by name, after checking the names are exactly `want`.
fn head_tensors(model: &DynAdaptedModel, head: &str, want: &[&str]) -> std::collections::HashMap<String, Tensor> {
    let params = model.head_params(head).unwrap();
    let mut names: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
    names.sort();
    let mut want_sorted = want.to_vec();
    want_sorted.sort();
    assert_eq!(names, want_sorted, "head `{head}`: parameter names");
    params.into_iter().map(|(n, v)| (n, v.as_tensor().clone())).collect()
}

#[test]
fn head_api_follows_python() {
    let base = base_checkpoint("bert");
    let (ids, mask) = case_inputs("bert");
    let (batch, seq) = (ids.dim(0).unwrap(), ids.dim(1).unwrap());
    let mut model = load_model(&base).unwrap();
    model.add_adapter("a", adapters_runtime::AdapterConfig::parse("seq_bn").unwrap()).unwrap();
    model.add_adapter("b", adapters_runtime::AdapterConfig::parse("seq_bn").unwrap()).unwrap();
    model.add_head("a", HeadConfig::classification(3, 2, "tanh", None, false, false), false).unwrap();
    assert_eq!(model.active_head(), Some("a"), "adding a head activates it");
    model.add_head("b", HeadConfig::token_level(adapters_runtime::HeadType::Tagging, 5, 1, "tanh", None), false).unwrap();
    // Fresh heads have zero biases and small weights; seeded noise makes every term count.
    for head in ["a", "b"] {
        let vars: Vec<candle_core::Var> = model.head_params(head).unwrap().into_iter().map(|(_, v)| v).collect();
        perturb_seeded(&vars, &format!("head_api/{head}"), 0.5);
    }
    assert!(!model.is_training(), "evaluation mode: head dropout inactive");
    model.set_active_adapters(AdapterSetup::parse("Stack[b, a]").unwrap()).unwrap();
    assert_eq!(model.active_head(), Some("a"), "the head of the last adapter in a Stack");
    let out = model.forward_with_head(&ids, &mask).unwrap();
    let logits = out.head.as_ref().unwrap().logits().clone();
    assert_eq!(logits.dims(), &[batch, 3]);
    // Classification, 2 layers: Dropout, Linear(H, H), tanh, Dropout, Linear(H, 3) on the first token.
    let p = head_tensors(model.as_ref(), "a", &["heads.a.1.weight", "heads.a.1.bias", "heads.a.4.weight", "heads.a.4.bias"]);
    let h0 = out.last_hidden_state.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
    let hidden = linear(&h0, &p["heads.a.1.weight"], &p["heads.a.1.bias"]).tanh().unwrap();
    let want = linear(&hidden, &p["heads.a.4.weight"], &p["heads.a.4.bias"]);
    let d = max_abs_diff(&logits, &want);
    assert!(d <= TOLERANCE, "classification head: logits vs W4 tanh(W1 h0 + b1) + b4: max |diff| {d}");
    let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(scale > 1e-2, "the classification oracle is not trivially small ({scale})");

    model.set_active_adapters(AdapterSetup::from("b")).unwrap();
    let out = model.forward_with_head(&ids, &mask).unwrap();
    let logits = out.head.as_ref().unwrap().logits().clone();
    assert_eq!(logits.dims(), &[batch, seq, 5]);
    // Tagging, 1 layer: Dropout, Linear(H, 5) on every token.
    let p = head_tensors(model.as_ref(), "b", &["heads.b.1.weight", "heads.b.1.bias"]);
    let hidden = out.last_hidden_state.dim(2).unwrap();
    let flat = out.last_hidden_state.reshape((batch * seq, hidden)).unwrap();
    let want = linear(&flat, &p["heads.b.1.weight"], &p["heads.b.1.bias"]).reshape((batch, seq, 5)).unwrap();
    let d = max_abs_diff(&logits, &want);
    assert!(d <= TOLERANCE, "tagging head: logits vs W1 h + b1 on every token: max |diff| {d}");
    let scale = want.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(scale > 1e-2, "the tagging oracle is not trivially small ({scale})");
    println!("head_api: 2 checks (classification and tagging logits against their formulas)");

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
    assert!(model.adapter_names().next().is_none() && model.head_names().next().is_none(), "nothing loaded");

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
    assert!(model.adapter_names().next().is_none());
    let _ = std::fs::remove_dir_all(&dir);
}
