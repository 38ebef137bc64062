#!/usr/bin/env bash
# The main job: fetch MiniLM, load two adapters trained with the Python library (committed
# fixtures), print their summary, and run `adapters forward` with each, writing
# last_hidden_state to out/.
set -euo pipefail
cd "$(dirname "$0")/.."
model="$(scripts/fetch_minilm.sh)"
cargo build --release -p adapters-cli
bin=target/release/adapters
mkdir -p out
"$bin" summary --model "$model" \
  --adapter tests/fixtures/minilm/seq_bn/adapter --adapter tests/fixtures/minilm/lora/adapter
for method in seq_bn lora; do
  "$bin" forward --model "$model" --inputs tests/fixtures/minilm/inputs.safetensors \
    --adapter "tests/fixtures/minilm/$method/adapter" --out "out/minilm_$method.safetensors"
  echo "wrote out/minilm_$method.safetensors (last_hidden_state with the $method adapter)"
done
"$bin" forward --model "$model" --inputs tests/fixtures/minilm/inputs.safetensors \
  --adapter tests/fixtures/minilm/lora/adapter --merge lora --out out/minilm_lora_merged.safetensors
echo "wrote out/minilm_lora_merged.safetensors (LoRA merged into the weights)"
