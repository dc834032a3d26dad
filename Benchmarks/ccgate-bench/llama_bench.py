"""Baseline for ccinfer's benchmark: llama.cpp (llama-cpp-python) on the same model, prompt and
machine. Prints one JSON object: prompt-processing and generation tokens per second.

usage: llama_bench.py MODEL TOKENS_JSON GENERATE_N ROUNDS [vulkan]
  vulkan: every layer offloaded (n_gpu_layers=-1), for a build with -DGGML_VULKAN=on; the
  caller sets GGML_VK_VISIBLE_DEVICES and reads the device llama.cpp names on standard error.
"""
import json
import multiprocessing
import sys
import time

import numpy as np
from llama_cpp import Llama

model, tokens_path, n_gen, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
prompt = json.load(open(tokens_path))
vulkan = len(sys.argv) > 5 and sys.argv[5] == "vulkan"
llm = Llama(model_path=model, n_ctx=2048, n_threads=multiprocessing.cpu_count(), n_batch=512, verbose=vulkan,
            n_gpu_layers=-1 if vulkan else 0)
n_vocab = llm.n_vocab()

def logits():
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))

llm.reset()
llm.eval(prompt)  # warm-up
pp, tg = [], []
for _ in range(rounds):
    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    token = int(np.argmax(logits()))  # reading the logits waits for the device to finish
    pp.append(len(prompt) / (time.perf_counter() - start))
    start = time.perf_counter()
    for _ in range(n_gen):
        llm.eval([token])
        token = int(np.argmax(logits()))
    tg.append(n_gen / (time.perf_counter() - start))
print(json.dumps({"prompt_tokens_per_s": sorted(pp)[len(pp) // 2], "generate_tokens_per_s": sorted(tg)[len(tg) // 2],
                  "threads": multiprocessing.cpu_count()}))
