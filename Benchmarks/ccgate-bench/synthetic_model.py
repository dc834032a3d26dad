"""A synthetic Llama-shaped model of about a billion parameters for ccinfer's benchmark: random
weights (they do the same work as trained ones), F16, with the tokenizer and chat template of a
real GGUF so that both engines load it. Quantize it with llama.cpp's own quantizer afterwards.

usage: synthetic_model.py TOKENIZER_SOURCE.gguf OUT.gguf [1b|smollm2]
Shapes: 1b (default; Llama 3.2 1B's body): 16 layers, embedding 2048, 32 heads, 8 KV heads,
feed-forward 8192, its own output matrix. smollm2 (SmolLM2-135M's): 30 layers, embedding 576,
9 heads, 3 KV heads, feed-forward 1536, output tied to the embedding.
"""
import sys

import numpy as np
import gguf

source, out = sys.argv[1], sys.argv[2]
shape = sys.argv[3] if len(sys.argv) > 3 else "1b"
if shape == "smollm2":
    layers, embedding, heads, kv_heads, ff, tied = 30, 576, 9, 3, 1536, True
elif shape == "1b":
    layers, embedding, heads, kv_heads, ff, tied = 16, 2048, 32, 8, 8192, False
else:
    raise SystemExit(f"synthetic_model.py: unknown shape {shape} (1b or smollm2)")
head_dim = embedding // heads

reader = gguf.GGUFReader(source)
writer = gguf.GGUFWriter(out, "llama")
writer.add_name(f"synthetic llama {shape}")
writer.add_context_length(4096)
writer.add_embedding_length(embedding)
writer.add_block_count(layers)
writer.add_feed_forward_length(ff)
writer.add_head_count(heads)
writer.add_head_count_kv(kv_heads)
writer.add_rope_dimension_count(head_dim)
writer.add_rope_freq_base(10000.0)
writer.add_layer_norm_rms_eps(1e-5)
writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
vocabulary = 0
for field in reader.fields.values():
    if not field.name.startswith("tokenizer."):
        continue
    value = field.contents()
    main = field.types[0]
    if main == gguf.GGUFValueType.ARRAY:
        writer.add_key_value(field.name, value, main, sub_type=field.types[-1])
        if field.name == "tokenizer.ggml.tokens":
            vocabulary = len(value)
    else:
        writer.add_key_value(field.name, value, main)

rng = np.random.default_rng(1)


def matrix(rows, k):
    return (rng.standard_normal((rows, k), dtype=np.float32) * 0.02).astype(np.float16)


writer.add_tensor("token_embd.weight", matrix(vocabulary, embedding))
writer.add_tensor("output_norm.weight", np.ones(embedding, dtype=np.float32))
if not tied:
    writer.add_tensor("output.weight", matrix(vocabulary, embedding))
for layer in range(layers):
    p = f"blk.{layer}."
    writer.add_tensor(p + "attn_norm.weight", np.ones(embedding, dtype=np.float32))
    writer.add_tensor(p + "ffn_norm.weight", np.ones(embedding, dtype=np.float32))
    writer.add_tensor(p + "attn_q.weight", matrix(embedding, embedding))
    writer.add_tensor(p + "attn_k.weight", matrix(kv_heads * head_dim, embedding))
    writer.add_tensor(p + "attn_v.weight", matrix(kv_heads * head_dim, embedding))
    writer.add_tensor(p + "attn_output.weight", matrix(embedding, embedding))
    writer.add_tensor(p + "ffn_gate.weight", matrix(ff, embedding))
    writer.add_tensor(p + "ffn_up.weight", matrix(ff, embedding))
    writer.add_tensor(p + "ffn_down.weight", matrix(embedding, ff))
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
