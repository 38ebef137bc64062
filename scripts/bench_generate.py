"""Python `adapters` + transformers' `generate` beside `adapters generate`: SmolLM2-135M-Instruct
from its GGUF file (transformers dequantizes it to f32), greedy, with the KV cache, the base model
and the LoRA adapter of tests/fixtures/smollm2/lora. Prints one line per setting: label, prompt
tokens, milliseconds to the first token, tokens per second after it (medians of RUNS runs).

    HF_HUB_OFFLINE=1 python scripts/bench_generate.py GGUF PROMPT NEW_TOKENS [RUNS]
"""
import statistics
import sys
import time

import adapters
import torch
from transformers import AutoTokenizer, LlamaForCausalLM, StoppingCriteria, StoppingCriteriaList

gguf, prompt, new_tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
runs = int(sys.argv[4]) if len(sys.argv) > 4 else 3
folder, name = gguf.rsplit("/", 1)
tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
model = LlamaForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, attn_implementation="eager").eval()
adapters.init(model)
model.load_adapter("tests/fixtures/smollm2/lora/lora", load_as="lora", use_safetensors=True)
ids = tokenizer(prompt, return_tensors="pt").input_ids


class FirstToken(StoppingCriteria):
    """Records when the first new token exists (the prompt pass is done)."""

    def __init__(self):
        self.at = None

    def __call__(self, input_ids, scores, **kwargs):
        if self.at is None:
            self.at = time.perf_counter()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


for label, setup in [("python base", None), ("python lora", "lora")]:
    model.set_active_adapters(setup)
    first_ms, rates = [], []
    for _ in range(runs + 1):
        first = FirstToken()
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True, stopping_criteria=StoppingCriteriaList([first]))
        end = time.perf_counter()
        generated = out.shape[1] - ids.shape[1]
        first_ms.append((first.at - start) * 1000)
        rates.append((generated - 1) / (end - first.at))
    # The first run warms up.
    print(f"{label:<16}{ids.shape[1]:>8}{statistics.median(first_ms[1:]):>12.1f}{statistics.median(rates[1:]):>12.1f}")
