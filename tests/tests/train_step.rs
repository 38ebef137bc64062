//! Training parity with PyTorch: from identical weights, batch and hyper-parameters (AdamW, lr
//! 1e-2, weight decay 0.01, gradient clipping at 1.0), three steps give the same losses,
//! gradient norms and updated weights as the Python library with torch.optim.AdamW, for a
//! seq_bn adapter, a LoRA adapter (each with a classification head) and full fine-tuning.

use std::collections::HashMap;

use adapters_models::{load_model_with, BaseWeights, LoadOptions};
use adapters_runtime::training::AdamWStep;
use adapters_runtime::{AdapterSetup, DynAdaptedModel};
use adapters_tests::*;
use candle_core::{Tensor, Var};
use serde_json::{json, Value};

fn step_dir(case: &str) -> std::path::PathBuf {
    fixtures().join("heads/train_step").join(case)
}

/// Every trainable tensor of the model under its Python name (`bert.` prefixed, as Python's
/// AdapterModel names them).
fn trained(model: &DynAdaptedModel, case: &str) -> HashMap<String, Var> {
    let mut out: HashMap<String, Var> = model.head_params(case).unwrap().into_iter().collect();
    if case == "full" {
        out.extend(model.base_vars().iter().cloned());
    } else {
        out.extend(model.named_params(case).unwrap().into_iter().map(|(n, v)| (format!("bert.{n}"), v)));
    }
    out
}

fn expected_after(case: &str, step: &str) -> HashMap<String, Tensor> {
    let dir = step_dir(case).join(step);
    let mut t = read(&dir.join("model_head.safetensors"));
    let weights = if case == "full" { "model.safetensors" } else { "adapter.safetensors" };
    t.extend(read(&dir.join(weights)));
    t
}

fn run(case: &str) -> (f32, f32) {
    let info = &heads_manifest()["train_step"][case];
    let overrides: Vec<(&str, Value)> = info["config_overrides"].as_object().unwrap().iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let (model_dir, pooler, base) = if case == "full" {
        // The whole initial state (base + pooler) as Python held it.
        (step_dir(case).join("initial"), None, BaseWeights::Trainable)
    } else {
        (fixtures().join("tiny/bert/model"), Some(fixtures().join("heads/bert/pooler.safetensors")), BaseWeights::Frozen)
    };
    let config_src = fixtures().join("tiny/bert/model");
    let ckpt = checkpoint_with(&format!("train-{case}"), &config_src, pooler.as_deref(), &overrides);
    if case == "full" {
        // Replace the weights with the full initial state (names keep their `bert.` prefix).
        std::fs::copy(model_dir.join("model.safetensors"), ckpt.join("model.safetensors")).unwrap();
    }
    let mut model = load_model_with(&ckpt, LoadOptions { base, ..LoadOptions::default() }).unwrap();
    let vars = if case == "full" {
        model.load_head(step_dir(case).join("initial"), None).unwrap();
        model.train_full().unwrap()
    } else {
        model.load_adapter(step_dir(case).join("initial"), None).unwrap();
        model.train_adapter(AdapterSetup::from(case)).unwrap()
    };
    let hp = &info["hyper_parameters"];
    assert_eq!(hp["betas"], json!([0.9, 0.999]));
    assert_eq!(hp["eps"], json!(1e-8));
    let lr = hp["lr"].as_f64().unwrap();
    let max_norm = hp["max_grad_norm"].as_f64();
    let mut opt = AdamWStep::new(vars, lr, hp["weight_decay"].as_f64().unwrap()).unwrap();
    let batch = read(&step_dir(case).join("batch.safetensors"));
    let (ids, mask, labels) = (&batch["input_ids"], &batch["attention_mask"], &batch["labels"]);
    let (mut worst_weight, mut worst_scalar) = (0f32, 0f32);
    for step in 0..3 {
        let out = model.forward_with_head(ids, mask).unwrap();
        let loss = model.head_loss(&out, labels, Some(mask)).unwrap();
        let got = loss.to_scalar::<f32>().unwrap();
        let want = info["losses"][step].as_f64().unwrap() as f32;
        assert!((got - want).abs() <= TOLERANCE, "{case} step {}: loss {got} vs PyTorch {want}", step + 1);
        let norm = opt.step(&loss, lr, max_norm).unwrap() as f32;
        let want_norm = info["grad_norms_before_clip"][step].as_f64().unwrap() as f32;
        assert!((norm - want_norm).abs() <= TOLERANCE * want_norm.max(1.0), "{case} step {}: grad norm {norm} vs PyTorch {want_norm}", step + 1);
        worst_scalar = worst_scalar.max((got - want).abs()).max((norm - want_norm).abs());
        if step == 0 || step == 2 {
            let expected = expected_after(case, &format!("after_{}", step + 1));
            let ours = trained(model.as_ref(), case);
            let mut compared = 0;
            for (name, var) in &ours {
                let Some(want) = expected.get(name) else {
                    panic!("{case}: `{name}` is trained here but not in PyTorch's state");
                };
                let diff = max_abs_diff(var.as_tensor(), want);
                // The key bias adds the same q.b to every score of a query, which softmax
                // cancels: its true gradient is 0 and what both libraries compute is rounding
                // noise (~1e-9), which AdamW divides by its own magnitude. Only bounded agreement
                // is meaningful there.
                let tolerance = if name.ends_with("attention.self.key.bias") { 1e-4 } else { TOLERANCE };
                assert!(diff <= tolerance, "{case} after step {}: `{name}` differs by {diff}", step + 1);
                if tolerance == TOLERANCE {
                    worst_weight = worst_weight.max(diff);
                }
                compared += 1;
            }
            assert!(compared >= 10, "{case}: compared only {compared} tensors");
        }
    }
    (worst_weight, worst_scalar)
}

#[test]
fn seq_bn_steps_match_pytorch() {
    let (w, s) = run("seq_bn");
    eprintln!("seq_bn: weights worst {w:e}, loss/norm worst {s:e}");
}

#[test]
fn lora_steps_match_pytorch() {
    let (w, s) = run("lora");
    eprintln!("lora: weights worst {w:e}, loss/norm worst {s:e}");
}

#[test]
fn full_fine_tuning_steps_match_pytorch() {
    let (w, s) = run("full");
    eprintln!("full: weights worst {w:e}, loss/norm worst {s:e}");
}
