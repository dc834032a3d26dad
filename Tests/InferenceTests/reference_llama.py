"""Independent reference for ccinfer: llama.cpp (through llama-cpp-python, CPU build) on the same
GGUF. For each prompt: the chat template rendered by llama-cpp-python's own Jinja2 formatter, the
token ids llama.cpp's tokenizer gives, the logits after the prompt, and greedy continuations.

usage: reference_llama.py MODEL PROMPTS.json OUT.json [--tokens N] [--logits-out FILE]
PROMPTS.json: [{"chat": "..."} | {"text": "..."}, ...]
Writes {"cases": [{"rendered", "prompt_tokens", "greedy", "top_logits"}...]}; with --logits-out,
the first-step logits of every case as float32, case after case.
"""
import argparse
import json
import sys

import numpy as np
from llama_cpp import Llama
from llama_cpp.llama_chat_format import Jinja2ChatFormatter


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("prompts")
    ap.add_argument("out")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--logits-out")
    ap.add_argument("--n-ctx", type=int, default=2048)
    args = ap.parse_args()

    llm = Llama(model_path=args.model, n_ctx=args.n_ctx, n_threads=2, n_batch=512, verbose=False, seed=0)
    template = llm.metadata.get("tokenizer.chat_template")
    eos = llm._model.token_get_text(llm.token_eos())
    bos = llm._model.token_get_text(llm.token_bos())
    formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos) if template else None
    import llama_cpp
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    is_eog = lambda t: bool(llama_cpp.llama_vocab_is_eog(vocab, t))
    prompts = json.load(open(args.prompts))
    cases = []
    logits_file = open(args.logits_out, "wb") if args.logits_out else None
    for p in prompts:
        if "chat" in p:
            rendered = formatter(messages=[{"role": "user", "content": p["chat"]}]).prompt
            tokens = llm.tokenize(rendered.encode("utf-8"), add_bos=False, special=True)
        else:
            rendered = p["text"]
            tokens = llm.tokenize(rendered.encode("utf-8"), add_bos=True, special=True)
        llm.reset()
        llm.eval(tokens)
        n_vocab = llm.n_vocab()
        last_logits = lambda: np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,)).astype(np.float32).copy()
        first = last_logits()
        if logits_file:
            logits_file.write(first.tobytes())
        order = np.argsort(-first, kind="stable")[:10]
        greedy = []
        logits = first
        for _ in range(args.tokens):
            t = int(np.argmax(logits))
            if is_eog(t):
                break
            greedy.append(t)
            llm.eval([t])
            logits = last_logits()
        cases.append({
            "rendered": rendered,
            "prompt_tokens": [int(t) for t in tokens],
            "greedy": greedy,
            "top_logits": [[int(i), float(first[i])] for i in order],
        })
    json.dump({"cases": cases, "n_vocab": llm.n_vocab()}, open(args.out, "w"))


if __name__ == "__main__":
    main()
