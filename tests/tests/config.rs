//! Shorthand strings, overrides and the `adapter_config.json` round trip.

use adapters_runtime::config::{AdapterFile, BnConfig, LoRAConfig};
use adapters_runtime::{AdapterConfig, AdapterError};
use adapters_tests::fixtures;

fn lora(s: &str) -> LoRAConfig {
    match AdapterConfig::parse(s).unwrap() {
        AdapterConfig::LoRA(c) => c,
        other => unreachable!("{s} parsed to {other:?}"),
    }
}

fn bn(s: &str) -> BnConfig {
    match AdapterConfig::parse(s).unwrap() {
        AdapterConfig::Bottleneck(c) => c,
        other => unreachable!("{s} parsed to {other:?}"),
    }
}

#[test]
fn overrides_apply_and_typos_are_named() {
    let c = lora("lora[r=16,alpha=32, attn_matrices=['q','k']]");
    assert_eq!((c.r, c.alpha), (16, 32.0));
    assert_eq!(c.attn_matrices, vec!["q", "k"]);
    let e = AdapterConfig::parse("lora[rr=4]").unwrap_err().to_string();
    assert!(e.contains("did you mean `r`"), "{e}");
    let e = AdapterConfig::parse("seq_bm").unwrap_err();
    assert!(matches!(e, AdapterError::UnknownMethod { .. }) && e.to_string().contains("did you mean `seq_bn`"), "{e}");
    let b = bn("seq_bn[reduction_factor={'0': 4, 'default': 8}, ln_before=True]");
    assert!(b.ln_before && b.original_ln_before);
    assert_eq!(b.reduction_factor.for_layer(0).unwrap(), 4.0);
    assert_eq!(b.reduction_factor.for_layer(3).unwrap(), 8.0);
    assert!(AdapterConfig::parse("mtl_lora").unwrap_err().to_string().contains("not supported by this version yet"));
    assert!(AdapterConfig::parse("ia3[r=2]").is_err());
    assert_eq!(AdapterConfig::parse("seq_bn|lora").unwrap().members().len(), 2);
    assert!(AdapterConfig::parse("seq_bn|").is_err());
    // Python's AdapterConfig.load refuses a union preset inside a `|` union (checked with
    // adapters 1.3.0: "lora|mam", "mam|lora", "seq_bn|unipelt" raise TypeError).
    for text in ["lora|mam", "mam|lora", "seq_bn|unipelt"] {
        let e = AdapterConfig::parse(text).unwrap_err().to_string();
        assert!(e.contains("cannot contain another union"), "{text}: {e}");
    }
}

#[test]
fn presets_equal_the_python_configs() {
    // The manifest records the full config dict Python wrote for each preset case.
    let m = adapters_tests::manifest();
    for case in ["seq_bn", "double_seq_bn", "par_bn", "scaled_par_bn", "lora", "ia3", "dora"] {
        let python = &m["archs"]["bert"]["cases"][case]["config_json"];
        let ours = AdapterConfig::parse(case).unwrap().to_json();
        assert_eq!(&ours, python, "{case}");
    }
}

#[test]
fn adapter_config_json_round_trips_and_keeps_unknown_keys() {
    let dir = fixtures().join("tiny/bert/lora/adapter");
    let file = AdapterFile::read(&dir).unwrap();
    let text = std::fs::read_to_string(dir.join("adapter_config.json")).unwrap();
    let python: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(file.to_json(), python);
    let mut with_extra = python.clone();
    with_extra["config"]["future_option"] = serde_json::json!(3);
    with_extra["trained_on"] = serde_json::json!("sst2");
    let again = AdapterFile::from_json(with_extra.clone(), "test").unwrap();
    assert_eq!(again.to_json(), with_extra, "unknown keys are kept, not dropped");
}
