//! PEFT adapter folders, as HF PEFT 0.21 saves them (`tests/fixtures/generate_peft.py`), loaded
//! into the LoRA-family slots: LoRA (plain, rsLoRA, regex targets, `layers_to_transform`) and IA3
//! on the tiny Llama (a `LlamaForCausalLM` checkpoint: PEFT's `base_model.model.model.` names)
//! and the tiny BERT (a bare model), against PEFT's outputs; configs this library cannot express
//! yet are refused with the file and key named, and leave the model unchanged.

use adapters_models::load_model;
use adapters_runtime::AdapterSetup;
use adapters_tests::*;
use serde_json::Value;

fn peft_manifest() -> Value {
    read_json(&fixtures().join("peft_manifest.json"))
}

fn model_dir(info: &Value) -> std::path::PathBuf {
    fixtures().join(info["model_dir"].as_str().unwrap())
}

#[test]
fn peft_folders_match_peft() {
    let manifest = peft_manifest();
    let mut checked = 0;
    for (arch, info) in manifest["archs"].as_object().unwrap() {
        let dir = model_dir(info);
        let (ids, mask) = inputs(&dir);
        for (case, entry) in info["cases"].as_object().unwrap() {
            let label = format!("{arch}/{case}");
            let mut model = load_model(&dir.join("model")).unwrap();
            let name = model.load_adapter(fixtures().join(entry["adapter"].as_str().unwrap()), Some(case)).unwrap_or_else(|e| panic!("{label}: {e}"));
            model.set_active_adapters(AdapterSetup::from(name.as_str())).unwrap();
            let out = model.forward(&ids, &mask).unwrap();
            let reference = expected(&fixtures().join("peft").join(arch).join(case).join("output.safetensors"));
            let diff = max_abs_diff(&out, &reference);
            assert!(diff <= TOLERANCE, "{label}: max |diff| {diff:e}");
            assert!(entry["max_abs_diff_vs_base"].as_f64().unwrap() > 1e-2, "{label}: the adapter changes nothing");
            checked += 1;
        }
    }
    assert_eq!(checked, 5 + 2);
}

#[test]
fn unsupported_peft_configs_are_refused_by_key() {
    let manifest = peft_manifest();
    let cases =
        [("llama", "lora_o_proj", "o_proj"), ("llama", "lora_rank_pattern", "rank_pattern"), ("bert", "lora_attention_output", "attention.output.dense")];
    for (arch, case, expect) in cases {
        let info = &manifest["archs"][arch];
        let dir = model_dir(info);
        let folder = format!("{arch}/refused/{case}");
        let mut model = load_model(&dir.join("model")).unwrap();
        let path = fixtures().join(info["refused"][case].as_str().unwrap_or_else(|| panic!("manifest: {folder}")));
        let err = model.load_adapter(&path, None).unwrap_err().to_string();
        assert!(err.contains(expect) && err.contains("adapter_"), "{case}: {err}");
        assert!(model.adapter_summary().0.is_empty(), "{case}: nothing may be left loaded");
    }
    // An unknown PEFT method names itself and the supported ones.
    let tmp = std::env::temp_dir().join(format!("adapters-peft-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("adapter_config.json"), r#"{"peft_type": "PREFIX_TUNING"}"#).unwrap();
    let mut model = load_model(&model_dir(&manifest["archs"]["llama"]).join("model")).unwrap();
    let err = model.load_adapter(&tmp, None).unwrap_err().to_string();
    assert!(err.contains("PREFIX_TUNING") && err.contains("LORA, IA3"), "{err}");
}

/// PEFT loads what this library writes: `tests/fixtures/check_peft_rust.py` converted the tiny
/// Llama's LoRA and IA3 adapters to PEFT folders, loaded them with PEFT 0.21 and recorded the
/// difference from Python `adapters`' outputs; the folders written today are byte for byte the
/// ones it checked.
#[test]
fn peft_files_written_here_are_the_ones_python_checked() {
    let record = read_json(&fixtures().join("peft_written_manifest.json"));
    let cases = record["cases"].as_object().unwrap();
    for (case, entry) in cases {
        let diff = entry["max_abs_diff_peft_vs_adapters"].as_f64().unwrap();
        assert!(diff <= f64::from(TOLERANCE), "{case}: PEFT on the written folder differed by {diff:e}");
        let mut model = load_model(&fixtures().join("decoders").join("llama").join("model")).unwrap();
        let name = model.load_adapter(fixtures().join(entry["source"].as_str().unwrap()), None).unwrap();
        let out = std::env::temp_dir().join(format!("adapters-peft-written-{}-{case}", std::process::id()));
        model.save_adapter_peft(&out, &name).unwrap();
        let checked = fixtures().join(entry["written"].as_str().unwrap());
        for file in ["adapter_model.safetensors", "adapter_config.json"] {
            let (now, then) = (std::fs::read(out.join(file)).unwrap(), std::fs::read(checked.join(file)).unwrap());
            assert!(now == then, "{case}/{file}: differs from the folder Python checked (rerun check_peft_rust.py)");
        }
    }
    assert_eq!(cases.len(), 2);
}
