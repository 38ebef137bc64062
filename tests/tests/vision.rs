//! ViT against the Python library (`tests/fixtures/generate_vision.py`): a tiny random ViT with
//! every method and block Python supports on it (prompt tuning included), an image
//! classification head saved with its adapter, and a `ViTForImageClassification` checkpoint's
//! classifier converted into a flexible head.

use adapters_models::load_model;
use adapters_runtime::{AdapterSetup, DynAdaptedModel, ModelInputs};
use adapters_tests::*;
use candle_core::Tensor;
use serde_json::Value;

fn vision_manifest() -> Value {
    read_json(&fixtures().join("vision_manifest.json"))
}

/// The cases Python ran on ViT (the manifest must list exactly these many).
const CASES: usize = 16;

fn vit() -> Value {
    vision_manifest()["archs"]["vit"].clone()
}

fn pixels(info: &Value) -> Tensor {
    read(&fixtures().join(info["inputs"].as_str().unwrap()))["pixel_values"].clone()
}

fn load(dir: &str) -> Box<DynAdaptedModel> {
    load_model(&fixtures().join(dir)).unwrap()
}

fn with_case(model: &mut DynAdaptedModel, label: &str, case: &Value) {
    for (name, dir) in case["adapters"].as_object().unwrap() {
        let dir = fixtures().join(dir.as_str().unwrap());
        // Python leaves Compacter's shared PHM rule out of a bare model's file.
        let dir = match case["shared"].as_str() {
            Some(extra) => with_shared(label, &dir, &fixtures().join(extra)),
            None => dir,
        };
        let loaded = model.load_adapter(&dir, None).unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(&loaded, name);
    }
    if let Some(fusion) = case["fusion"].as_str() {
        model.load_adapter_fusion(fixtures().join(fusion), None).unwrap_or_else(|e| panic!("{label}: {e}"));
    }
    model.set_active_adapters(AdapterSetup::parse(case["setup"].as_str().unwrap()).unwrap()).unwrap_or_else(|e| panic!("{label}: {e}"));
}

fn check(label: &str, ours: &Tensor, reference: &Tensor) {
    let diff = max_abs_diff(ours, reference);
    assert!(diff <= TOLERANCE, "{label}: max |diff| {diff:e}");
}

#[test]
fn base_vit_matches_python() {
    let info = vit();
    let model = load(info["model_dir"].as_str().unwrap());
    let expected = read(&fixtures().join(info["base"].as_str().unwrap()));
    let out = model.forward_inputs(&ModelInputs::pixels(pixels(&info))).unwrap();
    // The CLS position first, then every patch: [2, 1 + 16, 32].
    assert_eq!(out.last_hidden_state.dims(), &[2, 17, 32]);
    check("vit base", &out.last_hidden_state, &expected["last_hidden_state"]);
    let pooled = model.base().pooled_output(&out.last_hidden_state).expect("the checkpoint has a pooler").unwrap();
    check("vit pooler", &pooled, &expected["pooler_output"]);
}

#[test]
fn every_method_and_block_matches_python() {
    let info = vit();
    let inputs = ModelInputs::pixels(pixels(&info));
    let base = load(info["model_dir"].as_str().unwrap()).forward_inputs(&inputs).unwrap().last_hidden_state;
    let mut checked = 0;
    for (case, entry) in info["cases"].as_object().unwrap() {
        let label = format!("vit/{case}");
        let mut model = load(info["model_dir"].as_str().unwrap());
        with_case(&mut model, &label, entry);
        let expected = read(&fixtures().join("vision/vit").join(case).join("output.safetensors"));
        let out = model.forward_inputs_with_head(&inputs).unwrap_or_else(|e| panic!("{label}: {e}"));
        check(&label, &out.last_hidden_state, &expected["last_hidden_state"]);
        if out.last_hidden_state.dims() == base.dims() {
            assert!(max_abs_diff(&out.last_hidden_state, &base) > 1e-3, "{label}: the adapter changed nothing");
        }
        if entry["head"].as_bool() == Some(true) {
            let logits = out.head.as_ref().unwrap_or_else(|| panic!("{label}: no head output")).logits();
            check(&format!("{label} logits"), logits, &expected["logits"]);
            let head = model.head_config("a").unwrap();
            assert_eq!(head.head_type(), adapters_runtime::HeadType::ImageClassification, "{label}");
            // A head added here has the config Python's `add_image_classification_head` wrote.
            let labels: Vec<String> = (0..3).map(|i| head.label_name(i)).collect();
            model.add_image_classification_head("added", 3, Some(&labels)).unwrap();
            assert_eq!(model.head_config("added").unwrap().to_value(), entry["head_config"]["config"], "{label}");
        }
        if entry["merged"].as_bool() == Some(true) {
            model.merge_adapter(case).unwrap();
            let merged = model.forward_inputs(&inputs).unwrap().last_hidden_state;
            let reference = read(&fixtures().join("vision/vit").join(case).join("output_merged.safetensors"));
            check(&format!("{label} merged"), &merged, &reference["last_hidden_state"]);
        }
        checked += 1;
    }
    assert_eq!(checked, CASES);
}

/// A `ViTForImageClassification` checkpoint: its classifier becomes the active `default` image
/// classification head, as Python's `AutoAdapterModel` converts it, with the checkpoint's logits.
#[test]
fn image_classification_checkpoint_converts_its_head() {
    let info = vit();
    let model = load(info["model_cls"]["model_dir"].as_str().unwrap());
    assert_eq!(model.active_head(), Some("default"));
    let config = model.head_config("default").unwrap();
    assert_eq!(config.head_type(), adapters_runtime::HeadType::ImageClassification);
    assert_eq!(config.label_name(1), "dog");
    let out = model.forward_inputs_with_head(&ModelInputs::pixels(pixels(&info))).unwrap();
    let reference = read(&fixtures().join(info["model_cls"]["logits"].as_str().unwrap()));
    check("vit classifier logits", out.head.unwrap().logits(), &reference["logits"]);
}

/// Images of the wrong size or channel count, and text inputs, are typed errors naming the
/// expected shape or the input.
#[test]
fn vit_inputs_are_checked() {
    let info = vit();
    let model = load(info["model_dir"].as_str().unwrap());
    let wrong = Tensor::zeros((1, 1, 16, 16), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let err = model.forward_inputs(&ModelInputs::pixels(wrong)).unwrap_err().to_string();
    assert!(err.contains("[1, 1, 16, 16]") && err.contains("[batch, 3, 16, 16]"), "{err}");
    let small = Tensor::zeros((1, 3, 8, 8), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    let err = model.forward_inputs(&ModelInputs::pixels(small)).unwrap_err().to_string();
    assert!(err.contains("image_size"), "{err}");
    let ids = Tensor::new(&[[1i64, 2]], &candle_core::Device::Cpu).unwrap();
    let err = model.forward(&ids, &ids.ones_like().unwrap()).unwrap_err().to_string();
    assert!(err.contains("InputIds") && err.contains("PixelValues"), "{err}");
}

/// What Python refuses on ViT is refused here: invertible adapters (ViT has no
/// `InvertibleAdaptersMixin`) and Compacter whose bottleneck is narrower than its PHM dimension.
#[test]
fn vit_refuses_what_python_refuses() {
    let info = vit();
    let unsupported = info["unsupported"].as_object().unwrap();
    assert_eq!(unsupported.len(), 2, "the manifest's ViT refusals changed");
    for (case, entry) in unsupported {
        let mut model = load(info["model_dir"].as_str().unwrap());
        let (name, config) = entry["adapters"].as_object().unwrap().iter().next().unwrap();
        let err = model.add_adapter(name, adapters_runtime::AdapterConfig::parse(config.as_str().unwrap()).unwrap()).unwrap_err().to_string();
        let expected = match case.as_str() {
            "seq_bn_inv" => "takes no invertible adapters",
            "compacter" => "phm",
            other => panic!("{other}: a ViT refusal this test does not know"),
        };
        assert!(err.contains(expected), "{case}: {err}");
        assert!(model.adapter_names().next().is_none(), "{case}: a refused adapter leaves nothing behind");
    }
    assert!(!model_methods().contains(&"seq_bn_inv") && model_methods().contains(&"prompt_tuning"));
}

fn model_methods() -> Vec<&'static str> {
    <adapters_models::ViTModel as adapters_runtime::AdaptableModel>::MAPPING.supported_methods()
}
