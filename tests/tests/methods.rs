//! Parity of the methods beyond bottleneck and LoRA (prefix tuning, prompt tuning, config
//! unions, ReFT) with the Python library, on the fixtures of `tests/fixtures/generate_prefix.py`
//! and `generate_reft_compacter.py`: every case loads from both file formats, runs, and matches
//! Python's output; saving here and reloading reproduces it.

use std::path::{Path, PathBuf};

use adapters_models::load_model;
use adapters_runtime::{AdapterConfig, AdapterSetup};
use adapters_tests::*;
use serde_json::Value;

fn manifest(name: &str) -> Value {
    read_json(&fixtures().join(name))
}

fn model_dir(arch: &str) -> PathBuf {
    if arch == "minilm" {
        minilm_dir()
    } else {
        fixtures().join("tiny").join(arch).join("model")
    }
}

fn arch_inputs(arch: &str) -> (candle_core::Tensor, candle_core::Tensor) {
    inputs(&fixtures().join(if arch == "minilm" { "minilm".to_string() } else { format!("tiny/{arch}") }))
}

/// Loads every folder into a fresh model, activates `setup`, and returns the output.
fn run(arch: &str, folders: &[PathBuf], setup: &str) -> Result<candle_core::Tensor, String> {
    let mut model = load_model(&model_dir(arch)).map_err(|e| e.to_string())?;
    for folder in folders {
        model.load_adapter(folder, None).map_err(|e| format!("{}: {e}", folder.display()))?;
    }
    model.set_active_adapters(AdapterSetup::parse(setup).map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    let (ids, mask) = arch_inputs(arch);
    model.forward(&ids, &mask).map_err(|e| e.to_string())
}

fn compare(label: &str, out: &candle_core::Tensor, expected_path: &Path) -> f32 {
    let expected = expected(expected_path);
    assert_eq!(out.dims(), expected.dims(), "{label}: shape");
    let diff = max_abs_diff(out, &expected);
    assert!(diff <= TOLERANCE, "{label}: max |diff| {diff}");
    diff
}

/// `(adapter folders, bin folders)` of a prefix-manifest case.
fn prefix_folders(info: &Value) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let adapters = info["adapters"].as_object().unwrap();
    let dirs = adapters.values().map(|a| fixtures().join(a["dir"].as_str().unwrap())).collect();
    let bins = adapters.values().filter_map(|a| a["dir_bin"].as_str()).map(|d| fixtures().join(d)).collect();
    (dirs, bins)
}

/// A folder the manifest records: it must be there.
fn recorded(label: &str, dir: impl AsRef<Path>) -> PathBuf {
    let path = fixtures().join(dir);
    assert!(path.is_dir(), "{label}: the manifest records {}, which is missing", path.display());
    path
}

/// How a prefix-manifest case is checked: against Python's output, or (the cases Python fails on
/// or this library refuses on purpose) as described at each arm below.
#[derive(Debug, PartialEq)]
enum PrefixCheck {
    Output,
    /// A prompt longer than the position table: Python runs it, this library refuses it.
    RefusedTooLong,
    /// `prompt_init = "from_string"` without a tokenizer: Python fails at `add_adapter`.
    NoTokenizer,
    /// Prompt tuning on DistilBERT: Python fails at forward; this library runs it.
    DistilbertPrompt,
}

fn prefix_check(arch: &str, case: &str, info: &Value) -> PrefixCheck {
    match (info["python_error"].as_str(), info["python_error_at"].as_str()) {
        (None, _) if case.ends_with("too_long") => PrefixCheck::RefusedTooLong,
        (None, _) => PrefixCheck::Output,
        (Some(e), Some("add_adapter")) if e.contains("tokenizer_name_or_path") => PrefixCheck::NoTokenizer,
        (Some(e), Some("forward")) if arch == "distilbert" && info["config_json"]["architecture"] == "prompt_tuning" && e.contains("IndexError") => {
            PrefixCheck::DistilbertPrompt
        }
        (Some(e), at) => panic!("{arch}/{case}: no check for Python's error at {at:?}: {e}"),
    }
}

#[test]
fn prefix_prompt_and_union_cases_match_python() {
    let m = manifest("prefix_manifest.json");
    // What the manifest implies, before anything runs.
    let mut implied = 0;
    let mut kinds = std::collections::BTreeMap::new();
    for (arch, cases) in m["archs"].as_object().unwrap() {
        for (case, info) in cases.as_object().unwrap() {
            let (dirs, bins) = prefix_folders(info);
            let kind = prefix_check(arch, case, info);
            implied += match kind {
                // each file format, Python's ejected file and ours ejected here, saved here
                PrefixCheck::Output => 1 + (!bins.is_empty()) as usize + 2 * info["adapter_ejected"].is_string() as usize + 1,
                PrefixCheck::RefusedTooLong | PrefixCheck::DistilbertPrompt => dirs.len() + bins.len(),
                PrefixCheck::NoTokenizer => 1,
            };
            *kinds.entry(format!("{kind:?}")).or_insert(0) += 1;
        }
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [("DistilbertPrompt".to_string(), 1), ("NoTokenizer".to_string(), 1), ("Output".to_string(), 29), ("RefusedTooLong".to_string(), 1)],
        "prefix_manifest.json cases by check"
    );
    let mut report = Vec::new();
    for (arch, cases) in m["archs"].as_object().unwrap() {
        if arch == "minilm" && !minilm_dir().exists() {
            panic!("MiniLM is missing at {}: run scripts/fetch_minilm.sh", minilm_dir().display());
        }
        for (case, info) in cases.as_object().unwrap() {
            let label = format!("{arch}/{case}");
            let (dirs, bins) = prefix_folders(info);
            let dirs: Vec<PathBuf> = dirs.iter().map(|d| recorded(&label, d)).collect();
            let bins: Vec<PathBuf> = bins.iter().map(|d| recorded(&label, d)).collect();
            match prefix_check(arch, case, info) {
                PrefixCheck::Output => {}
                PrefixCheck::RefusedTooLong => {
                    // Python runs a prompt longer than the position table (its output has
                    // 9 + 70 positions); this library refuses it on purpose (docs/methods.md):
                    // the model never saw sequences that long. Both of Python's files.
                    let length = info["config_json"]["prompt_length"].as_u64().unwrap();
                    let positions = read_json(&model_dir(arch).join("config.json"))["max_position_embeddings"].as_u64().unwrap();
                    assert!(length > positions, "{label}: prompt_length {length} vs {positions} positions");
                    assert_eq!(info["output_shape"][1].as_u64(), Some(9 + length), "{label}: Python ran it");
                    for folder in dirs.iter().chain(&bins) {
                        let err = run(arch, std::slice::from_ref(folder), info["setup"].as_str().unwrap()).unwrap_err();
                        assert!(
                            err.contains(&format!("prompt_length {length}")) && err.contains(&format!("{positions} positions")),
                            "{label} {}: {err}",
                            folder.display()
                        );
                        report.push(format!("{label} ({}): refused on purpose", folder.file_name().unwrap().to_string_lossy()));
                    }
                    continue;
                }
                PrefixCheck::NoTokenizer => {
                    // Python needs a tokenizer to turn prompt_init_text into ids and the tiny
                    // model has none; this library never tokenizes in add_adapter, so it refuses
                    // for the same reason and names the call that takes the ids.
                    assert!(dirs.is_empty() && bins.is_empty(), "{label}: Python saved nothing");
                    let config =
                        "prompt_tuning[prompt_length=4, prompt_init='from_string', prompt_init_text='classify the sentiment', combine='prefix_after_bos']";
                    let ours = AdapterConfig::parse(config).unwrap().to_json();
                    for (key, value) in [
                        ("prompt_length", Value::from(4)),
                        ("prompt_init", "from_string".into()),
                        ("prompt_init_text", "classify the sentiment".into()),
                        ("combine", "prefix_after_bos".into()),
                    ] {
                        assert!(info["config"].as_str().unwrap().contains(&format!("{key}=")), "{label}: the Python call sets {key}");
                        assert_eq!(ours[key], value, "{label}: {key}");
                    }
                    let mut model = load_model(&model_dir(arch)).unwrap();
                    let err = model.add_adapter(case, AdapterConfig::parse(config).unwrap()).unwrap_err().to_string();
                    assert!(err.contains("from_string") && err.contains("token ids") && err.contains("add_prompt_adapter_from_ids"), "{label}: {err}");
                    assert!(model.adapter_names().next().is_none(), "{label}: nothing added");
                    report.push(format!("{label}: refused as in Python (no tokenizer)"));
                    continue;
                }
                PrefixCheck::DistilbertPrompt => {
                    // Python fails here (it extends DistilBERT's 2-D mask along dimensions 2 and 3);
                    // this library runs it on purpose (docs/methods.md). With no Python output,
                    // the reference is DistilBERT written out below from the checkpoint, the
                    // prompt rows put in front of the embedding output and attended.
                    let weights = read(&model_dir(arch).join("model.safetensors"));
                    let (ids, mask) = arch_inputs(arch);
                    let base = distilbert_reference(&weights, &read_json(&model_dir(arch).join("config.json")), &ids, &mask, None);
                    let d = max_abs_diff(&base, &expected(&fixtures().join("tiny/distilbert/base.safetensors")));
                    assert!(d <= TOLERANCE, "{label}: the reference DistilBERT vs Python's base output: {d}");
                    let prompt = read(&dirs[0].join("adapter.safetensors"));
                    let prompt = &prompt[&format!("prompt_tuning.prompt_tunings.{case}.prompt_embedding.weight")];
                    let want = distilbert_reference(&weights, &read_json(&model_dir(arch).join("config.json")), &ids, &mask, Some(prompt));
                    let moved = max_abs_diff(&want.narrow(1, prompt.dim(0).unwrap(), ids.dim(1).unwrap()).unwrap(), &base);
                    assert!(moved > 1e-3, "{label}: the prompt changes the reference ({moved})");
                    for folder in dirs.iter().chain(&bins) {
                        let out = run(arch, std::slice::from_ref(folder), info["setup"].as_str().unwrap()).unwrap_or_else(|e| panic!("{label}: {e}"));
                        let d = max_abs_diff(&out, &want);
                        assert!(d <= TOLERANCE, "{label} {}: vs the reference: {d}", folder.display());
                        report.push(format!("{label} ({}): {d:.2e} vs the reference", folder.file_name().unwrap().to_string_lossy()));
                    }
                    continue;
                }
            }
            // Python's repr drops BatchSplit's sizes; the fixtures split a batch of two as 1 + 1.
            let setup = &info["setup"].as_str().unwrap().replace("BatchSplit[a, b]", "BatchSplit[a, b, batch_sizes=[1, 1]]");
            let expected = fixtures().join(info["output"].as_str().unwrap());
            let out = run(arch, &dirs, setup).unwrap_or_else(|e| panic!("{label}: {e}"));
            let diff = compare(&label, &out, &expected);
            report.push(format!("{label}: {diff:.2e}"));
            if !bins.is_empty() {
                let out = run(arch, &bins, setup).unwrap_or_else(|e| panic!("{label} (.bin): {e}"));
                let diff = compare(&format!("{label} (.bin)"), &out, &expected);
                report.push(format!("{label} (.bin): {diff:.2e}"));
            }
            if let Some(ejected) = info["adapter_ejected"].as_str() {
                // Python's ejected (flat) adapter, loaded here, and ours ejected here.
                let out = run(arch, &[recorded(&label, ejected)], setup).unwrap_or_else(|e| panic!("{label} ejected: {e}"));
                let diff = compare(&format!("{label} ejected (Python's file)"), &out, &fixtures().join(info["output_ejected"].as_str().unwrap()));
                report.push(format!("{label} ejected (Python's file): {diff:.2e}"));
                let mut model = load_model(&model_dir(arch)).unwrap();
                let name = model.load_adapter(&dirs[0], None).unwrap();
                model.eject_prefix_tuning(&name).unwrap();
                model.set_active_adapters(AdapterSetup::parse(setup).unwrap()).unwrap();
                let (ids, mask) = arch_inputs(arch);
                let diff =
                    compare(&format!("{label} ejected here"), &model.forward(&ids, &mask).unwrap(), &fixtures().join(info["output_ejected"].as_str().unwrap()));
                let config = model.adapter_config(&name).unwrap();
                assert!(config.prefix_tuning().unwrap().flat, "{label}: ejected config is flat");
                report.push(format!("{label} ejected here: {diff:.2e}"));
            }
            let diff = round_trip(&label, arch, &dirs, setup, &expected);
            report.push(format!("{label} saved here: {diff:.2e}"));
        }
    }
    println!("{}", report.join("\n"));
    println!("prefix: {} checks", report.len());
    assert_eq!(report.len(), implied, "checks the manifest implies: {report:?}");
}

/// DistilBERT's encoder written out from its checkpoint (eval mode, no adapters), with an optional
/// prompt `[k, H]` put in front of the embedding output and attended (mask ones in front): an
/// oracle independent of the library's model code.
fn distilbert_reference(
    w: &std::collections::HashMap<String, candle_core::Tensor>,
    config: &Value,
    ids: &candle_core::Tensor,
    mask: &candle_core::Tensor,
    prompt: Option<&candle_core::Tensor>,
) -> candle_core::Tensor {
    use candle_core::{DType, Tensor, D};
    let get = |k: &str| w.get(k).unwrap_or_else(|| panic!("checkpoint has no `{k}`")).clone();
    let layer_norm = |x: &Tensor, p: &str| {
        let mean = x.mean_keepdim(D::Minus1).unwrap();
        let centred = x.broadcast_sub(&mean).unwrap();
        let var = centred.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let normed = centred.broadcast_div(&(var + 1e-12).unwrap().sqrt().unwrap()).unwrap();
        normed.broadcast_mul(&get(&format!("{p}.weight"))).unwrap().broadcast_add(&get(&format!("{p}.bias"))).unwrap()
    };
    let linear =
        |x: &Tensor, p: &str| x.broadcast_matmul(&get(&format!("{p}.weight")).t().unwrap()).unwrap().broadcast_add(&get(&format!("{p}.bias"))).unwrap();
    let (hidden, heads, layers) =
        (config["dim"].as_u64().unwrap() as usize, config["n_heads"].as_u64().unwrap() as usize, config["n_layers"].as_u64().unwrap() as usize);
    let (batch, seq) = ids.dims2().unwrap();
    let words = get("embeddings.word_embeddings.weight").index_select(&ids.flatten_all().unwrap(), 0).unwrap().reshape((batch, seq, hidden)).unwrap();
    let positions = get("embeddings.position_embeddings.weight").narrow(0, 0, seq).unwrap();
    let mut x = layer_norm(&words.broadcast_add(&positions).unwrap(), "embeddings.LayerNorm");
    let mut mask = mask.to_dtype(DType::F32).unwrap();
    if let Some(prompt) = prompt {
        let k = prompt.dim(0).unwrap();
        x = Tensor::cat(&[&prompt.unsqueeze(0).unwrap().repeat((batch, 1, 1)).unwrap(), &x], 1).unwrap();
        mask = Tensor::cat(&[&Tensor::ones((batch, k), DType::F32, mask.device()).unwrap(), &mask], 1).unwrap();
    }
    let len = x.dim(1).unwrap();
    let masked = ((mask.ones_like().unwrap() - &mask).unwrap() * -1e9).unwrap().reshape((batch, 1, 1, len)).unwrap();
    let split = |t: Tensor| t.reshape((batch, len, heads, hidden / heads)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
    for l in 0..layers {
        let p = format!("transformer.layer.{l}");
        let q = split(linear(&x, &format!("{p}.attention.q_lin")));
        let k = split(linear(&x, &format!("{p}.attention.k_lin")));
        let v = split(linear(&x, &format!("{p}.attention.v_lin")));
        let scores = (q.matmul(&k.t().unwrap()).unwrap() / ((hidden / heads) as f64).sqrt()).unwrap().broadcast_add(&masked).unwrap();
        let probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
        let context = probs.matmul(&v).unwrap().transpose(1, 2).unwrap().reshape((batch, len, hidden)).unwrap();
        let attended = layer_norm(&(linear(&context, &format!("{p}.attention.out_lin")) + &x).unwrap(), &format!("{p}.sa_layer_norm"));
        let ffn = linear(&linear(&attended, &format!("{p}.ffn.lin1")).gelu_erf().unwrap(), &format!("{p}.ffn.lin2"));
        x = layer_norm(&(ffn + &attended).unwrap(), &format!("{p}.output_layer_norm"));
    }
    x
}

/// Saved here, reloaded into a fresh model: the same output. Returns the max |diff|.
fn round_trip(label: &str, arch: &str, dirs: &[PathBuf], setup: &str, expected: &Path) -> f32 {
    let mut model = load_model(&model_dir(arch)).unwrap();
    let names: Vec<String> = dirs.iter().map(|d| model.load_adapter(d, None).unwrap()).collect();
    let tmp = std::env::temp_dir().join(format!("adapters-methods-{}-{}", std::process::id(), label.replace('/', "-")));
    let _ = std::fs::remove_dir_all(&tmp);
    let saved: Vec<PathBuf> = names
        .iter()
        .map(|n| {
            let dir = tmp.join(n);
            model.save_adapter(&dir, n).unwrap();
            dir
        })
        .collect();
    let out = run(arch, &saved, setup).unwrap_or_else(|e| panic!("{label} saved here: {e}"));
    let diff = compare(&format!("{label} saved here"), &out, expected);
    let _ = std::fs::remove_dir_all(&tmp);
    diff
}

#[test]
fn prompt_from_text_starts_at_the_word_embeddings() {
    let m = manifest("prefix_manifest.json");
    let info = &m["archs"]["minilm"]["prompt_tuning_text"];
    let ids: Vec<u32> = info["prompt_init_token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let mut model = load_model(&minilm_dir()).unwrap();
    let config = AdapterConfig::parse("prompt_tuning[prompt_length=7, prompt_init='from_string', prompt_init_text='classify the sentiment']").unwrap();
    // Without ids the library cannot tokenize the text itself: a clear error.
    let err = model.add_adapter("p", config.clone()).unwrap_err().to_string();
    assert!(err.contains("from_string") && err.contains("add_prompt_adapter_from_ids"), "{err}");
    model.add_prompt_adapter_from_ids("p", config, &ids).unwrap();
    let (_, prompt) = model.named_params("p").unwrap().remove(0);
    let words = candle_core::safetensors::load(minilm_dir().join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let table = words.iter().find(|(k, _)| k.ends_with("word_embeddings.weight")).unwrap().1;
    // Seven positions from five ids: the ids repeat, as Python repeats them.
    let repeated: Vec<u32> = ids.iter().cycle().take(7).copied().collect();
    let want = table.index_select(&candle_core::Tensor::new(repeated.as_slice(), &candle_core::Device::Cpu).unwrap(), 0).unwrap();
    assert_eq!(max_abs_diff(prompt.as_tensor(), &want), 0.0);
}

#[test]
fn bad_prompt_and_union_configs_are_refused() {
    let mut model = load_model(&model_dir("bert")).unwrap();
    // Python runs a prompt longer than the position table (the prompt has no positions); the
    // sequence is then longer than the model was trained for, so this library refuses it.
    let err = model.add_adapter("long", AdapterConfig::parse("prompt_tuning[prompt_length=70]").unwrap()).unwrap_err().to_string();
    assert!(err.contains("prompt_length 70") && err.contains("64 positions"), "{err}");
    for (text, needle) in [
        ("seq_bn|seq_bn", "cannot be combined"),
        ("seq_bn|double_seq_bn", "cannot be combined"),
        ("par_bn|seq_bn", "cannot be combined"),
        ("lora|lora[r=4]", "same adapter architecture"),
        ("prefix_tuning|prefix_tuning_flat", "same adapter architecture"),
        ("prompt_tuning[combine='suffix']", "prefix_after_bos"),
    ] {
        let err = AdapterConfig::parse(text).unwrap_err().to_string();
        assert!(err.contains(needle), "{text}: {err}");
    }
    // What Python accepts: different locations, a leave_out that defers the decision, mixed methods.
    for text in ["seq_bn[mh_adapter=True, output_adapter=False]|seq_bn", "seq_bn[leave_out=[0]]|seq_bn", "lora|seq_bn|prefix_tuning"] {
        AdapterConfig::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    }
    python_union_calls_are_followed();
}

/// How a union Python built (`prefix_manifest.json`, `invalid_unions`) is written here.
enum UnionInput {
    /// A config string.
    Text(&'static str),
    /// `{"architecture": "union", "configs": [...]}`, read with `AdapterConfig::from_json`.
    Json(Value),
    /// `AdapterConfig::Union(members)`, checked with `validate` (Python's constructor).
    Members(Vec<AdapterConfig>),
}

/// Every union call Python made: accepted here exactly when Python accepted it (the one
/// deliberate exception says why), refused for the reason Python gives, and accepted unions
/// write Python's dict.
fn python_union_calls_are_followed() {
    let m = manifest("prefix_manifest.json");
    let calls = m["invalid_unions"].as_array().unwrap();
    let call = |c: &str| calls.iter().find(|e| e["call"] == c).unwrap_or_else(|| panic!("manifest has no union call `{c}`"));
    // Python's own dicts, from the calls it accepted.
    let bn_pair = call("ConfigUnion(BnConfig(mh_adapter=True, output_adapter=False, reduction_factor=16, non_linearity=\"relu\"), BnConfig(mh_adapter=False, output_adapter=True, reduction_factor=16, non_linearity=\"relu\"))")["to_dict"]["configs"].clone();
    let seq_bn = call("ConfigUnion(SeqBnConfig(leave_out=[0]), SeqBnConfig())")["to_dict"]["configs"][1].clone();
    let lora = call("ConfigUnion(LoRAConfig())")["to_dict"]["configs"][0].clone();
    let mut both_output = bn_pair.clone();
    both_output[0]["mh_adapter"] = Value::Bool(true);
    both_output[0]["output_adapter"] = Value::Bool(true);
    let union = |configs: Value| serde_json::json!({"architecture": "union", "configs": configs});
    let parse = |t: &str| AdapterConfig::parse(t).unwrap();
    const BOTTLENECKS: &str = "two bottleneck configs must sit at different locations";
    // (Python's call, ours, what Python's message says, what ours must say; None = accepted)
    let table: Vec<(&str, UnionInput, &str, Option<&str>)> = vec![
        ("ConfigUnion(SeqBnConfig(), SeqBnConfig())", UnionInput::Text("seq_bn|seq_bn"), "cannot be combined", Some(BOTTLENECKS)),
        ("ConfigUnion(SeqBnConfig(), DoubleSeqBnConfig())", UnionInput::Text("seq_bn|double_seq_bn"), "cannot be combined", Some(BOTTLENECKS)),
        ("ConfigUnion(ParBnConfig(), SeqBnConfig())", UnionInput::Text("par_bn|seq_bn"), "cannot be combined", Some(BOTTLENECKS)),
        (
            "ConfigUnion(BnConfig(mh_adapter=True, output_adapter=True, reduction_factor=16, non_linearity=\"relu\"), BnConfig(mh_adapter=False, output_adapter=True, reduction_factor=16, non_linearity=\"relu\"))",
            UnionInput::Json(union(both_output)),
            "cannot be combined",
            Some(BOTTLENECKS),
        ),
        ("ConfigUnion(PrefixTuningConfig(), PrefixTuningConfig(prefix_length=5))", UnionInput::Text("prefix_tuning|prefix_tuning[prefix_length=5]"), "have the same adapter architecture", Some("same adapter architecture (`prefix_tuning`)")),
        ("ConfigUnion(LoRAConfig(), IA3Config())", UnionInput::Text("lora|ia3"), "have the same adapter architecture", Some("same adapter architecture (`lora`)")),
        ("ConfigUnion(PromptTuningConfig(), PromptTuningConfig())", UnionInput::Text("prompt_tuning|prompt_tuning"), "have the same adapter architecture", Some("same adapter architecture (`prompt_tuning`)")),
        // A union inside a union.
        ("ConfigUnion(LoRAConfig(), MAMConfig())", UnionInput::Members(vec![parse("lora"), parse("mam")]), "is not supported in a config union", Some("cannot contain another union")),
        // Python refuses a plain dict as a member. Here a member is an `AdapterConfig` by type,
        // so the only way to hand over a dict is a union dict, whose members are read as
        // configs, as Python's AdapterConfig.load does; `{"architecture": "lora"}` then is a
        // second LoRA config.
        ("ConfigUnion(LoRAConfig(), {\"architecture\": \"lora\"})", UnionInput::Json(union(serde_json::json!([lora.clone(), {"architecture": "lora"}]))), "is not an instance of AdapterConfig", Some("same adapter architecture (`lora`)")),
        // A member that is not a config at all: in a union dict, a string.
        ("ConfigUnion(\"seq_bn\")", UnionInput::Json(union(serde_json::json!(["seq_bn"]))), "is not an instance of AdapterConfig", Some("expected a JSON object")),
        (
            "ConfigUnion(BnConfig(mh_adapter=True, output_adapter=False, reduction_factor=16, non_linearity=\"relu\"), BnConfig(mh_adapter=False, output_adapter=True, reduction_factor=16, non_linearity=\"relu\"))",
            UnionInput::Text("seq_bn[mh_adapter=True, output_adapter=False, original_ln_before=False]|seq_bn[original_ln_before=False]"),
            "",
            None,
        ),
        ("ConfigUnion(SeqBnConfig(leave_out=[0]), SeqBnConfig())", UnionInput::Text("seq_bn[leave_out=[0]]|seq_bn"), "", None),
        ("ConfigUnion(PrefixTuningConfig(), LoRAConfig(), SeqBnConfig())", UnionInput::Text("prefix_tuning|lora|seq_bn"), "", None),
        ("ConfigUnion(PromptTuningConfig(), PrefixTuningConfig())", UnionInput::Text("prompt_tuning|prefix_tuning"), "", None),
        // Python accepts a union of nothing (an adapter without any module). This library
        // refuses it on purpose: such an adapter cannot be trained, saved usefully or told apart
        // from a typo. The one deliberate difference in this list.
        ("ConfigUnion()", UnionInput::Members(vec![]), "", Some("at least one config")),
        ("ConfigUnion(LoRAConfig())", UnionInput::Members(vec![parse("lora")]), "", None),
        ("AdapterConfig.load({'architecture': 'union', 'configs': [seq_bn, seq_bn]})", UnionInput::Json(union(serde_json::json!([seq_bn.clone(), seq_bn]))), "cannot be combined", Some(BOTTLENECKS)),
    ];
    const DELIBERATE: [&str; 1] = ["ConfigUnion()"];
    assert_eq!(table.len(), calls.len(), "one row per union call in the manifest");
    let mut checked = 0;
    for (python_call, input, python_says, we_say) in table {
        let entry = call(python_call);
        let accepted = entry["accepted"].as_bool().unwrap();
        let result = match &input {
            UnionInput::Text(t) => AdapterConfig::parse(t),
            UnionInput::Json(j) => AdapterConfig::from_json(j, python_call),
            UnionInput::Members(members) => {
                let union = AdapterConfig::Union(members.clone());
                union.validate().map(|()| union)
            }
        };
        let deliberate = DELIBERATE.contains(&python_call);
        assert_eq!(
            result.is_ok(),
            accepted != deliberate,
            "{python_call}: Python accepted it: {accepted}; here: {:?}",
            result.as_ref().err().map(|e| e.to_string())
        );
        match (result, we_say) {
            (Ok(config), None) => {
                // Accepted unions write the dict Python's to_dict writes.
                assert_eq!(config.to_json(), entry["to_dict"], "{python_call}: the union's dict");
            }
            (Err(e), Some(needle)) => {
                let message = entry["message"].as_str().unwrap_or("");
                assert!(deliberate || message.contains(python_says), "{python_call}: Python's message names the reason `{python_says}`: {message}");
                let e = e.to_string();
                assert!(e.contains(needle), "{python_call}: our error names `{needle}`: {e}");
            }
            (result, _) => panic!("{python_call}: unexpected {:?}", result.map(|c| c.to_json())),
        }
        checked += 1;
    }
    println!("unions: {checked} Python calls followed");
    assert_eq!(checked, 17, "union calls in prefix_manifest.json");
}

#[test]
fn union_json_reads_and_writes_as_python() {
    let m = manifest("prefix_manifest.json");
    for preset in ["mam", "unipelt"] {
        let json = &m["union_json"][preset]["to_dict"];
        let config = AdapterConfig::from_json(json, preset).unwrap_or_else(|e| panic!("{preset}: {e}"));
        assert_eq!(config.method_name(), "union", "{preset}");
        assert_eq!(&config.to_json(), json, "{preset}: written back unchanged");
        // The preset string builds exactly the dict Python's class does.
        assert_eq!(&AdapterConfig::parse(preset).unwrap().to_json(), json, "{preset}: preset");
    }
}

/// `(folder, bin folder)` of a reft/compacter case.
fn case_folders(info: &Value) -> (PathBuf, Option<PathBuf>) {
    (fixtures().join(info["dir"].as_str().unwrap()), info["dir_bin"].as_str().map(|d| fixtures().join(d)))
}

/// The top-level key this library writes into a DiReft adapter's `adapter_config.json`
/// (`DIREFT_MARKER` in adapters-runtime/src/model.rs; Python ignores it).
const DIREFT_MARKER: &str = "reft_subtract_projection";

/// A copy of Python's folder (either format) whose adapter_config.json carries the DiReft marker.
fn with_direft_marker(label: &str, dir: &Path) -> PathBuf {
    let out =
        std::env::temp_dir().join(format!("adapters-direft-{}-{}-{}", std::process::id(), label.replace('/', "-"), dir.file_name().unwrap().to_string_lossy()));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), out.join(entry.file_name())).unwrap();
    }
    let mut json = read_json(&out.join("adapter_config.json"));
    assert!(json.get(DIREFT_MARKER).is_none(), "{label}: Python's file has no marker");
    json[DIREFT_MARKER] = Value::Bool(false);
    std::fs::write(out.join("adapter_config.json"), serde_json::to_string_pretty(&json).unwrap()).unwrap();
    out
}

/// Loads one folder into a fresh model and runs it: (the config's method name, the output).
fn load_and_run(arch: &str, folder: &Path) -> (String, candle_core::Tensor) {
    let mut model = load_model(&model_dir(arch)).unwrap();
    let name = model.load_adapter(folder, None).unwrap_or_else(|e| panic!("{}: {e}", folder.display()));
    model.set_active_adapters(AdapterSetup::from(name.as_str())).unwrap();
    let (ids, mask) = arch_inputs(arch);
    (model.adapter_config(&name).unwrap().method_name().to_string(), model.forward(&ids, &mask).unwrap())
}

#[test]
fn reft_cases_match_python() {
    let m = manifest("reft_compacter_manifest.json");
    let is_reft = |info: &Value| info["config_json"]["architecture"] == "reft";
    // What the manifest implies: per case each file format and a save here; DiReft also each
    // format without the marker.
    let mut implied = 0;
    let mut python_errors = Vec::new();
    for (arch, cases) in m["archs"].as_object().unwrap() {
        for (case, info) in cases.as_object().unwrap().iter().filter(|(_, info)| is_reft(info)) {
            if !info["python_error"].is_null() {
                python_errors.push(format!("{arch}/{case}"));
                continue;
            }
            let formats = 1 + info["dir_bin"].is_string() as usize;
            implied += formats + 1 + if case == "direft" { formats } else { 0 };
        }
    }
    // The one ReFT case Python fails on (a suffix longer than a row) is checked by
    // `reft_positions_out_of_range_are_refused`.
    assert_eq!(python_errors, ["bert/loreft_suffix20"], "ReFT cases with a Python error");
    let mut report = Vec::new();
    for (arch, cases) in m["archs"].as_object().unwrap() {
        if arch == "minilm" && !minilm_dir().exists() {
            panic!("MiniLM is missing at {}: run scripts/fetch_minilm.sh", minilm_dir().display());
        }
        for (case, info) in cases.as_object().unwrap() {
            if !is_reft(info) || !info["python_error"].is_null() {
                continue;
            }
            let label = format!("{arch}/{case}");
            let expected_path = fixtures().join(info["output"].as_str().unwrap());
            let dir = recorded(&label, info["dir"].as_str().unwrap());
            let formats: Vec<PathBuf> = std::iter::once(dir.clone()).chain(info["dir_bin"].as_str().map(|d| recorded(&label, d))).collect();
            if case == "direft" {
                // Python's file cannot say "DiReft" (a class attribute, not saved), so Python and
                // this library read it as the config's kind, NoReft, which computes another
                // function; with this library's marker added it loads as DiReft.
                let python = expected(&expected_path);
                for folder in &formats {
                    let format = folder.file_name().unwrap().to_string_lossy().to_string();
                    let (kind, out) = load_and_run(arch, folder);
                    assert_eq!(kind, "noreft", "{label} ({format}) without the marker");
                    let d = max_abs_diff(&out, &python);
                    assert!(d > 1e-3, "{label} ({format}): NoReft must differ from Python's DiReft output, max |diff| {d}");
                    // Python's own reload (NoReft) differed from its DiReft output by this much.
                    let key = if format == "adapter" { "reload_max_diff_safetensors" } else { "reload_max_diff_bin" };
                    let python_reload = info[key].as_f64().unwrap() as f32;
                    assert!((d - python_reload).abs() <= 2.0 * TOLERANCE, "{label} ({format}): NoReft vs DiReft {d}, Python's reload {python_reload}");
                    report.push(format!("{label} ({format}) without the marker: NoReft, {d:.2e} from DiReft"));
                    let marked = with_direft_marker(&label, folder);
                    let (kind, out) = load_and_run(arch, &marked);
                    assert_eq!(kind, "direft", "{label} ({format}) with the marker");
                    let diff = compare(&format!("{label} ({format}) with the marker"), &out, &expected_path);
                    report.push(format!("{label} ({format}) with the marker: {diff:.2e}"));
                    let _ = std::fs::remove_dir_all(&marked);
                }
                // Saved here: the file carries the marker and reloads as DiReft.
                let marked = with_direft_marker(&label, &dir);
                let mut model = load_model(&model_dir(arch)).unwrap();
                model.load_adapter(&marked, None).unwrap();
                let saved = std::env::temp_dir().join(format!("adapters-direft-saved-{}-{arch}", std::process::id()));
                let _ = std::fs::remove_dir_all(&saved);
                model.save_adapter(&saved, case).unwrap();
                assert_eq!(read_json(&saved.join("adapter_config.json"))[DIREFT_MARKER], Value::Bool(false), "{label}: saved with the marker");
                let (kind, out) = load_and_run(arch, &saved);
                assert_eq!(kind, "direft", "{label} saved here");
                let diff = compare(&format!("{label} saved here"), &out, &expected_path);
                report.push(format!("{label} saved here: {diff:.2e}"));
                let _ = std::fs::remove_dir_all(&marked);
                let _ = std::fs::remove_dir_all(&saved);
                continue;
            }
            let setup = case.as_str();
            for folder in &formats {
                let format = folder.file_name().unwrap().to_string_lossy().to_string();
                let out = run(arch, std::slice::from_ref(folder), setup).unwrap_or_else(|e| panic!("{label} ({format}): {e}"));
                let diff = compare(&format!("{label} ({format})"), &out, &expected_path);
                report.push(format!("{label} ({format}): {diff:.2e}"));
            }
            let diff = round_trip(&label, arch, &[dir], setup, &expected_path);
            report.push(format!("{label} saved here: {diff:.2e}"));
        }
    }
    println!("{}", report.join("\n"));
    println!("reft: {} checks", report.len());
    assert_eq!(report.len(), implied, "checks the manifest implies: {report:?}");
    // 16 cases, all with both formats: 13 x 3 + 3 DiReft x 5.
    assert_eq!(implied, 54, "reft_compacter_manifest.json ReFT checks");
}

#[test]
fn reft_positions_out_of_range_are_refused() {
    let m = manifest("reft_compacter_manifest.json");
    let info = &m["archs"]["bert"]["loreft_suffix20"];
    let (dir, _) = case_folders(info);
    let err = run("bert", &[dir], "loreft_suffix20").unwrap_err();
    assert!(err.contains("suffix_positions 20") && err.contains("row 1") && err.contains("6 tokens"), "{err}");
}

/// Loading a folder whose file lacks the shared parameters fails, naming them.
fn refused_without_shared(label: &str, arch: &str, folder: &Path, setup: &str) {
    let err = run(arch, &[folder.to_path_buf()], setup).unwrap_err();
    assert!(err.contains("shared_parameters") && err.contains("AdapterModel"), "{label} ({}): {err}", folder.display());
}

/// The folders of a reft/compacter/inv_vera case that has files: `dir`, then `dir_bin` where the
/// manifest records one (each must be there).
fn formats(label: &str, info: &Value) -> Vec<PathBuf> {
    std::iter::once(recorded(label, info["dir"].as_str().unwrap_or_else(|| panic!("{label}: no `dir`"))))
        .chain(info["dir_bin"].as_str().map(|d| recorded(label, d)))
        .collect()
}

fn format_name(folder: &Path) -> String {
    folder.file_name().unwrap().to_string_lossy().to_string()
}

#[test]
fn compacter_cases_match_python() {
    let m = manifest("reft_compacter_manifest.json");
    let is_compacter = |info: &Value| info["config"].as_str().is_some_and(|c| c.starts_with("CompacterConfig(") || c.starts_with("CompacterPlusPlusConfig("));
    // What the manifest implies: a refusal where Python raised; else per file format the output
    // (and, where the file lacks the shared parameters, first the refusal to load it alone),
    // then a save here.
    let mut implied = 0;
    for cases in m["archs"].as_object().unwrap().values() {
        for info in cases.as_object().unwrap().values().filter(|info| is_compacter(info)) {
            implied += if info["python_error"].is_string() {
                1
            } else {
                let formats = 1 + info["dir_bin"].is_string() as usize;
                formats * (1 + info["shared"].is_string() as usize) + 1
            };
        }
    }
    let mut report = Vec::new();
    for (arch, cases) in m["archs"].as_object().unwrap() {
        for (case, info) in cases.as_object().unwrap() {
            if !is_compacter(info) {
                assert!(!case.starts_with("compacter"), "{arch}/{case}: a Compacter case with another config");
                continue;
            }
            let label = format!("{arch}/{case}");
            if let Some(error) = info["python_error"].as_str() {
                // Python refuses these when it builds them; so does this library, with the reason.
                let config = match info["config"].as_str().unwrap() {
                    "CompacterConfig()" => "compacter".to_string(),
                    "CompacterPlusPlusConfig()" => "compacter++".to_string(),
                    other => {
                        assert!(other.contains("shared_W_phm=True, factorized_phm_W=False"), "{label}: {other}");
                        "compacter++[reduction_factor=4, shared_W_phm=True, factorized_phm_W=False]".to_string()
                    }
                };
                let mut model = load_model(&model_dir(arch)).unwrap();
                let err = AdapterConfig::parse(&config).and_then(|c| model.add_adapter(case, c)).unwrap_err().to_string();
                let want = if error.contains("UnboundLocalError") { "factorized_phm_W" } else { "divisible by phm_dim" };
                assert!(err.contains(want), "{label}: {err}");
                assert!(model.adapter_names().next().is_none(), "{label}: nothing added");
                report.push(format!("{label}: refused as in Python"));
                continue;
            }
            let expected = fixtures().join(info["output"].as_str().unwrap());
            let mut first = None;
            for folder in formats(&label, info) {
                let format = format_name(&folder);
                let complete = match info["shared"].as_str() {
                    Some(shared) => {
                        // Python's own files lack the shared parameters: a clear error, then the
                        // fixture's copy of them completes the file.
                        refused_without_shared(&label, arch, &folder, case);
                        report.push(format!("{label} ({format}) alone: refused, no shared parameters"));
                        with_shared(&label, &folder, &fixtures().join(shared))
                    }
                    None => folder.clone(),
                };
                let out = run(arch, std::slice::from_ref(&complete), case).unwrap_or_else(|e| panic!("{label} ({format}): {e}"));
                let diff = compare(&format!("{label} ({format})"), &out, &expected);
                report.push(format!("{label} ({format}): {diff:.2e}"));
                first.get_or_insert(complete);
            }
            let diff = round_trip(&label, arch, &[first.unwrap()], case, &expected);
            report.push(format!("{label} saved here: {diff:.2e}"));
        }
    }
    println!("{}", report.join("\n"));
    println!("compacter: {} checks", report.len());
    assert_eq!(report.len(), implied, "checks the manifest implies: {report:?}");
    // 20 cases: 7 refused; 12 with shared parameters and 1 without, all with both formats.
    assert_eq!(implied, 7 + 12 * 5 + 3, "reft_compacter_manifest.json Compacter checks");
}

#[test]
fn adapterplus_matches_python() {
    let m = manifest("inv_vera_manifest.json");
    let mut implied = 0;
    for cases in m["archs"].as_object().unwrap().values() {
        // the preset, each format, Python's default config (stochastic depth 0.1), a save here
        implied += 1 + 1 + cases["adapterplus_sd0"]["dir_bin"].is_string() as usize + 1 + 1;
    }
    let mut report = Vec::new();
    for (arch, cases) in m["archs"].as_object().unwrap() {
        // The full config (stochastic depth 0.1) is ours by name: the same dict as Python's class.
        let ours = AdapterConfig::parse("adapterplus").unwrap().to_json();
        assert_eq!(ours, cases["adapterplus"]["config_json"], "{arch}: adapterplus preset");
        report.push(format!("{arch}/adapterplus: preset is Python's dict"));
        // Python builds stochastic depth with torchvision (absent in the reference run), so its
        // outputs come from stochastic_depth = 0, which is the same function in evaluation.
        assert!(cases["adapterplus"]["python_error"].as_str().unwrap().contains("torchvision"), "{arch}: why Python has no output for the default");
        let label = format!("{arch}/adapterplus_sd0");
        let info = &cases["adapterplus_sd0"];
        let expected = fixtures().join(info["output"].as_str().unwrap());
        let folders = formats(&label, info);
        for folder in &folders {
            let out = run(arch, std::slice::from_ref(folder), "adapterplus_sd0").unwrap_or_else(|e| panic!("{label} ({}): {e}", format_name(folder)));
            let diff = compare(&format!("{label} ({})", format_name(folder)), &out, &expected);
            report.push(format!("{label} ({}): {diff:.2e}", format_name(folder)));
        }
        // Python's AdapterPlusConfig() (stochastic_depth 0.1) with these weights: the same
        // output in evaluation, where stochastic depth is the identity.
        let default = std::env::temp_dir().join(format!("adapters-adapterplus-{}-{arch}", std::process::id()));
        let _ = std::fs::remove_dir_all(&default);
        std::fs::create_dir_all(&default).unwrap();
        std::fs::copy(folders[0].join("adapter.safetensors"), default.join("adapter.safetensors")).unwrap();
        let mut json = read_json(&folders[0].join("adapter_config.json"));
        json["config"] = cases["adapterplus"]["config_json"].clone();
        assert_eq!(json["config"]["stochastic_depth"], 0.1, "{arch}: Python's default");
        std::fs::write(default.join("adapter_config.json"), serde_json::to_string_pretty(&json).unwrap()).unwrap();
        let out = run(arch, std::slice::from_ref(&default), "adapterplus_sd0").unwrap_or_else(|e| panic!("{arch}/adapterplus: {e}"));
        let diff = compare(&format!("{arch}/adapterplus (stochastic_depth 0.1, eval)"), &out, &expected);
        report.push(format!("{arch}/adapterplus (stochastic_depth 0.1, eval): {diff:.2e}"));
        let _ = std::fs::remove_dir_all(&default);
        let diff = round_trip(&label, arch, &folders[..1], "adapterplus_sd0", &expected);
        report.push(format!("{label} saved here: {diff:.2e}"));
    }
    println!("{}", report.join("\n"));
    println!("adapterplus: {} checks", report.len());
    assert_eq!(report.len(), implied, "checks the manifest implies: {report:?}");
    assert_eq!(implied, 4 * 5, "inv_vera_manifest.json AdapterPlus checks");
}

#[test]
fn vera_and_dvora_match_python() {
    let m = manifest("inv_vera_manifest.json");
    let is_vera = |info: &Value| info["config_json"]["architecture"] == "lora" && info["config_json"]["vera_d"].is_number();
    let in_file = |info: &Value, format: &str| {
        info[if format == "adapter" { "shared_saved_in_adapter_file" } else { "shared_saved_in_adapter_bin" }] == Value::Bool(true)
    };
    // What the manifest implies: per file format the output (and, where the file lacks the
    // shared parameters, first the refusal to load it alone), a save here, the merged output.
    let mut implied = 0;
    for cases in m["archs"].as_object().unwrap().values() {
        for info in cases.as_object().unwrap().values().filter(|info| is_vera(info)) {
            assert!(info["python_error"].is_null());
            implied += 1 + !in_file(info, "adapter") as usize;
            if info["dir_bin"].is_string() {
                implied += 1 + !in_file(info, "adapter_bin") as usize;
            }
            implied += 1 + info["output_merged"].is_string() as usize;
        }
    }
    let mut report = Vec::new();
    for (arch, cases) in m["archs"].as_object().unwrap() {
        for (case, info) in cases.as_object().unwrap() {
            if !is_vera(info) {
                continue;
            }
            let label = format!("{arch}/{case}");
            let expected = fixtures().join(info["output"].as_str().unwrap());
            let mut first = None;
            for folder in formats(&label, info) {
                let format = format_name(&folder);
                let complete = if in_file(info, &format) {
                    folder.clone() // saved from an AdapterModel: the shared pair is in the file
                } else {
                    refused_without_shared(&label, arch, &folder, case);
                    report.push(format!("{label} ({format}) alone: refused, no shared parameters"));
                    with_shared(&label, &folder, &fixtures().join(info["shared"].as_str().unwrap()))
                };
                let out = run(arch, std::slice::from_ref(&complete), case).unwrap_or_else(|e| panic!("{label} ({format}): {e}"));
                let diff = compare(&format!("{label} ({format})"), &out, &expected);
                report.push(format!("{label} ({format}): {diff:.2e}"));
                first.get_or_insert(complete);
            }
            let folder = first.unwrap();
            let diff = round_trip(&label, arch, std::slice::from_ref(&folder), case, &expected);
            report.push(format!("{label} saved here: {diff:.2e}"));
            if let Some(merged) = info["output_merged"].as_str() {
                let mut model = load_model(&model_dir(arch)).unwrap();
                model.load_adapter(&folder, None).unwrap();
                model.set_active_adapters(AdapterSetup::from(case.as_str())).unwrap();
                model.merge_adapter(case).unwrap();
                let (ids, mask) = arch_inputs(arch);
                let diff = compare(&format!("{label} merged"), &model.forward(&ids, &mask).unwrap(), &fixtures().join(merged));
                report.push(format!("{label} merged: {diff:.2e}"));
            }
        }
    }
    println!("{}", report.join("\n"));
    println!("vera: {} checks", report.len());
    assert_eq!(report.len(), implied, "checks the manifest implies: {report:?}");
    // 6 cases with both formats and a merged output; only vera_adapter_model's files hold the
    // shared pair: 5 x 6 + 1 x 4.
    assert_eq!(implied, 34, "inv_vera_manifest.json VeRA checks");
    // The presets write the dicts Python's VeraConfig and DvoRAConfig write.
    for (preset, case) in [("vera", "vera"), ("dvora", "dvora")] {
        let python = &m["archs"]["bert"][case]["config_json"];
        let ours = AdapterConfig::parse(preset).unwrap().to_json();
        for (key, value) in python.as_object().unwrap() {
            if !["r", "alpha", "attn_matrices", "leave_out"].contains(&key.as_str()) || case == "dvora" {
                assert_eq!(&ours[key], value, "{preset}: `{key}`");
            }
        }
    }
}

/// Loads `folder` into a fresh model, activates `setup` and checks `last_hidden_state` and, where
/// the fixture has them, the head's logits. Returns the max |diff| of the hidden state.
fn check_with_head(label: &str, arch: &str, folder: &Path, setup: &str, expected: &std::collections::HashMap<String, candle_core::Tensor>) -> f32 {
    let mut model = load_model(&model_dir(arch)).unwrap();
    model.load_adapter(folder, None).unwrap_or_else(|e| panic!("{label}: {e}"));
    model.set_active_adapters(AdapterSetup::from(setup)).unwrap();
    let (ids, mask) = arch_inputs(arch);
    let out = model.forward_with_head(&ids, &mask).unwrap();
    let diff = max_abs_diff(&out.last_hidden_state, &expected["last_hidden_state"]);
    assert!(diff <= TOLERANCE, "{label}: last_hidden_state {diff}");
    match (expected.get("logits"), out.head.as_ref()) {
        (Some(want), Some(head)) => {
            // The masked LM head runs the invertible adapter in reverse before its decoder.
            let d = max_abs_diff(head.logits(), want);
            assert!(d <= TOLERANCE, "{label}: logits {d}");
        }
        (Some(_), None) => panic!("{label}: no head output"),
        (None, head) => assert!(head.is_none(), "{label}: a head output the fixture does not have"),
    }
    diff
}

#[test]
fn invertible_adapters_match_python() {
    let m = manifest("inv_vera_manifest.json");
    let is_invertible = |info: &Value| info["config_json"]["inv_adapter"].is_string();
    // What the manifest implies: where Python fails (GLOW) a refusal per file format; else each
    // format and a save here.
    let mut implied = 0;
    for cases in m["archs"].as_object().unwrap().values() {
        for info in cases.as_object().unwrap().values().filter(|info| is_invertible(info)) {
            let formats = 1 + info["dir_bin"].is_string() as usize;
            implied += formats + info["python_error"].is_null() as usize;
        }
    }
    let mut report = Vec::new();
    for (arch, cases) in m["archs"].as_object().unwrap() {
        for (case, info) in cases.as_object().unwrap() {
            if !is_invertible(info) {
                continue;
            }
            let label = format!("{arch}/{case}");
            let folders = formats(&label, info);
            if let Some(error) = info["python_error"].as_str() {
                // Python's GLOW block fails on every sequence input; loading it says so.
                assert_eq!(info["config_json"]["inv_adapter"], "glow", "{label}: {error}");
                for folder in &folders {
                    let err = run(arch, std::slice::from_ref(folder), case).unwrap_err();
                    assert!(err.contains("glow") && err.contains("nice"), "{label} ({}): {err}", format_name(folder));
                    report.push(format!("{label} ({}): refused", format_name(folder)));
                }
                continue;
            }
            let expected_path = fixtures().join(info["output"].as_str().unwrap());
            let expected = read(&expected_path);
            for folder in &folders {
                let diff = check_with_head(&format!("{label} ({})", format_name(folder)), arch, folder, case, &expected);
                report.push(format!("{label} ({}): {diff:.2e}", format_name(folder)));
            }
            // Saved here (with the head, where there is one), reloaded into a fresh model.
            let mut model = load_model(&model_dir(arch)).unwrap();
            model.load_adapter(&folders[0], None).unwrap();
            let saved = std::env::temp_dir().join(format!("adapters-inv-{}-{arch}-{case}", std::process::id()));
            let _ = std::fs::remove_dir_all(&saved);
            model.save_adapter(&saved, case).unwrap();
            let diff = check_with_head(&format!("{label} saved here"), arch, &saved, case, &expected);
            report.push(format!("{label} saved here: {diff:.2e}"));
            let _ = std::fs::remove_dir_all(&saved);
        }
    }
    println!("{}", report.join("\n"));
    println!("invertible: {} checks", report.len());
    assert_eq!(report.len(), implied, "checks the manifest implies: {report:?}");
    // 13 cases, all with both formats: 3 GLOW x 2 refusals, 10 x (2 formats + a save here).
    assert_eq!(implied, 36, "inv_vera_manifest.json invertible checks");
}
