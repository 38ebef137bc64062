//! Allocator tuning for programs whose global allocator is mimalloc (the `adapters` binary and
//! the benches).
//!
//! A training step frees and reallocates the same large buffers every step. By default mimalloc
//! (v3, as libmimalloc-sys builds it) returns ("purges") freed memory to the kernel after a delay (1 s), and the kernel
//! then clears every page again when it is reused: measured, 20 % of a MiniLM training step's
//! samples were `clear_page_erms` (docs/performance.md). Keeping freed memory lets mimalloc
//! reuse the pages as they are. The process keeps its peak footprint instead of shrinking after
//! each step; the peak itself does not grow.

/// mimalloc's option indices (`mi_option_e` in the v3 `mimalloc.h` that libmimalloc-sys 0.1 builds;
/// the crate exports no constants for these two).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const ARENA_PURGE_MULT: libmimalloc_sys::mi_option_t = 24;

/// Never purge freed memory (`purge_delay = -1`, `arena_purge_mult = 0`). Call once, first thing
/// in `main`, in a program with `#[global_allocator] static GLOBAL: mimalloc::MiMalloc`. An
/// option set in the environment (`MIMALLOC_PURGE_DELAY`, `MIMALLOC_ARENA_PURGE_MULT`) wins, as
/// mimalloc's own options do.
pub fn keep_freed_memory() {
    for (option, variable, value) in [(PURGE_DELAY, "MIMALLOC_PURGE_DELAY", -1), (ARENA_PURGE_MULT, "MIMALLOC_ARENA_PURGE_MULT", 0)] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: `mi_option_set` only stores an option value; both indices are options of
            // the linked mimalloc (checked by the test below against their documented defaults).
            unsafe { libmimalloc_sys::mi_option_set(option, value) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_indices_are_the_purge_options() {
        // SAFETY: reading options has no side effect beyond initialising them.
        let (delay, mult) = unsafe { (libmimalloc_sys::mi_option_get(PURGE_DELAY), libmimalloc_sys::mi_option_get(ARENA_PURGE_MULT)) };
        // Their documented defaults (unless the environment sets them).
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() && std::env::var_os("MIMALLOC_ARENA_PURGE_MULT").is_none() {
            assert_eq!((delay, mult), (1000, 1));
        }
        // Their neighbours are other options (deprecated_eager_commit_delay 1, use_numa_nodes 0).
        let (before, after) = unsafe { (libmimalloc_sys::mi_option_get(PURGE_DELAY - 1), libmimalloc_sys::mi_option_get(PURGE_DELAY + 1)) };
        assert_eq!((before, after), (1, 0));
        keep_freed_memory();
        let (delay, mult) = unsafe { (libmimalloc_sys::mi_option_get(PURGE_DELAY), libmimalloc_sys::mi_option_get(ARENA_PURGE_MULT)) };
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() && std::env::var_os("MIMALLOC_ARENA_PURGE_MULT").is_none() {
            assert_eq!((delay, mult), (-1, 0));
        }
    }
}
