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
try:
    streams = [int(n) for n in args.streams.split(",")]
except ValueError:
    raise SystemExit(f"engine_compare: --streams must be comma-separated counts, not {args.streams!r}")
# llama_bench.py's contexts: 2048 positions for one stream, 512 per stream when batched.
if args.prompt_tokens + args.generate > 2048 or 8 + args.generate > 512:
    raise SystemExit("engine_compare: --prompt-tokens + --generate must be at most 2048 and --generate at most 504")
tmp = tempfile.TemporaryDirectory(prefix="engine-compare-")
prompt_file, stream_file = os.path.join(tmp.name, "prompt.json"), os.path.join(tmp.name, "streams.json")


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
           "--stream-tokens-out", stream_file, "--device", "0", "--json"] + (["--matmul-split", split] if split else [])
    mine.append(json.loads(run(cmd).stdout))

bench = os.path.join(here, "llama_bench.py")
vk = {"GGML_VK_VISIBLE_DEVICES": "0"}
single = run([sys.executable, bench, args.model, prompt_file, str(args.generate), str(args.rounds), "vulkan"], vk)
named = [line[len("ggml_vulkan: 0 = "):] for line in single.stderr.splitlines() if line.startswith("ggml_vulkan: 0 = ")]
if not named or "assigned to device Vulkan0" not in single.stderr:
    raise SystemExit("engine_compare: llama.cpp did not run on the Vulkan device")
theirs = json.loads(single.stdout)
# Both on one device: ccinfer's device 0 and the one llama.cpp names (GGML_VK_VISIBLE_DEVICES=0).
mine_name = mine[0]["device"].split(": ", 1)[-1].split(" (", 1)[0]
if "(CPU," in mine[0]["device"]:
    raise SystemExit(f"engine_compare: device 0 is a CPU device ({mine[0]['device']}); this comparison is for GPUs")
if not named[0].startswith(mine_name):
    raise SystemExit(f"engine_compare: ccinfer ran on {mine_name!r} but llama.cpp on {named[0]!r}")
batched = json.loads(run([sys.executable, bench, "batched", args.streams, args.model, stream_file,
                          str(args.generate), str(args.rounds), "vulkan"], vk).stdout)
theirs["aggregate_generate_tokens_per_s"] = batched["aggregate_generate_tokens_per_s"]

first = mine[0]


def ratio(a, b):
    return a / b if b > 0 else float("nan")


print(f"\n{args.label or os.path.basename(args.model)}: {first['prompt_tokens']}-token prompt, "
      f"{args.generate} generated tokens, median of {args.rounds}")
print(f"ccinfer device:          {first['device']}")
print(f"llama.cpp Vulkan device: {named[0]}")
print("                                     prompt tok/s   generate tok/s")
for m in mine:
    print(f"  ccinfer ({m['matmul']:>8} matmuls)   {m['prompt_tokens_per_s']:12.1f}   {m['generate_tokens_per_s']:14.1f}")
print(f"  llama.cpp Vulkan                 {theirs['prompt_tokens_per_s']:12.1f}   {theirs['generate_tokens_per_s']:14.1f}")
print(f"  ccinfer/llama.cpp Vulkan         {ratio(first['prompt_tokens_per_s'], theirs['prompt_tokens_per_s']):12.3f}   "
      f"{ratio(first['generate_tokens_per_s'], theirs['generate_tokens_per_s']):14.3f}")
print(f"  aggregate generate tok/s ({args.generate} tokens per stream after 8 prompt tokens; "
      f"ccinfer with {first['matmul']} matmuls)")
print("                ccinfer   llama.cpp Vulkan   ratio")
for n in streams:
    a, b = first["aggregate_generate_tokens_per_s"][str(n)], theirs["aggregate_generate_tokens_per_s"][str(n)]
    print(f"  {n:3d} stream{'s' if n > 1 else ' '}  {a:9.1f}   {b:16.1f}   {ratio(a, b):5.2f}×")
base = first["aggregate_generate_tokens_per_s"][str(streams[0])]
print(f"  ccinfer {streams[-1]} streams / {streams[0]}: "
      f"{ratio(first['aggregate_generate_tokens_per_s'][str(streams[-1])], base):.2f}×")
print(json.dumps({"ccinfer": mine, "llama_cpp_vulkan": theirs}))
