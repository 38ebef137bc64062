//! MiniLM forward, batch 8 x seq 128, f32, CPU: the base model and each method, as ratios to
//! the base (medians of interleaved runs). `cargo bench -p adapters-tests --bench forward`.
//! Needs MiniLM (`scripts/fetch_minilm.sh`). `BENCH_RUNS` sets the runs per setting (default 7).

/// As the shipped binary: mimalloc keeps freed buffers for reuse.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use adapters_models::load_model;
use adapters_runtime::{AdapterConfig, AdapterSetup};
use candle_core::{DType, Device, Tensor};

fn main() {
    adapters_runtime::allocator::keep_freed_memory();
    adapters_runtime::nn::configure_threads();
    let dir = adapters_tests::minilm_dir();
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
    let mut model = load_model(&dir).unwrap_or_else(|e| panic!("{e} (run scripts/fetch_minilm.sh)"));
    let ids = Tensor::rand(0f32, 30000.0, (8, 128), &Device::Cpu).unwrap().to_dtype(DType::I64).unwrap();
    let mask = Tensor::ones((8, 128), DType::I64, &Device::Cpu).unwrap();
    let methods = ["seq_bn", "double_seq_bn", "par_bn", "lora", "ia3", "dora", "prefix_tuning"];
    for m in methods {
        model.add_adapter(m, AdapterConfig::parse(m).unwrap()).unwrap();
    }
    // (label, setup, merged adapter)
    let mut settings: Vec<(String, Option<&str>, bool)> = vec![("base".into(), None, false)];
    for m in methods {
        settings.push((m.to_string(), Some(m), false));
    }
    settings.push(("lora merged".into(), Some("lora"), true));
    // The base again, last in each round: shows how much the order alone moves the figures.
    settings.push(("base (again)".into(), None, false));
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); settings.len()];
    for round in 0..=runs {
        for (i, (_, setup, merged)) in settings.iter().enumerate() {
            match setup {
                Some(name) => model.set_active_adapters(AdapterSetup::from(*name)).unwrap(),
                None => model.deactivate_adapters(),
            }
            if *merged {
                model.merge_adapter(setup.unwrap()).unwrap();
            }
            let start = Instant::now();
            let out = model.forward(&ids, &mask).unwrap();
            let elapsed = start.elapsed().as_secs_f64() * 1000.0;
            drop(out);
            if *merged {
                model.reset_adapter();
            }
            if round > 0 {
                times[i].push(elapsed); // round 0 warms up
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let base = median(&mut times[0].clone());
    println!("MiniLM forward, batch 8 x seq 128, f32, CPU, median of {runs} interleaved runs");
    println!("{:<16}{:>10}{:>10}", "setting", "ms", "x base");
    for ((label, _, _), t) in settings.iter().zip(times.iter_mut()) {
        let ms = median(t);
        println!("{label:<16}{ms:>10.1}{:>10.3}", ms / base);
    }
}
