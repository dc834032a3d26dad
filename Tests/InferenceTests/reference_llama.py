"""Independent references for ccinfer's tests: llama.cpp (through llama-cpp-python, CPU build)
and llama-cpp-python's own Jinja2 chat formatter, on the same GGUF.

  reference_llama.py generate MODEL CASES.json OUT.json LOGITS.bin [--tokens N]
      CASES: [{"chat": TEXT} | {"text": TEXT}, ...]. For each: the rendered prompt, its token ids,
      the greedy continuation (up to N tokens, ending at an end-of-generation token) and the
      logits after the prompt (float32, case after case, into LOGITS.bin).
  reference_llama.py tokenize MODEL TEXTS.json OUT.json
      For each text: ids with special tokens parsed, and without.
  reference_llama.py render CASES.json OUT.json
      CASES: [{"template", "messages", "add_generation_prompt", "bos", "eos", "extra"}...] rendered
      as llama-cpp-python renders chat templates; a failure is {"error": TYPE}.
"""
import json
import sys


def load(model, vocab_only=False):
    from llama_cpp import Llama
    return Llama(model_path=model, n_ctx=2048, n_threads=2, n_batch=512, verbose=False, seed=0, vocab_only=vocab_only)


def generate(model, cases_path, out_path, logits_path, tokens=32):
    import numpy as np
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = load(model)
    template = llm.metadata.get("tokenizer.chat_template")
    eos = llm._model.token_get_text(llm.token_eos())
    bos = llm._model.token_get_text(llm.token_bos())
    formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos) if template else None
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    n_vocab = llm.n_vocab()

    def last_logits():
        return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,)).astype(np.float32).copy()

    out = []
    with open(logits_path, "wb") as logits_file:
        for case in json.load(open(cases_path)):
            if "chat" in case:
                rendered = formatter(messages=[{"role": "user", "content": case["chat"]}]).prompt
                ids = llm.tokenize(rendered.encode("utf-8"), add_bos=False, special=True)
            else:
                rendered = case["text"]
                ids = llm.tokenize(rendered.encode("utf-8"), add_bos=True, special=True)
            llm.reset()
            llm.eval(ids)
            first = last_logits()
            logits_file.write(first.tobytes())
            greedy, logits = [], first
            for _ in range(tokens):
                t = int(np.argmax(logits))
                if llama_cpp.llama_vocab_is_eog(vocab, t):
                    break
                greedy.append(t)
                llm.eval([t])
                logits = last_logits()
            out.append({"rendered": rendered, "prompt_tokens": [int(t) for t in ids], "greedy": greedy})
    json.dump({"cases": out, "n_vocab": n_vocab}, open(out_path, "w"))


def tokenize(model, texts_path, out_path):
    llm = load(model, vocab_only=True)
    out = []
    for text in json.load(open(texts_path)):
        data = text.encode("utf-8")
        out.append({"special": llm.tokenize(data, add_bos=False, special=True),
                    "plain": llm.tokenize(data, add_bos=False, special=False)})
    json.dump(out, open(out_path, "w"))


def render(cases_path, out_path):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    out = []
    for case in json.load(open(cases_path)):
        try:
            formatter = Jinja2ChatFormatter(template=case["template"], eos_token=case.get("eos", ""),
                                            bos_token=case.get("bos", ""),
                                            add_generation_prompt=case.get("add_generation_prompt", True))
            out.append({"text": formatter(messages=case["messages"], **case.get("extra", {})).prompt})
        except Exception as error:  # the test only needs to know that it failed, and how
            out.append({"error": type(error).__name__, "message": str(error)})
    json.dump(out, open(out_path, "w"))


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command == "generate":
        n = 32
        if "--tokens" in args:
            i = args.index("--tokens")
            n = int(args[i + 1])
            args = args[:i] + args[i + 2:]
        generate(*args, tokens=n)
    elif command == "tokenize":
        tokenize(*args)
    elif command == "render":
        render(*args)
    else:
        sys.exit(f"unknown command {command}")
