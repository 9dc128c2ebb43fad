"""Loading a big model for QLoRA, side by side: peak host memory (RSS) and wall time
of transformers + bitsandbytes `from_pretrained(load_in_4bit=True)` against
nanoqlora's load (`./inspect load`, the load ./train does: each projection quantized
to NF4 as it is read), same random bf16 checkpoint, in one run.

  tools/ref/.venv/bin/python tools/ref/bench_load.py [--presets qwen3-4b qwen3-8b]

The checkpoints (8 and 16 GB for Qwen3-4B and Qwen3-8B) are written once to
.cache/bench/<preset>/ by bench_common.write_random_checkpoint, tensor by tensor.
Each load runs in its own process; peak RSS is that process's ru_maxrss. The
Python side keeps the non-quantized tensors in bf16 (dtype=torch.bfloat16, the
compute dtype of a GPU run); nanoqlora is measured with the dtypes of both of its
paths: `--for cuda` (embeddings bf16, as they go to the GPU) and `--for cpu` (f32,
the CPU path's precision). The file pages are dropped from the page cache before
each load (posix_fadvise DONTNEED), so every side reads from the disk alike.
"""
import argparse
import json
import os
import subprocess
import sys
import time

from bench_common import ROOT, write_random_checkpoint
from bench_qlora_cpu import measure


def drop_page_cache(model_dir):
    for f in model_dir.glob("*.safetensors"):
        fd = os.open(f, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def run_python(model_dir):
    """Child process: the Python stack's 4-bit load. Prints one JSON line."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    torch.set_num_threads(os.cpu_count())
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=bnb, dtype=torch.bfloat16,
                                                 device_map="cpu")
    seconds = time.perf_counter() - t0
    print(json.dumps({"load_s": seconds, "bytes": model.get_memory_footprint()}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["qwen3-4b", "qwen3-8b"])
    ap.add_argument("--child-python")
    args = ap.parse_args()
    if args.child_python:
        return run_python(args.child_python)
    rows = []
    for preset in args.presets:
        model_dir = ROOT / ".cache" / "bench" / f"{preset}-bf16"
        model_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        write_random_checkpoint(preset, model_dir)
        print(f"{preset}: checkpoint in {model_dir} ({time.perf_counter() - t0:.0f} s)", flush=True)
        for side in ("cuda", "cpu"):
            drop_page_cache(model_dir)
            out, wall, rss = measure([str(ROOT / "inspect"), "load", "--model", str(model_dir), "--for", side,
                                      "--json"])
            r = json.loads(out.strip().splitlines()[-1])
            rows.append((preset, f"nanoqlora (--for {side})", r["load_s"], wall, rss, r))
            print(f"  nanoqlora --for {side}: {r['load_s']:.1f} s, {rss / 2**30:.2f} GiB", flush=True)
        drop_page_cache(model_dir)
        out, wall, rss = measure([sys.executable, __file__, "--child-python", str(model_dir)])
        py = json.loads(out.strip().splitlines()[-1])
        rows.append((preset, "transformers+bnb", py["load_s"], wall, rss, py))
        print(f"  transformers+bnb: {py['load_s']:.1f} s, {rss / 2**30:.2f} GiB", flush=True)

    print(f"\nLoad for QLoRA on the CPU ({os.cpu_count()} cores): random bf16 checkpoint -> NF4 double-quant")
    print(f"{'':10s}{'':26s}{'load s':>8s}{'wall s':>8s}{'peak RSS':>12s}{'model':>11s}")
    for preset, side, load_s, wall, rss, r in rows:
        model = r.get("nf4_bytes", 0) + r.get("dense_bytes", 0) if "nf4_bytes" in r else r["bytes"]
        print(f"{preset:10s}{side:26s}{load_s:8.1f}{wall:8.1f}{rss / 2**30:8.2f} GiB{model / 2**30:7.2f} GiB")
    for preset in args.presets:
        py = next(r for r in rows if r[0] == preset and r[1] == "transformers+bnb")
        for r in rows:
            if r[0] == preset and r[1] != py[1]:
                model = r[5]["nf4_bytes"] + r[5]["dense_bytes"]
                print(f"{preset} {r[1]}: {r[4] / py[4]:.2f}x the Python stack's peak RSS, "
                      f"{r[3] / py[3]:.2f}x its wall time; peak RSS = {r[4] / model:.2f}x the model it holds")


if __name__ == "__main__":
    main()
