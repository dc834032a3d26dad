"""ccinfer beside llama.cpp's Vulkan backend on one machine, for machines without a Swift
toolchain (a GPU host): a built ccinfer binary, a Python that imports llama_cpp (built with
-DGGML_VULKAN=on, scripts/llama-vulkan) and a GGUF model. Both engines read the very same prompt
tokens (ccinfer bench writes them); prints one table with the ratios, and the JSON of both.

usage: engine_compare.py CCINFER MODEL [--prompt-tokens N] [--generate N] [--rounds N]
                         [--streams 1,4,8] [--splits 8,1] [--label TEXT]
  --splits: ccinfer's --matmul-split values to run (the first is the one the ratios use).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

here = os.path.dirname(os.path.abspath(__file__))
parser = argparse.ArgumentParser()
parser.add_argument("ccinfer")
parser.add_argument("model")
parser.add_argument("--prompt-tokens", type=int, default=512)
parser.add_argument("--generate", type=int, default=128)
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--streams", default="1,4,8")
parser.add_argument("--splits", default="")
parser.add_argument("--label", default="")
args = parser.parse_args()
streams = [int(n) for n in args.streams.split(",")]
tmp = tempfile.mkdtemp(prefix="engine-compare-")
prompt_file, stream_file = os.path.join(tmp, "prompt.json"), os.path.join(tmp, "streams.json")


def run(cmd, env=None):
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"engine_compare: {cmd[0]} {cmd[1]} failed ({done.returncode})")
    return done


mine = []
for split in (args.splits.split(",") if args.splits else [""]):
    cmd = [args.ccinfer, "bench", "--model", args.model, "--prompt-tokens", str(args.prompt_tokens), "--generate",
           str(args.generate), "--rounds", str(args.rounds), "--streams", args.streams, "--batch", "512",
           "--context", str(args.prompt_tokens + args.generate + 16), "--tokens-out", prompt_file,
           "--stream-tokens-out", stream_file, "--json"] + (["--matmul-split", split] if split else [])
    mine.append(json.loads(run(cmd).stdout))

bench = os.path.join(here, "llama_bench.py")
vk = {"GGML_VK_VISIBLE_DEVICES": "0"}
single = run([sys.executable, bench, args.model, prompt_file, str(args.generate), str(args.rounds), "vulkan"], vk)
named = [line[len("ggml_vulkan: 0 = "):] for line in single.stderr.splitlines() if line.startswith("ggml_vulkan: 0 = ")]
if not named or "assigned to device Vulkan0" not in single.stderr:
    raise SystemExit("engine_compare: llama.cpp did not run on the Vulkan device")
theirs = json.loads(single.stdout)
batched = json.loads(run([sys.executable, bench, "batched", args.streams, args.model, stream_file,
                          str(args.generate), str(args.rounds), "vulkan"], vk).stdout)
theirs["aggregate_generate_tokens_per_s"] = batched["aggregate_generate_tokens_per_s"]

first = mine[0]
print(f"\n{args.label or os.path.basename(args.model)}: {first['prompt_tokens']}-token prompt, "
      f"{args.generate} generated tokens, median of {args.rounds}")
print(f"ccinfer device:          {first['device']}")
print(f"llama.cpp Vulkan device: {named[0]}")
print("                                     prompt tok/s   generate tok/s")
for m in mine:
    print(f"  ccinfer ({m['matmul']:>8} matmuls)   {m['prompt_tokens_per_s']:12.1f}   {m['generate_tokens_per_s']:14.1f}")
print(f"  llama.cpp Vulkan                 {theirs['prompt_tokens_per_s']:12.1f}   {theirs['generate_tokens_per_s']:14.1f}")
print(f"  ccinfer/llama.cpp Vulkan         {first['prompt_tokens_per_s'] / theirs['prompt_tokens_per_s']:12.3f}   "
      f"{first['generate_tokens_per_s'] / theirs['generate_tokens_per_s']:14.3f}")
print(f"  aggregate generate tok/s ({args.generate} tokens per stream after 8 prompt tokens)")
print("                ccinfer   llama.cpp Vulkan   ratio")
for n in streams:
    a, b = first["aggregate_generate_tokens_per_s"][str(n)], theirs["aggregate_generate_tokens_per_s"][str(n)]
    print(f"  {n:3d} stream{'s' if n > 1 else ' '}  {a:9.1f}   {b:16.1f}   {a / b:5.2f}×")
base = first["aggregate_generate_tokens_per_s"][str(streams[0])]
print(f"  ccinfer {streams[-1]} streams / {streams[0]}: "
      f"{first['aggregate_generate_tokens_per_s'][str(streams[-1])] / base:.2f}×")
print(json.dumps({"ccinfer": mine, "llama_cpp_vulkan": theirs}))
