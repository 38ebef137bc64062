//! The `adapters forward` contract, run as a user runs it, against the Python fixtures.

use std::path::{Path, PathBuf};
use std::process::Command;

use adapters_tests::{expected, fixtures, max_abs_diff, TOLERANCE};

fn tiny(arch: &str) -> PathBuf {
    fixtures().join("tiny").join(arch)
}

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_adapters")).arg("forward").args(args).output().expect("the binary runs");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn out_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("adapters-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn forward_matches(args: &[&str], out: &Path, reference: &Path) {
    let (ok, stderr) = run(args);
    assert!(ok, "adapters forward {args:?} failed: {stderr}");
    let diff = max_abs_diff(&expected(out), &expected(reference));
    assert!(diff <= TOLERANCE, "{args:?}: max |diff| {diff:e}");
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn base_single_stack_and_merge_match_python() {
    let bert = tiny("bert");
    let model = bert.join("model");
    let inputs = bert.join("inputs.safetensors");
    let out = out_file("base.safetensors");
    forward_matches(&["--model", s(&model), "--inputs", s(&inputs), "--out", s(&out)], &out, &bert.join("base.safetensors"));

    let out = out_file("seq_bn.safetensors");
    let adapter = bert.join("seq_bn/adapter_bin");
    forward_matches(&["--model", s(&model), "--inputs", s(&inputs), "--out", s(&out), "--adapter", s(&adapter)], &out, &bert.join("seq_bn/output.safetensors"));

    let out = out_file("stack.safetensors");
    let (a, b) = (format!("a={}", s(&bert.join("stack/a"))), format!("b={}", s(&bert.join("stack/b"))));
    forward_matches(
        &["--model", s(&model), "--inputs", s(&inputs), "--out", s(&out), "--adapter", &a, "--adapter", &b, "--setup", "Stack[a, b]"],
        &out,
        &bert.join("stack/output.safetensors"),
    );

    let out = out_file("merged.safetensors");
    let lora = format!("x={}", s(&bert.join("lora/adapter")));
    forward_matches(
        &["--model", s(&model), "--inputs", s(&inputs), "--out", s(&out), "--adapter", &lora, "--merge", "x"],
        &out,
        &bert.join("lora/output_merged.safetensors"),
    );

    // The same setup given as an adapter_setup.json.
    let setup = out_file("adapter_setup.json");
    std::fs::write(&setup, r#"{"type": "Stack", "children": [{"type": "single", "children": ["a"]}, {"type": "single", "children": ["b"]}]}"#).unwrap();
    let out = out_file("stack_json.safetensors");
    forward_matches(
        &["--model", s(&model), "--inputs", s(&inputs), "--out", s(&out), "--adapter", &a, "--adapter", &b, "--setup", s(&setup)],
        &out,
        &bert.join("stack/output.safetensors"),
    );
}

#[test]
fn errors_are_one_line_and_name_the_problem() {
    let bert = tiny("bert");
    let model = bert.join("model");
    let inputs = bert.join("inputs.safetensors");
    let out = out_file("err.safetensors");
    let a = format!("a={}", s(&bert.join("stack/a")));
    let b = format!("b={}", s(&bert.join("stack/b")));
    let config = model.join("config.json");
    let base = bert.join("base.safetensors");
    let foreign = tiny("distilbert").join("lora/adapter");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--model", s(&bert), "--inputs", s(&inputs), "--out", s(&out)], "config.json"),
        (vec!["--model", s(&model), "--inputs", s(&config), "--out", s(&out)], "--inputs"),
        (vec!["--model", s(&model), "--inputs", s(&base), "--out", s(&out)], "`input_ids` is missing"),
        (vec!["--model", s(&model), "--inputs", s(&inputs), "--out", s(&out), "--adapter", &a, "--adapter", &b], "--setup"),
        (
            vec!["--model", s(&model), "--inputs", s(&inputs), "--out", s(&out), "--adapter", &a, "--adapter", &b, "--setup", "Fuse[a, b]"],
            "no fusion layer named `a,b`",
        ),
        (vec!["--model", s(&model), "--inputs", s(&inputs), "--out", s(&out), "--adapter", &a, "--setup", "Stack[a, zz]"], "no adapter named `zz`"),
        (vec!["--model", s(&model), "--inputs", s(&inputs), "--out", s(&out), "--adapter", &a, "--merge", "a"], "cannot be merged"),
        (vec!["--model", s(&model), "--inputs", s(&inputs), "--out", s(&out), "--adapter", s(&foreign)], "does not belong to adapter"),
        (vec!["--model", s(&model), "--inputs", s(&inputs), "--out", s(&out), "--fusion", s(&bert)], "adapter_fusion_config.json"),
        (vec!["--model", s(&model), "--inputs", s(&inputs), "--out", s(&out), "--device", "gpu"], "--device gpu: expected cpu, cuda, cuda:N or metal"),
        (vec!["--model", s(&model), "--inputs", s(&inputs), "--out", s(&out), "--dtype", "f64"], "--dtype"),
    ];
    for (args, needle) in cases {
        let (ok, stderr) = run(&args);
        assert!(!ok, "{args:?} should fail");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: one line, got {stderr:?}");
        assert!(stderr.contains(needle), "{args:?}: expected `{needle}` in {stderr:?}");
    }
}

#[test]
fn adapter_with_head_adds_logits_matching_python() {
    // DistilBERT needs no pooler, so the fixture model folder is used as it is.
    let arch = fixtures().join("tiny/distilbert");
    let inputs = arch.join("inputs.safetensors");
    for case in ["classification", "question_answering"] {
        let dir = fixtures().join("heads/distilbert").join(case).join("adapter");
        let out = out_file(&format!("head-{case}.safetensors"));
        let (ok, stderr) = run(&["--model", s(&arch.join("model")), "--inputs", s(&inputs), "--out", s(&out), "--adapter", s(&dir)]);
        assert!(ok, "{case}: {stderr}");
        let got = adapters_tests::read(&out);
        let want = adapters_tests::read(&fixtures().join("heads/distilbert").join(case).join("output.safetensors"));
        for key in ["last_hidden_state", "logits"] {
            let diff = max_abs_diff(&got[key], &want[key]);
            assert!(diff <= TOLERANCE, "{case}/{key}: max |diff| {diff:e}");
        }
    }
}

#[test]
fn composition_blocks_heads_and_fusion_from_the_command_line() {
    // Parallel with a head per channel: `logits.<head>` per head, rows grouped by channel.
    let case = fixtures().join("composition/bert/heads_parallel");
    let model_dir = adapters_tests::checkpoint_with("cli-heads", &tiny("bert").join("model"), Some(&fixtures().join("heads/bert/pooler.safetensors")), &[]);
    let inputs = tiny("bert").join("inputs.safetensors");
    let out = out_file("parallel_heads.safetensors");
    let (a, b) = (format!("a={}", s(&case.join("a"))), format!("b={}", s(&case.join("b"))));
    let (ok, stderr) = run(&[
        "--model",
        s(&model_dir),
        "--inputs",
        s(&inputs),
        "--out",
        s(&out),
        "--adapter",
        &a,
        "--adapter",
        &b,
        "--setup",
        s(&case.join("adapter_setup.json")),
    ]);
    assert!(ok, "{stderr}");
    let got = adapters_tests::read(&out);
    let want = adapters_tests::read(&case.join("output.safetensors"));
    for key in ["last_hidden_state", "logits.a", "logits.b"] {
        let diff = max_abs_diff(&got[key], &want[key]);
        assert!(diff <= TOLERANCE, "{key}: {diff:e}");
    }
    // Fuse with a fusion folder written by Python.
    let case = fixtures().join("composition/roberta/fuse_static");
    let out = out_file("fuse.safetensors");
    let (a, b) = (format!("a={}", s(&case.join("a"))), format!("b={}", s(&case.join("b"))));
    let (ok, stderr) = run(&[
        "--model",
        s(&tiny("roberta").join("model")),
        "--inputs",
        s(&tiny("roberta").join("inputs.safetensors")),
        "--out",
        s(&out),
        "--adapter",
        &a,
        "--adapter",
        &b,
        "--fusion",
        s(&case.join("fusion")),
        "--setup",
        "Fuse[a, b]",
    ]);
    assert!(ok, "{stderr}");
    let diff = max_abs_diff(&expected(&out), &expected(&case.join("output.safetensors")));
    assert!(diff <= TOLERANCE, "fuse: {diff:e}");
}

#[test]
fn every_method_family_runs_from_the_command_line() {
    let bert = tiny("bert");
    let (model, inputs) = (bert.join("model"), bert.join("inputs.safetensors"));
    let cases = fixtures();
    // (adapter folders, setup, Python's output): prefix tuning, prompt tuning (a longer output),
    // a union (mam) inside a Stack with a prefix, ReFT, Compacter (local rule), VeRA-free LoRA
    // union, and an invertible adapter.
    let runs: Vec<(Vec<String>, Option<&str>, PathBuf)> = vec![
        (vec![s(&cases.join("prefix/bert/prefix_tuning/adapter")).into()], None, cases.join("prefix/bert/prefix_tuning/output.safetensors")),
        (vec![s(&cases.join("prefix/bert/prompt_tuning/adapter")).into()], None, cases.join("prefix/bert/prompt_tuning/output.safetensors")),
        (vec![s(&cases.join("prefix/bert/mam/adapter")).into()], Some("Stack[mam]"), cases.join("prefix/bert/mam/output.safetensors")),
        (vec![s(&cases.join("prefix/bert/unipelt/adapter_bin")).into()], None, cases.join("prefix/bert/unipelt/output.safetensors")),
        (
            vec![format!("a={}", s(&cases.join("prefix/bert/prefix_stack/adapter/a"))), format!("b={}", s(&cases.join("prefix/bert/prefix_stack/adapter/b")))],
            Some("Stack[a, b]"),
            cases.join("prefix/bert/prefix_stack/output.safetensors"),
        ),
        (
            vec![s(&cases.join("reft_compacter/bert/loreft_positions/adapter")).into()],
            None,
            cases.join("reft_compacter/bert/loreft_positions/output.safetensors"),
        ),
        (
            vec![s(&cases.join("reft_compacter/bert/compacter_local_rule/adapter")).into()],
            None,
            cases.join("reft_compacter/bert/compacter_local_rule/output.safetensors"),
        ),
        (vec![s(&cases.join("inv_vera/bert/seq_bn_inv/adapter")).into()], None, cases.join("inv_vera/bert/seq_bn_inv/output.safetensors")),
    ];
    for (i, (adapters, setup, reference)) in runs.iter().enumerate() {
        let out = out_file(&format!("method-{i}.safetensors"));
        let mut args = vec!["--model", s(&model), "--inputs", s(&inputs), "--out", s(&out)];
        for a in adapters {
            args.extend(["--adapter", a.as_str()]);
        }
        if let Some(setup) = setup {
            args.extend(["--setup", setup]);
        }
        forward_matches(&args, &out, reference);
    }
}

/// `--dtype f16|bf16`: computed in half precision, written as f32, within 2 % of the largest
/// output value of Python's f32 output (the base models and a LoRA adapter with its head-less
/// output; tests/tests/half_precision.rs covers every case through the library).
#[test]
fn half_precision_outputs_are_f32_and_close_to_python() {
    for arch in ["bert", "roberta", "distilbert"] {
        let dir = tiny(arch);
        let (model, inputs) = (dir.join("model"), dir.join("inputs.safetensors"));
        let lora = dir.join("lora/adapter");
        for dtype in ["f16", "bf16"] {
            for (adapter, reference) in [(None, dir.join("base.safetensors")), (Some(&lora), dir.join("lora/output.safetensors"))] {
                let out = out_file(&format!("{arch}-{dtype}-{}.safetensors", adapter.is_some()));
                let mut args = vec!["--model", s(&model), "--inputs", s(&inputs), "--out", s(&out), "--dtype", dtype, "--device", "cpu"];
                if let Some(a) = adapter {
                    args.extend(["--adapter", s(a)]);
                }
                let (ok, stderr) = run(&args);
                assert!(ok, "{args:?}: {stderr}");
                let written = adapters_tests::read(&out)["last_hidden_state"].clone();
                assert_eq!(written.dtype(), candle_core::DType::F32, "{args:?}: the output is written as f32");
                let reference = expected(&reference);
                let relative = adapters_tests::max_rel_diff(&written, &reference);
                assert!(relative <= 0.02, "{args:?}: {:.3} % of the largest output", 100.0 * relative);
                // Not silently f32: the half-precision output differs from Python's f32 output.
                assert!(relative > 1e-5, "{args:?}: identical to f32 output");
            }
        }
    }
}

/// `adapters generate` streams the greedy continuation Python's `generate` gives on the tiny
/// Llama (its word-level tokenizer spells id `i` as `w<i>`), with and without an adapter.
#[test]
fn generate_streams_pythons_greedy_continuation() {
    let manifest = adapters_tests::read_json(&fixtures().join("decoders_manifest.json"));
    let model = fixtures().join("decoders").join("llama").join("model");
    for case in ["base", "lora"] {
        let entry = &manifest["archs"]["llama"]["generate"][case];
        let data = adapters_tests::read(&fixtures().join(entry["file"].as_str().unwrap()));
        // Row 0 is the prompt `<s> w17 w33 w5`, left-padded: the same continuation as unpadded.
        let row: Vec<i64> = data["sequences"].to_dtype(candle_core::DType::I64).unwrap().to_vec2::<i64>().unwrap().remove(0);
        let new = &row[row.len() - 6..];
        let words: Vec<String> = new.iter().filter(|&&id| id > 2).map(|id| format!("w{id}")).collect();
        let mut args =
            vec!["generate".to_string(), "--model".into(), s(&model).into(), "--prompt".into(), "w17 w33 w5".into(), "--max-new-tokens".into(), "6".into()];
        if let Some(dir) = entry["adapter"].as_str() {
            args.extend(["--adapter".into(), fixtures().join(dir).to_str().unwrap().into()]);
        }
        let out = Command::new(env!("CARGO_BIN_EXE_adapters")).args(&args).output().expect("the binary runs");
        assert!(out.status.success(), "{case}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.split_whitespace().collect::<Vec<_>>(), words, "{case}: {text}");
    }
    // An encoder checkpoint has no language-model decoder: a one-line error that says what to add.
    let bert = tiny("bert").join("model");
    let out = Command::new(env!("CARGO_BIN_EXE_adapters")).args(["generate", "--model", s(&bert), "--prompt", "hello"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.lines().count() == 1, "{stderr}");
}

/// `adapters merge` writes a checkpoint that loads as a plain model with the adapter's outputs:
/// Python's merged output on the tiny Llama (LoRA, AdapterHub folder) and PEFT's on BERT (PEFT
/// folders: LoRA, DoRA, and IA3 whose merge scales biases too) and on GPT-2 (whose Conv1D
/// weights are written transposed); a method that cannot merge is a one-line error and writes
/// nothing.
#[test]
fn merge_writes_a_plain_checkpoint_with_the_adapter_inside() {
    let llama = fixtures().join("decoders").join("llama");
    let gpt2 = fixtures().join("decoders").join("gpt2");
    let peft = |arch: &str, case: &str| fixtures().join("peft").join(arch).join(case);
    let bert_case = |case: &str| {
        (tiny("bert").join("model"), peft("bert", case).join("adapter"), tiny("bert").join("inputs.safetensors"), peft("bert", case).join("output.safetensors"))
    };
    let cases = [
        (llama.join("model"), llama.join("lora").join("lora"), llama.join("inputs.safetensors"), llama.join("lora").join("output_merged.safetensors")),
        bert_case("lora_qv"),
        bert_case("dora"),
        bert_case("ia3_default"),
        (
            gpt2.join("model"),
            peft("gpt2", "lora_conv1d").join("adapter"),
            gpt2.join("inputs.safetensors"),
            peft("gpt2", "lora_conv1d").join("output.safetensors"),
        ),
    ];
    for (i, (model, adapter, inputs, reference)) in cases.iter().enumerate() {
        let merged = out_file(&format!("merged-{i}"));
        let status =
            Command::new(env!("CARGO_BIN_EXE_adapters")).args(["merge", "--model", s(model), "--adapter", s(adapter), "--out", s(&merged)]).output().unwrap();
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        assert!(merged.join("config.json").is_file());
        let out = out_file(&format!("merged-{i}.safetensors"));
        forward_matches(&["--model", s(&merged), "--inputs", s(inputs), "--out", s(&out)], &out, reference);
    }
    let refused = out_file("merged-seq-bn");
    let status = Command::new(env!("CARGO_BIN_EXE_adapters"))
        .args(["merge", "--model", s(&llama.join("model")), "--adapter", s(&llama.join("seq_bn").join("seq_bn")), "--out", s(&refused)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(!status.status.success() && stderr.lines().count() == 1 && stderr.contains("merge"), "{stderr}");
    assert!(!refused.join("model.safetensors").exists());
}

/// `adapters inspect` names the format, method, fitting model types, tensors and parameter count
/// of each kind of folder and of a GGUF file, without loading a model.
#[test]
fn inspect_describes_folders_and_files() {
    let inspect = |path: &Path| -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_adapters")).args(["inspect", s(path), "--json"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let lora = inspect(&tiny("bert").join("lora").join("adapter"));
    assert_eq!((lora["format"].as_str(), lora["method"].as_str()), (Some("adapterhub adapter"), Some("lora")));
    assert_eq!(lora["fits"], serde_json::json!(["bert"]));
    let shapes: usize =
        lora["tensors"].as_array().unwrap().iter().map(|t| t[2].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).product::<usize>()).sum();
    assert!(shapes > 0 && lora["parameters"].as_u64() == Some(shapes as u64));
    let peft = inspect(&fixtures().join("peft").join("llama").join("lora_qv").join("adapter"));
    assert_eq!((peft["format"].as_str(), peft["method"].as_str()), (Some("peft adapter"), Some("lora")));
    assert!(peft["fits"].as_array().unwrap().contains(&serde_json::json!("llama")), "{}", peft["fits"]);
    assert_eq!(peft["tensors"].as_array().unwrap().len(), 12);
    // A named PEFT adapter, from the folder that holds its subfolder.
    let named = inspect(&fixtures().join("peft").join("llama").join("lora_named").join("adapter"));
    assert_eq!((named["format"].as_str(), named["method"].as_str()), (Some("peft adapter"), Some("lora")));
    assert!(named["folder"].as_str().unwrap().ends_with("other"), "{}", named["folder"]);
    let checkpoint = inspect(&fixtures().join("decoders").join("gemma2").join("model"));
    assert_eq!((checkpoint["format"].as_str(), checkpoint["method"].as_str()), (Some("model checkpoint"), Some("gemma2")));
    // The pickle format reads too (a Python-saved .bin adapter).
    let pickled = inspect(&fixtures().join("decoders").join("qwen2").join("lora").join("lora"));
    assert!(pickled["tensors"].as_array().unwrap().iter().any(|t| t[0].as_str().unwrap().ends_with("lora_A")), "{pickled}");
    let out = Command::new(env!("CARGO_BIN_EXE_adapters")).args(["inspect", "/nonexistent"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("/nonexistent"));
}

/// `--model` takes a hub id, resolved offline from the local Hugging Face cache (here a cache
/// laid out as `huggingface_hub` writes it: `models--ORG--NAME/refs/main` naming a snapshot);
/// an id not in the cache is an error naming the cache path.
#[test]
fn hub_ids_resolve_from_the_local_cache() {
    let cache = out_file("hf-cache");
    let repo = cache.join("models--tiny-org--tiny-bert");
    let snapshot = repo.join("snapshots").join("0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "0123abcd").unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny("bert").join("model").join(file), snapshot.join(file)).unwrap();
    }
    let out = out_file("hub.safetensors");
    let inputs = tiny("bert").join("inputs.safetensors");
    let run = |id: &str| {
        Command::new(env!("CARGO_BIN_EXE_adapters"))
            .env("HF_HUB_CACHE", &cache)
            .args(["forward", "--model", id, "--inputs", s(&inputs), "--out", s(&out)])
            .output()
            .unwrap()
    };
    let found = run("tiny-org/tiny-bert");
    assert!(found.status.success(), "{}", String::from_utf8_lossy(&found.stderr));
    let diff = max_abs_diff(&expected(&out), &expected(&tiny("bert").join("base.safetensors")));
    assert!(diff <= TOLERANCE, "{diff:e}");
    let missing = run("tiny-org/not-there");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success() && stderr.contains("not-there") && stderr.contains(s(&cache)), "{stderr}");
}

/// `adapters convert`: AdapterHub LoRA and IA3 folders to PEFT and back are bit-exact (every
/// tensor, the same outputs), and PEFT's own folder converts to an AdapterHub one with PEFT's
/// outputs; DoRA is refused in one line.
#[test]
fn convert_round_trips_between_formats() {
    let llama = fixtures().join("decoders").join("llama");
    let model = llama.join("model");
    let convert = |to: &str, input: &Path, output: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_adapters")).args(["convert", "--model", s(&model), "--to", to, s(input), s(output)]).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let inputs = llama.join("inputs.safetensors");
    for case in ["lora_all", "ia3"] {
        let original = llama.join(case).join(case);
        let peft = out_file(&format!("{case}-peft"));
        let back = out_file(&format!("{case}-back"));
        let (ok, err) = convert("peft", &original, &peft);
        assert!(ok, "{case}: {err}");
        assert!(peft.join("adapter_model.safetensors").is_file());
        let (ok, err) = convert("adapterhub", &peft, &back);
        assert!(ok, "{case}: {err}");
        let weights = |dir: &Path| {
            let file = adapters_runtime::io::find_weights(dir, "adapter.safetensors", "pytorch_adapter.bin").unwrap();
            adapters_runtime::io::read_weights(&file, &candle_core::Device::Cpu).unwrap()
        };
        let (a, b) = (weights(&original), weights(&back));
        // The round trip renames the adapter after the PEFT folder and writes names on the bare
        // model (Python's file carries `model.`): compare with both left out, bit for bit.
        let normal = |k: &str| -> String {
            let k = k.strip_prefix("model.").unwrap_or(k);
            k.split('.').filter(|part| !part.starts_with(case)).collect::<Vec<_>>().join(".")
        };
        let values = |m: &std::collections::HashMap<String, candle_core::Tensor>| -> std::collections::BTreeMap<String, Vec<f32>> {
            m.iter().map(|(k, t)| (normal(k), t.flatten_all().unwrap().to_vec1().unwrap())).collect()
        };
        let (a, b) = (values(&a), values(&b));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{case}: tensor names");
        let changed: Vec<&String> = a.iter().filter(|(k, v)| b[*k] != **v).map(|(k, _)| k).collect();
        assert!(changed.is_empty(), "{case}: the round trip changed {changed:?}");
        let out = out_file(&format!("{case}-peft.safetensors"));
        forward_matches(
            &["--model", s(&model), "--adapter", s(&peft), "--inputs", s(&inputs), "--out", s(&out)],
            &out,
            &llama.join(case).join("output.safetensors"),
        );
    }
    let from_peft = out_file("peft-to-adapterhub");
    let peft_dir = fixtures().join("peft").join("llama").join("lora_qv");
    let (ok, err) = convert("adapterhub", &peft_dir.join("adapter"), &from_peft);
    assert!(ok, "{err}");
    let out = out_file("peft-to-adapterhub.safetensors");
    forward_matches(&["--model", s(&model), "--adapter", s(&from_peft), "--inputs", s(&inputs), "--out", s(&out)], &out, &peft_dir.join("output.safetensors"));
    let (ok, err) = convert("peft", &llama.join("dora").join("dora"), &out_file("dora-peft"));
    assert!(!ok && err.lines().count() == 1 && err.contains("DoRA"), "{err}");
}

/// `transformers` loads what `adapters merge` writes as a plain model with the unmerged adapter's
/// outputs: `tests/fixtures/check_peft_rust.py` merged the tiny Llama's LoRA, BERT's PEFT IA3 (its
/// merge scales biases) and GPT-2's PEFT LoRA (Conv1D weights, written transposed), loaded each
/// with `transformers` and recorded the difference; the checkpoints merged today are byte for
/// byte the ones it checked.
#[test]
fn merged_checkpoints_are_the_ones_transformers_checked() {
    let record = adapters_tests::read_json(&fixtures().join("peft_written_manifest.json"));
    let cases = record["merged"].as_object().unwrap();
    for (case, entry) in cases {
        let diff = entry["max_abs_diff_transformers_vs_unmerged"].as_f64().unwrap();
        assert!(diff <= f64::from(TOLERANCE), "{case}: transformers on the merged checkpoint differed by {diff:e}");
        let path = |key: &str| fixtures().join(entry[key].as_str().unwrap());
        let merged = out_file(&format!("checked-merge-{case}"));
        let out = Command::new(env!("CARGO_BIN_EXE_adapters"))
            .args(["merge", "--model", s(&path("model")), "--adapter", s(&path("source")), "--out", s(&merged)])
            .output()
            .unwrap();
        assert!(out.status.success(), "{case}: {}", String::from_utf8_lossy(&out.stderr));
        for file in ["model.safetensors", "config.json"] {
            let (now, then) = (std::fs::read(merged.join(file)).unwrap(), std::fs::read(path("written").join(file)).unwrap());
            assert!(now == then, "{case}/{file}: differs from the checkpoint transformers checked (rerun check_peft_rust.py)");
        }
    }
    assert_eq!(cases.len(), 3);
}
