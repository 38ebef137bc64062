//! MiniLM forward, batch 8 x seq 128, CPU, in f32, bf16 and f16: the base model and LoRA /
//! seq_bn adapters, as ratios to the f32 base (medians of interleaved runs); the base at batch 1
//! x seq 32 (`base_1x32`, interactive latency); each dtype's distance from f32.
//! `cargo bench -p adapters-tests --bench dtype`; PyTorch beside it:
//! `python scripts/bench_dtype.py` (same model, batch and settings).
//! Needs MiniLM (`scripts/fetch_minilm.sh`). `BENCH_RUNS` sets the runs per setting (default 5).

/// As the shipped binary: mimalloc keeps freed buffers for reuse.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use adapters_models::{load_model_with, LoadOptions};
use adapters_runtime::methods::init::Placement;
use adapters_runtime::{AdapterConfig, AdapterSetup, DynAdaptedModel};
use candle_core::{DType, Device, Tensor};

fn main() {
    adapters_runtime::allocator::keep_freed_memory();
    adapters_runtime::nn::configure_threads();
    let dir = adapters_tests::minilm_dir();
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let ids = Tensor::rand(0f32, 30000.0, (8, 128), &Device::Cpu).unwrap().to_dtype(DType::I64).unwrap();
    let mask = Tensor::ones((8, 128), DType::I64, &Device::Cpu).unwrap();
    let dtypes = [DType::F32, DType::BF16, DType::F16];
    let mut models: Vec<Box<DynAdaptedModel>> = dtypes
        .iter()
        .map(|&dtype| {
            let options = LoadOptions { placement: Placement::new(Device::Cpu, dtype), ..LoadOptions::default() };
            let mut model = load_model_with(&dir, options).unwrap_or_else(|e| panic!("{e} (run scripts/fetch_minilm.sh)"));
            for m in ["seq_bn", "lora"] {
                model.add_adapter(m, AdapterConfig::parse(m).unwrap()).unwrap();
            }
            model
        })
        .collect();
    let setups = [None, Some("seq_bn"), Some("lora")];
    // times[dtype][setup]
    let mut times = vec![vec![Vec::new(); setups.len()]; dtypes.len()];
    for round in 0..=runs {
        for (s, setup) in setups.iter().enumerate() {
            for (d, model) in models.iter_mut().enumerate() {
                match setup {
                    Some(name) => model.set_active_adapters(AdapterSetup::from(*name)).unwrap(),
                    None => model.deactivate_adapters(),
                }
                let start = Instant::now();
                let out = model.forward(&ids, &mask).unwrap();
                let elapsed = start.elapsed().as_secs_f64() * 1000.0;
                drop(out);
                if round > 0 {
                    times[d][s].push(elapsed); // round 0 warms up
                }
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    // Interactive latency: one sequence of 32 tokens, the base model (more runs: each is short).
    let (ids_1, mask_1) = (ids.narrow(0, 0, 1).unwrap().narrow(1, 0, 32).unwrap(), mask.narrow(0, 0, 1).unwrap().narrow(1, 0, 32).unwrap());
    let mut latency = vec![Vec::new(); dtypes.len()];
    for round in 0..=4 * runs {
        for (d, model) in models.iter_mut().enumerate() {
            model.deactivate_adapters();
            let start = Instant::now();
            drop(model.forward(&ids_1, &mask_1).unwrap());
            if round > 0 {
                latency[d].push(start.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    // How far each dtype's output is from f32's, for every setting: the largest difference
    // relative to the largest f32 value, and the mean relative difference.
    let mut accuracy = Vec::new();
    for setup in setups {
        let outs: Vec<Tensor> = models
            .iter_mut()
            .map(|model| {
                match setup {
                    Some(name) => model.set_active_adapters(AdapterSetup::from(name)).unwrap(),
                    None => model.deactivate_adapters(),
                }
                model.forward(&ids, &mask).unwrap().to_dtype(DType::F32).unwrap()
            })
            .collect();
        let scale = outs[0].abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        for (d, out) in outs.iter().enumerate().skip(1) {
            let diff = (out - &outs[0]).unwrap().abs().unwrap();
            let max = diff.max_all().unwrap().to_scalar::<f32>().unwrap() / scale;
            let mean = (diff.sum_all().unwrap().to_scalar::<f32>().unwrap() / outs[0].abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap()).abs();
            accuracy.push((format!("{:?}", dtypes[d]), setup.unwrap_or("base"), max, mean));
        }
    }
    let f32_base = median(&mut times[0][0].clone());
    println!("MiniLM forward, batch 8 x seq 128, CPU, median of {runs} interleaved runs");
    println!("{:<8}{:<10}{:>10}{:>12}{:>14}", "dtype", "setting", "ms", "x f32 base", "x f32 same");
    for (s, setup) in setups.iter().enumerate() {
        let f32_same = median(&mut times[0][s].clone());
        for (d, dtype) in dtypes.iter().enumerate() {
            let ms = median(&mut times[d][s]);
            println!("{:<8}{:<10}{ms:>10.1}{:>12.3}{:>14.3}", format!("{dtype:?}"), setup.unwrap_or("base"), ms / f32_base, ms / f32_same);
        }
    }
    let f32_latency = median(&mut latency[0].clone());
    for (d, dtype) in dtypes.iter().enumerate() {
        let ms = median(&mut latency[d]);
        println!("{:<8}{:<10}{ms:>10.2}{:>12.3}{:>14.3}", format!("{dtype:?}"), "base_1x32", ms / f32_latency, ms / f32_latency);
    }
    println!("{:<8}{:<10}{:>22}{:>22}", "dtype", "setting", "max |diff| / max |f32|", "sum |diff| / sum |f32|");
    for (dtype, setting, max, mean) in accuracy {
        println!("{dtype:<8}{setting:<10}{:>21.2}%{:>21.2}%", 100.0 * max, 100.0 * mean);
    }
}
