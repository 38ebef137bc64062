//! Files saved here, as Python reads them. Adapters loaded from Python's fixtures are saved
//! here; their tensor names and `adapter_config.json` must equal what Python loaded without a
//! missing or unexpected key and ran to the fixture's output in the committed record
//! (`tests/fixtures/rust_check.json`, written by `tests/fixtures/check_rust.py --record` from
//! this test's folder). A renamed tensor or a changed config key fails here, without Python.
//! Also: a save that fails half-way leaves the previous files intact.
//!
//! To refresh the record (only when the saved files change on purpose):
//! `ADAPTERS_SAVE_DIR=/tmp/rust-saved cargo test --release -p adapters-tests --test saved_files`,
//! then `check_rust.py /tmp/rust-saved --record` (see tests/fixtures/README.md).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use adapters_models::load_model;
use adapters_runtime::{AdapterConfig, AdapterSetup, HeadConfig};
use adapters_tests::*;
use serde_json::{json, Value};

/// One case of the record: adapters from Python's fixture folders, the setup, the output.
struct Entry {
    id: String,
    arch: String,
    adapters: Vec<(String, PathBuf)>,
    setup: String,
    expected: String,
}

fn model_ref(arch: &str) -> String {
    if arch == "minilm" {
        "minilm".into()
    } else {
        format!("tiny/{arch}/model")
    }
}

fn inputs_ref(arch: &str) -> String {
    if arch == "minilm" {
        "minilm/inputs.safetensors".into()
    } else {
        format!("tiny/{arch}/inputs.safetensors")
    }
}

fn model_path(arch: &str) -> PathBuf {
    if arch == "minilm" {
        minilm_dir()
    } else {
        fixtures().join(model_ref(arch))
    }
}

/// Every case whose adapters Python can load from a bare model: the bottleneck and LoRA family
/// of every arch, their stacks, prefix and prompt tuning, unions, ReFT, invertible adapters,
/// AdapterPlus and VeRA saved with its shared pair.
fn entries() -> Vec<Entry> {
    let mut out = Vec::new();
    let m = manifest();
    for (arch, a) in m["archs"].as_object().unwrap() {
        let root = if arch == "minilm" { "minilm".to_string() } else { format!("tiny/{arch}") };
        for case in a["cases"].as_object().unwrap().keys() {
            out.push(Entry {
                id: format!("{root}/{case}"),
                arch: arch.clone(),
                adapters: vec![(case.clone(), fixtures().join(format!("{root}/{case}/adapter")))],
                setup: case.clone(),
                expected: format!("{root}/{case}/output.safetensors"),
            });
        }
        for (case, info) in m["stack"][arch]["cases"].as_object().into_iter().flatten() {
            out.push(Entry {
                id: format!("{root}/{case}"),
                arch: arch.clone(),
                adapters: ["a", "b"].iter().map(|n| (n.to_string(), fixtures().join(format!("{root}/{case}/{n}")))).collect(),
                setup: info["setup"].as_str().unwrap().into(),
                expected: format!("{root}/{case}/output.safetensors"),
            });
        }
    }
    let prefix = read_json(&fixtures().join("prefix_manifest.json"));
    for (arch, cases) in prefix["archs"].as_object().unwrap() {
        for (case, info) in cases.as_object().unwrap() {
            let setup = info["setup"].as_str().unwrap_or_default();
            // `prompt_tuning_text` is left out: Python's load_adapter tokenizes prompt_init_text
            // again and needs the config's tokenizer_name_or_path, which a bare model lacks.
            if !info["python_error"].is_null() || case.ends_with("too_long") || case == "prompt_tuning_text" || !setup.starts_with("Stack[") {
                continue;
            }
            let adapters: Vec<(String, PathBuf)> =
                info["adapters"].as_object().unwrap().iter().map(|(n, a)| (n.clone(), fixtures().join(a["dir"].as_str().unwrap()))).collect();
            let setup = if adapters.len() == 1 { adapters[0].0.clone() } else { setup.to_string() };
            out.push(Entry { id: format!("prefix/{arch}/{case}"), arch: arch.clone(), adapters, setup, expected: info["output"].as_str().unwrap().into() });
        }
    }
    for (file, root) in [("reft_compacter_manifest.json", "reft_compacter"), ("inv_vera_manifest.json", "inv_vera")] {
        let manifest = read_json(&fixtures().join(file));
        for (arch, cases) in manifest["archs"].as_object().unwrap() {
            for (case, info) in cases.as_object().unwrap() {
                // Left out: Python errors, DiReft (its kind is not in Python's file), shared
                // parameters Python does not save from a bare model, and heads (heads have
                // their own name checks in heads.rs).
                let shared_missing = info["shared"].is_string() && info["shared_saved_in_adapter_file"] != Value::Bool(true);
                if !info["python_error"].is_null() || case == "direft" || shared_missing || case == "inv_mlm" || info["output"].is_null() {
                    continue;
                }
                out.push(Entry {
                    id: format!("{root}/{arch}/{case}"),
                    arch: arch.clone(),
                    adapters: vec![(case.clone(), fixtures().join(info["dir"].as_str().unwrap()))],
                    setup: case.clone(),
                    expected: info["output"].as_str().unwrap().into(),
                });
            }
        }
    }
    out
}

fn save_root() -> PathBuf {
    match std::env::var("ADAPTERS_SAVE_DIR") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => std::env::temp_dir().join(format!("adapters-saved-{}", std::process::id())),
    }
}

fn sorted_names(path: &Path) -> Vec<String> {
    let names: BTreeSet<String> = read(path).into_keys().collect();
    names.into_iter().collect()
}

#[test]
fn python_loads_what_we_save() {
    let root = save_root();
    let _ = std::fs::remove_dir_all(&root);
    let entries = entries();
    // Python's folders in, ours out; the index is what check_rust.py reads.
    let mut index = Vec::new();
    for e in &entries {
        let mut model = load_model(&model_path(&e.arch)).unwrap();
        let mut saved = Vec::new();
        for (name, dir) in &e.adapters {
            model.load_adapter(fixture_path(dir), Some(name)).unwrap_or_else(|err| panic!("{}: {err}", e.id));
            model.save_adapter(root.join(&e.id).join(name), name).unwrap();
            saved.push(json!([name, format!("{}/{name}", e.id)]));
        }
        index.push(json!({
            "id": e.id, "arch": e.arch, "model": model_ref(&e.arch), "inputs": inputs_ref(&e.arch),
            "adapters": saved, "setup": e.setup, "expected": e.expected,
        }));
    }
    std::fs::write(root.join("index.json"), serde_json::to_string_pretty(&json!({ "entries": index })).unwrap()).unwrap();

    let record = read_json(&fixtures().join("rust_check.json"));
    let python_outputs = read(&fixtures().join("rust_check_outputs.safetensors"));
    let tolerance = record["tolerance"].as_f64().unwrap() as f32;
    let mut checks = 0;
    for e in &entries {
        let Some(recorded) = record["entries"].get(&e.id) else {
            panic!("{}: not in tests/fixtures/rust_check.json; rerun check_rust.py --record", e.id);
        };
        // What Python loaded and ran: no error, no missing or unexpected key, its output.
        assert!(recorded["python_error"].is_null(), "{}: Python failed on our files: {}", e.id, recorded["python_error"]);
        let diff = recorded["max_abs_diff"].as_f64().unwrap() as f32;
        assert!(diff <= tolerance, "{}: Python's output from our files differs from the fixture by {diff}", e.id);
        for (name, _) in &e.adapters {
            let want = &recorded["adapters"][name];
            let dir = root.join(&e.id).join(name);
            let names = sorted_names(&dir.join("adapter.safetensors"));
            let recorded_names: Vec<String> = serde_json::from_value(want["tensor_names"].clone()).unwrap();
            assert_eq!(names, recorded_names, "{}/{name}: the tensor names we save changed since Python loaded them", e.id);
            let config = read_json(&dir.join("adapter_config.json"));
            assert_eq!(config, want["config"], "{}/{name}: adapter_config.json changed since Python loaded it", e.id);
            for key in ["python_missing", "python_unexpected"] {
                assert_eq!(want[key], json!([]), "{}/{name}: Python reported {key}", e.id);
            }
            checks += 3;
        }
        // Our files reloaded here give the output Python computed from them.
        let mut fresh = load_model(&model_path(&e.arch)).unwrap();
        for (name, _) in &e.adapters {
            fresh.load_adapter(root.join(&e.id).join(name), None).unwrap();
        }
        fresh.set_active_adapters(AdapterSetup::parse(&e.setup).unwrap()).unwrap();
        let (ids, mask) = inputs(fixtures().join(inputs_ref(&e.arch)).parent().unwrap());
        let out = fresh.forward(&ids, &mask).unwrap();
        let python = python_outputs.get(&e.id).unwrap_or_else(|| panic!("{}: no Python output recorded", e.id));
        let d = max_abs_diff(&out, python);
        assert!(d <= tolerance, "{}: our output vs Python's from our files: {d}", e.id);
        checks += 2;
    }
    let recorded: BTreeSet<&String> = record["entries"].as_object().unwrap().keys().collect();
    let ours: BTreeSet<&String> = entries.iter().map(|e| &e.id).collect();
    assert_eq!(ours, recorded, "the record covers exactly these cases");
    println!("saved files: {} cases, {checks} checks against Python's record", entries.len());
    if std::env::var_os("ADAPTERS_SAVE_DIR").is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
}

/// A save that fails half-way (here: the head's file cannot be written) leaves every file of
/// the previous save as it was, and no temporary file behind.
#[test]
fn a_failed_save_leaves_the_previous_files() {
    let data = fixtures().join("tiny/bert");
    let mut model = load_model(&data.join("model")).unwrap();
    model.add_adapter("x", AdapterConfig::parse("seq_bn").unwrap()).unwrap();
    model.add_head("x", HeadConfig::classification(2, 2, "tanh", None, false, false), false).unwrap();
    let dir = std::env::temp_dir().join(format!("adapters-atomic-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    model.save_adapter(&dir, "x").unwrap();
    let before: BTreeMap<String, Vec<u8>> = files(&dir);
    assert_eq!(before.len(), 4, "adapter and head, config and weights: {:?}", before.keys());

    // New weights, then a save whose third file cannot be written.
    let vars = model.train_adapter(AdapterSetup::from("x")).unwrap();
    for v in &vars {
        v.set(&(v.as_tensor() + 1.0).unwrap()).unwrap();
    }
    let blocked = adapters_runtime::io::temp_path(&dir.join("model_head.safetensors"));
    std::fs::create_dir_all(&blocked).unwrap();
    let err = model.save_adapter(&dir, "x").expect_err("the head file cannot be written");
    assert!(err.to_string().contains("model_head.safetensors"), "{err}");
    std::fs::remove_dir_all(&blocked).unwrap();
    assert_eq!(files(&dir), before, "every previous file is intact and no temporary file is left");

    // Unblocked, the same save goes through and changes the files.
    model.save_adapter(&dir, "x").unwrap();
    let after = files(&dir);
    assert_eq!(after.keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>());
    assert_ne!(after["adapter.safetensors"], before["adapter.safetensors"]);
    let _ = std::fs::remove_dir_all(&dir);
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap()).map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap())).collect()
}
