//! The model API on every architecture, with every method: add, activate, forward differs from
//! base, save/load round trip, delete, train changes only the adapter, merge equals unmerged for
//! LoRA; and bad input is a typed error that names the file, tensor or key.

use std::path::{Path, PathBuf};

use adapters_models::load_model;
use adapters_runtime::{AdapterConfig, AdapterError, AdapterSetup, DynAdaptedModel};
use adapters_tests::*;
use candle_core::Tensor;

const ARCHS: [&str; 3] = ["bert", "roberta", "distilbert"];
const METHODS: [&str; 21] = [
    "seq_bn",
    "double_seq_bn",
    "par_bn",
    "scaled_par_bn",
    "lora[intermediate_lora=True,output_lora=True,attn_matrices=['q','k','v']]",
    "ia3",
    "dora",
    "prefix_tuning[prefix_length=4, bottleneck_size=16]",
    "prefix_tuning_flat[prefix_length=4]",
    "prompt_tuning[prompt_length=3]",
    "loreft[prefix_positions=2, suffix_positions=2]",
    "noreft",
    "direft[tied_weights=True, suffix_positions=1]",
    "compacter[reduction_factor=4]",
    "compacter++[reduction_factor=4, shared_W_phm=True]",
    "adapterplus[reduction_factor=8]",
    "prefix_tuning[prefix_length=4, bottleneck_size=16]|par_bn",
    "unipelt[leave_out=[2]]",
    "seq_bn_inv",
    "vera[r=4]",
    "dvora",
];

/// Whether two outputs differ (prompt tuning also changes the sequence length).
fn differs(a: &Tensor, b: &Tensor) -> bool {
    a.dims() != b.dims() || max_abs_diff(a, b) > 1e-3
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("adapters-api-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn model(arch: &str) -> (Box<dyn DynAdaptedModel>, Tensor, Tensor, Tensor) {
    let data = fixtures().join("tiny").join(arch);
    let (ids, mask) = inputs(&data);
    (load_model(&data.join("model")).unwrap(), ids, mask, expected(&data.join("base.safetensors")))
}

/// Adds noise to every parameter so zero-initialised parts (LoRA B, par_bn up) matter.
fn perturb(vars: &[candle_core::Var]) {
    for v in vars {
        let noise = Tensor::randn(0f32, 0.1, v.shape(), v.device()).unwrap();
        v.set(&(v.as_tensor() + noise).unwrap()).unwrap();
    }
}

#[test]
fn every_method_on_every_model_behaves() {
    for arch in ARCHS {
        for method in METHODS {
            let (mut m, ids, mask, base) = model(arch);
            m.add_adapter("x", AdapterConfig::parse(method).unwrap()).unwrap();
            assert!(max_abs_diff(&m.forward(&ids, &mask).unwrap(), &base) <= TOLERANCE, "{arch}/{method}: inactive adapter changes nothing");
            let vars = m.train_adapter(AdapterSetup::from("x")).unwrap();
            let summary = &m.adapter_summary().0[0];
            assert_eq!(vars.iter().map(|v| v.elem_count()).sum::<usize>(), summary.parameters, "{arch}/{method}: exactly the adapter's variables");
            assert!(summary.active && summary.trainable);
            perturb(&vars);
            m.set_training(false);
            let adapted = m.forward(&ids, &mask).unwrap();
            assert!(differs(&adapted, &base), "{arch}/{method}: an active adapter changes the output");

            // Round trip through files, under another name.
            let dir = tmp(&format!("{arch}-{}", method.replace(|c: char| !c.is_ascii_alphanumeric(), "")));
            m.save_adapter(&dir, "x").unwrap();
            let mut fresh = load_model(&fixtures().join("tiny").join(arch).join("model")).unwrap();
            assert_eq!(fresh.load_adapter(&dir, Some("y")).unwrap(), "y");
            fresh.set_active_adapters(AdapterSetup::from("y")).unwrap();
            assert!(max_abs_diff(&fresh.forward(&ids, &mask).unwrap(), &adapted) <= TOLERANCE, "{arch}/{method}: reload");

            m.delete_adapter("x").unwrap();
            assert!(m.active_adapters().is_none());
            assert!(max_abs_diff(&m.forward(&ids, &mask).unwrap(), &base) <= TOLERANCE, "{arch}/{method}: delete restores base");
            assert!(matches!(m.delete_adapter("x"), Err(AdapterError::NoSuchAdapter(_))));
        }
    }
}

#[test]
fn training_changes_only_the_adapter() {
    for arch in ARCHS {
        for method in ["seq_bn", "lora", "prefix_tuning[prefix_length=4, bottleneck_size=16]", "prompt_tuning[prompt_length=3]", "loreft[suffix_positions=1]", "compacter[reduction_factor=4]", "unipelt[leave_out=[0]]", "vera", "double_seq_bn_inv"] {
            let (mut m, ids, mask, base) = model(arch);
            m.add_adapter("x", AdapterConfig::parse(method).unwrap()).unwrap();
            let vars = m.train_adapter(AdapterSetup::from("x")).unwrap();
            perturb(&vars);
            let before: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().copy().unwrap()).collect();
            let out = m.forward(&ids, &mask).unwrap();
            let loss = out.sqr().unwrap().mean_all().unwrap();
            let grads = loss.backward().unwrap();
            let mut moved = 0;
            for v in &vars {
                let g = grads.get(v).unwrap_or_else(|| panic!("{arch}/{method}: no gradient for a variable of shape {:?}", v.dims()));
                v.set(&(v.as_tensor() - (g * 0.1).unwrap()).unwrap()).unwrap();
                moved += 1;
            }
            assert_eq!(moved, vars.len());
            m.set_training(false);
            assert!(vars.iter().zip(&before).any(|(v, b)| max_abs_diff(v.as_tensor(), b) > 0.0), "{arch}/{method}: a step moves the adapter");
            m.deactivate_adapters();
            assert!(max_abs_diff(&m.forward(&ids, &mask).unwrap(), &base) <= TOLERANCE, "{arch}/{method}: base weights unchanged");
        }
    }
}

#[test]
fn merged_lora_equals_unmerged() {
    let (mut m, ids, mask, _) = model("bert");
    m.add_adapter("x", AdapterConfig::parse("lora[r=4,alpha=16]").unwrap()).unwrap();
    perturb(&m.train_adapter(AdapterSetup::from("x")).unwrap());
    m.set_training(false);
    let m2 = &mut m;
    let unmerged = m2.forward(&ids, &mask).unwrap();
    m2.merge_adapter("x").unwrap();
    assert!(max_abs_diff(&m2.forward(&ids, &mask).unwrap(), &unmerged) <= TOLERANCE);
    m2.reset_adapter();
    assert!(max_abs_diff(&m2.forward(&ids, &mask).unwrap(), &unmerged) <= TOLERANCE);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn bad_files_are_typed_errors_and_load_nothing() {
    let (mut m, _, _, _) = model("bert");
    let good = fixtures().join("tiny/bert/seq_bn/adapter");

    // Malformed JSON.
    let dir = tmp("bad-json");
    copy_dir(&good, &dir);
    std::fs::write(dir.join("adapter_config.json"), "{ not json").unwrap();
    let e = m.load_adapter(&dir, None).unwrap_err();
    assert!(matches!(e, AdapterError::File { ref file, .. } if file.ends_with("adapter_config.json")), "{e}");

    // A config field with the wrong type names the file and the key.
    let dir = tmp("bad-field");
    copy_dir(&good, &dir);
    let text = std::fs::read_to_string(good.join("adapter_config.json")).unwrap().replace("\"reduction_factor\": 16", "\"reduction_factor\": \"big\"");
    std::fs::write(dir.join("adapter_config.json"), text).unwrap();
    let e = m.load_adapter(&dir, None).unwrap_err();
    assert!(matches!(e, AdapterError::ConfigKey { .. }) && e.to_string().contains("adapter_config.json"), "{e}");

    // An adapter for another hidden size.
    let dir = tmp("bad-hidden");
    copy_dir(&good, &dir);
    let text = std::fs::read_to_string(good.join("adapter_config.json")).unwrap().replace("\"hidden_size\": 32", "\"hidden_size\": 64");
    std::fs::write(dir.join("adapter_config.json"), text).unwrap();
    let e = m.load_adapter(&dir, None).unwrap_err();
    assert!(e.to_string().contains("hidden_size"), "{e}");

    // Corrupt weights.
    let dir = tmp("corrupt");
    copy_dir(&good, &dir);
    std::fs::write(dir.join("adapter.safetensors"), b"garbage").unwrap();
    let e = m.load_adapter(&dir, None).unwrap_err();
    assert!(matches!(e, AdapterError::File { ref file, .. } if file.ends_with("adapter.safetensors")), "{e}");

    // Missing, extra and misshapen tensors.
    let weights = read(&good.join("adapter.safetensors"));
    let key = "encoder.layer.1.output.adapters.seq_bn.adapter_up.weight";
    let mut cases: Vec<(&str, std::collections::HashMap<String, Tensor>)> = Vec::new();
    let mut missing = weights.clone();
    missing.remove(key);
    cases.push(("missing", missing));
    let mut extra = weights.clone();
    extra.insert("encoder.layer.1.output.adapters.seq_bn.surprise".into(), weights[key].clone());
    cases.push(("extra", extra));
    let mut shape = weights.clone();
    shape.insert(key.into(), Tensor::zeros((32, 3), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap());
    cases.push(("shape", shape));
    for (what, tensors) in cases {
        let dir = tmp(what);
        copy_dir(&good, &dir);
        candle_core::safetensors::save(&tensors, dir.join("adapter.safetensors")).unwrap();
        let e = m.load_adapter(&dir, None).unwrap_err();
        let ok = match what {
            "missing" => matches!(&e, AdapterError::MissingTensor { tensor, .. } if tensor == key),
            "extra" => matches!(&e, AdapterError::UnexpectedTensor { tensor, .. } if tensor.ends_with("surprise")),
            _ => matches!(&e, AdapterError::ShapeMismatch { tensor, found, .. } if tensor == key && found == &vec![32, 3]),
        };
        assert!(ok, "{what}: {e}");
    }
    // Nothing was half-loaded.
    assert!(m.adapter_names().is_empty());
    assert!(matches!(AdapterConfig::parse("seq_bm"), Err(AdapterError::UnknownMethod { .. })));
    assert!(matches!(m.load_adapter(&tmp("absent"), None), Err(AdapterError::Io { .. })));
}

#[test]
fn add_adapter_rejects_duplicates_and_bad_setups() {
    let (mut m, _, _, _) = model("distilbert");
    m.add_adapter("a", AdapterConfig::parse("seq_bn").unwrap()).unwrap();
    assert!(matches!(m.add_adapter("a", AdapterConfig::parse("lora").unwrap()), Err(AdapterError::AdapterExists(_))));
    assert!(matches!(m.set_active_adapters(AdapterSetup::parse("Stack[a, b]").unwrap()), Err(AdapterError::Setup { .. })));
    m.add_adapter("b", AdapterConfig::parse("lora").unwrap()).unwrap();
    m.set_active_adapters(AdapterSetup::parse("Stack[a, b]").unwrap()).unwrap();
    m.set_active_adapters(AdapterSetup::parse("Parallel[a, b]").unwrap()).unwrap();
    let err = m.set_active_adapters(AdapterSetup::parse("Split[a, b, splits=[4, 5]]").unwrap()).unwrap_err().to_string();
    assert!(err.contains("`b` is a LoRA-family adapter") && err.contains("not Split"), "{err}");
    let err = m.set_active_adapters(AdapterSetup::parse("Stack[a, Stack[b]]").unwrap()).unwrap_err().to_string();
    assert!(err.contains("cannot nest Stack inside Stack"), "{err}");
    assert!(matches!(m.merge_adapter("a"), Err(AdapterError::Unsupported { .. })));
    m.merge_adapter("b").unwrap();
    let summary = m.adapter_summary().to_string();
    assert!(summary.contains("bottleneck") && summary.contains("lora"), "{summary}");
}

#[test]
fn token_level_losses_skip_the_prompt_positions() {
    use adapters_runtime::{HeadConfig, HeadType};
    let (mut m, ids, mask, _) = model("bert");
    m.add_adapter("p", AdapterConfig::parse("prompt_tuning[prompt_length=3]").unwrap()).unwrap();
    m.add_head("p", HeadConfig::token_level(HeadType::Tagging, 4, 1, "relu", None), false).unwrap();
    m.set_active_adapters(AdapterSetup::from("p")).unwrap();
    let labels = Tensor::from_vec((0..18).map(|i| i % 4).collect::<Vec<i64>>(), (2, 9), ids.device()).unwrap();
    let out = m.forward_with_head(&ids, &mask).unwrap();
    let logits = out.head.as_ref().unwrap().logits().clone();
    assert_eq!(logits.dims(), &[2, 12, 4], "the prompt lengthens the output");
    let loss = m.head_loss(&out, &labels, Some(&mask)).unwrap().to_scalar::<f32>().unwrap();
    // The same loss by hand: cross-entropy over the attended input positions, prompt left out.
    let tail = logits.narrow(1, 3, 9).unwrap();
    let kept = Tensor::where_cond(&mask.ne(0i64).unwrap(), &labels, &Tensor::full(-100i64, (2, 9), ids.device()).unwrap()).unwrap();
    let want = adapters_runtime::heads::cross_entropy(&tail.reshape((18, 4)).unwrap(), &kept.flatten_all().unwrap(), -100).unwrap().to_scalar::<f32>().unwrap();
    assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
}

#[test]
fn averaging_covers_prompts_invertible_and_shared_parameters() {
    use adapters_runtime::model::CombineStrategy;
    for method in ["prompt_tuning[prompt_length=3]", "seq_bn_inv", "compacter[reduction_factor=4]", "vera[r=4]", "prefix_tuning[prefix_length=2, bottleneck_size=8]"] {
        let (mut m, _, _, _) = model("bert");
        for name in ["a", "b"] {
            m.add_adapter(name, AdapterConfig::parse(method).unwrap()).unwrap();
            perturb(&m.train_adapter(AdapterSetup::from(name)).unwrap());
        }
        m.average_adapter("avg", &["a", "b"], Some(&[0.25, 0.75]), true, CombineStrategy::Linear).unwrap();
        let (a, b, avg) = (m.named_params("a").unwrap(), m.named_params("b").unwrap(), m.named_params("avg").unwrap());
        assert_eq!(avg.len(), a.len(), "{method}");
        for (((name, va), (_, vb)), (_, v)) in a.iter().zip(&b).zip(&avg) {
            let want = ((va.as_tensor() * 0.25).unwrap() + (vb.as_tensor() * 0.75).unwrap()).unwrap();
            assert!(max_abs_diff(v.as_tensor(), &want) < 1e-6, "{method}: {name} is not the weighted mean");
        }
    }
}

#[test]
fn prefix_slots_pass_blocks_without_prefixes() {
    // Split holds no prefix adapter, so the prefix slot leaves it alone (Python's compose).
    let (mut m, ids, mask, _) = model("bert");
    m.add_adapter("p", AdapterConfig::parse("prefix_tuning[prefix_length=2, bottleneck_size=8]").unwrap()).unwrap();
    for name in ["b", "c"] {
        m.add_adapter(name, AdapterConfig::parse("seq_bn").unwrap()).unwrap();
    }
    m.set_active_adapters(AdapterSetup::parse("Stack[p, Split[b, c, splits=[5, 4]]]").unwrap()).unwrap();
    let out = m.forward(&ids, &mask).unwrap();
    assert_eq!(out.dims(), &[2, 9, 32]);
    // A block that does hold a prefix adapter is refused when activated, with the reason.
    let err = m.set_active_adapters(AdapterSetup::parse("Split[p, b, splits=[5, 4]]").unwrap()).unwrap_err().to_string();
    assert!(err.contains("prefix tuning") && err.contains("Split"), "{err}");
}
