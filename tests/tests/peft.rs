//! PEFT adapter folders, as HF PEFT 0.21 saves them (`tests/fixtures/generate_peft.py`), loaded
//! into the LoRA-family slots of every model here: LoRA (plain, rsLoRA, regex and per-layer
//! targets, `layers_to_transform`, rank and alpha patterns, all linears incl. `o_proj`,
//! `gate_proj`, BERT's attention output and GPT-2's Conv1D), PEFT's DoRA and IA3 (feed-forward
//! inputs too), on `*ForCausalLM` and bare checkpoints, against PEFT's outputs, unmerged and
//! merged; what cannot load is refused with the file and key named and leaves the model unchanged.

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

/// Every case: PEFT's output with the adapter active, the same after `merge_adapter` (PEFT's
/// `merge_and_unload`: DoRA's norm, IA3's scaled columns and biases), and again after a round
/// trip through `save_adapter_peft`; an adapter whose layout AdapterHub's config cannot express
/// is refused by `save_adapter`, the others round-trip through it too.
#[test]
fn peft_folders_match_peft() {
    let manifest = peft_manifest();
    let mut checked = 0;
    let mut not_adapterhub = 0;
    for (arch, info) in manifest["archs"].as_object().unwrap() {
        let dir = model_dir(info);
        let (ids, mask) = inputs(&dir);
        for (case, entry) in info["cases"].as_object().unwrap() {
            let label = format!("{arch}/{case}");
            let reference = expected(&fixtures().join("peft").join(arch).join(case).join("output.safetensors"));
            let close = |model: &adapters_runtime::DynAdaptedModel, what: &str| {
                let diff = max_abs_diff(&model.forward(&ids, &mask).unwrap(), &reference);
                assert!(diff <= TOLERANCE, "{label} ({what}): max |diff| {diff:e}");
            };
            let mut model = load_model(&dir.join("model")).unwrap();
            let name = model.load_adapter(fixtures().join(entry["adapter"].as_str().unwrap()), Some(case)).unwrap_or_else(|e| panic!("{label}: {e}"));
            model.set_active_adapters(AdapterSetup::from(name.as_str())).unwrap();
            close(&model, "loaded");
            if let Some(sub) = entry["adapter_subfolder"].as_str() {
                // A named adapter in its subfolder: found from the parent, named after the subfolder.
                let mut named = load_model(&dir.join("model")).unwrap();
                let name = named.load_adapter(fixtures().join(entry["adapter"].as_str().unwrap()), None).unwrap();
                assert_eq!(Some(name.as_str()), sub.rsplit('/').next(), "{label}");
            }
            assert!(entry["max_abs_diff_vs_base"].as_f64().unwrap() > 2e-2, "{label}: the adapter changes nothing");
            model.merge_adapter(&name).unwrap_or_else(|e| panic!("{label}: merge: {e}"));
            close(&model, "merged");
            model.reset_adapter();

            let written = std::env::temp_dir().join(format!("adapters-peft-{}-{arch}-{case}", std::process::id()));
            model.save_adapter_peft(&written, &name).unwrap_or_else(|e| panic!("{label}: save as PEFT: {e}"));
            let mut again = load_model(&dir.join("model")).unwrap();
            let name_again = again.load_adapter(&written, Some(case)).unwrap_or_else(|e| panic!("{label}: reload: {e}"));
            again.set_active_adapters(AdapterSetup::from(name_again.as_str())).unwrap();
            close(&again, "written as PEFT and reloaded");

            let hub = std::env::temp_dir().join(format!("adapters-peft-hub-{}-{arch}-{case}", std::process::id()));
            match model.save_adapter(&hub, &name) {
                Ok(()) => {
                    let mut again = load_model(&dir.join("model")).unwrap();
                    let name_again = again.load_adapter(&hub, Some(case)).unwrap_or_else(|e| panic!("{label}: reload AdapterHub: {e}"));
                    again.set_active_adapters(AdapterSetup::from(name_again.as_str())).unwrap();
                    close(&again, "written as AdapterHub and reloaded");
                }
                Err(e) => {
                    assert!(e.to_string().contains("save it as PEFT") && !hub.join("adapter_config.json").exists(), "{label}: {e}");
                    not_adapterhub += 1;
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 29);
    // DoRA (3), IA3 on inputs (5), attention outputs, gate projections or GPT-2's whole c_attn
    // as targets (10), per-module ranks (2) and per-layer target sets (1) have no AdapterHub config.
    assert_eq!(not_adapterhub, 21);
}

#[test]
fn unsupported_peft_configs_are_refused_by_key() {
    let manifest = peft_manifest();
    let cases = [("llama", "lora_modules_to_save", "modules_to_save"), ("bert", "lora_bias_all", "bias"), ("bert", "lora_pooler", "pooler.dense")];
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
    let refused: usize = manifest["archs"].as_object().unwrap().values().map(|i| i["refused"].as_object().unwrap().len()).sum();
    assert_eq!(refused, cases.len(), "every refused fixture is checked");
    // An unknown PEFT method names itself and the supported ones.
    let tmp = std::env::temp_dir().join(format!("adapters-peft-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("adapter_config.json"), r#"{"peft_type": "PREFIX_TUNING"}"#).unwrap();
    let mut model = load_model(&model_dir(&manifest["archs"]["llama"]).join("model")).unwrap();
    let err = model.load_adapter(&tmp, None).unwrap_err().to_string();
    assert!(err.contains("PREFIX_TUNING") && err.contains("LORA, IA3"), "{err}");
}

/// A weight of the wrong shape, a tensor the config's DoRA flag contradicts and a folder without
/// weights are errors that name the file and the tensor; nothing stays loaded.
#[test]
fn broken_peft_folders_name_the_file_and_tensor() {
    let manifest = peft_manifest();
    let info = &manifest["archs"]["llama"];
    let source = fixtures().join(info["cases"]["lora_qv"]["adapter"].as_str().unwrap());
    let config = std::fs::read_to_string(source.join("adapter_config.json")).unwrap();
    let weights = adapters_runtime::io::read_weights(&source.join("adapter_model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight";
    let broken = |case: &str, tensors: &std::collections::HashMap<String, candle_core::Tensor>, config: &str| {
        let dir = std::env::temp_dir().join(format!("adapters-peft-broken-{}-{case}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("adapter_config.json"), config).unwrap();
        if !tensors.is_empty() {
            adapters_runtime::io::save_safetensors(&dir.join("adapter_model.safetensors"), tensors).unwrap();
        }
        let mut model = load_model(&model_dir(info).join("model")).unwrap();
        let err = model.load_adapter(&dir, None).unwrap_err().to_string();
        assert!(model.adapter_summary().0.is_empty(), "{case}: nothing may be left loaded");
        err
    };
    let mut wrong_shape = weights.clone();
    wrong_shape.insert(key.into(), candle_core::Tensor::zeros((8, 4), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap());
    let err = broken("shape", &wrong_shape, &config);
    assert!(err.contains("v_proj") && err.contains("[8, 4]") && err.contains("adapter_model.safetensors"), "{err}");
    let err = broken("dora", &weights, &config.replace("\"use_dora\": false", "\"use_dora\": true"));
    assert!(err.contains("lora_magnitude_vector") && err.contains("use_dora"), "{err}");
    let err = broken("no-weights", &Default::default(), &config);
    assert!(err.contains("adapter_model.safetensors") && err.contains("adapter_model.bin"), "{err}");
}

/// PEFT loads what this library writes: `tests/fixtures/check_peft_rust.py` converted the tiny
/// Llama's LoRA and IA3 adapters, and PEFT folders AdapterHub cannot express (DoRA, IA3 on
/// inputs, rank and alpha patterns, all linears, per-layer targets, GPT-2's Conv1D, BERT), to
/// PEFT folders, loaded them with PEFT 0.21 and recorded the difference from the source
/// adapter's outputs; the folders written today are byte for byte the ones it checked.
#[test]
fn peft_files_written_here_are_the_ones_python_checked() {
    let record = read_json(&fixtures().join("peft_written_manifest.json"));
    let cases = record["cases"].as_object().unwrap();
    for (case, entry) in cases {
        let diff = entry["max_abs_diff_peft_vs_source"].as_f64().unwrap();
        assert!(diff <= f64::from(TOLERANCE), "{case}: PEFT on the written folder differed by {diff:e}");
        let mut model = load_model(&fixtures().join(entry["model"].as_str().unwrap())).unwrap();
        let name = model.load_adapter(fixtures().join(entry["source"].as_str().unwrap()), None).unwrap();
        let out = std::env::temp_dir().join(format!("adapters-peft-written-{}-{case}", std::process::id()));
        model.save_adapter_peft(&out, &name).unwrap();
        let checked = fixtures().join(entry["written"].as_str().unwrap());
        for file in ["adapter_model.safetensors", "adapter_config.json"] {
            let (now, then) = (std::fs::read(out.join(file)).unwrap(), std::fs::read(checked.join(file)).unwrap());
            assert!(now == then, "{case}/{file}: differs from the folder Python checked (rerun check_peft_rust.py)");
        }
    }
    assert_eq!(cases.len(), 12);
}
