"""Side-by-side QLoRA training speed and memory on the GPU: the seed's Python
stack (transformers Qwen3 + bitsandbytes NF4 double quant, bf16 compute + PEFT
all-linear r=16 + gradient checkpointing + bitsandbytes PagedAdamW32bit, the
optimizer transformers' `optim="paged_adamw_32bit"` builds) against
./train --device cuda --optim paged_adamw, same model, batch, sequence length
and number of steps; and ./train --optim adamw (states on the GPU), whose
step time against the paged run is the cost of paging the optimizer states.

  python3 tools/ref/bench_qlora_gpu.py [--preset qwen3-0.6b] [--batch 1] [--seq 2048] [--steps 3]
                                       [--warmup 1] [--sides python,ours,ours_adamw]
  python3 tools/ref/bench_qlora_gpu.py --max-context [--preset qwen3-8b] [--fit-gb 80] [--time-limit 300] [--offload]
  python3 tools/ref/bench_qlora_gpu.py --long 32768,65536 [--preset qwen3-8b] [--time-limit 300]

The model (no download): both sides load the same pre-quantized 4-bit folder
that `./quantize --random PRESET` writes once into .cache/bench/<preset>/
(random init, NF4 double quant, bf16 embeddings, the Qwen3 tokenizer that
`make` unpacks; 0.54 GB for qwen3-0.6b, 6.1 GB for qwen3-8b, written tensor
by tensor in about 4 GB of host memory). The Python side loads it with
from_pretrained, as the seed loads a 4-bit model; ours reads the NF4 tensors
as stored (no f32 copy of the model ever exists).

Each side runs in its own process. tokens/s: the tokens of the timed steps
(after --warmup steps) over their wall time, torch.cuda.synchronize()d.
Peak GPU memory: torch.cuda.max_memory_allocated() for Python; for ours the
largest `gpu_mem_bytes` (else `mem_bytes`) in the trainer's metrics.jsonl,
the CUDA allocator's allocated peak (runtime/cuda_runtime.h). `wall` is the
whole side, process start to exit (imports, loading, steps).

Time budget of the default run (0.6B, batch 1 x 2048, 1 + 3 steps), estimated:
writing the folder once ~26 s of one core here (2-core build machine,
`time ./quantize --random qwen3-0.6b`), a few seconds with 16 cores; ./train
loads it in 2 s on the CPU; a step is ~7 TFLOP (6 x 0.6e9 x 2048, x4/3 with
recomputation), well under a second on an H200 even at 10% of its bf16 peak;
the Python side's import + CUDA init + load is ~15-30 s. So each side is
expected at ~20-40 s, under the ~90 s budget; the printed `wall` column
measures it.

--max-context (ours only): the longest sequence (batch 1) that trains one step
with a measured peak within --fit-gb GiB. `./inspect plan --fit-gb` predicts it
from the config; the mode then trains one step at increasing fractions of that
prediction (and a little beyond), each a fresh ./train, until one fails, its
measured peak exceeds the budget, or --time-limit runs out. One step of
qwen3-8b at ~130K tokens is tens of PFLOP of attention alone: minutes; with a
short time limit the mode reports how far it got.

--offload: --max-context with ./train --offload-activations on --mlp-chunk-rows auto,
starting from the plan's maximum with both (`./inspect plan --fit-gb`'s last line).

--long SEQS (ours only): for each sequence length, one warm-up and one timed step
without (`--offload-activations off --mlp-chunk-rows off`) and with
(`--offload-activations on --mlp-chunk-rows auto`) the long-context savings: tokens/s,
peak GPU memory, the plan's total and host memory; the step-time ratio is what the
offload's copies and the MLP's re-run cost.

--preset qwen3-30b-a3b-2l: Qwen3-30B-A3B's shapes, 2 layers (128 experts, top 8). bitsandbytes
cannot quantize transformers 5's fused 3-D experts, so both sides load one random bf16
folder (bench_common.write_model, once): the Python side quantizes the attention to NF4
on load (BitsAndBytesConfig) and keeps the experts bf16, with PEFT's LoRA on attention and
on the fused experts (target_parameters, gate_up at rank 2r); ./train quantizes every
projection, experts included, to NF4 at load and adapts all of them (all-linear).

Needs torch with CUDA, transformers, peft and bitsandbytes for the Python side
(bitsandbytes carried as a wheel in .whl/ on the lent machine: see tools/gpu_check.sh).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from bench_common import ROOT, is_moe, lora_config, write_data, write_model

PRESETS = ["qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b", "qwen3-30b-a3b-2l"]


def ensure_model(preset):
    """.cache/bench/<preset>/: the 4-bit random checkpoint both sides load (written once)."""
    path = ROOT / ".cache" / "bench" / preset
    if is_moe(preset):  # a bf16 folder (see the top of this file), written on the GPU
        path.mkdir(parents=True, exist_ok=True)
        write_model(preset, path, device="cuda")
        return path
    config = path / "config.json"
    if config.exists() and "quantization_config" in json.loads(config.read_text()) and \
            (path / "model.safetensors.index.json").exists():
        return path
    quantize = ROOT / "quantize"
    if not quantize.exists():
        sys.exit(f"{quantize} is missing: run `make` first")
    tmp = path.with_name(preset + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    # the Qwen3 tokenizer: ./quantize's default (build/fixtures/qwen3-tokenizer, unpacked by make)
    subprocess.run([str(quantize), "--random", preset, "--seed", "0", "--out", str(tmp)], check=True,
                   stdout=sys.stderr)
    shutil.rmtree(path, ignore_errors=True)  # e.g. a dense bf16 folder an older version of this script wrote
    tmp.rename(path)
    print(f"wrote {path} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return path


def run_python(args):
    """Child process: the seed's stack on the pre-quantized folder. Prints one JSON line."""
    import bitsandbytes as bnb
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM
    from transformers import BitsAndBytesConfig
    torch.manual_seed(0)
    moe = is_moe(args.preset)
    # Dense: config.json's quantization_config (NF4, double quant, bf16 compute: what ./quantize
    # --random writes). MoE: the bf16 folder, its nn.Linear projections (attention) quantized on load.
    quant = dict(quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16)) if moe else {}
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.bfloat16, device_map={"": 0}, **quant)
    n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    want = (4 if moe else 7) * model.config.num_hidden_layers
    assert n4 == want, f"{n4} Linear4bit modules, expected {want}: not loaded as 4-bit"
    # As in the seed: gradient checkpointing on, the non-4-bit weights cast to f32 (the bf16
    # experts too: prepare_model_for_kbit_training upcasts every non-4-bit parameter).
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = lora_config(moe)
    model = get_peft_model(model, lora)
    opt = bnb.optim.PagedAdamW32bit([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq),
                        generator=torch.Generator().manual_seed(0)).cuda()
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


# ./train's long-context flags: all savings off, and both on (training/memory_plan.h).
SCHEME_OFF = ["--offload-activations", "off", "--mlp-chunk-rows", "off"]
SCHEME_ON = ["--offload-activations", "on", "--mlp-chunk-rows", "auto"]


def train_ours(args, model_dir, seq, steps, tag, timeout=None, optim="paged_adamw", extra=()):
    """./train --device cuda --optim OPTIM on model_dir: {"peak_bytes", "loss", "rows"} or {"error"}."""
    lines = max(2, 2 * args.batch * steps)  # each longer than seq tokens: packing fills every row
    data = model_dir / f"data_{lines}x{seq}.jsonl"
    if not data.exists():
        write_data(data, lines, seq)
    metrics = model_dir / f"metrics_{tag}.jsonl"
    metrics.unlink(missing_ok=True)
    cmd = [str(ROOT / args.binary), "--model", str(model_dir), "--data", str(data), "--out",
           str(model_dir / f"out_{tag}"), "--max-steps", str(steps), "--batch-size", str(args.batch),
           "--max-length", str(seq), "--packing", "--r", "16", "--alpha", "32", "--dropout", "0", "--lr", "1e-4",
           "--schedule", "constant", "--metrics", str(metrics), "--save-every", "0", "--no-progress",
           "--device", "cuda", "--optim", optim, "--overwrite", *extra]  # the GPU trainer (tools/train.cpp)
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"did not finish in {timeout:.0f} s"}
    sys.stderr.write(p.stdout[-3000:])
    if p.returncode != 0:
        return {"error": (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1]}
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "step_time_s" in r]
    if not rows:
        return {"error": f"{metrics} holds no step"}
    return {"rows": rows, "peak_bytes": max(r.get("gpu_mem_bytes", r.get("mem_bytes", 0)) for r in rows),
            "loss": rows[-1].get("loss")}


def run_ours(args, model_dir, optim):
    r = train_ours(args, model_dir, args.seq, args.warmup + args.steps, "bench_" + optim, optim=optim)
    if "error" in r:
        return r
    timed = r.pop("rows")[args.warmup:]
    if not timed:
        return {"error": "fewer than warm-up + 1 steps"}
    r["tokens_per_s"] = sum(x["tokens"] for x in timed) / sum(x["step_time_s"] for x in timed)
    r["step_s"] = sum(x["step_time_s"] for x in timed) / len(timed)
    return r


def planned(preset, seq, fit_gb=None, offload=False, model_dir=None):
    """./inspect plan --json: the config-only memory plan (training/memory_plan.h), of the
    preset or, given model_dir, of its config.json."""
    model = ["--model", str(model_dir)] if model_dir else ["--preset", preset]
    cmd = [str(ROOT / "inspect"), "plan", *model, "--seq", str(seq), "--batch", "1", "--device", "cuda", "--json"]
    if offload:
        cmd += ["--offload-activations", "on", "--mlp-chunk-rows", "auto"]
    if fit_gb:
        cmd += ["--fit-gb", str(fit_gb)]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def max_context(args):
    """Ours only: the longest seq that trains one step within --fit-gb GiB, guided by the plan."""
    args.batch = 1
    t_start = time.perf_counter()
    model_dir = ensure_model(args.preset)
    budget = args.fit_gb * 2**30
    predicted = planned(args.preset, 2048, args.fit_gb, args.offload)["fit_seq"]
    scheme = SCHEME_ON if args.offload else SCHEME_OFF
    print(f"plan: longest seq (batch 1) within {args.fit_gb:g} GiB for {args.preset}: {predicted} tokens "
          f"({' '.join(scheme)})")
    tries = sorted({max(256, int(predicted * f) // 256 * 256) for f in (0.25, 0.5, 0.75, 0.9, 1.0, 1.03)})
    print(f"{'seq':>8s}{'plan':>12s}{'measured':>12s}{'step s':>9s}  result")
    best = None
    for seq in tries:
        left = args.time_limit - (time.perf_counter() - t_start)
        if left < 20:
            print(f"{seq:8d}  not tried: --time-limit {args.time_limit:g} s reached")
            break
        plan = planned(args.preset, seq, offload=args.offload)["total_bytes"]
        r = train_ours(args, model_dir, seq, 1, f"ctx{seq}", timeout=left, extra=scheme)
        if "error" in r:
            print(f"{seq:8d}{plan / 2**30:9.2f} GiB{'':>12s}{'':>9s}  failed: {r['error']}")
            break
        step_s = r["rows"][0]["step_time_s"]
        fits = r["peak_bytes"] <= budget
        print(f"{seq:8d}{plan / 2**30:9.2f} GiB{r['peak_bytes'] / 2**30:9.2f} GiB{step_s:9.1f}  "
              f"{'trained, fits' if fits else 'trained, over the budget'} (plan/measured {plan / r['peak_bytes']:.3f})")
        if not fits:
            break
        best = seq
    if best:
        print(f"longest context trained in one step within {args.fit_gb:g} GiB: {best} tokens "
              f"(tried up to {tries[-1]}; the plan predicts {predicted})")
    else:
        print(f"no context trained within {args.fit_gb:g} GiB")
    return 0 if best else 1


def long_context(args):
    """Ours only: each --long length with and without offload + chunked MLP: speed, memory, plan."""
    args.batch = 1
    t_start = time.perf_counter()
    model_dir = ensure_model(args.preset)
    print(f"long context, {args.preset} (4-bit random init), batch 1, 1 warm-up + 1 timed step each")
    print(f"{'seq':>8s} {'scheme':<28s}{'tokens/s':>10s}{'step s':>9s}{'peak GPU':>12s}{'plan':>12s}{'host plan':>12s}")
    for seq in (int(x) for x in args.long.split(",")):
        step_s = {}
        for name, scheme in (("off", SCHEME_OFF), ("offload + chunked MLP", SCHEME_ON)):
            left = args.time_limit - (time.perf_counter() - t_start)
            if left < 20:
                print(f"{seq:8d} {name:<28s}not run: --time-limit {args.time_limit:g} s reached")
                continue
            plan = planned(args.preset, seq, offload=scheme is SCHEME_ON)
            r = train_ours(args, model_dir, seq, 2, f"long{seq}_{len(step_s)}", timeout=left, extra=scheme)
            if "error" in r:
                print(f"{seq:8d} {name:<28s}failed: {r['error']} (plan {plan['total_bytes'] / 2**30:.2f} GiB)")
                continue
            row = r["rows"][-1]
            step_s[name] = row["step_time_s"]
            print(f"{seq:8d} {name:<28s}{row['tokens'] / row['step_time_s']:10.1f}{row['step_time_s']:9.2f}"
                  f"{r['peak_bytes'] / 2**30:9.2f} GiB{plan['total_bytes'] / 2**30:9.2f} GiB"
                  f"{plan['host_peak_bytes'] / 2**30:9.2f} GiB")
        if len(step_s) == 2:
            print(f"{seq:8d} step time with / without: {step_s['offload + chunked MLP'] / step_s['off']:.3f}x")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default=None, choices=PRESETS, help="default qwen3-0.6b (qwen3-8b with --max-context)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=3, help="timed steps")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--sides", default="python,ours,ours_adamw",
                    help="comma list of python, ours (paged AdamW, the default optimizer), "
                         "ours_adamw (AdamW states on the GPU: the paging overhead)")
    ap.add_argument("--binary", default="train", help="our trainer program, relative to the repository root")
    ap.add_argument("--max-context", action="store_true", help="ours only: the longest seq within --fit-gb")
    ap.add_argument("--fit-gb", type=float, default=80.0, help="--max-context: the GPU memory budget in GiB")
    ap.add_argument("--time-limit", type=float, default=300.0, help="--max-context: seconds for all tries")
    ap.add_argument("--offload", action="store_true",
                    help="--max-context with --offload-activations on --mlp-chunk-rows auto")
    ap.add_argument("--long", default="", help="ours only: comma list of sequence lengths, with and without offload")
    ap.add_argument("--child-python", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_python:
        return run_python(args)
    if args.max_context:
        args.preset = args.preset or "qwen3-8b"
        return max_context(args)
    if args.long:
        args.preset = args.preset or "qwen3-8b"
        return long_context(args)
    args.preset = args.preset or "qwen3-0.6b"
    sides = args.sides.split(",")
    model_dir = ensure_model(args.preset)

    unknown = set(sides) - {"python", "ours", "ours_adamw"}
    if unknown:
        sys.exit(f"error: --sides: unknown side(s) {', '.join(sorted(unknown))} (python, ours, ours_adamw)")
    results, walls = {}, {}
    ours_name = {"ours": f"./{args.binary} (paged AdamW)", "ours_adamw": f"./{args.binary} (AdamW on GPU)"}
    for side, optim in (("ours", "paged_adamw"), ("ours_adamw", "adamw")):
        if side in sides:
            t0 = time.perf_counter()
            results[ours_name[side]] = run_ours(args, model_dir, optim)
            walls[ours_name[side]] = time.perf_counter() - t0
    if "python" in sides:
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, __file__, "--child-python", "--model-dir", str(model_dir), "--preset",
                            args.preset, "--batch",
                            str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps), "--warmup",
                            str(args.warmup)], capture_output=True, text=True, env=dict(os.environ))
        walls["transformers+bnb+peft"] = time.perf_counter() - t0
        if p.returncode != 0:
            results["transformers+bnb+peft"] = {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
        else:
            results["transformers+bnb+peft"] = json.loads(p.stdout.strip().splitlines()[-1])

    plan = planned(args.preset, args.seq, model_dir=model_dir if is_moe(args.preset) else None) \
        if args.batch == 1 else None
    print(f"QLoRA step on the GPU, {args.preset} ({'bf16' if is_moe(args.preset) else '4-bit'} random init, "
          f"{model_dir}), batch {args.batch} x seq "
          f"{args.seq}, {args.warmup} warm-up + {args.steps} timed steps")
    w = max([28] + [len(name) + 2 for name in results])
    print(f"{'':{w}s}{'tokens/s':>12s}{'peak GPU mem':>16s}{'wall':>8s}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:{w}s}  failed: {r['error']}")
        else:
            print(f"{name:{w}s}{r['tokens_per_s']:12.1f}{r['peak_bytes'] / 2**30:13.2f} GiB{walls[name]:7.0f}s")
    if plan:
        print(f"{'plan (./inspect plan)':{w}s}{'':12s}{plan['total_bytes'] / 2**30:13.2f} GiB")
    ok = {name: r for name, r in results.items() if "error" not in r}
    ours, ours_adamw, py = (ok.get(ours_name["ours"]), ok.get(ours_name["ours_adamw"]),
                            ok.get("transformers+bnb+peft"))
    if ours and py:
        print(f"ratio ours/python: {ours['tokens_per_s'] / py['tokens_per_s']:.2f}x tokens/s, "
              f"{ours['peak_bytes'] / py['peak_bytes']:.2f}x peak memory")
    if ours and ours_adamw:
        print(f"paging overhead: paged AdamW step {ours['step_s'] * 1e3:.1f} ms vs AdamW on the GPU "
              f"{ours_adamw['step_s'] * 1e3:.1f} ms ({ours['step_s'] / ours_adamw['step_s']:.3f}x); "
              f"peak memory {ours['peak_bytes'] / 2**30:.3f} vs {ours_adamw['peak_bytes'] / 2**30:.3f} GiB")
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
