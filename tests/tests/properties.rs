//! Property tests: random and mutated inputs to the setup parser, the shorthand config parser,
//! `adapter_config.json` reading and the weights loader never panic; each gives a typed error or
//! a valid value (and a valid value survives its own round trip). 10,000 cases per property.

use std::collections::HashMap;

use adapters_models::load_model;
use adapters_runtime::{AdapterConfig, AdapterFile, AdapterSetup};
use adapters_tests::*;
use candle_core::{DType, Tensor};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::Value;

const CASES: u32 = 10_000;

fn config() -> ProptestConfig {
    ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() }
}

/// Runs `property` on `CASES` inputs; it returns whether the input was valid (or refused with
/// a typed error). Both kinds must occur: mutations that never fail would test nothing.
fn check<S: Strategy>(name: &str, strategy: S, property: impl Fn(S::Value) -> Result<bool, TestCaseError>) {
    let (valid, refused) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    // A fixed seed: every run draws the same inputs (a failure reproduces as it is).
    let rng = proptest::test_runner::TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha);
    let mut runner = proptest::test_runner::TestRunner::new_with_rng(config(), rng);
    let result = runner.run(&strategy, |input| {
        let cell = if property(input)? { &valid } else { &refused };
        cell.set(cell.get() + 1);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
    println!("{name}: {} cases, {} valid, {} refused with a typed error", valid.get() + refused.get(), valid.get(), refused.get());
    assert!(valid.get() > 0 && refused.get() > 0, "{name}: both valid and refused inputs");
}

/// One edit of a valid input: insert, delete or replace a character, or cut the text short.
fn mutate(valid: &'static [&'static str]) -> impl Strategy<Value = String> {
    (0..valid.len(), 0usize..4, any::<prop::sample::Index>(), any::<char>(), prop::sample::select(&b"[](),=|'\" {}:-.0123456789abz_"[..])).prop_map(
        move |(which, op, at, random, ascii)| {
            let mut chars: Vec<char> = valid[which].chars().collect();
            let i = at.index(chars.len() + 1);
            let c = if random.is_ascii_graphic() || random == ' ' { random } else { ascii as char };
            match op {
                0 => chars.insert(i, c),
                1 if i < chars.len() => {
                    chars.remove(i);
                }
                2 if i < chars.len() => chars[i] = c,
                _ => chars.truncate(i),
            }
            chars.into_iter().collect()
        },
    )
}

const SETUPS: &[&str] = &[
    "a",
    "Stack[a, b]",
    "Parallel[a, Stack[b, c]]",
    "BatchSplit[a, b, batch_sizes=[2, 2]]",
    "Average[a, b, weights=[0.3, 0.7]]",
    "Split[a, b, splits=[4, 5]]",
    "Fuse[a, b]",
    "Stack[a, Split[b, c, splits=[5, 4]]]",
];

#[test]
fn setup_parser_never_panics() {
    check("setup parser", prop_oneof![mutate(SETUPS), "[ -~]{0,48}"], |text| {
        let Ok(setup) = AdapterSetup::parse(&text) else { return Ok(false) };
        // What parses prints as text that parses to the same setup, and as JSON that reads
        // back (Average weights are normalised again on reading: equal up to rounding).
        let again = AdapterSetup::parse(&setup.to_string()).map(|s| s.to_json());
        prop_assert!(again.as_ref().is_ok_and(|j| same_json(j, &setup.to_json())), "{} printed as {}: {:?}", text, setup, again);
        let again = AdapterSetup::from_json(&setup.to_json()).map(|s| s.to_json());
        prop_assert!(again.as_ref().is_ok_and(|j| same_json(j, &setup.to_json())), "{}: {:?}", setup, again);
        Ok(true)
    });
}

/// Equal JSON, numbers within 1e-12 (relative).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            (x - y).abs() <= 1e-12 * x.abs().max(y.abs()).max(1.0)
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y)),
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w))),
        _ => a == b,
    }
}

const CONFIGS: &[&str] = &[
    "seq_bn",
    "lora[r=16,alpha=32, attn_matrices=['q','k']]",
    "seq_bn[reduction_factor={'0': 4, 'default': 8}, ln_before=True]",
    "prefix_tuning|seq_bn",
    "double_seq_bn[leave_out=[0, 1]]",
    "compacter++[reduction_factor=4, shared_W_phm=True]",
    "prompt_tuning[prompt_length=3, combine='prefix_after_bos']",
    "loreft[prefix_positions=2, suffix_positions=2]",
    "ia3",
    "unipelt[leave_out=[2]]",
];

#[test]
fn shorthand_parser_never_panics() {
    check("shorthand config parser", prop_oneof![mutate(CONFIGS), "[ -~]{0,64}"], |text| {
        let Ok(config) = AdapterConfig::parse(&text) else { return Ok(false) };
        // A parsed config writes a dict that reads back to the same dict.
        let json = config.to_json();
        let again = AdapterConfig::from_json(&json, "property test").map(|c| c.to_json());
        prop_assert_eq!(again.ok(), Some(json), "{}", text);
        Ok(true)
    });
}

/// Python's `adapter_config.json` files of several methods.
fn config_files() -> Vec<Value> {
    [
        "tiny/bert/seq_bn/adapter",
        "tiny/bert/lora/adapter",
        "tiny/bert/dora/adapter",
        "tiny/bert/seq_bn_custom/adapter",
        "prefix/bert/prefix_tuning/adapter",
        "prefix/bert/unipelt/adapter",
        "reft_compacter/bert/loreft/adapter",
        "reft_compacter/bert/compacter_local_rule/adapter",
        "inv_vera/bert/vera/adapter",
        "inv_vera/bert/seq_bn_inv/adapter",
    ]
    .iter()
    .map(|d| {
        let path = fixture_path(&fixtures().join(d).join("adapter_config.json"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    })
    .collect()
}

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop::sample::select(vec![-1.0, 0.0, 0.5, 1e30, f64::MIN_POSITIVE]).prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::String),
        prop::sample::select(vec!["seq_bn", "lora", "union", "prefix_tuning", "reft", "relu", "bert"]).prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4).prop_map(|m| Value::Object(m.into_iter().collect()))
        ]
    })
}

/// Replaces or removes the value at a random place of `value`.
fn edit(value: &mut Value, path: &[prop::sample::Index], replacement: Option<Value>) {
    let Some((at, rest)) = path.split_first() else { return };
    match value {
        Value::Object(map) if !map.is_empty() => {
            let key = map.keys().nth(at.index(map.len())).unwrap().clone();
            if rest.is_empty() || !(map[&key].is_object() || map[&key].is_array()) {
                match replacement {
                    Some(v) => map.insert(key, v),
                    None => map.remove(&key),
                };
            } else {
                edit(map.get_mut(&key).unwrap(), rest, replacement);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let i = at.index(items.len());
            if rest.is_empty() || !(items[i].is_object() || items[i].is_array()) {
                match replacement {
                    Some(v) => items[i] = v,
                    None => {
                        items.remove(i);
                    }
                }
            } else {
                edit(&mut items[i], rest, replacement);
            }
        }
        other => {
            if let Some(v) = replacement {
                *other = v;
            }
        }
    }
}

#[test]
fn adapter_config_json_never_panics() {
    let files = config_files();
    let strategy = (
        0..files.len(),
        prop::collection::vec(any::<prop::sample::Index>(), 1..4),
        prop::option::weighted(0.85, any_json()),
        prop::option::weighted(0.2, (any::<prop::sample::Index>(), any::<u8>())),
    );
    check("adapter_config.json reader", strategy, |(which, path, replacement, text_edit)| {
        let mut value = files[which].clone();
        edit(&mut value, &path, replacement);
        // Sometimes the edit is to the text itself: a byte changed, which may break the JSON
        // (serde's error; the reader's own path is `AdapterFile::read`, which maps it).
        if let Some((at, byte)) = text_edit {
            let mut text = serde_json::to_vec(&value).unwrap();
            let i = at.index(text.len());
            text[i] = byte;
            match serde_json::from_slice::<Value>(&text) {
                Ok(v) => value = v,
                Err(_) => return Ok(false),
            }
        }
        let Ok(file) = AdapterFile::from_json(value, "property test") else { return Ok(false) };
        // What reads writes back to JSON that reads to the same file.
        let again = AdapterFile::from_json(file.to_json(), "property test").map(|f| f.to_json());
        prop_assert_eq!(again.ok(), Some(file.to_json()));
        Ok(true)
    });
}

/// `tensors` (Python's seq_bn weights) with one tensor renamed, reshaped, retyped, dropped or
/// added, as the bytes of a safetensors file.
fn mutated_tensors(tensors: &HashMap<String, Tensor>, op: u8, at: prop::sample::Index, size: usize) -> Vec<u8> {
    let mut tensors = tensors.clone();
    let mut keys: Vec<String> = tensors.keys().cloned().collect();
    keys.sort();
    let key = keys[at.index(keys.len())].clone();
    let t = tensors.remove(&key).unwrap();
    match op % 6 {
        0 => {
            tensors.insert(format!("{key}x"), t);
        }
        1 => {
            tensors.insert(key, Tensor::zeros(size.max(1), DType::F32, t.device()).unwrap());
        }
        2 => {
            tensors.insert(key, t.to_dtype(DType::F16).unwrap());
        }
        3 => {
            tensors.insert(key, t.to_dtype(DType::I64).unwrap());
        }
        4 => {}
        _ => {
            tensors.insert(key.clone(), t.clone());
            tensors.insert(key.replace("adapter_up", "adapter_mid"), t);
        }
    }
    adapters_runtime::io::safetensors_bytes(&tensors).unwrap()
}

#[test]
fn weights_loader_never_panics_nor_half_loads() {
    let weights = fixtures().join("tiny/bert/seq_bn/adapter/adapter.safetensors");
    let good = std::fs::read(&weights).unwrap();
    let tensors = read(&weights);
    // One folder with Python's adapter_config.json; each case replaces its weights file.
    let dir = std::env::temp_dir().join(format!("adapters-prop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(fixtures().join("tiny/bert/seq_bn/adapter/adapter_config.json"), dir.join("adapter_config.json")).unwrap();
    let model = std::cell::RefCell::new(load_model(&fixtures().join("tiny/bert/model")).unwrap());
    let strategy = (0u8..4, any::<prop::sample::Index>(), any::<u8>(), any::<u8>(), 0usize..64, prop::collection::vec(any::<u8>(), 0..256));
    check("weights loader", strategy, |(kind, at, byte, op, size, noise)| {
        let mut bytes = good.clone();
        match kind {
            // One byte changed (the header is the first few hundred bytes).
            0 => {
                let i = at.index(bytes.len().min(1024));
                bytes[i] = byte;
            }
            // Cut short.
            1 => bytes.truncate(at.index(bytes.len())),
            // Random bytes.
            2 => bytes = noise,
            // A well-formed file with a wrong tensor.
            _ => bytes = mutated_tensors(&tensors, op, at, size),
        }
        std::fs::write(dir.join("adapter.safetensors"), &bytes).unwrap();
        let mut model = model.borrow_mut();
        match model.load_adapter(&dir, None) {
            Ok(name) => {
                model.delete_adapter(&name).unwrap();
                Ok(true)
            }
            Err(_) => {
                prop_assert!(model.adapter_names().next().is_none(), "nothing half-loaded");
                Ok(false)
            }
        }
    });
}
