//! Parity with the Python `adapters` library (1.3.0): every fixture case on the tiny BERT,
//! RoBERTa and DistilBERT models and on MiniLM, in both file formats, unmerged and merged, and
//! adapters saved here reloaded here (that Python loads them is saved_files.rs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use adapters_models::load_model;
use adapters_runtime::{AdapterSetup, DynAdaptedModel};
use adapters_tests::*;
use candle_core::Tensor;
use serde_json::Value;

struct Row {
    arch: String,
    case: String,
    what: &'static str,
    diff: f32,
}

fn check(rows: &mut Vec<Row>, arch: &str, case: &str, what: &'static str, model: &DynAdaptedModel, (ids, mask): &(Tensor, Tensor), expected: &Path) {
    let out = model.forward(ids, mask).unwrap_or_else(|e| panic!("{arch}/{case} {what}: {e}"));
    let diff = max_abs_diff(&out, &adapters_tests::expected(expected));
    rows.push(Row { arch: arch.into(), case: case.into(), what, diff });
}

fn save_dir(arch: &str, case: &str) -> PathBuf {
    std::env::temp_dir().join(format!("adapters-parity-{}", std::process::id())).join(arch).join(case)
}

fn run_arch(arch: &str, data: &Path, model_dir: &Path, rows: &mut Vec<Row>) {
    let input = inputs(data);
    let mut model = load_model(model_dir).unwrap();
    check(rows, arch, "base", "no adapter", model.as_ref(), &input, &data.join("base.safetensors"));
    // Every case has its safetensors folder; the manifest says whether the arch has .bin files.
    let has_bin = manifest()["archs"][arch]["has_adapter_bin"].as_bool().unwrap_or_else(|| panic!("manifest: {arch} has no has_adapter_bin"));
    for (case, info) in cases(arch) {
        let case_dir = data.join(&case);
        let mut formats = vec![("safetensors", fixture_path(&case_dir.join("adapter")))];
        if has_bin {
            formats.push((".bin", fixture_path(&case_dir.join("adapter_bin"))));
        }
        for (format, dir) in formats {
            let name = model.load_adapter(&dir, None).unwrap_or_else(|e| panic!("{arch}/{case} ({format}): {e}"));
            assert_eq!(name, case);
            model.set_active_adapters(AdapterSetup::from(case.as_str())).unwrap();
            let what = if format == ".bin" { "loaded .bin" } else { "loaded safetensors" };
            check(rows, arch, &case, what, model.as_ref(), &input, &case_dir.join("output.safetensors"));
            if format == "safetensors" {
                // Saved here, reloaded under another name: same output.
                let out_dir = save_dir(arch, &case);
                model.save_adapter(&out_dir, &case).unwrap();
                let again = model.load_adapter(&out_dir, Some("reloaded")).unwrap();
                model.set_active_adapters(AdapterSetup::from(again.as_str())).unwrap();
                check(rows, arch, &case, "saved+reloaded", model.as_ref(), &input, &case_dir.join("output.safetensors"));
                model.delete_adapter("reloaded").unwrap();
                model.set_active_adapters(AdapterSetup::from(case.as_str())).unwrap();
                if info["merged"].as_bool() == Some(true) {
                    check_merge(rows, arch, &case, &info, model.as_mut(), &input, &case_dir);
                }
            }
            model.delete_adapter(&case).unwrap();
        }
        check(rows, arch, &case, "deleted", model.as_ref(), &input, &data.join("base.safetensors"));
    }
}

/// Merging: the weights equal Python's merged weights, the output equals Python's merged output,
/// deactivating keeps the merged output (the update is in the weights, as in Python), and
/// `reset_adapter` restores the original weights exactly.
fn check_merge(rows: &mut Vec<Row>, arch: &str, case: &str, info: &Value, model: &mut DynAdaptedModel, input: &(Tensor, Tensor), case_dir: &Path) {
    let original: HashMap<String, Tensor> = model.lora_linear_weights().unwrap().into_iter().collect();
    model.merge_adapter(case).unwrap();
    let merged_output = case_dir.join("output_merged.safetensors");
    check(rows, arch, case, "merged", &*model, input, &merged_output);
    // MiniLM's merged weights are not stored (35 MB); its merged outputs are checked above.
    if arch == "minilm" {
        assert!(info["merged_weights"].is_null(), "{arch}/{case}: merged weights are stored now; check them");
    } else {
        check_merged_weights(rows, arch, case, info, model, &original);
    }
    model.deactivate_adapters();
    check(rows, arch, case, "merged, deactivated", &*model, input, &merged_output);
    model.reset_adapter();
    for (key, w) in model.lora_linear_weights().unwrap() {
        assert_eq!(max_abs_diff(&w, &original[&key]), 0.0, "{arch}/{case}: reset restores `{key}` exactly");
    }
    model.set_active_adapters(AdapterSetup::from(case)).unwrap();
    check(rows, arch, case, "reset", &*model, input, &case_dir.join("output.safetensors"));
}

/// The merged weights equal Python's; modules without the adapter keep theirs.
fn check_merged_weights(rows: &mut Vec<Row>, arch: &str, case: &str, info: &Value, model: &DynAdaptedModel, original: &HashMap<String, Tensor>) {
    let python = read(&fixtures().join(info["merged_weights"].as_str().unwrap_or_else(|| panic!("manifest: {arch}/{case} has no merged_weights"))));
    assert_eq!(python.len() as u64, info["n_merged_weights"].as_u64().unwrap(), "{arch}/{case}: merged weight count");
    let ours: HashMap<String, Tensor> = model.lora_linear_weights().unwrap().into_iter().collect();
    let mut worst = 0f32;
    for (key, want) in &python {
        let got = ours.get(key).unwrap_or_else(|| panic!("{arch}/{case}: Python merged `{key}`, which this model does not hold"));
        worst = worst.max(max_abs_diff(got, want));
    }
    // Modules that carry none of the adapter keep their weights.
    for (key, w) in &ours {
        if !python.contains_key(key) {
            assert_eq!(max_abs_diff(w, &original[key]), 0.0, "{arch}/{case}: `{key}` changed although the adapter is not on it");
        }
    }
    rows.push(Row { arch: arch.into(), case: case.into(), what: "merged weights", diff: worst });
}

fn run_stacks(arch: &str, data: &Path, model_dir: &Path, rows: &mut Vec<Row>) {
    let m = manifest();
    let stacks = m["stack"][arch]["cases"].as_object().unwrap_or_else(|| panic!("manifest.json: no stack cases for {arch}"));
    let input = inputs(data);
    for (case, info) in stacks {
        let mut model = load_model(model_dir).unwrap();
        for child in ["a", "b"] {
            model.load_adapter(fixture_path(&data.join(case).join(child)), None).unwrap();
        }
        let setup = AdapterSetup::from_json(&info["setup_json"]).unwrap();
        assert_eq!(setup.to_string(), info["setup"].as_str().unwrap());
        model.set_active_adapters(setup).unwrap();
        check(rows, arch, case, "Stack[a, b]", model.as_ref(), &input, &data.join(case).join("output.safetensors"));
    }
}

/// The checks `run_arch` and `run_stacks` make for `arch`, from the manifest alone.
fn expected_checks(arch: &str) -> usize {
    let m = manifest();
    let has_bin = m["archs"][arch]["has_adapter_bin"].as_bool().unwrap();
    let per_case: usize = cases(arch)
        .iter()
        .map(|(_, info)| {
            // loaded + saved+reloaded + deleted, the .bin load, and the merge checks (merged
            // output, merged weights where stored, deactivated, reset)
            let merge = if info["merged"].as_bool() == Some(true) { 3 + usize::from(info["merged_weights"].is_string()) } else { 0 };
            3 + usize::from(has_bin) + merge
        })
        .sum();
    let stacks = m["stack"][arch]["cases"].as_object().map_or(0, |s| s.len());
    1 + per_case + stacks
}

fn report(rows: &[Row]) {
    let worst = rows.iter().map(|r| r.diff).fold(0.0f32, f32::max);
    println!("{:<12}{:<16}{:<22}{:>12}", "arch", "case", "check", "max |diff|");
    for r in rows {
        println!("{:<12}{:<16}{:<22}{:>12.3e}", r.arch, r.case, r.what, r.diff);
    }
    println!("{} checks, worst {worst:.3e}", rows.len());
    let bad: Vec<String> = rows.iter().filter(|r| r.diff > TOLERANCE).map(|r| format!("{}/{} {}: {:.3e}", r.arch, r.case, r.what, r.diff)).collect();
    assert!(bad.is_empty(), "over tolerance {TOLERANCE}: {bad:#?}");
}

#[test]
fn tiny_models_match_python() {
    let mut rows = Vec::new();
    for arch in ["bert", "roberta", "distilbert"] {
        let data = fixtures().join("tiny").join(arch);
        run_arch(arch, &data, &data.join("model"), &mut rows);
        run_stacks(arch, &data, &data.join("model"), &mut rows);
    }
    let expected: usize = ["bert", "roberta", "distilbert"].iter().map(|a| expected_checks(a)).sum();
    report(&rows);
    assert_eq!(rows.len(), expected, "checks the manifest implies");
}

#[test]
fn minilm_matches_python() {
    let dir = minilm_dir();
    assert!(dir.join("model.safetensors").is_file(), "MiniLM not found at {}: run scripts/fetch_minilm.sh (or set ADAPTERS_MINILM_DIR)", dir.display());
    let mut rows = Vec::new();
    run_arch("minilm", &fixtures().join("minilm"), &dir, &mut rows);
    report(&rows);
    assert_eq!(rows.len(), expected_checks("minilm"), "checks the manifest implies");
}
