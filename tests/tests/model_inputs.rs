//! The model trait beyond encoders, proven on the existing models: position ids and a causal
//! mask (what decoders need) against the Python library running BERT and RoBERTa as decoders
//! (`is_decoder=True`) and with explicit position ids, bare and with adapters
//! (`tests/fixtures/generate_model_io.py`); causality checked directly for every case, including
//! those Python cannot run as decoders; a KV cache, where decoding token by token equals the
//! full causal pass; inputs a model does not take refused with a typed error.

use adapters_models::load_model;
use adapters_runtime::{AdapterError, AdapterSetup, InputKind, KvCache, ModelInputs};
use adapters_tests::*;
use candle_core::{DType, Device, IndexOp, Tensor};

fn model_io_manifest() -> serde_json::Value {
    read_json(&fixtures().join("model_io_manifest.json"))
}

#[test]
fn causal_masks_and_position_ids_match_python() {
    let manifest = model_io_manifest();
    let mut checked = 0;
    for arch in ["bert", "roberta"] {
        let data = fixtures().join("tiny").join(arch);
        let (ids, mask) = inputs(&data);
        let positions = read(&fixture_path(&fixtures().join("model_io").join(arch).join("position_ids.safetensors")))["position_ids"].clone();
        let cases = manifest["archs"][arch].as_object().unwrap_or_else(|| panic!("model_io manifest: no {arch}"));
        for (key, info) in cases {
            let mut model = load_model(&data.join("model")).unwrap();
            if let Some(adapter) = info["adapter"].as_str() {
                let name = model.load_adapter(fixture_path(&fixtures().join(adapter)), None).unwrap_or_else(|e| panic!("{arch}/{key}: {e}"));
                model.set_active_adapters(AdapterSetup::from(name.as_str())).unwrap();
            }
            let mut inputs = ModelInputs::text(ids.clone(), mask.clone());
            if info["causal"].as_bool().unwrap() {
                inputs = inputs.causal();
            }
            if info["position_ids"].as_bool().unwrap() {
                inputs = inputs.with_position_ids(positions.clone());
            }
            let out = model.forward_inputs(&inputs).unwrap_or_else(|e| panic!("{arch}/{key}: {e}")).last_hidden_state;
            let reference = expected(&fixture_path(&fixtures().join("model_io").join(arch).join(format!("{key}.safetensors"))));
            let diff = max_abs_diff(&out, &reference);
            assert!(diff <= TOLERANCE, "{arch}/{key}: max |diff| {diff:e}");
            // The inputs made a difference: the plain encoder output is another one.
            let plain = model.forward(&ids, &mask).unwrap();
            assert!(max_abs_diff(&plain, &reference) > 1e-3, "{arch}/{key}: same as without causal mask or positions");
            checked += 1;
        }
    }
    // 3 variants of base, seq_bn, lora; positions only for prefix and prompt tuning; two archs.
    assert_eq!(checked, 2 * (3 * 3 + 2));
}

/// Causal: changing the last token leaves every earlier position's output as it was (and
/// changes the last), for every case, with prefixes and prompts too (which Python cannot run
/// as decoders).
#[test]
fn causal_outputs_do_not_see_later_tokens() {
    let adapters = [
        None,
        Some("tiny/{arch}/seq_bn/adapter"),
        Some("tiny/{arch}/lora/adapter"),
        Some("prefix/{arch}/prefix_tuning/adapter"),
        Some("prefix/{arch}/prompt_tuning/adapter"),
    ];
    for arch in ["bert", "roberta"] {
        let data = fixtures().join("tiny").join(arch);
        // One unpadded row, so the last position is a real token.
        let ids = Tensor::new(&[[5i64, 17, 23, 42, 8, 13]], &Device::Cpu).unwrap();
        let mask = ids.ones_like().unwrap();
        let changed = ids.i((.., ..5)).unwrap();
        let changed = Tensor::cat(&[&changed, &Tensor::new(&[[77i64]], &Device::Cpu).unwrap()], 1).unwrap();
        for adapter in adapters {
            let mut model = load_model(&data.join("model")).unwrap();
            let label = format!("{arch} {adapter:?}");
            if let Some(path) = adapter {
                let name = model.load_adapter(fixtures().join(path.replace("{arch}", arch)), None).unwrap_or_else(|e| panic!("{label}: {e}"));
                model.set_active_adapters(AdapterSetup::from(name.as_str())).unwrap();
            }
            let run = |ids: &Tensor| model.forward_inputs(&ModelInputs::text(ids.clone(), mask.clone()).causal()).unwrap().last_hidden_state;
            let (a, b) = (run(&ids), run(&changed));
            let seq = a.dim(1).unwrap();
            let earlier = max_abs_diff(&a.i((.., ..seq - 1)).unwrap(), &b.i((.., ..seq - 1)).unwrap());
            assert!(earlier <= TOLERANCE, "{label}: earlier positions moved by {earlier:e}");
            let last = max_abs_diff(&a.i((.., seq - 1..)).unwrap(), &b.i((.., seq - 1..)).unwrap());
            assert!(last > 1e-3, "{label}: the changed token changed nothing");
        }
    }
}

#[test]
fn inputs_a_model_does_not_take_are_refused_by_name() {
    let data = fixtures().join("tiny");
    let (ids, mask) = inputs(&data.join("bert"));
    let pixels = Tensor::zeros((2, 3, 8, 8), DType::F32, &Device::Cpu).unwrap();
    let cache = KvCache::new();
    let cases: Vec<(&str, ModelInputs, InputKind)> = vec![
        ("distilbert", ModelInputs::text(ids.clone(), mask.clone()).causal(), InputKind::Causal),
        ("distilbert", ModelInputs::text(ids.clone(), mask.clone()).with_position_ids(ids.clone()), InputKind::PositionIds),
        ("distilbert", ModelInputs::text(ids.clone(), mask.clone()).causal().with_cache(&cache), InputKind::Causal),
        ("roberta", ModelInputs::text(ids.clone(), mask.clone()).with_encoder_hidden_states(ids.clone(), None), InputKind::EncoderHiddenStates),
        ("bert", ModelInputs::text(ids.clone(), mask.clone()).with_decoder_input_ids(ids.clone(), None), InputKind::DecoderInputIds),
        ("bert", ModelInputs::pixels(pixels), InputKind::PixelValues),
    ];
    for (arch, inputs, kind) in cases {
        let model = load_model(&data.join(arch).join("model")).unwrap();
        match model.forward_inputs(&inputs) {
            Err(AdapterError::InvalidInput(message)) => assert!(message.contains(&format!("does not take {kind:?}")), "{arch}: {message}"),
            other => panic!("{arch} {kind:?}: expected a refusal, got {:?}", other.map(|o| o.last_hidden_state.dims().to_vec())),
        }
    }
    // Without input ids a text model names what it needs.
    let model = load_model(&data.join("bert").join("model")).unwrap();
    let empty = ModelInputs { attention_mask: Some(mask), ..Default::default() };
    match model.forward_inputs(&empty) {
        Err(AdapterError::InvalidInput(message)) => assert!(message.contains("needs InputIds"), "{message}"),
        other => panic!("expected a refusal, got {:?}", other.map(|o| o.last_hidden_state.dims().to_vec())),
    }
}

#[test]
fn the_kv_cache_appends_per_layer() {
    let cache = KvCache::new();
    assert!(cache.is_empty());
    let k = Tensor::ones((1, 2, 3, 4), DType::F32, &Device::Cpu).unwrap();
    let (keys, values) = cache.append(0, &k, &k.zeros_like().unwrap()).unwrap();
    assert_eq!((keys.dims(), values.dims()), (&[1, 2, 3, 4][..], &[1, 2, 3, 4][..]));
    let (keys, _) = cache.append(0, &k.i((.., .., ..1)).unwrap(), &k.i((.., .., ..1)).unwrap()).unwrap();
    assert_eq!(keys.dims(), [1, 2, 4, 4]);
    assert_eq!(cache.len(), 4);
}

/// An error raised inside the forward pass (here: batch sizes that do not fit the batch) reaches
/// the caller as its typed variant, not as a candle message.
#[test]
fn errors_inside_the_forward_keep_their_type() {
    let data = fixtures().join("tiny").join("bert");
    let (ids, mask) = inputs(&data);
    let mut model = load_model(&data.join("model")).unwrap();
    let a = model.load_adapter(fixture_path(&data.join("stack/a")), Some("a")).unwrap();
    let b = model.load_adapter(fixture_path(&data.join("stack/b")), Some("b")).unwrap();
    let rows = ids.dim(0).unwrap();
    model.set_active_adapters(AdapterSetup::parse(&format!("BatchSplit[{a}, {b}, batch_sizes=[1, {}]]", rows + 5)).unwrap()).unwrap();
    match model.forward(&ids, &mask) {
        Err(AdapterError::InvalidInput(message)) => assert!(message.contains("batch_sizes"), "{message}"),
        other => panic!("expected InvalidInput, got {:?}", other.map(|t| t.dims().to_vec())),
    }
}

/// Decoding with a KV cache: the prompt, then one token per pass, each pass given only its new
/// tokens and a mask over everything so far, gives the full causal pass's output position by
/// position (bare, with a bottleneck, LoRA, and prefix tuning, whose prefixes are not cached).
#[test]
fn decoding_with_a_kv_cache_equals_the_full_causal_pass() {
    let adapters = [None, Some("tiny/{arch}/seq_bn/adapter"), Some("tiny/{arch}/lora/adapter"), Some("prefix/{arch}/prefix_tuning/adapter")];
    let mut checked = 0;
    for arch in ["bert", "roberta"] {
        let data = fixtures().join("tiny").join(arch);
        let ids = Tensor::new(&[[5i64, 17, 23, 42, 8, 13, 30], [7, 9, 11, 60, 2, 44, 3]], &Device::Cpu).unwrap();
        let seq = ids.dim(1).unwrap();
        for adapter in adapters {
            let mut model = load_model(&data.join("model")).unwrap();
            let label = format!("{arch} {adapter:?}");
            if let Some(path) = adapter {
                let name = model.load_adapter(fixtures().join(path.replace("{arch}", arch)), None).unwrap_or_else(|e| panic!("{label}: {e}"));
                model.set_active_adapters(AdapterSetup::from(name.as_str())).unwrap();
            }
            let full = model.forward_inputs(&ModelInputs::text(ids.clone(), ids.ones_like().unwrap()).causal()).unwrap().last_hidden_state;
            let cache = KvCache::new();
            let mut steps = Vec::new();
            for (start, len) in [(0, 4), (4, 1), (5, 2)] {
                let new = ids.i((.., start..start + len)).unwrap();
                let mask = ids.i((.., ..start + len)).unwrap().ones_like().unwrap();
                let out = model.forward_inputs(&ModelInputs::text(new, mask).causal().with_cache(&cache)).unwrap_or_else(|e| panic!("{label}: {e}"));
                assert_eq!(cache.len(), start + len, "{label}: cached positions");
                steps.push(out.last_hidden_state);
            }
            let stepped = Tensor::cat(&steps, 1).unwrap();
            assert_eq!(stepped.dims(), full.dims());
            let diff = max_abs_diff(&stepped, &full);
            assert!(diff <= TOLERANCE, "{label}: decoding with the cache differs from the full pass by {diff:e}");
            // The cache is what makes it work: the last step alone, without it, differs.
            let alone = model
                .forward_inputs(&ModelInputs::text(ids.i((.., seq - 2..)).unwrap(), ids.i((.., seq - 2..)).unwrap().ones_like().unwrap()).causal())
                .unwrap();
            assert!(max_abs_diff(&alone.last_hidden_state, &full.i((.., seq - 2..)).unwrap()) > 1e-3, "{label}: the cache changed nothing");
            checked += 1;
        }
    }
    assert_eq!(checked, 8);
}

#[test]
fn a_kv_cache_is_refused_where_it_cannot_work() {
    let data = fixtures().join("tiny").join("bert");
    let ids = Tensor::new(&[[5i64, 17, 23]], &Device::Cpu).unwrap();
    let mask = ids.ones_like().unwrap();
    let mut model = load_model(&data.join("model")).unwrap();
    let cache = KvCache::new();
    match model.forward_inputs(&ModelInputs::text(ids.clone(), mask.clone()).with_cache(&cache)) {
        Err(AdapterError::InvalidInput(message)) => assert!(message.contains("causal"), "{message}"),
        other => panic!("expected a refusal, got {:?}", other.map(|o| o.last_hidden_state.dims().to_vec())),
    }
    // Prompt tuning would prepend its prompt again on every pass.
    let name = model.load_adapter(fixture_path(&fixtures().join("prefix/bert/prompt_tuning/adapter")), None).unwrap();
    model.set_active_adapters(AdapterSetup::from(name.as_str())).unwrap();
    let first = model.forward_inputs(&ModelInputs::text(ids.clone(), mask.clone()).causal().with_cache(&cache));
    assert!(first.is_ok(), "the first pass fills the cache: {:?}", first.err());
    let next = Tensor::new(&[[8i64]], &Device::Cpu).unwrap();
    let mask = Tensor::ones((1, cache.len() + 1), DType::I64, &Device::Cpu).unwrap();
    match model.forward_inputs(&ModelInputs::text(next, mask).causal().with_cache(&cache)) {
        Err(AdapterError::InvalidInput(message)) => assert!(message.contains("prompt tuning"), "{message}"),
        other => panic!("expected a refusal, got {:?}", other.map(|o| o.last_hidden_state.dims().to_vec())),
    }
}
