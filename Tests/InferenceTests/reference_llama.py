"""Independent references for ccinfer's tests: llama.cpp (through llama-cpp-python, CPU build)
and llama-cpp-python's own Jinja2 chat formatter, on the same GGUF.

  reference_llama.py generate MODEL CASES.json OUT.json LOGITS.bin [--tokens N] [--stock]
      CASES: [{"chat": TEXT} | {"text": TEXT}, ...]. For each: the rendered prompt, its token ids,
      the greedy continuation (up to N tokens, ending at an end-of-generation token) and the
      logits after the prompt (float32, case after case, into LOGITS.bin).
      --stock: every matrix product through ggml's stock path (ggml_vec_dot per row and column):
      its tiled K-quant kernels (GGML_CPU_TILED_MM, taken for 8 or more rows) and its repacked
      weights (extra buffer types; Q4_K on AVX2) off. Both are llama.cpp's own switches.
  reference_llama.py tokenize MODEL TEXTS.json OUT.json
      For each text: ids with special tokens parsed, and without.
  reference_llama.py quantize MODEL OUT.gguf FTYPE
      llama.cpp's own quantizer (llama_model_quantize, requantizing allowed): FTYPE is a llama.cpp
      file type name such as Q4_K_M, Q5_K_M or Q6_K.
  reference_llama.py vecdot TYPE K ROWS.bin X.bin OUT.bin
      ggml's own CPU dot products (ggml_vec_dot_<type>_q8_K from libggml-cpu, with the activations
      quantized by its quantize_row_q8_K): ROWS.bin holds rows of K weights as GGML blocks of TYPE
      (q4_K, q5_K, q6_K), X.bin tokens of K float32; OUT.bin gets float32 [token][row].
  reference_llama.py render CASES.json OUT.json
      CASES: [{"template", "messages", "add_generation_prompt", "bos", "eos", "extra"}...] rendered
      as llama-cpp-python renders chat templates; a failure is {"error": TYPE}.
"""
import json
import os
import sys


def load(model, vocab_only=False, stock=False):
    import llama_cpp.llama_cpp as low
    from llama_cpp import Llama
    if stock:
        os.environ["GGML_CPU_TILED_MM"] = "0"  # read by ggml at its first matrix product
        default_params = low.llama_model_default_params

        def stock_params():
            params = default_params()
            params.use_extra_bufts = False
            return params
        low.llama_model_default_params = stock_params
    return Llama(model_path=model, n_ctx=2048, n_threads=2, n_batch=512, verbose=False, seed=0, vocab_only=vocab_only)


def generate(model, cases_path, out_path, logits_path, tokens=32, stock=False):
    import numpy as np
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    llm = load(model, stock=stock)
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


def quantize(model, out_path, ftype):
    import ctypes
    import llama_cpp
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + ftype)
    params.allow_requantize = True
    params.nthread = 2
    if llama_cpp.llama_model_quantize(model.encode(), out_path.encode(), ctypes.byref(params)) != 0:
        sys.exit(f"quantizing {model} to {ftype} failed")


def vecdot(type_name, k, rows_path, x_path, out_path):
    import ctypes
    import os
    import numpy as np
    import llama_cpp
    k = int(k)
    block_bytes = {"q4_K": 144, "q5_K": 176, "q6_K": 210}[type_name]
    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-cpu.so"))
    lib.ggml_cpu_init()  # fills the half-to-float table the dot products read
    quantize = lib.quantize_row_q8_K
    quantize.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    dot = getattr(lib, f"ggml_vec_dot_{type_name}_q8_K")
    dot.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    weights = np.fromfile(rows_path, dtype=np.uint8)
    row_bytes = k // 256 * block_bytes
    rows = len(weights) // row_bytes
    x = np.fromfile(x_path, dtype=np.float32).reshape(-1, k)
    out = np.zeros((len(x), rows), dtype=np.float32)
    q8 = np.zeros(k // 256 * 292, dtype=np.uint8)
    result = ctypes.c_float()
    for t in range(len(x)):
        row = np.ascontiguousarray(x[t])
        quantize(row.ctypes.data, q8.ctypes.data, k)
        for r in range(rows):
            dot(k, ctypes.byref(result), 0, weights.ctypes.data + r * row_bytes, 0, q8.ctypes.data, 0, 1)
            out[t, r] = result.value
    out.tofile(out_path)


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
        stock = "--stock" in args
        generate(*[a for a in args if a != "--stock"], tokens=n, stock=stock)
    elif command == "tokenize":
        tokenize(*args)
    elif command == "quantize":
        quantize(*args)
    elif command == "vecdot":
        vecdot(*args)
    elif command == "render":
        render(*args)
    else:
        sys.exit(f"unknown command {command}")
