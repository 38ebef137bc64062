#!/usr/bin/env bash
# Reproduces docs/results.md: trains each method on MR with the reference protocol
# (REFERENCE.md: MiniLM, 2-layer tanh head on [CLS], max length 64, batch 32, AdamW, warm-up
# ratio 0.06 then linear decay, 3 epochs, seed 42, test accuracy at the best dev epoch), then
# renders the table from the runs' train_report.json files.
#
#   scripts/results.sh                        # every method (hours on a 2-core CPU)
#   METHODS="seq_bn lora" scripts/results.sh  # some of them; earlier runs in out/results are kept
set -euo pipefail
cd "$(dirname "$0")/.."
model="$(scripts/fetch_minilm.sh)"
cargo build --release -p adapters-cli
bin=target/release/adapters
export MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=1000000000
# method -> learning rate (the reference runs' rates; bottleneck variants share seq_bn's)
declare -A lr=([seq_bn]=1e-4 [double_seq_bn]=1e-4 [par_bn]=1e-4 [lora]=5e-4 [ia3]=1e-3 [prefix_tuning]=1e-4 [prompt_tuning]=1e-2 [full]=2e-5)
mkdir -p out/results
for method in ${METHODS:-seq_bn double_seq_bn par_bn lora ia3 prefix_tuning prompt_tuning full}; do
  echo "== $method (lr ${lr[$method]})"
  "$bin" train --model "$model" --train data/mr/train.tsv --dev data/mr/dev.tsv --test data/mr/test.tsv \
    --method "$method" --lr "${lr[$method]}" --epochs "${EPOCHS:-3}" --batch-size 32 --max-length 64 \
    --seed 42 --name mr --out "out/results/$method" --quiet | tee "out/results/$method.log"
done
python3 scripts/results_table.py out/results > docs/results.md
echo "wrote docs/results.md"
