//! How candle's CPU kernels use the threads: counted once, and no core kept spinning.

/// Call first thing in `main`, before any thread starts; the `adapters` binary and the benches
/// do. It sets two process environment variables when they are unset (an explicit setting
/// wins):
///
/// - `RAYON_NUM_THREADS` to the count candle computes (the physical cores), so that it is
///   computed once: candle's `get_num_threads` parses `/proc/cpuinfo` again on every call, and
///   its CPU matmul asks on every product (measured here: 2.5 ms of a 10 ms MiniLM forward at
///   batch 1 x 32 tokens, 7 % at 8 x 128).
/// - `CANDLE_BARRIER_POOL_SPIN_LIMIT` to 0: candle's elementwise ops run on a pool of their own
///   whose workers spin for 25,000 rounds after each op before they sleep, on the cores the
///   next matmul's threads need (a 384 x 384 product over 1,024 rows right after a candle
///   elementwise op: 1.86 ms, 1.33 ms without the spinning; waking a sleeping worker costs
///   microseconds).
///
/// ```
/// adapters_runtime::nn::configure_threads(); // first in main; then load models and run
/// ```
pub fn configure_threads() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
    }
}
