//! The CLI contract's encoder-decoder and vision inputs: `adapters forward` with
//! `decoder_input_ids` writes the decoder's `last_hidden_state` and `encoder_last_hidden_state`,
//! with `pixel_values` the ViT's positions (CLS included); `adapters predict` classifies PNG and
//! JPEG files with a `ViTForImageClassification` checkpoint as Python's processor and model do.

use std::path::{Path, PathBuf};
use std::process::Command;

use adapters_tests::{fixtures, max_abs_diff, read, TOLERANCE};

fn adapters(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_adapters")).args(args).output().expect("the binary runs")
}

fn out_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("adapters-cli-{}-{name}.safetensors", std::process::id()))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn forward_writes_both_outputs_of_an_encoder_decoder() {
    let bart = fixtures().join("seq2seq/bart");
    let out = out_file("bart-cross");
    let adapter = bart.join("seq_bn_cross/seq_bn_cross");
    let run =
        adapters(&["forward", "--model", s(&bart.join("model")), "--inputs", s(&bart.join("inputs.safetensors")), "--out", s(&out), "--adapter", s(&adapter)]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let (written, reference) = (read(&out), read(&bart.join("seq_bn_cross/output.safetensors")));
    for key in ["last_hidden_state", "encoder_last_hidden_state"] {
        let diff = max_abs_diff(&written[key], &reference[key]);
        assert!(diff <= TOLERANCE, "{key}: {diff:e}");
    }
    // A converted seq2seq head is active on a *ForConditionalGeneration checkpoint: its logits too.
    assert_eq!(written["logits"].dims(), &[2, 7, 128]);
    let _ = std::fs::remove_file(&out);

    // Text inputs without decoder_input_ids: one line naming what is missing, no output file.
    let tiny_inputs = fixtures().join("tiny/bert/inputs.safetensors");
    let out = out_file("bart-missing");
    let run = adapters(&["forward", "--model", s(&bart.join("model")), "--inputs", s(&tiny_inputs), "--out", s(&out)]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && stderr.contains("DecoderInputIds") && stderr.lines().count() == 1, "{stderr}");
    assert!(!out.exists());
}

#[test]
fn forward_takes_pixel_values_for_vit() {
    let vit = fixtures().join("vision/vit");
    let out = out_file("vit-prompt");
    let adapter = vit.join("prompt_tuning/prompt_tuning");
    let run =
        adapters(&["forward", "--model", s(&vit.join("model")), "--inputs", s(&vit.join("inputs.safetensors")), "--out", s(&out), "--adapter", s(&adapter)]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let (written, reference) = (read(&out), read(&vit.join("prompt_tuning/output.safetensors")));
    // 3 prompt positions, CLS, 16 patches.
    assert_eq!(written["last_hidden_state"].dims(), &[2, 20, 32]);
    let diff = max_abs_diff(&written["last_hidden_state"], &reference["last_hidden_state"]);
    assert!(diff <= TOLERANCE, "{diff:e}");
    let _ = std::fs::remove_file(&out);
}

/// `adapters predict` on image files: the label and probability Python's ViTImageProcessor and
/// `ViTForImageClassification` give (PNG bit for bit; JPEG through another decoder, whose pixels
/// differ by a few levels, so its probability is compared loosely).
#[test]
fn predict_classifies_images_as_python_does() {
    let manifest = adapters_tests::read_json(&fixtures().join("vision_manifest.json"));
    let files = manifest["images"]["files"].as_object().unwrap();
    let names: Vec<&String> = files.keys().collect();
    let paths: Vec<PathBuf> = names.iter().map(|n| fixtures().join(files[*n]["image"].as_str().unwrap())).collect();
    let model = fixtures().join("vision/vit/model_cls");
    let mut args = vec!["predict", "--model", s(&model)];
    args.extend(paths.iter().map(|p| s(p)));
    let run = adapters(&args);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), names.len(), "{stdout}");
    for (name, line) in names.iter().zip(lines) {
        let entry = &files[*name];
        let logits = read(&fixtures().join(entry["expected"].as_str().unwrap()))["logits"].clone();
        let probs = candle_nn::ops::softmax(&logits, candle_core::D::Minus1).unwrap().to_vec2::<f32>().unwrap().remove(0);
        let best = probs.iter().cloned().fold(f32::MIN, f32::max);
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields[0], entry["predicted_label"].as_str().unwrap(), "{name}: {line}");
        let printed: f32 = fields[1].parse().unwrap();
        let tolerance = if name.ends_with(".jpg") { 0.05 } else { 0.0005 };
        assert!((printed - best).abs() <= tolerance, "{name}: {printed} vs Python's {best}");
    }
    // A missing image: one line naming the file.
    let run = adapters(&["predict", "--model", s(&model), "no_such_image.png"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success() && stderr.contains("no_such_image.png") && stderr.lines().count() == 1, "{stderr}");
}

/// `adapters generate` on an encoder-decoder: the encoder reads the prompt once and the decoder
/// streams Python's greedy continuation (tiny BART; its word-level tokenizer spells id `i` as
/// `w<i>`, and the prompt is row 0 of the fixture inputs), with and without an adapter.
#[test]
fn generate_streams_an_encoder_decoders_greedy_continuation() {
    let manifest = adapters_tests::read_json(&fixtures().join("seq2seq_manifest.json"));
    let model = fixtures().join("seq2seq/bart/model");
    for case in ["base", "seq_bn_cross"] {
        let entry = &manifest["archs"]["bart"]["generate"][case];
        let data = read(&fixtures().join(entry["file"].as_str().unwrap()));
        let prompt: Vec<i64> = data["input_ids"].to_vec2::<i64>().unwrap().remove(0);
        let prompt: Vec<String> = prompt[1..].iter().map(|id| format!("w{id}")).collect();
        // The decoder's tokens after its start token.
        let row: Vec<i64> = data["sequences"].to_dtype(candle_core::DType::I64).unwrap().to_vec2::<i64>().unwrap().remove(0);
        let words: Vec<String> = row[1..].iter().map(|id| format!("w{id}")).collect();
        let prompt = prompt.join(" ");
        let mut args = vec!["generate", "--model", s(&model), "--prompt", prompt.as_str(), "--max-new-tokens", "6"];
        let adapter = entry["adapter"].as_str().map(|dir| fixtures().join(dir));
        if let Some(dir) = &adapter {
            args.extend(["--adapter", s(dir)]);
        }
        let run = adapters(&args);
        assert!(run.status.success(), "{case}: {}", String::from_utf8_lossy(&run.stderr));
        let text = String::from_utf8_lossy(&run.stdout);
        assert_eq!(text.split_whitespace().collect::<Vec<_>>(), words, "{case}: {text}");
    }
}
