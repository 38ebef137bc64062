//! `docs/model_overview.md` is generated from the mapping; this test fails when it drifts.

use std::path::Path;

#[test]
fn model_overview_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/model_overview.md");
    let generated = adapters_models::overview_markdown();
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(committed == generated, "docs/model_overview.md is out of date; regenerate with UPDATE_DOCS=1 cargo test --release -p adapters-tests --test docs");
    // Every model claims every method of its slot families, and RoBERTa reuses BERT's mixin.
    let mappings = adapters_models::all_mappings();
    let roberta = mappings.iter().find(|m| m.model_type == "roberta").unwrap();
    assert_eq!((roberta.layer_type, roberta.layer_mixin.name), ("RobertaLayer", "BertLayer"));
    let distil = mappings.iter().find(|m| m.model_type == "distilbert").unwrap();
    assert!(distil.config_keys.contains(&("hidden_size", "dim")));
}
