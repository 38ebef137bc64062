#!/usr/bin/env bash
# Tokens per second of greedy generation with SmolLM2-135M-Instruct (its GGUF file): `adapters
# generate` (quantized base, and dequantized to f32 as transformers loads it) beside Python
# `adapters` + transformers' `generate` (f32), base and LoRA. Needs the Python reference ($PYTHON,
# default the first of /work/pyref/bin/python and /root/refvenv/bin/python that exists). Not run
# by CI.
#
#   scripts/bench_generate.sh            # NEW_TOKENS=64 RUNS=3 by default
set -euo pipefail
cd "$(dirname "$0")/.."
default_python=/root/refvenv/bin/python
[ -x /work/pyref/bin/python ] && default_python=/work/pyref/bin/python
python="${PYTHON:-$default_python}"
new_tokens="${NEW_TOKENS:-64}"
runs="${RUNS:-3}"
gguf="$(scripts/fetch_smollm2.sh)"
prompt=$'<|im_start|>user\nWrite a short story about a robot who learns to paint.<|im_end|>\n<|im_start|>assistant\n'
cargo build --release -p adapters-cli 2>/dev/null
bin=target/release/adapters
printf '%-16s%8s%12s%12s\n' setting prompt "first ms" "tokens/s"
for label in "rust base" "rust lora" "rust base f32" "rust lora f32"; do
  args=(generate --model "$gguf" --prompt "$prompt" --max-new-tokens "$new_tokens")
  [[ "$label" == *lora* ]] && args+=(--adapter lora=tests/fixtures/smollm2/lora/lora)
  [[ "$label" == *f32 ]] && args+=(--dequantize)
  firsts=() rates=() prompt_len=0
  for _ in $(seq 0 "$runs"); do
    line="$("$bin" "${args[@]}" 2>&1 >/dev/null | tail -1)"
    prompt_len="$(sed -E 's/.*prompt \(([0-9]+) tokens\).*/\1/' <<<"$line")"
    firsts+=("$(sed -E 's/.*first token ([0-9.]+) ms.*/\1/' <<<"$line")")
    rates+=("$(sed -E 's/.*then ([0-9.]+) tokens\/s.*/\1/' <<<"$line")")
  done
  # The first run warms up; medians of the rest.
  median() { printf '%s\n' "${@:2}" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
  printf '%-16s%8s%12s%12s\n' "$label" "$prompt_len" "$(median "${firsts[@]}")" "$(median "${rates[@]}")"
done
HF_HUB_OFFLINE=1 "$python" scripts/bench_generate.py "$gguf" "$prompt" "$new_tokens" "$runs" 2>/dev/null
