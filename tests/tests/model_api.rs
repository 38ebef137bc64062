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

/// Max |adapted - base| over the positions of the input tokens. Prompt tuning prepends its
/// prompt (`combine = "prefix"`), so its output is longer by the prompt length; the input tokens
/// are then its last positions, and the prompt length must be exactly `prompt`.
fn distance(label: &str, adapted: &Tensor, base: &Tensor, prompt: usize) -> f32 {
    let (b, s, h) = base.dims3().unwrap();
    assert_eq!(adapted.dims(), &[b, s + prompt, h], "{label}: output shape (prompt length {prompt})");
    max_abs_diff(&adapted.narrow(1, prompt, s).unwrap(), base)
}

/// The prompt length a method string adds to the output (0 for methods without a prompt).
fn prompt_length(method: &str) -> usize {
    let config = AdapterConfig::parse(method).unwrap();
    config.members().iter().filter_map(|c| c.to_json().get("prompt_length").and_then(|v| v.as_u64())).sum::<u64>() as usize
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("adapters-api-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn model(arch: &str) -> (Box<DynAdaptedModel>, Tensor, Tensor, Tensor) {
    let data = fixtures().join("tiny").join(arch);
    let (ids, mask) = inputs(&data);
    (load_model(&data.join("model")).unwrap(), ids, mask, expected(&data.join("base.safetensors")))
}

/// Adds `0.1 * N(0, 1)` noise to every parameter so zero-initialised parts (LoRA B, par_bn up)
/// matter. The noise is seeded from `label` and the variable's index, so every run is identical.
fn perturb(vars: &[candle_core::Var], label: &str) {
    perturb_seeded(vars, label, 0.1);
}

#[test]
fn every_method_on_every_model_behaves() {
    let mut checks = 0;
    for arch in ARCHS {
        for method in METHODS {
            let (mut m, ids, mask, base) = model(arch);
            m.add_adapter("x", AdapterConfig::parse(method).unwrap()).unwrap();
            assert!(max_abs_diff(&m.forward(&ids, &mask).unwrap(), &base) <= TOLERANCE, "{arch}/{method}: inactive adapter changes nothing");
            let vars = m.train_adapter(AdapterSetup::from("x")).unwrap();
            let summary = &m.adapter_summary().0[0];
            assert_eq!(vars.iter().map(|v| v.elem_count()).sum::<usize>(), summary.parameters, "{arch}/{method}: exactly the adapter's variables");
            assert!(summary.active && summary.trainable);
            perturb(&vars, &format!("every_method/{arch}/{method}"));
            m.set_training(false);
            let adapted = m.forward(&ids, &mask).unwrap();
            let moved = distance(&format!("{arch}/{method}"), &adapted, &base, prompt_length(method));
            assert!(moved > 1e-3, "{arch}/{method}: an active adapter changes the output of the input tokens (max |diff| {moved})");

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
            checks += 1;
        }
    }
    println!("every_method: {checks} checks (arch x method)");
    assert_eq!(checks, ARCHS.len() * METHODS.len());
}

/// LoReft's projection is PyTorch's orthogonal map, whose sign factor is the integer part of the
/// diagonal of `original` (initially -1): noise that moves a diagonal entry into (-1, 0] zeroes the
/// whole unit, which then has no gradient at all (a kept quirk of Python's, see docs/methods.md).
/// As the fixtures do (`perturbation: "diag_safe"`), each diagonal entry `d` becomes `-1 - |d + 1|`
/// so every unit is alive and every variable must get a gradient.
fn keep_reft_units_alive(m: &DynAdaptedModel) {
    for (name, var) in m.named_params("x").unwrap() {
        if !name.ends_with(".projection.parametrizations.weight.original") {
            continue;
        }
        let mut rows = var.as_tensor().to_vec2::<f32>().unwrap();
        for (i, row) in rows.iter_mut().enumerate() {
            row[i] = -1.0 - (row[i] + 1.0).abs();
        }
        var.set(&Tensor::new(rows, var.device()).unwrap()).unwrap();
    }
}

/// Learning rate of the plain gradient step below.
const STEP: f64 = 0.1;

#[test]
fn training_changes_only_the_adapter() {
    let mut checks = 0;
    for arch in ARCHS {
        for method in [
            "seq_bn",
            "lora",
            "prefix_tuning[prefix_length=4, bottleneck_size=16]",
            "prompt_tuning[prompt_length=3]",
            "loreft[suffix_positions=1]",
            "compacter[reduction_factor=4]",
            "unipelt[leave_out=[0]]",
            "vera",
            "double_seq_bn_inv",
        ] {
            let label = format!("{arch}/{method}");
            let (mut m, ids, mask, base) = model(arch);
            m.add_adapter("x", AdapterConfig::parse(method).unwrap()).unwrap();
            let vars = m.train_adapter(AdapterSetup::from("x")).unwrap();
            assert!(m.is_training(), "{label}: train_adapter switches to training mode");
            perturb(&vars, &format!("training/{label}"));
            keep_reft_units_alive(m.as_ref());
            let names: std::collections::HashMap<candle_core::TensorId, String> = m.named_params("x").unwrap().into_iter().map(|(n, v)| (v.id(), n)).collect();
            let name_of = |v: &candle_core::Var| {
                names.get(&v.id()).cloned().unwrap_or_else(|| panic!("{label}: a trainable variable of shape {:?} is not a parameter of the adapter", v.dims()))
            };
            // The same dropout masks for the loss before and after the step.
            let loss_of = |m: &mut Box<DynAdaptedModel>| {
                m.set_seed(7);
                m.forward(&ids, &mask).unwrap().sqr().unwrap().mean_all().unwrap()
            };
            let before: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().copy().unwrap()).collect();
            let loss = loss_of(&mut m);
            let grads = loss.backward().unwrap();
            for v in &vars {
                let name = name_of(v);
                let g = grads.get(v).unwrap_or_else(|| panic!("{label}: no gradient for `{name}`"));
                let largest = g.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                // Every variable takes part in the output, so every gradient is non-zero: no
                // method here has a parameter (a gate, a frozen buffer) that a step leaves alone.
                assert!(largest > 0.0 && largest.is_finite(), "{label}: the gradient of `{name}` is {largest} everywhere");
                v.set(&(v.as_tensor() - (g * STEP).unwrap()).unwrap()).unwrap();
            }
            for (v, b) in vars.iter().zip(&before) {
                assert!(max_abs_diff(v.as_tensor(), b) > 0.0, "{label}: the step leaves `{}` unchanged", name_of(v));
            }
            let (loss, after) = (loss.to_scalar::<f32>().unwrap(), loss_of(&mut m).to_scalar::<f32>().unwrap());
            assert!(after < loss, "{label}: a gradient step of {STEP} on mean(out^2) lowers it: {loss} -> {after}");
            m.set_training(false);
            m.deactivate_adapters();
            assert!(max_abs_diff(&m.forward(&ids, &mask).unwrap(), &base) <= TOLERANCE, "{label}: base weights unchanged");
            checks += 1;
        }
    }
    println!("training: {checks} checks");
    assert_eq!(checks, ARCHS.len() * 9);
}

#[test]
fn merged_lora_equals_unmerged() {
    let (mut m, ids, mask, _) = model("bert");
    let (r, alpha) = (4usize, 16.0f64);
    m.add_adapter("x", AdapterConfig::parse(&format!("lora[r={r},alpha={alpha}]")).unwrap()).unwrap();
    perturb(&m.train_adapter(AdapterSetup::from("x")).unwrap(), "merged_lora");
    m.set_training(false);
    let params: std::collections::HashMap<String, Tensor> = m.named_params("x").unwrap().into_iter().map(|(n, v)| (n, v.as_tensor().copy().unwrap())).collect();
    let original: Vec<(String, Tensor)> = m.lora_linear_weights().unwrap().into_iter().map(|(n, w)| (n, w.copy().unwrap())).collect();
    let unmerged = m.forward(&ids, &mask).unwrap();
    m.merge_adapter("x").unwrap();
    let merged = m.lora_linear_weights().unwrap();
    assert_eq!(
        merged.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        original.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        "the same linears before and after merging"
    );
    let mut with_lora = 0;
    for ((name, w0), (_, w1)) in original.iter().zip(&merged) {
        let module = name.strip_suffix(".weight").unwrap_or_else(|| panic!("`{name}` is not a weight"));
        match (params.get(&format!("{module}.loras.x.lora_A")), params.get(&format!("{module}.loras.x.lora_B"))) {
            (Some(a), Some(b)) => {
                // W + (alpha / r) B A, with lora_A [r, in] and lora_B [out, r].
                assert_eq!((a.dim(0).unwrap(), b.dim(1).unwrap()), (r, r), "{name}: rank");
                let want = (w0 + (b.matmul(a).unwrap() * (alpha / r as f64)).unwrap()).unwrap();
                let d = max_abs_diff(w1, &want);
                assert!(d <= TOLERANCE, "{name}: merged weight is not W + (alpha/r) B A: max |diff| {d}");
                let moved = max_abs_diff(w1, w0);
                assert!(moved > 1e-3, "{name}: merging leaves the weight unchanged (max |diff| {moved})");
                with_lora += 1;
            }
            (None, None) => assert_eq!(max_abs_diff(w1, w0), 0.0, "{name}: no LoRA here, merging changes nothing"),
            _ => panic!("{name}: only one of lora_A, lora_B"),
        }
    }
    // Default attn_matrices q and v, in each of the 3 layers.
    assert_eq!(with_lora, params.keys().filter(|k| k.ends_with(".lora_A")).count());
    assert_eq!(with_lora, 6, "merged linears");
    let d = max_abs_diff(&m.forward(&ids, &mask).unwrap(), &unmerged);
    assert!(d <= TOLERANCE, "merged output vs unmerged: {d}");
    m.reset_adapter();
    for ((name, w0), (_, w)) in original.iter().zip(&m.lora_linear_weights().unwrap()) {
        assert_eq!(max_abs_diff(w, w0), 0.0, "{name}: reset_adapter restores the exact weight");
    }
    let d = max_abs_diff(&m.forward(&ids, &mask).unwrap(), &unmerged);
    assert!(d <= TOLERANCE, "after reset (adapter active, unmerged): {d}");
    println!("merge: {with_lora} merged linears, {} linears checked", original.len());
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
    assert!(m.adapter_names().next().is_none());
    assert!(matches!(AdapterConfig::parse("seq_bm"), Err(AdapterError::UnknownMethod { .. })));
    assert!(matches!(m.load_adapter(tmp("absent"), None), Err(AdapterError::Io { .. })));
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
    // Merging b (with non-zero weights) changes its linears and keeps its output.
    let vars: Vec<candle_core::Var> = m.named_params("b").unwrap().into_iter().map(|(_, v)| v).collect();
    perturb(&vars, "add_adapter/b");
    m.set_active_adapters(AdapterSetup::from("b")).unwrap();
    let (ids, mask) = inputs(&fixtures().join("tiny/distilbert"));
    let (before, unmerged) = (m.lora_linear_weights().unwrap(), m.forward(&ids, &mask).unwrap());
    m.merge_adapter("b").unwrap();
    let moved = before.iter().zip(m.lora_linear_weights().unwrap()).filter(|((_, w0), (_, w1))| max_abs_diff(w0, w1) > 1e-3).count();
    assert_eq!(moved, 6, "q and v of 3 layers merged");
    let d = max_abs_diff(&m.forward(&ids, &mask).unwrap(), &unmerged);
    assert!(d <= TOLERANCE, "distilbert: merged output vs unmerged: {d}");
    let summary = m.adapter_summary().to_string();
    assert!(summary.contains("bottleneck") && summary.contains("lora"), "{summary}");
}

#[test]
fn layer_indices_past_the_last_layer_are_refused() {
    // Python ignores them (a config meant for a deeper model then silently does something else).
    let (mut m, _, _, _) = model("bert");
    for (config, needle) in [
        ("seq_bn[leave_out=[3]]", "leave_out names layer 3; this model has layers 0..3"),
        ("lora[leave_out=[0, 7]]", "leave_out names layer 7"),
        ("prefix_tuning[leave_out=[5]]", "leave_out names layer 5"),
        ("loreft[layers=[1, 4]]", "layers names layer 4"),
        ("unipelt[leave_out=[9]]", "leave_out names layer 9"),
    ] {
        let err = m.add_adapter("x", AdapterConfig::parse(config).unwrap()).unwrap_err().to_string();
        assert!(err.contains("adapter `x`") && err.contains(needle), "{config}: {err}");
        assert!(m.adapter_names().next().is_none(), "{config}: nothing added");
    }
    m.add_adapter("x", AdapterConfig::parse("seq_bn[leave_out=[2]]").unwrap()).unwrap();
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
    for method in
        ["prompt_tuning[prompt_length=3]", "seq_bn_inv", "compacter[reduction_factor=4]", "vera[r=4]", "prefix_tuning[prefix_length=2, bottleneck_size=8]"]
    {
        let (mut m, _, _, _) = model("bert");
        for name in ["a", "b"] {
            m.add_adapter(name, AdapterConfig::parse(method).unwrap()).unwrap();
            perturb(&m.train_adapter(AdapterSetup::from(name)).unwrap(), &format!("averaging/{method}/{name}"));
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
    for name in ["p", "b"] {
        let vars: Vec<candle_core::Var> = m.named_params(name).unwrap().into_iter().map(|(_, v)| v).collect();
        perturb(&vars, &format!("prefix_slots/{name}"));
    }
    // c gets b's weights, so a Split between them is b on every position.
    let b: std::collections::HashMap<String, candle_core::Var> = m.named_params("b").unwrap().into_iter().collect();
    let c = m.named_params("c").unwrap();
    assert_eq!(c.len(), b.len(), "b and c have the same parameters");
    for (name, var) in &c {
        let source = name.replace(".adapters.c.", ".adapters.b.");
        let from = b.get(&source).unwrap_or_else(|| panic!("c's `{name}` has no counterpart `{source}` in b"));
        var.set(from.as_tensor()).unwrap();
    }
    let run = |m: &mut Box<DynAdaptedModel>, setup: &str| {
        m.set_active_adapters(AdapterSetup::parse(setup).unwrap()).unwrap_or_else(|e| panic!("{setup}: {e}"));
        m.forward(&ids, &mask).unwrap_or_else(|e| panic!("{setup}: {e}"))
    };
    let split = run(&mut m, "Stack[p, Split[b, c, splits=[5, 4]]]");
    let stacked = run(&mut m, "Stack[p, b]");
    let prefix_only = run(&mut m, "p");
    let d = max_abs_diff(&split, &stacked);
    assert!(d <= TOLERANCE, "Stack[p, Split[b, c]] with c = b vs Stack[p, b]: max |diff| {d}");
    let d = max_abs_diff(&split, &prefix_only);
    assert!(d > 1e-3, "the Split block changes the output of the prefix alone (max |diff| {d})");
    // And the Split does run c on its positions: once c differs from b, so does the output.
    let c_vars: Vec<candle_core::Var> = c.into_iter().map(|(_, v)| v).collect();
    perturb(&c_vars, "prefix_slots/c");
    let split = run(&mut m, "Stack[p, Split[b, c, splits=[5, 4]]]");
    let d = max_abs_diff(&split, &stacked);
    assert!(d > 1e-3, "with c != b, Split[b, c] differs from b alone (max |diff| {d})");
    println!("prefix_slots: 3 checks (Split with c = b equals b, differs from p alone, differs once c != b)");
    // A block that does hold a prefix adapter is refused when activated, with the reason.
    let err = m.set_active_adapters(AdapterSetup::parse("Split[p, b, splits=[5, 4]]").unwrap()).unwrap_err().to_string();
    assert!(err.contains("prefix tuning") && err.contains("Split"), "{err}");
}
