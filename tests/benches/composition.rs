//! Serving several adapters at once on MiniLM (batch 8 x seq 128 per adapter, f32, CPU),
//! medians of interleaved runs:
//! - Parallel[4 seq_bn adapters] in one pass vs 4 separate passes (one adapter each);
//! - BatchSplit over 4 tenants (8 rows each, one batch of 32) vs 4 batches of 8.
//!
//! `cargo bench -p adapters-tests --bench composition` (needs `scripts/fetch_minilm.sh`).

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
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let mut model = load_model(&dir).unwrap_or_else(|e| panic!("{e} (run scripts/fetch_minilm.sh)"));
    let names = ["t0", "t1", "t2", "t3"];
    for n in names {
        model.add_adapter(n, AdapterConfig::parse("seq_bn").unwrap()).unwrap();
    }
    let ids = Tensor::rand(0f32, 30000.0, (8, 128), &Device::Cpu).unwrap().to_dtype(DType::I64).unwrap();
    let mask = Tensor::ones((8, 128), DType::I64, &Device::Cpu).unwrap();
    let ids32 = Tensor::rand(0f32, 30000.0, (32, 128), &Device::Cpu).unwrap().to_dtype(DType::I64).unwrap();
    let mask32 = Tensor::ones((32, 128), DType::I64, &Device::Cpu).unwrap();
    let parallel = AdapterSetup::parallel(names);
    let batch_split = AdapterSetup::parse("BatchSplit[t0, t1, t2, t3, batch_sizes=[8, 8, 8, 8]]").unwrap();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); 4];
    for round in 0..=runs {
        // 0: Parallel in one pass
        model.set_active_adapters(parallel.clone()).unwrap();
        let t = Instant::now();
        let out = model.forward(&ids, &mask).unwrap();
        let parallel_ms = t.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(out.dim(0).unwrap(), 32);
        // 1: the same four adapters in four passes
        let t = Instant::now();
        for n in names {
            model.set_active_adapters(AdapterSetup::from(n)).unwrap();
            model.forward(&ids, &mask).unwrap();
        }
        let separate_ms = t.elapsed().as_secs_f64() * 1000.0;
        // 2: four tenants in one BatchSplit batch of 32
        model.set_active_adapters(batch_split.clone()).unwrap();
        let t = Instant::now();
        model.forward(&ids32, &mask32).unwrap();
        let split_ms = t.elapsed().as_secs_f64() * 1000.0;
        // 3: four tenants, one batch of 8 each
        let t = Instant::now();
        for (i, n) in names.iter().enumerate() {
            model.set_active_adapters(AdapterSetup::from(*n)).unwrap();
            model.forward(&ids32.narrow(0, i * 8, 8).unwrap(), &mask32.narrow(0, i * 8, 8).unwrap()).unwrap();
        }
        let batches_ms = t.elapsed().as_secs_f64() * 1000.0;
        if round > 0 {
            for (v, x) in times.iter_mut().zip([parallel_ms, separate_ms, split_ms, batches_ms]) {
                v.push(x);
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    let m: Vec<f64> = times.iter_mut().map(median).collect();
    println!("MiniLM, 4 seq_bn adapters, batch 8 x seq 128 each, f32, CPU, median of {runs} interleaved runs");
    println!("Parallel[t0..t3], one pass      {:>8.1} ms", m[0]);
    println!("4 separate passes               {:>8.1} ms   ratio one pass / separate {:.3}", m[1], m[0] / m[1]);
    println!("BatchSplit, 4 tenants in 32 rows {:>7.1} ms", m[2]);
    println!("4 batches of 8                  {:>8.1} ms   ratio one batch / four {:.3}", m[3], m[2] / m[3]);
}
