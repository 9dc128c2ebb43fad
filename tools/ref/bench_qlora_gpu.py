"""Side-by-side QLoRA training speed and memory on the GPU: the seed's Python
stack (transformers Qwen3 + bitsandbytes NF4 double quant, bf16 compute + PEFT
all-linear r=16 + gradient checkpointing + bitsandbytes PagedAdamW32bit, the
optimizer transformers' `optim="paged_adamw_32bit"` builds) against
./train --device cuda, same random-init model, batch, sequence length and
number of steps.

  python3 tools/ref/bench_qlora_gpu.py [--preset qwen3-0.6b] [--batch 4] [--seq 512] [--steps 5] [--sides python,ours]

The model is random-init (no download). The Python side builds it directly on
the GPU in bf16 and swaps every decoder linear for a bitsandbytes Linear4bit
(what from_pretrained(quantization_config=BitsAndBytesConfig(...)) does);
ours needs a checkpoint folder, so with `ours` in --sides the script writes it
once to .cache/bench/<preset>/ (bf16 safetensors, the Qwen3 tokenizer beside it
from build/fixtures/qwen3-tokenizer, unpacked by `make`). qwen3-8b is a 16 GB
folder: minutes to write and load, outside tools/gpu_check.sh's budget.

Each side runs in its own process. tokens/s: the tokens of the timed steps
(after --warmup steps) over their wall time, torch.cuda.synchronize()d.
Peak GPU memory: torch.cuda.max_memory_allocated() for Python; for ours the
largest `gpu_mem_bytes` (else `mem_bytes`) in the trainer's metrics.jsonl,
the CUDA allocator's allocated peak (runtime/cuda_runtime.h).
Needs torch with CUDA, transformers, peft and bitsandbytes (carried as a wheel
in .whl/ on the lent machine: see tools/gpu_check.sh).
"""
import argparse
import json
import subprocess
import sys
import time

from bench_common import PRESETS, ROOT, VOCAB, qwen3_config, write_data, write_model


def quantize_linears(model, compute_dtype):
    """Every decoder nn.Linear -> bnb Linear4bit (NF4, double quant), as BitsAndBytesConfig loading does."""
    import bitsandbytes as bnb
    import torch
    for name, module in list(model.model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4",
                                      device="meta")
                q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, compress_statistics=True,
                                             quant_type="nf4", module=q)
                if child.bias is not None:
                    q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
                setattr(module, child_name, q.cuda())  # .cuda() quantizes the not-yet-quantized Params4bit
                del child
    torch.cuda.empty_cache()


def run_python(args):
    """Child process: the Python stack. Prints one JSON line."""
    import bitsandbytes as bnb
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import Qwen3ForCausalLM
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(qwen3_config(args.preset)).to(torch.bfloat16)
    quantize_linears(model, torch.bfloat16)
    # What from_pretrained(quantization_config=...) sets; prepare_model_for_kbit_training reads it to
    # turn gradient checkpointing on (and, as in the seed, casts the non-4-bit weights to f32).
    model.is_loaded_in_4bit = True
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    opt = bnb.optim.PagedAdamW32bit([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    ids = torch.randint(0, VOCAB, (args.batch, args.seq), generator=torch.Generator().manual_seed(0)).cuda()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.warmup + args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    timed = sum(times[args.warmup:])
    print(json.dumps({"tokens_per_s": args.batch * args.seq * args.steps / timed,
                      "peak_bytes": torch.cuda.max_memory_allocated(), "loss": loss.item()}))


def run_ours(args, model_dir):
    data = model_dir / "data.jsonl"
    write_data(data, 64, args.seq)
    metrics = model_dir / "metrics_gpu.jsonl"
    metrics.unlink(missing_ok=True)
    binary = ROOT / args.binary
    cmd = [str(binary), "--model", str(model_dir), "--data", str(data), "--out", str(model_dir / "out_gpu"),
           "--max-steps", str(args.warmup + args.steps), "--batch-size", str(args.batch), "--max-length",
           str(args.seq), "--packing", "--r", "16", "--alpha", "32", "--dropout", "0", "--lr", "1e-4",
           "--schedule", "constant", "--optim", "paged_adamw", "--metrics", str(metrics), "--save-every", "0",
           "--device", "cuda", "--no-progress"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write(p.stdout[-4000:])
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1]}
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "step_time_s" in r]
    timed = rows[args.warmup:]
    if not timed:
        return {"error": f"{metrics} holds {len(rows)} steps, fewer than warm-up + 1"}
    peak = max(r.get("gpu_mem_bytes", r.get("mem_bytes", 0)) for r in rows)
    return {"tokens_per_s": sum(r["tokens"] for r in timed) / sum(r["step_time_s"] for r in timed),
            "peak_bytes": peak, "loss": timed[-1].get("loss")}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="qwen3-0.6b", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=5, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--sides", default="python,ours", help="comma list of python, ours")
    ap.add_argument("--binary", default="train", help="our trainer program, relative to the repository root")
    ap.add_argument("--child-python", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_python:
        return run_python(args)
    sides = args.sides.split(",")

    results = {}
    if "ours" in sides:
        model_dir = ROOT / ".cache" / "bench" / args.preset
        model_dir.mkdir(parents=True, exist_ok=True)
        write_model(args.preset, model_dir, device="cuda")
        results["nanoqlora ./" + args.binary] = run_ours(args, model_dir)
    if "python" in sides:
        p = subprocess.run([sys.executable, __file__, "--child-python", "--preset", args.preset, "--batch",
                            str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps), "--warmup",
                            str(args.warmup)], capture_output=True, text=True)
        if p.returncode != 0:
            results["transformers+bnb+peft"] = {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
        else:
            results["transformers+bnb+peft"] = json.loads(p.stdout.strip().splitlines()[-1])

    print(f"QLoRA step on the GPU, {args.preset}, batch {args.batch} x seq {args.seq}, "
          f"{args.warmup} warm-up + {args.steps} timed steps")
    print(f"{'':28s}{'tokens/s':>12s}{'peak GPU mem':>16s}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:28s}  failed: {r['error']}")
        else:
            print(f"{name:28s}{r['tokens_per_s']:12.1f}{r['peak_bytes'] / 2**30:13.2f} GiB")
    ok = [r for r in results.values() if "error" not in r]
    if len(ok) == 2:
        ours, py = ok
        print(f"ratio ours/python: {ours['tokens_per_s'] / py['tokens_per_s']:.2f}x tokens/s, "
              f"{ours['peak_bytes'] / py['peak_bytes']:.2f}x peak memory")
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
