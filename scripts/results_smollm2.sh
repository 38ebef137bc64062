#!/usr/bin/env bash
# Reproduces the SmolLM2 section of docs/results.md: LoRA (r 8, alpha 16, q and v) trained as a
# causal LM on the MR training sentences (packed into 64-token blocks) on SmolLM2-135M-Instruct
# from its GGUF file, dequantized to f32; held-out loss and perplexity on the first 64 blocks of
# the MR test sentences before and after, seconds per step, greedy samples before and after.
# The run's train_report.json is kept in docs/runs/ and rendered by scripts/results_smollm2.py.
#
#   scripts/results_smollm2.sh              # 120 steps of 8 blocks (about 10 minutes on 2 cores)
#   STEPS=20 scripts/results_smollm2.sh     # a quick run
#   TIMING=1 scripts/results_smollm2.sh     # also 5-step timing runs, dequantized and quantized (run on a quiet machine)
set -euo pipefail
cd "$(dirname "$0")/.."
gguf="$(scripts/fetch_smollm2.sh)"
cargo build --release -p adapters-cli
out=out/results/smollm2_mr_lora
target/release/adapters train --task causal-lm --model "$gguf" --dequantize \
  --train data/mr/train.tsv --test data/mr/test.tsv --method "lora[r=8,alpha=16]" \
  --max-steps "${STEPS:-120}" --batch-size 8 --max-length 64 --lr 1e-3 --seed 42 \
  --sample "the movie is" --sample "this film" --sample "a funny, touching" \
  --out "$out" --quiet | tee "$out.log"
mkdir -p docs/runs
cp "$out/train_report.json" docs/runs/smollm2_mr_lora.json
if [ -n "${TIMING:-}" ]; then
  # 5-step runs on a quiet machine: seconds per step dequantized and with the base kept quantized.
  for mode in dequantized quantized; do
    flag=""; [ "$mode" = dequantized ] && flag="--dequantize"
    target/release/adapters train --task causal-lm --model "$gguf" $flag --train data/mr/train.tsv --test data/mr/test.tsv \
      --method "lora[r=8,alpha=16]" --max-steps 5 --batch-size 8 --max-length 64 --lr 1e-3 --out "out/results/smollm2_timing_$mode" --quiet
    cp "out/results/smollm2_timing_$mode/train_report.json" "docs/runs/smollm2_timing_$mode.json"
  done
fi
python3 scripts/results_smollm2.py docs/runs/smollm2_mr_lora.json docs/results.md
echo "updated docs/results.md"
