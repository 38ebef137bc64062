#!/usr/bin/env bash
# Our benches beside PyTorch's, alternating ROUNDS times (default 2) so that both see the same
# machine state, then the ratio ours / PyTorch per setting (median over the rounds):
# f32/bf16/f16 forward (bench dtype vs scripts/bench_dtype.py) and the training step
# (bench train_step vs scripts/bench_train_step.py). Needs MiniLM (scripts/fetch_minilm.sh) and
# the Python reference ($PYTHON, default the first of /work/pyref/bin/python and
# /root/refvenv/bin/python that exists; see REFERENCE.md). Not run by CI.
#
#   scripts/bench_vs_pytorch.sh
set -euo pipefail
cd "$(dirname "$0")/.."
default_python=/root/refvenv/bin/python
[ -x /work/pyref/bin/python ] && default_python=/work/pyref/bin/python
python="${PYTHON:-$default_python}"
rounds="${ROUNDS:-2}"
model="$(scripts/fetch_minilm.sh)"
export HF_HUB_OFFLINE=1 BENCH_RUNS="${BENCH_RUNS:-5}"
cargo bench -p adapters-tests --bench dtype --bench train_step --no-run 2>/dev/null
out="$(mktemp -d)"
for round in $(seq "$rounds"); do
  echo "round $round/$rounds" >&2
  cargo bench -q -p adapters-tests --bench dtype 2>/dev/null >>"$out/ours_dtype"
  "$python" scripts/bench_dtype.py "$model" 2>/dev/null >>"$out/torch_dtype"
  cargo bench -q -p adapters-tests --bench train_step 2>/dev/null >>"$out/ours_train"
  "$python" scripts/bench_train_step.py "$model" 2>/dev/null >>"$out/torch_train"
done
python3 - "$out" <<'PY'
import re, statistics, sys
out = sys.argv[1]
def rows(path, width):
    """Label -> rows of the trailing `width - 1` numbers, from lines that end in them."""
    found = {}
    for line in open(path):
        parts = line.split()
        if len(parts) >= width and all(re.fullmatch(r"[0-9.]+", p) for p in parts[-(width - 1):]):
            key = tuple(parts[: len(parts) - (width - 1)])
            found.setdefault(key, []).append([float(p) for p in parts[-(width - 1):]])
    return found
norm = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}
ours = {(norm.get(k[0].lower(), k[0].lower()), k[1]): v for k, v in rows(f"{out}/ours_dtype", 4).items() if len(k) == 2}
torch_ = {(k[0], k[1]): v for k, v in rows(f"{out}/torch_dtype", 4).items() if len(k) == 2}
print(f"{'forward':<24}{'ours ms':>10}{'torch ms':>10}{'ours/torch':>12}")
for key in sorted(set(ours) & set(torch_)):
    a = statistics.median(r[0] for r in ours[key]); b = statistics.median(r[0] for r in torch_[key])
    print(f"{key[0] + ' ' + key[1]:<24}{a:>10.1f}{b:>10.1f}{a / b:>12.2f}")
ours = rows(f"{out}/ours_train", 4); torch_ = rows(f"{out}/torch_train", 4)
print(f"{'training step':<24}{'ours ms':>10}{'torch ms':>10}{'ours/torch':>12}")
for key in sorted(set(ours) & set(torch_)):
    a = statistics.median(r[2] for r in ours[key]); b = statistics.median(r[2] for r in torch_[key])
    print(f"{key[0]:<24}{a:>10.1f}{b:>10.1f}{a / b:>12.2f}")
PY
rm -rf "$out"
