//! MiniLM training step (forward + backward + AdamW) with a classification head, batch 8 x seq
//! 128, f32, CPU, for seq_bn and LoRA, split into its parts; medians of interleaved runs.
//! `cargo bench -p adapters-tests --bench train_step` (needs `scripts/fetch_minilm.sh`).
//! The PyTorch figures to compare with are in REFERENCE.md (seq_bn 441 ms, LoRA 492 ms) and
//! `scripts/bench_train_step.py` measures them beside this run.

/// As the shipped binary: mimalloc keeps freed buffers for reuse.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use adapters_models::load_model;
use adapters_runtime::training::AdamWStep;
use adapters_runtime::{AdapterConfig, AdapterSetup, HeadConfig};
use candle_core::{DType, Device, Tensor};

fn main() {
    adapters_runtime::allocator::keep_freed_memory();
    adapters_runtime::nn::configure_threads();
    let dir = adapters_tests::minilm_dir();
    let runs: usize = std::env::var("BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let ids = Tensor::rand(0f32, 30000.0, (8, 128), &Device::Cpu).unwrap().to_dtype(DType::I64).unwrap();
    let mask = Tensor::ones((8, 128), DType::I64, &Device::Cpu).unwrap();
    let labels = Tensor::new(&[0i64, 1, 0, 1, 1, 0, 0, 1], &Device::Cpu).unwrap();
    let methods = ["seq_bn", "lora"];
    let mut models = Vec::new();
    for m in methods {
        let mut model = load_model(&dir).unwrap_or_else(|e| panic!("{e} (run scripts/fetch_minilm.sh)"));
        model.add_adapter(m, AdapterConfig::parse(m).unwrap()).unwrap();
        model.add_head(m, HeadConfig::classification(2, 2, "tanh", None, false, false), false).unwrap();
        let vars = model.train_adapter(AdapterSetup::from(m)).unwrap();
        let opt = AdamWStep::new(vars, 1e-4, 0.0).unwrap();
        models.push((m, model, opt));
    }
    // [forward, backward + step, total] per method
    let mut times = vec![[Vec::new(), Vec::new(), Vec::new()]; methods.len()];
    for round in 0..=runs {
        for (i, (_, model, opt)) in models.iter_mut().enumerate() {
            let start = Instant::now();
            let out = model.forward_with_head(&ids, &mask).unwrap();
            let loss = model.head_loss(&out, &labels, Some(&mask)).unwrap();
            let forward = start.elapsed().as_secs_f64() * 1000.0;
            opt.step(&loss, 1e-4, None).unwrap();
            let total = start.elapsed().as_secs_f64() * 1000.0;
            if round > 0 {
                times[i][0].push(forward);
                times[i][1].push(total - forward);
                times[i][2].push(total);
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!("MiniLM training step, batch 8 x seq 128, f32, CPU, median of {runs} interleaved runs (ms)");
    println!("{:<10}{:>10}{:>18}{:>10}", "method", "forward", "backward + AdamW", "step");
    for ((m, _, _), t) in models.iter().zip(times.iter_mut()) {
        println!("{m:<10}{:>10.1}{:>18.1}{:>10.1}", median(&mut t[0]), median(&mut t[1]), median(&mut t[2]));
    }
}
