//! Every saved folder the fixture generators wrote is named by a manifest, which the parity
//! tests iterate with exact counts: no fixture sits on disk unread, and no manifest names a
//! folder that is missing.

use std::collections::BTreeSet;
use std::path::Path;

use adapters_tests::*;
use serde_json::Value;

/// Folders holding a saved adapter, head or fusion layer, relative to tests/fixtures.
fn saved_folders(dir: &Path, out: &mut BTreeSet<String>) {
    let mut marks = false;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            saved_folders(&path, out);
        } else if let Some(name) = path.file_name().and_then(|n| n.to_str()) {
            marks |= matches!(name, "adapter_config.json" | "head_config.json" | "adapter_fusion_config.json");
        }
    }
    if marks {
        out.insert(dir.strip_prefix(fixtures()).unwrap().to_string_lossy().into_owned());
    }
}

/// Every string of a manifest, and the folder of each string that names a file.
fn named(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::String(s) => {
            out.insert(s.trim_end_matches('/').to_string());
            if let Some((parent, _)) = s.rsplit_once('/') {
                out.insert(parent.to_string());
            }
        }
        Value::Array(items) => items.iter().for_each(|v| named(v, out)),
        Value::Object(map) => map.values().for_each(|v| named(v, out)),
        _ => {}
    }
}

#[test]
fn every_fixture_folder_is_named_by_a_manifest() {
    let mut on_disk = BTreeSet::new();
    saved_folders(&fixtures(), &mut on_disk);
    let mut listed = BTreeSet::new();
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().ends_with("manifest.json") {
            named(&serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap(), &mut listed);
        }
    }
    // manifest.json names cases, not folders: its layout rule (tests/fixtures/README.md).
    let m = manifest();
    for (arch, a) in m["archs"].as_object().unwrap() {
        let root = if arch == "minilm" { "minilm".to_string() } else { format!("tiny/{arch}") };
        for case in a["cases"].as_object().unwrap().keys() {
            listed.insert(format!("{root}/{case}/adapter"));
            if a["has_adapter_bin"] == Value::Bool(true) {
                listed.insert(format!("{root}/{case}/adapter_bin"));
            }
        }
        for case in m["stack"][arch]["cases"].as_object().into_iter().flatten().map(|(k, _)| k) {
            listed.insert(format!("{root}/{case}/a"));
            listed.insert(format!("{root}/{case}/b"));
        }
    }
    let unread: Vec<&String> = on_disk.iter().filter(|d| !listed.contains(*d)).collect();
    assert!(unread.is_empty(), "fixture folders no manifest names (so no test reads them): {unread:#?}");
    // The reverse: a folder a manifest names (by the layout rule) must exist.
    for (arch, a) in m["archs"].as_object().unwrap() {
        let root = if arch == "minilm" { "minilm".to_string() } else { format!("tiny/{arch}") };
        for case in a["cases"].as_object().unwrap().keys() {
            fixture_path(&fixtures().join(format!("{root}/{case}/adapter")));
        }
    }
    println!("{} saved fixture folders, each named by a manifest", on_disk.len());
}
