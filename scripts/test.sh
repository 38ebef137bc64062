#!/usr/bin/env bash
# The test suite: fetches MiniLM and SmolLM2 (for the real-weights parity tests), then runs every test of the
# workspace in release mode (model-sized forwards are slow in debug builds), and ends with one
# line totalling all test binaries; the benches are compiled, not run.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_minilm.sh >/dev/null
scripts/fetch_smollm2.sh >/dev/null
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --release --workspace 2>&1 | tee "$log"
# The benches are not run here (timings are not assertions), but they must keep compiling.
cargo bench --workspace --no-run 2>&1 | tail -n 3
awk '/^test result:/ { p += $4; f += $6 } END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
