"""Side-by-side QLoRA training speed and memory on the CPU: the seed's Python
stack (transformers + bitsandbytes NF4 double quant + PEFT all-linear r=16 +
gradient checkpointing + torch AdamW) against ./train, same model, batch,
sequence length and number of steps, in one run.

  tools/ref/.venv/bin/python tools/ref/bench_qlora_cpu.py [--preset qwen3-0.6b] [--seq 256] [--steps 3]

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
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRESETS = {  # the official Qwen3 config.json values
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "qwen3-tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=64, tie_word_embeddings=True),
}


def make_model(preset, path):
    import shutil
    for name in ("tokenizer.json", "tokenizer_config.json"):
        src = ROOT / "build" / "fixtures" / "qwen3-tokenizer" / name
        if not src.exists():
            sys.exit(f"{src} is missing: run `make` first (it unpacks the Qwen3 tokenizer)")
        shutil.copyfile(src, path / name)
    if (path / "model.safetensors").exists():
        return
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=151936, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=40960,
                      **PRESETS[preset])
    Qwen3ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(path, safe_serialization=True)


def make_data(path, n, seq):
    import random
    rnd = random.Random(0)
    words = "the of and to in is was for on that with as by at from his her an it are be this".split()
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"text": " ".join(rnd.choice(words) for _ in range(seq * 2))}) + "\n")


def run_python(args):
    """Child process: the Python stack. Prints one JSON line."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    torch.set_num_threads(os.cpu_count())
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, quantization_config=bnb, dtype=torch.float32,
                                                 device_map="cpu")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
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
    print(json.dumps({"tokens_per_s": args.batch * args.seq * args.steps / timed, "loss": loss.item()}))


def measure(cmd):
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # max over children so far
    if p.returncode != 0:
        sys.exit(f"command failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return p, wall, rss


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
    make_model(args.preset, model_dir)
    if args.make_model_only:
        return print(model_dir)
    data = model_dir / "data.jsonl"
    make_data(data, 64, args.seq)

    # Run ./train first: RUSAGE_CHILDREN is a running maximum over finished children.
    metrics = model_dir / "metrics.jsonl"
    cmd = [str(ROOT / "train"), "--model", str(model_dir), "--data", str(data), "--out", str(model_dir / "out"),
           "--max-steps", str(args.steps + 1), "--batch-size", str(args.batch), "--max-length", str(args.seq),
           "--packing", "--r", "16", "--alpha", "32", "--dropout", "0", "--lr", "1e-4", "--schedule", "constant",
           "--metrics", str(metrics), "--save-every", "0", "--device", "cpu", "--no-progress"]
    _, _, rss_ours = measure(cmd)
    rows = [json.loads(l) for l in metrics.read_text().splitlines()]
    ours_tps = sum(r["tokens"] for r in rows[1:]) / sum(r["step_time_s"] for r in rows[1:])

    p, _, rss_py = measure([sys.executable, __file__, "--child-python", "--model-dir", str(model_dir),
                            "--seq", str(args.seq), "--batch", str(args.batch), "--steps", str(args.steps)])
    py = json.loads(p.stdout.strip().splitlines()[-1])

    print(f"QLoRA step on CPU ({os.cpu_count()} cores), {args.preset}, batch {args.batch} x seq {args.seq}, "
          f"{args.steps} timed steps")
    print(f"{'':24s}{'tokens/s':>12s}{'peak RSS':>12s}")
    print(f"{'transformers+bnb+peft':24s}{py['tokens_per_s']:12.1f}{rss_py / 2**30:10.2f} GiB")
    print(f"{'nanoqlora ./train':24s}{ours_tps:12.1f}{rss_ours / 2**30:10.2f} GiB")
    print(f"ratio: {ours_tps / py['tokens_per_s']:.2f}x tokens/s, {rss_ours / rss_py:.2f}x memory")


if __name__ == "__main__":
    main()
