//! Training encoder-decoders and ViT, against PyTorch (`tests/fixtures/generate_train_encdec.py`):
//! from identical weights, batch and hyper-parameters (AdamW, lr 1e-2, weight decay 0.01,
//! clipping at 1.0), three steps give the losses, gradient norms and weights the Python library
//! gives for a BART seq_bn adapter and a T5 LoRA adapter with seq2seq LM heads (teacher forcing:
//! the decoder reads the labels shifted right, as each model shifts them) and a ViT seq_bn
//! adapter with an image classification head; twenty steps reduce the loss as PyTorch's do.

use std::collections::HashMap;

use adapters_models::load_model;
use adapters_runtime::training::{decoder_inputs_from_labels, AdamWStep};
use adapters_runtime::{AdapterSetup, DynAdaptedModel, ModelInputs};
use adapters_tests::*;
use candle_core::{Tensor, Var};
use serde_json::Value;

fn manifest() -> Value {
    read_json(&fixtures().join("train_encdec_manifest.json"))
}

/// The base checkpoint of a case and the prefix Python's AdapterModel names its base with.
fn base_of(case: &str) -> (&'static str, &'static str) {
    match case {
        "bart_seq_bn" => ("seq2seq/bart/model", "model."),
        "t5_lora" => ("seq2seq/t5/model", "transformer."),
        "vit_seq_bn" => ("vision/vit/model", "vit."),
        other => panic!("{other}: a case this test does not know"),
    }
}

fn trained(model: &DynAdaptedModel, name: &str, prefix: &str) -> HashMap<String, Var> {
    let mut out: HashMap<String, Var> = model.head_params(name).unwrap().into_iter().collect();
    out.extend(model.named_params(name).unwrap().into_iter().map(|(n, v)| (format!("{prefix}{n}"), v)));
    out
}

/// The batch as the model takes it. Seq2seq: the decoder inputs are the labels shifted right
/// here (and must equal what Python passed).
fn inputs(case: &str, info: &Value, batch: &HashMap<String, Tensor>) -> ModelInputs<'static> {
    if case.starts_with("vit") {
        return ModelInputs::pixels(batch["pixel_values"].clone());
    }
    let start = info["decoder_start_token_id"].as_u64().unwrap() as u32;
    let pad = info["pad_token_id"].as_u64().unwrap() as u32;
    let shifted = decoder_inputs_from_labels(&batch["labels"], start, pad).unwrap();
    assert_eq!(shifted.to_vec2::<i64>().unwrap(), batch["decoder_input_ids"].to_vec2::<i64>().unwrap(), "{case}: the label shift differs from Python's");
    ModelInputs::text(batch["input_ids"].clone(), batch["attention_mask"].clone())
        .with_decoder_input_ids(shifted, Some(batch["decoder_attention_mask"].clone()))
}

struct Run {
    model: Box<DynAdaptedModel>,
    opt: AdamWStep,
    inputs: ModelInputs<'static>,
    labels: Tensor,
    lr: f64,
    max_norm: Option<f64>,
}

impl Run {
    fn new(case: &str, info: &Value) -> Self {
        let (base, _) = base_of(case);
        let mut model = load_model(&fixtures().join(base)).unwrap();
        let name = info["adapter_name"].as_str().unwrap();
        model.load_adapter(fixtures().join(info["files"]["initial"]["adapter.safetensors"].as_str().unwrap()).parent().unwrap(), None).unwrap();
        model.set_active_head(Some(name)).unwrap();
        let vars = model.train_adapter(AdapterSetup::from(name)).unwrap();
        let hp = &info["hyper_parameters"];
        let lr = hp["lr"].as_f64().unwrap();
        let opt = AdamWStep::new(vars, lr, hp["weight_decay"].as_f64().unwrap()).unwrap();
        let batch = read(&fixtures().join(info["files"]["batch"].as_str().unwrap()));
        let inputs = inputs(case, info, &batch);
        Run { model, opt, inputs, labels: batch["labels"].clone(), lr, max_norm: hp["max_grad_norm"].as_f64() }
    }

    /// One step: the loss before it, and the gradient norm before clipping.
    fn step(&mut self) -> (f32, f32) {
        let out = self.model.forward_inputs_with_head(&self.inputs).unwrap();
        let loss = self.model.head_loss(&out, &self.labels, None).unwrap();
        let value = loss.to_scalar::<f32>().unwrap();
        let norm = self.opt.step(&loss, self.lr, self.max_norm).unwrap() as f32;
        (value, norm)
    }
}

fn three_steps_match_pytorch(case: &str) {
    let m = manifest();
    let info = &m["train_step"][case];
    let (_, prefix) = base_of(case);
    let name = info["adapter_name"].as_str().unwrap();
    let mut run = Run::new(case, info);
    for step in 0..3 {
        let (loss, norm) = run.step();
        let want = info["losses"][step].as_f64().unwrap() as f32;
        assert!((loss - want).abs() <= TOLERANCE, "{case} step {}: loss {loss} vs PyTorch {want}", step + 1);
        let want_norm = info["grad_norms_before_clip"][step].as_f64().unwrap() as f32;
        assert!((norm - want_norm).abs() <= TOLERANCE * want_norm.max(1.0), "{case} step {}: grad norm {norm} vs PyTorch {want_norm}", step + 1);
        if step == 0 || step == 2 {
            let files = &info["files"][format!("after_{}", step + 1)];
            let mut expected = read(&fixtures().join(files["adapter.safetensors"].as_str().unwrap()));
            expected.extend(read(&fixtures().join(files["model_head.safetensors"].as_str().unwrap())));
            let ours = trained(run.model.as_ref(), name, prefix);
            let trained_names: Vec<String> = info["trainable_params"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
            assert_eq!(ours.len(), trained_names.len(), "{case}: trained here {:?}, in PyTorch {trained_names:?}", ours.keys().collect::<Vec<_>>());
            for (param, var) in &ours {
                let want = expected.get(param).unwrap_or_else(|| panic!("{case}: `{param}` is trained here but not in PyTorch's state"));
                let diff = max_abs_diff(var.as_tensor(), want);
                assert!(diff <= TOLERANCE, "{case} after step {}: `{param}` differs by {diff}", step + 1);
            }
        }
    }
}

#[test]
fn bart_seq2seq_steps_match_pytorch() {
    three_steps_match_pytorch("bart_seq_bn");
}

#[test]
fn t5_seq2seq_steps_match_pytorch() {
    three_steps_match_pytorch("t5_lora");
}

#[test]
fn vit_image_classification_steps_match_pytorch() {
    three_steps_match_pytorch("vit_seq_bn");
}

/// Twenty steps on the same batch reduce the loss, step for step as PyTorch's do.
#[test]
fn twenty_steps_reduce_the_loss() {
    let m = manifest();
    for case in ["bart_seq_bn", "t5_lora", "vit_seq_bn"] {
        let info = &m["train_step"][case];
        let mut run = Run::new(case, info);
        let losses: Vec<f32> = (0..20).map(|_| run.step().0).collect();
        let (first, last) = (losses[0], losses[19]);
        assert!(last < 0.7 * first, "{case}: loss {first} -> {last}");
        let want = info["loss_step_20"].as_f64().unwrap() as f32;
        assert!((last - want).abs() <= 1e-4 * want.max(1.0), "{case}: loss at step 20 {last} vs PyTorch {want}");
    }
}
