"""Baseline for ccinfer's benchmark: llama.cpp (llama-cpp-python) on the same model, prompt and
machine. Prints one JSON object: prompt-processing and generation tokens per second.

usage: llama_bench.py MODEL TOKENS_JSON GENERATE_N ROUNDS [vulkan]
       llama_bench.py batched STREAMS MODEL TOKENS_JSON GENERATE_N ROUNDS [vulkan]
  vulkan: every layer offloaded (n_gpu_layers=-1), for a build with -DGGML_VULKAN=on; the
  caller sets GGML_VK_VISIBLE_DEVICES and reads the device llama.cpp names on standard error.
  batched: STREAMS sequences (comma-separated counts, e.g. 1,4,8) each read the prompt, then
  generate GENERATE_N tokens together, one batch of one token per sequence per step (llama.cpp's
  own multi-sequence batch API); prints aggregate generation tokens per second per count.
"""
import json
import multiprocessing
import sys
import time

import numpy as np
from llama_cpp import Llama



def batched(streams, model_path, prompt, n_gen, rounds, vulkan):
    import llama_cpp as L
    L.llama_backend_init()
    mparams = L.llama_model_default_params()
    mparams.n_gpu_layers = -1 if vulkan else 0
    model = L.llama_model_load_from_file(model_path.encode(), mparams)
    n_max = max(streams)
    cparams = L.llama_context_default_params()
    cparams.n_seq_max = n_max
    cparams.n_ctx = n_max * 512  # 512 positions per sequence, as ccinfer's bench slots
    cparams.n_batch = 512
    cparams.n_ubatch = 512
    cparams.n_threads = cparams.n_threads_batch = multiprocessing.cpu_count()
    ctx = L.llama_init_from_model(model, cparams)
    n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    batch = L.llama_batch_init(512, 0, n_max)

    def decode(items):  # items: (token, pos, seq, want_logits)
        batch.n_tokens = len(items)
        for i, (token, pos, seq, want) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, want
        if L.llama_decode(ctx, batch) != 0:
            raise SystemExit("llama_decode failed")

    def argmax(i):
        return int(np.argmax(np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, i), shape=(n_vocab,))))

    result = {}
    for n in streams:
        rates = []
        for round in range(rounds + 1):  # the first round, of two tokens, warms up
            L.llama_memory_clear(L.llama_get_memory(ctx), True)
            tokens = []
            for s in range(n):
                decode([(t, p, s, p == len(prompt) - 1) for p, t in enumerate(prompt)])
                tokens.append(argmax(len(prompt) - 1))
            start = time.perf_counter()
            steps = 2 if round == 0 else n_gen
            for step in range(steps):
                decode([(tokens[s], len(prompt) + step, s, True) for s in range(n)])
                tokens = [argmax(s) for s in range(n)]  # reading the logits waits for the device
            rates.append(n * steps / (time.perf_counter() - start))
        rates = rates[1:]
        result[str(n)] = sorted(rates)[len(rates) // 2]
    print(json.dumps({"aggregate_generate_tokens_per_s": result, "threads": multiprocessing.cpu_count()}))


if sys.argv[1] == "batched":
    batched([int(n) for n in sys.argv[2].split(",")], sys.argv[3], json.load(open(sys.argv[4])), int(sys.argv[5]),
            int(sys.argv[6]), len(sys.argv) > 7 and sys.argv[7] == "vulkan")
    sys.exit(0)

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
