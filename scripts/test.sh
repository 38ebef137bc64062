#!/usr/bin/env bash
# The test suite: fetches MiniLM (for the real-weights parity test), then runs every test of the
# workspace in release mode (model-sized forwards are slow in debug builds).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/fetch_minilm.sh >/dev/null
cargo test --release --workspace
