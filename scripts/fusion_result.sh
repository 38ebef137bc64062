#!/usr/bin/env bash
# The AdapterFusion row of docs/results.md: seq_bn adapters (with heads) trained on the extra
# tasks, TREC question type and SMS spam (lr 1e-3), then a dynamic fusion layer over both plus a new head
# trained on MR (the adapters stay fixed), MR protocol otherwise (docs/results.md).
#
#   scripts/fusion_result.sh          # EPOCHS (default 1) for each of the three runs
set -euo pipefail
cd "$(dirname "$0")/.."
model="$(scripts/fetch_minilm.sh)"
cargo build --release -p adapters-cli
bin=target/release/adapters
export MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=1000000000
epochs="${EPOCHS:-1}"
mkdir -p out/results
for task in trec sms_spam; do
  echo "== seq_bn on $task"
  "$bin" train --model "$model" --train "data/$task/train.tsv" --dev "data/$task/dev.tsv" --test "data/$task/test.tsv" \
    --method seq_bn --lr 1e-3 --epochs "$epochs" --batch-size 32 --max-length 64 --seed 42 --name "$task" \
    --out "out/results/fusion_$task" --quiet | tee "out/results/fusion_$task.log"
done
echo "== fusion of trec and sms_spam on MR"
"$bin" train --model "$model" --train data/mr/train.tsv --dev data/mr/dev.tsv --test data/mr/test.tsv \
  --fuse out/results/fusion_trec --fuse out/results/fusion_sms_spam --lr 5e-5 --epochs "$epochs" \
  --batch-size 32 --max-length 64 --seed 42 --name mr --out out/results/fusion --quiet | tee out/results/fusion.log
python3 scripts/results_table.py out/results > docs/results.md
echo "wrote docs/results.md"
