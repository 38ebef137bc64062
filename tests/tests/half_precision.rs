//! f16 and bf16: the tiny BERT, RoBERTa and DistilBERT models computed in half precision, with
//! every adapter case of the parity manifest (and LoRA-family merges), against the Python
//! library's f32 outputs, as a share of the largest |output| of the reference.
//!
//! Tolerances: f16 0.5 %; bf16 2 % for the base models (the bar of the redesign issue) and 2.5 %
//! with adapters. bf16 keeps 8 significant bits: PyTorch 2.15 itself, run in bf16 on these
//! fixtures, is 0.99 / 1.12 / 1.27 % off its f32 output on the bases and 1.46 % (1.59 % merged)
//! on DistilBERT with IA3; this library measures 0.99 / 1.38 / 1.27 % and 1.66 % (1.99 %).

use adapters_models::{load_model_with, LoadOptions};
use adapters_runtime::methods::init::Placement;
use adapters_runtime::{AdapterSetup, DynAdaptedModel};
use adapters_tests::*;
use candle_core::{DType, Device, Tensor};

fn tolerance(dtype: DType, base: bool) -> f32 {
    match (dtype, base) {
        (DType::BF16, true) => 0.02,
        (DType::BF16, false) => 0.025,
        _ => 0.005,
    }
}

/// Worst |out - reference| relative to the largest |reference|, and a check that the model
/// really computed in `dtype` (not silently in f32).
fn relative_error(out: &Tensor, reference: &Tensor, dtype: DType, label: &str) -> f32 {
    assert_eq!(out.dtype(), dtype, "{label}: output dtype");
    max_rel_diff(out, reference)
}

fn check_arch(arch: &str, dtype: DType) -> (usize, f32) {
    let data = fixtures().join("tiny").join(arch);
    let (ids, mask) = inputs(&data);
    let options = LoadOptions { placement: Placement::new(Device::Cpu, dtype), ..LoadOptions::default() };
    let mut model = load_model_with(&data.join("model"), options).unwrap();
    let mut worst = 0f32;
    let mut checks = 0;
    let mut check = |model: &DynAdaptedModel, reference: &str, label: &str| {
        let out = model.forward(&ids, &mask).unwrap_or_else(|e| panic!("{label}: {e}"));
        let err = relative_error(&out, &expected(&data.join(reference)), dtype, label);
        let tolerance = tolerance(dtype, reference == "base.safetensors");
        assert!(err <= tolerance, "{label}: {:.3} % of the largest output (tolerance {:.1} %)", 100.0 * err, 100.0 * tolerance);
        worst = worst.max(err);
        checks += 1;
    };
    check(model.as_ref(), "base.safetensors", &format!("{arch} {dtype:?} base"));
    for (case, info) in cases(arch) {
        let label = format!("{arch} {dtype:?} {case}");
        let name = model.load_adapter(fixture_path(&data.join(&case).join("adapter")), None).unwrap_or_else(|e| panic!("{label}: {e}"));
        for (param, var) in model.named_params(&name).unwrap() {
            assert_eq!(var.dtype(), dtype, "{label}: {param} was not loaded in the model's dtype");
        }
        model.set_active_adapters(AdapterSetup::from(name.as_str())).unwrap();
        check(model.as_ref(), &format!("{case}/output.safetensors"), &label);
        if info["merged"].as_bool() == Some(true) {
            model.merge_adapter(&name).unwrap_or_else(|e| panic!("{label} merge: {e}"));
            check(model.as_ref(), &format!("{case}/output_merged.safetensors"), &format!("{label} merged"));
            model.reset_adapter();
        }
        model.delete_adapter(&name).unwrap();
    }
    (checks, worst)
}

#[test]
fn every_case_in_f16_and_bf16_is_close_to_python_f32() {
    for dtype in [DType::F16, DType::BF16] {
        for arch in ["bert", "roberta", "distilbert"] {
            let (checks, worst) = check_arch(arch, dtype);
            println!("{arch} {dtype:?}: {checks} outputs, worst {:.3} % of the largest output", 100.0 * worst);
            // The base, every case, and every merge the manifest records.
            let all = cases(arch);
            let merged = all.iter().filter(|(_, info)| info["merged"].as_bool() == Some(true)).count();
            assert_eq!(checks, 1 + all.len() + merged, "{arch}: outputs checked");
        }
    }
}

#[test]
fn new_adapters_heads_and_fusion_live_in_the_model_dtype() {
    let data = fixtures().join("tiny").join("bert");
    let options = LoadOptions { placement: Placement::new(Device::Cpu, DType::BF16), ..LoadOptions::default() };
    let mut model = load_model_with(&data.join("model"), options).unwrap();
    for (name, config) in [("bn", "seq_bn"), ("lo", "lora"), ("pre", "prefix_tuning"), ("re", "loreft"), ("pr", "prompt_tuning"), ("inv", "seq_bn_inv")] {
        model.add_adapter(name, adapters_runtime::AdapterConfig::parse(config).unwrap()).unwrap();
        let params = model.named_params(name).unwrap();
        assert!(!params.is_empty(), "{name}: no parameters");
        for (param, var) in params {
            assert_eq!(var.dtype(), DType::BF16, "{name}: {param}");
        }
    }
    model.add_head("cls", adapters_runtime::HeadConfig::classification(3, 2, "tanh", None, false, false), false).unwrap();
    for (param, var) in model.head_params("cls").unwrap() {
        assert_eq!(var.dtype(), DType::BF16, "head: {param}");
    }
    model.add_adapter("bn2", adapters_runtime::AdapterConfig::parse("seq_bn").unwrap()).unwrap();
    model.add_adapter_fusion(AdapterSetup::parse("Fuse[bn, bn2]").unwrap(), adapters_runtime::config::FusionConfig::parse("dynamic").unwrap()).unwrap();
    model.set_active_adapters(AdapterSetup::parse("Stack[pr, lo, pre, re, Fuse[bn, bn2]]").unwrap()).unwrap();
    let (ids, mask) = inputs(&data);
    let out = model.forward_with_head(&ids, &mask).unwrap();
    assert_eq!(out.last_hidden_state.dtype(), DType::BF16);
    let logits = match &out.heads[0].output {
        adapters_runtime::HeadOutput::Logits(l) => l.clone(),
        other => panic!("classification gave {other:?}"),
    };
    assert_eq!(logits.dims(), [ids.dim(0).unwrap(), 3]);
    let values = logits.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(values.iter().all(|v| v.is_finite()), "{values:?}");
}

/// Encoder-decoders (both outputs) and ViT in f16 and bf16, against Python's f32 outputs: f16
/// 0.5 %; bf16 2 % on ViT and 2.5 % on encoder-decoders, whose two stacks compound the rounding:
/// PyTorch 2.15 itself, in bf16 on the tiny T5 (keeping T5's `wo` in f32), is 1.99 % (encoder)
/// and 2.75 % (decoder) off its f32 output; this library measures 2.09 % and under 2 %.
#[test]
fn encoder_decoders_and_vit_in_f16_and_bf16_are_close_to_python_f32() {
    for dtype in [DType::F16, DType::BF16] {
        let options = || LoadOptions { placement: Placement::new(Device::Cpu, dtype), ..LoadOptions::default() };
        for arch in ["bart", "mbart", "t5", "t5_v1_1", "mt5", "bert2bert"] {
            let data = fixtures().join("seq2seq").join(arch);
            let model = load_model_with(&data.join("model"), options()).unwrap();
            let batch = read(&data.join("inputs.safetensors"));
            let inputs = adapters_runtime::ModelInputs::text(batch["input_ids"].clone(), batch["attention_mask"].clone())
                .with_decoder_input_ids(batch["decoder_input_ids"].clone(), Some(batch["decoder_attention_mask"].clone()));
            let out = model.forward_inputs(&inputs).unwrap_or_else(|e| panic!("{arch} {dtype:?}: {e}"));
            let reference = read(&data.join("base.safetensors"));
            for (what, ours) in [("decoder", &out.last_hidden_state), ("encoder", out.encoder_last_hidden_state.as_ref().unwrap())] {
                let key = if what == "decoder" { "last_hidden_state" } else { "encoder_last_hidden_state" };
                let err = relative_error(ours, &reference[key], dtype, &format!("{arch} {dtype:?} {what}"));
                assert!(err <= tolerance(dtype, false), "{arch} {dtype:?} {what}: {:.3} %", 100.0 * err);
            }
        }
        let vit = fixtures().join("vision/vit");
        let model = load_model_with(&vit.join("model"), options()).unwrap();
        let pixels = read(&vit.join("inputs.safetensors"))["pixel_values"].clone();
        let out = model.forward_inputs(&adapters_runtime::ModelInputs::pixels(pixels)).unwrap();
        let err = relative_error(&out.last_hidden_state, &read(&vit.join("base.safetensors"))["last_hidden_state"], dtype, "vit");
        assert!(err <= tolerance(dtype, true), "vit {dtype:?}: {:.3} %", 100.0 * err);
    }
}
