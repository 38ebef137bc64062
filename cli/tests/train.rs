//! `adapters train`, `eval` and `predict` as a user runs them, on MiniLM with a few MR
//! sentences: the run learns (training loss falls when it revisits the same examples), saves an
//! adapter with its head that `eval` and `predict` load, and a bad data file names its line.

use std::path::{Path, PathBuf};
use std::process::Command;

use adapters_tests::minilm_dir;

fn adapters(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_adapters")).args(args).output().expect("the binary runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("adapters-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/mr").join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn train_eval_predict_round_trip() {
    let model = minilm_dir();
    assert!(model.join("tokenizer.json").is_file(), "MiniLM is missing: run scripts/fetch_minilm.sh");
    let work = tmp("run");
    // 32 training sentences seen 4 times: the loss must fall well below chance (ln 2 = 0.693).
    let lines: Vec<String> = std::fs::read_to_string(data("train.tsv")).unwrap().lines().take(33).map(String::from).collect();
    let train = work.join("train.tsv");
    std::fs::write(&train, lines.join("\n") + "\n").unwrap();
    let out = work.join("adapter");
    let (ok, stdout, stderr) = adapters(&[
        "train",
        "--model",
        s(&model),
        "--train",
        s(&train),
        "--dev",
        s(&train),
        "--method",
        "seq_bn",
        "--epochs",
        "4",
        "--batch-size",
        "8",
        "--lr",
        "3e-3",
        "--out",
        s(&out),
        "--quiet",
    ]);
    assert!(ok, "train failed: {stderr}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("train_report.json")).unwrap()).unwrap();
    let epochs = report["report"]["epochs"].as_array().unwrap();
    let first = epochs[0]["train_loss"].as_f64().unwrap();
    let last = epochs[3]["train_loss"].as_f64().unwrap();
    assert!(last < first && last < 0.5, "training loss should fall: {first} -> {last}\n{stdout}");
    assert_eq!(report["report"]["trainable_parameters"], 261_650, "seq_bn + 2-layer head on MiniLM, as Python counts");
    for file in ["adapter_config.json", "adapter.safetensors", "head_config.json", "model_head.safetensors"] {
        assert!(out.join(file).is_file(), "{file} saved");
    }

    let (ok, stdout, stderr) = adapters(&["eval", "--model", s(&model), "--adapter", s(&out), "--data", s(&train), "--quiet"]);
    assert!(ok, "eval failed: {stderr}");
    let accuracy: f64 = stdout.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(accuracy > 80.0, "the kept epoch fits its training sentences: {stdout}");
    // The dev set was the training file: eval on it reproduces the kept epoch's dev accuracy.
    let kept = epochs.iter().map(|e| e["dev_accuracy"].as_f64().unwrap()).fold(f64::MIN, f64::max);
    assert_eq!(format!("{:.2}", 100.0 * kept), format!("{accuracy:.2}"), "eval vs the kept epoch's dev accuracy: {stdout}");

    let texts = ["a gorgeous, moving film", "a dull mess"];
    let (ok, stdout, stderr) = adapters(&["predict", "--model", s(&model), "--adapter", s(&out), texts[0], texts[1]]);
    assert!(ok, "predict failed: {stderr}");
    // The same sentences through the library: the printed label is the head's arg-max under its
    // id2label name, with its softmax probability.
    let mut lib = adapters_models::load_model(&model).unwrap();
    let name = lib.load_adapter(&out, None).unwrap();
    lib.set_active_adapters(name.as_str()).unwrap();
    let encoder = adapters_runtime::training::TextEncoder::from_model_dir(&model, 64).unwrap();
    let enc = encoder.encode(&texts, &candle_core::Device::Cpu).unwrap();
    let logits = lib.forward_with_head(&enc.input_ids, &enc.attention_mask).unwrap().head.unwrap().logits().clone();
    let probs = candle_nn::ops::softmax(&logits, candle_core::D::Minus1).unwrap().to_vec2::<f32>().unwrap();
    let head = lib.head(&name).unwrap().config().clone();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), texts.len(), "one line per sentence: {stdout}");
    for ((line, text), p) in lines.iter().zip(texts).zip(&probs) {
        let best = if p[1] > p[0] { 1 } else { 0 };
        let want = format!("{}\t{:.3}\t{text}", head.label_name(best), p[best]);
        assert_eq!(*line, want, "predict agrees with the library");
        assert!(matches!(head.label_name(best).as_str(), "negative" | "positive"), "the labels of the data file: {line}");
    }
}

#[test]
fn bad_data_files_name_the_line() {
    let model = minilm_dir();
    let work = tmp("bad");
    let bad = work.join("bad.tsv");
    std::fs::write(&bad, "label\ttext\npositive\tfine\nnegative only one field\n").unwrap();
    let (ok, _, stderr) = adapters(&["train", "--model", s(&model), "--train", s(&bad), "--out", s(&work.join("o")), "--quiet"]);
    assert!(!ok);
    assert!(stderr.contains("bad.tsv: line 3: expected 2 tab-separated fields"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    let (ok, _, stderr) =
        adapters(&["train", "--model", s(&model), "--train", s(&data("train.tsv")), "--method", "seq_bm", "--out", s(&work.join("o")), "--quiet"]);
    assert!(!ok);
    assert!(stderr.contains("--method") && stderr.contains("seq_bn"), "names the method and suggests: {stderr}");
}

#[test]
fn prompt_from_text_and_fusion_train_from_the_command_line() {
    let model = minilm_dir();
    let work = tmp("prompt-fusion");
    let lines: Vec<String> = std::fs::read_to_string(data("train.tsv")).unwrap().lines().take(5).map(String::from).collect();
    let train = work.join("train.tsv");
    std::fs::write(&train, lines.join("\n") + "\n").unwrap();
    // lr 0: the saved prompt is its initial value, the word embeddings of the tokenized text
    // ([CLS] classify the sentiment [SEP], ids from Python's tokenizer in the fixture manifest).
    let out = work.join("prompt");
    let method = "prompt_tuning[prompt_length=5, prompt_init='from_string', prompt_init_text='classify the sentiment']";
    let (ok, _, stderr) =
        adapters(&["train", "--model", s(&model), "--train", s(&train), "--method", method, "--lr", "0", "--epochs", "1", "--out", s(&out), "--quiet"]);
    assert!(ok, "{stderr}");
    let saved = candle_core::safetensors::load(out.join("adapter.safetensors"), &candle_core::Device::Cpu).unwrap();
    let prompt = &saved["prompt_tuning.prompt_tunings.task.prompt_embedding.weight"];
    let weights = candle_core::safetensors::load(model.join("model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let table = weights.iter().find(|(k, _)| k.ends_with("word_embeddings.weight")).unwrap().1;
    let ids = candle_core::Tensor::new(&[101u32, 26268, 1996, 15792, 102], &candle_core::Device::Cpu).unwrap();
    let want = table.index_select(&ids, 0).unwrap();
    assert_eq!(adapters_tests::max_abs_diff(prompt, &want), 0.0);

    // Fusion over two saved adapters: the fusion layer and the head are written.
    let a = work.join("a");
    let b = work.join("b");
    for (dir, name) in [(&a, "a"), (&b, "b")] {
        let (ok, _, stderr) = adapters(&["train", "--model", s(&model), "--train", s(&train), "--name", name, "--epochs", "1", "--out", s(dir), "--quiet"]);
        assert!(ok, "{stderr}");
    }
    let fused = work.join("fused");
    let (ok, stdout, stderr) = adapters(&[
        "train",
        "--model",
        s(&model),
        "--train",
        s(&train),
        "--fuse",
        s(&a),
        "--fuse",
        s(&b),
        "--name",
        "mr",
        "--epochs",
        "1",
        "--out",
        s(&fused),
        "--quiet",
    ]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("fusion Fuse[a, b]"), "{stdout}");
    for file in ["adapter_fusion_config.json", "model_adapter_fusion.safetensors", "head_config.json", "model_head.safetensors"] {
        assert!(fused.join(file).is_file(), "{file} missing");
    }
    let (ok, _, stderr) = adapters(&["train", "--model", s(&model), "--train", s(&train), "--fuse", s(&a), "--out", s(&work.join("one")), "--quiet"]);
    assert!(!ok && stderr.contains("at least two"), "{stderr}");
}

/// `adapters train --task causal-lm` on the tiny Llama (word-level tokenizer, `w<id>`): a LoRA
/// adapter learns a repeated sentence (held-out loss on the same text falls), the report holds
/// the numbers and samples, and the saved adapter loads for generation.
#[test]
fn causal_lm_training_learns_and_saves_an_adapter() {
    let dir = tmp("causal-lm");
    let text = dir.join("text.txt");
    std::fs::write(&text, "w17 w33 w5 w6 w7 w8 w9 w10\n".repeat(8)).unwrap();
    let model = adapters_tests::fixtures().join("decoders").join("llama").join("model");
    let out = dir.join("out");
    let (ok, stdout, stderr) = adapters(&[
        "train",
        "--task",
        "causal-lm",
        "--model",
        s(&model),
        "--train",
        s(&text),
        "--test",
        s(&text),
        "--method",
        "lora[r=8,alpha=16,intermediate_lora=True,output_lora=True]",
        "--max-steps",
        "40",
        "--batch-size",
        "4",
        "--max-length",
        "9",
        "--lr",
        "0.02",
        "--sample",
        "w17 w33",
        "--out",
        s(&out),
        "--quiet",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("train_report.json")).unwrap()).unwrap();
    let (before, after) = (report["before"]["loss"].as_f64().unwrap(), report["after"]["loss"].as_f64().unwrap());
    assert!(after < 0.5 * before, "held-out loss {before} -> {after}");
    assert_eq!(report["samples"][0]["prompt"], "w17 w33");
    assert!(out.join("adapter_config.json").is_file());
    let (ok, generated, stderr) = adapters(&["generate", "--model", s(&model), "--adapter", s(&out), "--prompt", "w17 w33", "--max-new-tokens", "4"]);
    assert!(ok, "{stderr}");
    // The adapter learnt the sentence: it continues it (the base model does not).
    let (ok, base, _) = adapters(&["generate", "--model", s(&model), "--prompt", "w17 w33", "--max-new-tokens", "4"]);
    assert!(ok);
    assert_eq!(generated.split_whitespace().next(), Some("w5"), "{generated}");
    assert!(generated.contains("w6") && base.split_whitespace().next() != Some("w5"), "adapted {generated:?}, base {base:?}");
}

/// `adapters train --adapter DIR` continues a PEFT adapter (PEFT's DoRA on the tiny Llama's
/// q/v/o/gate/down projections): its loss on the text falls, and it is saved as a PEFT folder with
/// the trained tensors (every one PEFT wrote, with new values) that loads again.
#[test]
fn training_continues_a_peft_adapter_and_saves_it_as_peft() {
    let dir = tmp("continue-peft");
    let text = dir.join("text.txt");
    std::fs::write(&text, "w17 w33 w5 w6 w7 w8 w9 w10\n".repeat(8)).unwrap();
    let model = adapters_tests::fixtures().join("decoders").join("llama").join("model");
    let source = adapters_tests::fixtures().join("peft").join("llama").join("dora").join("adapter");
    let out = dir.join("out");
    let (ok, stdout, stderr) = adapters(&[
        "train",
        "--task",
        "causal-lm",
        "--model",
        s(&model),
        "--adapter",
        s(&source),
        "--train",
        s(&text),
        "--test",
        s(&text),
        "--max-steps",
        "20",
        "--batch-size",
        "4",
        "--max-length",
        "9",
        "--lr",
        "0.01",
        "--out",
        s(&out),
        "--quiet",
    ]);
    assert!(ok, "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("train_report.json")).unwrap()).unwrap();
    let (before, after) = (report["before"]["loss"].as_f64().unwrap(), report["after"]["loss"].as_f64().unwrap());
    assert!(after < 0.5 * before, "held-out loss {before} -> {after}");
    assert!(report["method"].as_str().unwrap().starts_with("dora (continued from"), "{}", report["method"]);
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!((config["peft_type"].as_str(), config["use_dora"].as_bool()), (Some("LORA"), Some(true)));
    let read = |d: &Path| adapters_runtime::io::read_weights(&d.join("adapter_model.safetensors"), &candle_core::Device::Cpu).unwrap();
    let (original, trained) = (read(&source), read(&out));
    let mut names: Vec<&String> = original.keys().collect();
    names.sort();
    let mut trained_names: Vec<&String> = trained.keys().collect();
    trained_names.sort();
    assert_eq!(names, trained_names, "the same PEFT tensors");
    let moved = names.iter().filter(|n| adapters_tests::max_abs_diff(&original[**n], &trained[**n]) > 1e-4).count();
    assert!(moved * 2 > names.len(), "only {moved} of {} tensors trained", names.len());
    let (ok, _, stderr) = adapters(&["generate", "--model", s(&model), "--adapter", s(&out), "--prompt", "w17 w33", "--max-new-tokens", "2"]);
    assert!(ok, "{stderr}");
}
