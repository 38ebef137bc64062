//! Composition blocks against the Python library (`tests/fixtures/generate_composition.py`):
//! Parallel, BatchSplit, Average and Split, nested, for bottleneck and LoRA adapters, with the
//! setup read from Python's `adapter_setup.json`, and heads per channel. Where Python itself
//! raises (recorded in the manifest), this library either refuses with the same rule or runs,
//! and then it must equal the same setup with its Parallel blocks made BatchSplit blocks, run on
//! the batch repeated once per channel (docs/composition.md lists these deliberate differences).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use adapters_models::load_model;
use adapters_runtime::{AdapterSetup, DynAdaptedModel};
use adapters_tests::*;
use candle_core::Tensor;
use serde_json::Value;

fn manifest() -> Value {
    read_json(&fixtures().join("composition_manifest.json"))
}

fn base(arch: &str, with_heads: bool) -> PathBuf {
    let model_dir = fixtures().join("tiny").join(arch).join("model");
    let pooler = fixtures().join("heads").join(arch).join("pooler.safetensors");
    if with_heads && pooler.is_file() {
        return checkpoint_with(&format!("composition-{arch}"), &model_dir, Some(&pooler), &[]);
    }
    model_dir
}

fn load_case(arch: &str, dir: &Path, with_heads: bool) -> Box<DynAdaptedModel> {
    let mut model = load_model(&base(arch, with_heads)).unwrap();
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.join("adapter_config.json").is_file()).collect();
    names.sort();
    for adapter in names {
        model.load_adapter(&adapter, None).unwrap_or_else(|e| panic!("{}: {e}", adapter.display()));
    }
    model
}

fn setup_of(dir: &Path) -> AdapterSetup {
    let text = std::fs::read_to_string(dir.join("adapter_setup.json")).unwrap();
    AdapterSetup::from_json(&serde_json::from_str(&text).unwrap()).unwrap()
}

/// The independent reference for a Parallel setup Python cannot run: Parallel replicates the
/// batch before the first layer, so it equals the same setup with every Parallel block made a
/// BatchSplit of one batch per child, run on the batch repeated once per child (BatchSplit's
/// semantics are checked against Python by the `batchsplit_*` cases, with mixed adapter kinds).
fn as_batch_split(setup: &AdapterSetup, batch: usize) -> AdapterSetup {
    match setup {
        AdapterSetup::Parallel(children) => AdapterSetup::BatchSplit { children: children.clone(), batch_sizes: vec![batch; children.len()] },
        AdapterSetup::Stack(children) => AdapterSetup::Stack(children.iter().map(|c| as_batch_split(c, batch)).collect()),
        other => other.clone(),
    }
}

/// The refusals this library gives where Python fails (each names the block):
/// - LoRA-family modules in Parallel/BatchSplit need every child at the module (Python fails in
///   lora.py);
/// - Average needs every bottleneck child at each location (Python fails on a missing first
///   child and silently drops later ones);
/// - Parallel/BatchSplit over bottleneck adapters need every child at each location, because
///   one pre- and post-processing serves every row (Python fails with a KeyError or a missing
///   tensor in bottleneck.py).
///
/// `None` where this library runs the setup: Python raised nothing, or failed only on its lazy
/// batch replication.
fn refusal(setup: &AdapterSetup, python_error: &Value) -> Option<Vec<String>> {
    let raised_in = python_error["raised_in"].as_str()?;
    if raised_in.contains("lora.py") {
        return Some(vec![format!("{setup} at `"), "some children have a module at this layer and some have none".into()]);
    }
    if let AdapterSetup::Average { children, .. } = setup {
        return Some(vec![
            format!("{setup}: `{}` has no bottleneck module at `", children[0]),
            "every child of Average must have a module at each location the block reaches".into(),
        ]);
    }
    if raised_in.contains("bottleneck.py") {
        let block = setup.kind().name();
        return Some(vec![
            format!("{setup}: "),
            "has no bottleneck module at `".into(),
            format!("every child of {block} must have a module at each location the block reaches"),
        ]);
    }
    // Python's lazy batch replication breaks (a batch-size mismatch in modeling.py): ours runs.
    None
}

/// Checks a case Python raises on: this library refuses it (`refusal`) with the rule named, or
/// runs it, and then it must equal its BatchSplit form on the repeated batch. Returns a report
/// line.
fn check_without_python(label: &str, model: &mut DynAdaptedModel, setup: &AdapterSetup, python_error: &Value, ids: &Tensor, mask: &Tensor) -> String {
    model.set_active_adapters(setup.clone()).unwrap_or_else(|e| panic!("{label}: {e}"));
    let result = model.forward(ids, mask);
    if let Some(rules) = refusal(setup, python_error) {
        let err = result.expect_err(&format!("{label}: Python fails on {setup} ({}); so must we", python_error["repr"])).to_string();
        // Every piece must appear.
        let ok = rules.iter().all(|rule| err.contains(rule.as_str()));
        assert!(ok, "{label}: expected {rules:?} in: {err}");
        return format!("{label}: refused ({err})");
    }
    let out = result.unwrap_or_else(|e| panic!("{label}: {e}"));
    let channels = setup.parallel_channels();
    assert!(channels > 1, "{label}: no independent reference for {setup}");
    let batch = ids.dim(0).unwrap();
    let repeat = |t: &Tensor| Tensor::cat(&vec![t; channels], 0).unwrap();
    let reference = as_batch_split(setup, batch);
    model.set_active_adapters(reference.clone()).unwrap_or_else(|e| panic!("{label}: {reference}: {e}"));
    let want = model.forward(&repeat(ids), &repeat(mask)).unwrap_or_else(|e| panic!("{label}: {reference}: {e}"));
    let d = max_abs_diff(&out, &want);
    assert!(d <= TOLERANCE, "{label}: {setup} differs from {reference} on the repeated batch by {d}");
    format!("{label}: equals {reference} on the batch repeated {channels} times (max |diff| {d:.1e})")
}

#[test]
fn blocks_match_python() {
    let m = manifest();
    let (mut checked, mut worst, mut without_python, mut fusion) = (0, 0f32, Vec::new(), 0);
    let (mut expect_checked, mut expect_without, mut expect_fusion) = (0, 0, 0);
    for (arch, cases) in m["archs"].as_object().unwrap() {
        let (ids, mask) = inputs(&fixtures().join("tiny").join(arch));
        for (case, info) in cases.as_object().unwrap() {
            let dir = fixture_path(&fixtures().join("composition").join(arch).join(case));
            let label = format!("{arch}/{case}");
            let mut setup = setup_of(&dir);
            if info["setup_python"].as_str().unwrap_or_default().contains("normalize_weights=False") {
                // adapter_setup.json cannot say "not normalised" (Python renormalises on load,
                // as we do); the fixture ran with the raw weights, which the API takes directly.
                let raw: Vec<f64> = info["setup_dict"]["kwargs"]["weights"].as_array().unwrap().iter().map(|w| w.as_f64().unwrap()).collect();
                setup = AdapterSetup::average(setup.children().to_vec(), Some(raw), false);
            }
            let with_heads = case.starts_with("heads_");
            let mut model = load_case(arch, &dir, with_heads);
            if case.starts_with("fuse") {
                fusion += check_fusion(&label, model.as_mut(), &setup, info, &ids, &mask);
                expect_fusion += 1 + usize::from(info["fusion"]["dir_bin"].is_string());
                continue;
            }
            let output = info["output"].as_str().map(|p| fixtures().join(p)).or_else(|| {
                // bert/roberta LoRA in Parallel raises under eager attention in Python; its sdpa
                // run (same weights; eager and sdpa agree within 1.2e-6) is the reference.
                info["sdpa"].is_object().then(|| fixture_path(&dir.join("output_sdpa.safetensors")))
            });
            let Some(output) = output else {
                assert!(info["python_error"].is_object(), "{label}: no output and no python_error in the manifest");
                expect_without += 1;
                without_python.push(check_without_python(&label, model.as_mut(), &setup, &info["python_error"], &ids, &mask));
                continue;
            };
            expect_checked += 1;
            model.set_active_adapters(setup.clone()).unwrap_or_else(|e| panic!("{label}: {e}"));
            let out = model.forward_with_head(&ids, &mask).unwrap_or_else(|e| panic!("{label}: {e}"));
            let expected: HashMap<String, Tensor> = read(&output);
            let mut case_worst = max_abs_diff(&out.last_hidden_state, &expected["last_hidden_state"]);
            for result in &out.heads {
                let key = format!("logits.{}", result.name);
                let want = expected.get(&key).unwrap_or_else(|| panic!("{label}: fixture has no `{key}`"));
                case_worst = case_worst.max(max_abs_diff(result.output.logits(), want));
            }
            let python_heads = expected.keys().filter(|k| k.starts_with("logits")).count();
            assert_eq!(out.heads.len(), python_heads, "{label}: one output per head Python gave");
            if with_heads {
                assert_eq!(out.heads.len(), 2, "{label}: one output per head");
            }
            assert!(case_worst <= TOLERANCE, "{label} ({setup}): max |diff| {case_worst}");
            worst = worst.max(case_worst);
            checked += 1;
        }
    }
    eprintln!(
        "composition: {checked} cases match Python (worst {worst:e}); {fusion} Fuse loads match (both file formats, attentions too); where Python raises:\n  {}",
        without_python.join("\n  ")
    );
    assert_eq!((checked, without_python.len(), fusion), (expect_checked, expect_without, expect_fusion), "(Python-checked, independently checked, Fuse loads)");
    let fuse_cases = m["archs"].as_object().unwrap().values().flat_map(|c| c.as_object().unwrap().keys()).filter(|k| k.starts_with("fuse")).count();
    assert_eq!(checked + without_python.len() + fuse_cases, m["archs"].as_object().unwrap().values().map(|c| c.as_object().unwrap().len()).sum::<usize>());
}

/// Loads the case's fusion layer from Python's files (safetensors and .bin), runs the setup
/// and compares the output and the fusion attention of every layer. Returns the loads checked.
fn check_fusion(label: &str, model: &mut DynAdaptedModel, setup: &AdapterSetup, info: &Value, ids: &Tensor, mask: &Tensor) -> usize {
    let expected = read(&fixtures().join(info["output"].as_str().unwrap()));
    let mut checked = 0;
    // The manifest names the folders: safetensors always, .bin where Python could write it.
    let folders = [&info["fusion"]["dir"], &info["fusion"]["dir_bin"]];
    for folder in folders.into_iter().filter_map(Value::as_str) {
        let fdir = fixture_path(&fixtures().join(folder));
        for name in model.fusion_names().map(String::from).collect::<Vec<_>>() {
            model.delete_adapter_fusion(&name).unwrap();
        }
        let name = model.load_adapter_fusion(&fdir, None).unwrap_or_else(|e| panic!("{label}/{folder}: {e}"));
        assert_eq!(name, "a,b");
        model.set_active_adapters(setup.clone()).unwrap_or_else(|e| panic!("{label}: {e}"));
        let (hidden, attentions) = model.forward_with_fusion_attentions(ids, mask).unwrap();
        let mut worst = max_abs_diff(&hidden, &expected["last_hidden_state"]);
        let mut seen = 0;
        for a in &attentions {
            let key = format!("fusion_attentions.{}.{}", a.layer, a.location);
            let want = expected.get(&key).unwrap_or_else(|| panic!("{label}: Python has no `{key}`"));
            worst = worst.max(max_abs_diff(&a.probs, want));
            seen += 1;
        }
        let python_count = expected.keys().filter(|k| k.starts_with("fusion_attentions.")).count();
        assert_eq!(seen, python_count, "{label}: one attention per fusion layer");
        assert!(worst <= TOLERANCE, "{label}/{folder}: max |diff| {worst}");
        checked += 1;
    }
    checked
}

#[test]
fn fusion_files_round_trip_and_train() {
    let dir = fixtures().join("composition/bert/fuse_dynamic");
    let (ids, mask) = inputs(&fixtures().join("tiny/bert"));
    let mut model = load_case("bert", &dir, false);
    model.load_adapter_fusion(dir.join("fusion"), None).unwrap();
    let setup = setup_of(&dir);
    model.set_active_adapters(setup.clone()).unwrap();
    let before = model.forward(&ids, &mask).unwrap();
    // Saved here, loaded into a fresh model: same output, Python's tensor names.
    let out = std::env::temp_dir().join(format!("adapters-fusion-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    model.save_adapter_fusion(&out, "a,b").unwrap();
    let ours: std::collections::BTreeSet<String> = read(&out.join("model_adapter_fusion.safetensors")).into_keys().collect();
    let python: std::collections::BTreeSet<String> = read(&dir.join("fusion/model_adapter_fusion.safetensors")).into_keys().collect();
    assert_eq!(ours, python);
    let mut fresh = load_case("bert", &dir, false);
    fresh.load_adapter_fusion(&out, None).unwrap();
    fresh.set_active_adapters(setup.clone()).unwrap();
    assert!(max_abs_diff(&fresh.forward(&ids, &mask).unwrap(), &before) <= TOLERANCE);
    // train_adapter_fusion hands back exactly the fusion layers' variables (no head here).
    let vars = model.train_adapter_fusion(setup.clone(), false).unwrap();
    let fusion_count: usize = ours.iter().map(|_| 1).sum();
    assert_eq!(vars.len(), fusion_count);
    // The regularisation loss pulls the value matrices towards the identity, and every fusion
    // variable gets a gradient through the fused forward.
    let reg = model.fusion_regularization_loss().unwrap().unwrap();
    // Python's get_fusion_regularization_loss, from the saved value matrices: 0.01 ||I - V||^2
    // summed over the fusion layers.
    let saved = read(&out.join("model_adapter_fusion.safetensors"));
    let mut want = 0f64;
    for (_, v) in saved.iter().filter(|(k, _)| k.ends_with(".value.weight")) {
        let eye = Tensor::eye(v.dim(0).unwrap(), v.dtype(), v.device()).unwrap();
        want += 0.01 * (eye - v).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    }
    let got = reg.to_scalar::<f32>().unwrap() as f64;
    assert!(want > 0.0 && (got - want).abs() <= 1e-6 * want.max(1.0), "regularisation {got} vs {want} from the value matrices");
    model.set_training(false);
    let loss = (model.forward(&ids, &mask).unwrap().sqr().unwrap().mean_all().unwrap() + reg).unwrap();
    let grads = loss.backward().unwrap();
    for v in &vars {
        let g = grads.get(v.as_tensor()).expect("every fusion variable is trained");
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "a fusion variable of shape {:?} gets gradient norm^2 {norm}", v.dims());
    }
    // A Fuse block without its fusion layer names what is missing.
    model.delete_adapter_fusion("a,b").unwrap();
    let err = model.set_active_adapters(setup).unwrap_err().to_string();
    assert!(err.contains("no fusion layer named `a,b`"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
}

/// A composition fixture folder on tiny BERT holding an adapter made with `config` (Python's
/// perturbed weights), for the setups below that need weights.
fn adapter_with_config(m: &Value, config: &str) -> PathBuf {
    let cases = m["archs"]["bert"].as_object().unwrap();
    let dir = cases
        .values()
        .flat_map(|c| c["adapters"].as_object().into_iter().flatten())
        .find(|(_, a)| a["config"] == config)
        .map(|(_, a)| fixtures().join(a["dir"].as_str().unwrap()))
        .unwrap_or_else(|| panic!("no composition fixture adapter with config {config}"));
    fixture_path(&dir)
}

/// What this library must say for a setup Python refuses (or, for the last kinds, deliberately
/// does differently): a piece of the message, derived from Python's.
fn our_rule(case: &Value) -> String {
    let setup = case["setup"].as_str().unwrap();
    let message = case["message"].as_str().unwrap_or_default();
    match (case["exception_type"].as_str(), message) {
        (Some("ValueError"), m) if m.contains("Cannot nest") => {
            // "Cannot nest Parallel[b, c] in Fuse[a, Parallel[b, c]]": the two block kinds.
            let rest = m.split("Cannot nest ").nth(1).unwrap();
            let inner = rest.split('[').next().unwrap();
            let outer = rest.split(" in ").nth(1).unwrap().split('[').next().unwrap();
            format!("cannot nest {inner} inside {outer}")
        }
        (Some("ValueError"), m) if m.contains("too deep") => {
            let block = m.split("Cannot have ").nth(1).unwrap().split('[').next().unwrap();
            format!("too deep: a {block} block cannot sit at nesting level 2")
        }
        (Some("ValueError"), m) if m.contains("No adapter with name") => {
            let name = m.split('\'').nth(1).unwrap();
            format!("no adapter named `{name}`")
        }
        (Some("ValueError"), m) if m.contains("mh_adapter") => "mh_adapter".into(),
        (Some("IndexError"), m) if m.contains("batch_sizes") => "not the sum of batch_sizes [1, 2]".into(),
        (Some("IndexError"), m) if m.contains("splits") => "sequence length 9, which is not the sum of splits [4, 4]".into(),
        (Some("KeyError"), _) => "no fusion layer named `a,b`".into(),
        (Some("NotImplementedError"), _) if setup.starts_with("Split") => {
            "is a LoRA-family adapter, which composes with Stack, Parallel, BatchSplit and Average, not Split".into()
        }
        (Some("NotImplementedError"), _) => "is a LoRA-family adapter, which composes with Stack, Parallel, BatchSplit and Average, not Fuse".into(),
        (None, _) if setup.starts_with("Average") => format!("{setup}: `b` has no bottleneck module at `"),
        other => panic!("{setup}: no rule for {other:?}"),
    }
}

#[test]
fn setups_python_refuses_are_refused_or_checked() {
    let m = manifest();
    let (ids, mask) = inputs(&fixtures().join("tiny/bert"));
    let (mut refused, mut checked) = (0, 0);
    for case in m["invalid_setups"].as_array().unwrap() {
        let text = case["setup"].as_str().unwrap();
        let label = format!("{text} ({})", case["setup_python"].as_str().unwrap());
        // The adapters the case names: fresh ones when they are all seq_bn (the rules do not
        // depend on weights), Python's perturbed ones otherwise.
        let mut model = load_model(&base("bert", false)).unwrap();
        let adapters = case["adapters"].as_object().unwrap();
        for (name, config) in adapters {
            let config = config.as_str().unwrap();
            if adapters.values().all(|c| c == "seq_bn") {
                model.add_adapter(name, adapters_runtime::AdapterConfig::parse(config).unwrap()).unwrap();
            } else {
                model.load_adapter(adapter_with_config(&m, config), Some(name)).unwrap();
            }
        }
        let mut setup = AdapterSetup::from_json(&case["setup_dict"]).unwrap_or_else(|e| panic!("{label}: {e}"));
        if let (AdapterSetup::BatchSplit { children, .. }, Some(sizes)) = (&setup, case["setup_python"].as_str().unwrap().split("batch_sizes=").nth(1)) {
            // Python's repr (and so the dict) drops batch_sizes; the call names them.
            let sizes: Vec<usize> = sizes.trim_start_matches('[').split(']').next().unwrap().split(',').map(|v| v.trim().parse().unwrap()).collect();
            setup = AdapterSetup::BatchSplit { children: children.clone(), batch_sizes: sizes };
        }
        if case["add_adapter_fusion_config"].is_string() {
            let config = adapters_runtime::config::FusionConfig::parse(case["add_adapter_fusion_config"].as_str().unwrap()).unwrap();
            let err = model.add_adapter_fusion(setup.clone(), config).expect_err(&label).to_string();
            assert!(err.contains(&our_rule(case)), "{label}: {err}");
            refused += 1;
            continue;
        }
        let python_raised = case["exception_type"].is_string();
        let deliberately_runs = matches!(case["exception_type"].as_str(), Some("TypeError")) || (!python_raised && !text.starts_with("Average"));
        if deliberately_runs {
            // Python fails at forward on its own bugs (TypeError), or runs without a reference
            // output: check_without_python knows our refusal, or checks the BatchSplit form.
            let line = check_without_python(&label, model.as_mut(), &setup, case, &ids, &mask);
            println!("{line}");
            if line.contains(": refused (") {
                refused += 1;
            } else {
                checked += 1;
            }
            continue;
        }
        let rule = our_rule(case);
        if matches!(setup, AdapterSetup::Fuse { .. }) && case["exception_type"] == "NotImplementedError" {
            // Python adds the fusion layer over LoRA adapters and fails at forward; here adding
            // it is already refused.
            let config = adapters_runtime::config::FusionConfig::dynamic();
            let err = model.add_adapter_fusion(setup.clone(), config).expect_err(&label).to_string();
            assert!(err.contains("is not a bottleneck adapter; AdapterFusion fuses bottleneck adapters"), "{label}: {err}");
            refused += 1;
            continue;
        }
        let err = match model.set_active_adapters(setup.clone()) {
            Err(e) => {
                assert!(matches!(e, adapters_runtime::AdapterError::Setup { .. }), "{label}: a setup error, got {e:?}");
                e.to_string()
            }
            Ok(()) => model.forward(&ids, &mask).expect_err(&format!("{label}: refused by Python ({}), run here", case["repr"])).to_string(),
        };
        assert!(err.contains(&rule), "{label}: expected `{rule}` in: {err}");
        refused += 1;
    }
    let total = m["invalid_setups"].as_array().unwrap().len();
    println!("{refused} refused with Python's rule, {checked} run and checked against their BatchSplit form, of {total}");
    assert_eq!(refused + checked, total);
}
