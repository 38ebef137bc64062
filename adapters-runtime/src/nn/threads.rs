//! The thread count candle's kernels split work over, computed once.

/// Fixes the number of threads candle and rayon use to the one candle computes (its
/// `RAYON_NUM_THREADS`, else the physical cores), so that it is computed once: candle's
/// `get_num_threads` parses `/proc/cpuinfo` again on every call, and its CPU matmul asks on every
/// product (measured here: 2.5 ms of a 10 ms MiniLM forward at batch 1 x 32 tokens, 7 % at
/// 8 x 128). Call it first thing in `main`, before any thread starts (it sets the process's
/// `RAYON_NUM_THREADS` when unset); the `adapters` binary and the benches do.
///
/// ```
/// adapters_runtime::nn::cache_thread_count(); // first in main; then load models and run
/// ```
pub fn cache_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
    }
}
