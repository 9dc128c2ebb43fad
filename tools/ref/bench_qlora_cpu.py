"""Side-by-side QLoRA training speed and memory on the CPU: the seed's Python
stack (transformers + bitsandbytes NF4 double quant + PEFT all-linear r=16 +
gradient checkpointing + torch AdamW) against ./train, same model, batch,
sequence length and number of steps, in one run.

  tools/ref/.venv/bin/python tools/ref/bench_qlora_cpu.py [--preset qwen3-0.6b] [--seq 256] [--steps 3]
  tools/ref/.venv/bin/python tools/ref/bench_qlora_cpu.py --preset qwen3-moe-tiny   (a Qwen3-MoE)

The model is random-init (no download): the script writes it once to
.cache/bench/<preset>/ (bf16 safetensors) with the real Qwen3 tokenizer files
beside it (from build/fixtures/qwen3-tokenizer, unpacked by `make`), so the same
folder also serves for a realistic ./train run on data/demo_train.jsonl. Each side runs in its own process;
peak RSS is that process's ru_maxrss; tokens/s counts the tokens of the timed
optimizer steps (after one warm-up step) divided by their wall time.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bench_common import PRESETS, ROOT, is_moe, lora_config, write_data, write_model


def run_python(args):
    """Child process: the Python stack. Prints one JSON line."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    torch.set_num_threads(os.cpu_count())
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, quantization_config=bnb, dtype=torch.float32,
                                                 device_map="cpu")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    # bitsandbytes quantizes the nn.Linear projections only: a MoE's fused 3-D experts stay f32
    lora = lora_config(is_moe(args.preset))
    model = get_peft_model(model, lora)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, 151936, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    times = []
    for step in range(args.steps + 1):
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    timed = sum(times[1:])
    print(json.dumps({"tokens_per_s": args.batch * args.seq * args.steps / timed, "loss": loss.item(),
                      "trainable": trainable}))


def measure(cmd):
    """Runs cmd; returns (stdout, wall seconds, peak RSS bytes of that process alone)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(p.pid, 0)  # this child's own rusage
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"command failed: {' '.join(cmd)}\n{err.read()[-2000:]}")
        return out.read(), wall, usage.ru_maxrss * 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="qwen3-tiny", choices=sorted(PRESETS))
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--make-model-only", action="store_true", help="write .cache/bench/<preset>/ and exit")
    ap.add_argument("--child-python", action="store_true")
    ap.add_argument("--model-dir")
    args = ap.parse_args()
    if args.child_python:
        return run_python(args)

    model_dir = ROOT / ".cache" / "bench" / args.preset
    model_dir.mkdir(parents=True, exist_ok=True)
    if args.make_model_only:
        write_model(args.preset, model_dir)
        return print(model_dir)
    # The model is written by a child process: this process stays small (no torch),
    # so the children forked below do not start with its pages in their peak RSS.
    subprocess.run([sys.executable, __file__, "--make-model-only", "--preset", args.preset], check=True,
                   stdout=subprocess.DEVNULL)
    data = model_dir / "data.jsonl"
    write_data(data, 64, args.seq)

    metrics = model_dir / "metrics.jsonl"
    cmd = [str(ROOT / "train"), "--model", str(model_dir), "--data", str(data), "--out", str(model_dir / "out"),
           "--max-steps", str(args.steps + 1), "--batch-size", str(args.batch), "--max-length", str(args.seq),
           "--packing", "--r", "16", "--alpha", "32", "--dropout", "0", "--lr", "1e-4", "--schedule", "constant",
           "--metrics", str(metrics), "--save-every", "0", "--device", "cpu", "--no-progress", "--overwrite"]
    _, _, rss_ours = measure(cmd)
    rows = [json.loads(l) for l in metrics.read_text().splitlines()]
    ours_tps = sum(r["tokens"] for r in rows[1:]) / sum(r["step_time_s"] for r in rows[1:])

    stdout, _, rss_py = measure([sys.executable, __file__, "--child-python", "--model-dir", str(model_dir),
                                 "--preset", args.preset, "--seq", str(args.seq), "--batch", str(args.batch),
                                 "--steps", str(args.steps)])
    py = json.loads(stdout.strip().splitlines()[-1])

    print(f"QLoRA step on CPU ({os.cpu_count()} cores), {args.preset}, batch {args.batch} x seq {args.seq}, "
          f"{args.steps} timed steps")
    print(f"{'':24s}{'tokens/s':>12s}{'peak RSS':>12s}")
    print(f"{'transformers+bnb+peft':24s}{py['tokens_per_s']:12.1f}{rss_py / 2**30:10.2f} GiB"
          f"   ({py['trainable']} trainable)")
    print(f"{'nanoqlora ./train':24s}{ours_tps:12.1f}{rss_ours / 2**30:10.2f} GiB")
    print(f"ratio: {ours_tps / py['tokens_per_s']:.2f}x tokens/s, {rss_ours / rss_py:.2f}x memory")


if __name__ == "__main__":
    main()
