"""What the side-by-side training benchmarks (bench_qlora_cpu.py, bench_qlora_gpu.py)
share: the Qwen3 shapes, the model folder ./train reads, and the synthetic data."""
import json
import random
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VOCAB = 151936
PRESETS = {  # the official Qwen3 config.json values (qwen3-tiny: a small shape for CPU runs)
    "qwen3-tiny": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=64, tie_word_embeddings=True),
    "qwen3-0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
}


def qwen3_config(preset):
    from transformers import Qwen3Config
    return Qwen3Config(vocab_size=VOCAB, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=40960,
                       **PRESETS[preset])


def write_model(preset, path, device="cpu"):
    """The checkpoint folder ./train reads (random bf16 weights, written once) with
    the real Qwen3 tokenizer beside it."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        src = ROOT / "build" / "fixtures" / "qwen3-tokenizer" / name
        if not src.exists():
            sys.exit(f"{src} is missing: run `make` first (it unpacks the Qwen3 tokenizer)")
        shutil.copyfile(src, path / name)
    if (path / "model.safetensors").exists() or (path / "model.safetensors.index.json").exists():
        return
    import torch
    from transformers import Qwen3ForCausalLM
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM(qwen3_config(preset)).to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)


def write_data(path, n, seq):
    """n lines of {"text": ...}, each longer than seq tokens (packing fills every row)."""
    rnd = random.Random(0)
    words = "the of and to in is was for on that with as by at from his her an it are be this".split()
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"text": " ".join(rnd.choice(words) for _ in range(seq * 2))}) + "\n")
