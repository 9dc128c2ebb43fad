"""What the side-by-side training benchmarks (bench_qlora_cpu.py, bench_qlora_gpu.py)
share: the Qwen3 shapes, the model folder ./train reads, and the synthetic data."""
import json
import math
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
    "qwen3-4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    "qwen3-8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                     num_key_value_heads=8, head_dim=128, tie_word_embeddings=False),
    # a small Qwen3-MoE for CPU runs: 16 experts of width 128, top 4 (the memory plan's fit table's)
    "qwen3-moe-tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=64, tie_word_embeddings=True, num_experts=16,
                           num_experts_per_tok=4, moe_intermediate_size=128, norm_topk_prob=True),
    # Qwen3-30B-A3B's official config cut to 2 of its 48 layers (experts, router, attention at full size)
    "qwen3-30b-a3b-2l": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=2, num_attention_heads=32,
                             num_key_value_heads=4, head_dim=128, tie_word_embeddings=False, num_experts=128,
                             num_experts_per_tok=8, moe_intermediate_size=768, norm_topk_prob=True),
}


def is_moe(preset):
    return "num_experts" in PRESETS[preset]


def lora_config(moe):
    """The seed's LoraConfig (r 16, alpha 32, all-linear; no dropout, for timing). For a
    Qwen3-MoE, LoRA on attention and every expert as nanoqlora's all-linear: PEFT 0.21 turns
    gate/up/down_proj into target_parameters on transformers 5's fused 3-D experts, gate_up at
    rank 2r (tools/ref/make_moe_fixtures.py, docs/qlora_io.md)."""
    from peft import LoraConfig
    if moe:
        return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                          target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"], task_type="CAUSAL_LM")
    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


def qwen3_config(preset):
    from transformers import Qwen3Config, Qwen3MoeConfig
    return (Qwen3MoeConfig if is_moe(preset) else Qwen3Config)(
        vocab_size=VOCAB, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=40960, **PRESETS[preset])


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
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(qwen3_config(preset)).to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)


def copy_tokenizer(path):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        src = ROOT / "build" / "fixtures" / "qwen3-tokenizer" / name
        if not src.exists():
            sys.exit(f"{src} is missing: run `make` first (it unpacks the Qwen3 tokenizer)")
        shutil.copyfile(src, path / name)


def write_random_checkpoint(preset, path, shard_bytes=2 << 30):
    """A random bf16 checkpoint of `preset` as save_pretrained lays it out (sharded
    safetensors + index, config.json), written tensor by tensor so that an 8B model
    never exists in this process's memory: about one shard at a time. Values
    ~ N(0, 0.02), norms 1 (the init transformers uses; the values only matter for
    the time quantization takes, which does not depend on them)."""
    import torch
    from safetensors.torch import save_file
    copy_tokenizer(path)
    if (path / "model.safetensors.index.json").exists():
        return
    if is_moe(preset):
        sys.exit(f"write_random_checkpoint: {preset} is a MoE preset (use write_model)")
    cfg = qwen3_config(preset)
    cfg.torch_dtype = torch.bfloat16
    D, F, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    q, kv, Dh = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim, cfg.head_dim
    specs = [("model.embed_tokens.weight", (VOCAB, D))]
    for i in range(L):
        p = f"model.layers.{i}."
        specs += [(p + "input_layernorm.weight", (D,)), (p + "self_attn.q_proj.weight", (q, D)),
                  (p + "self_attn.k_proj.weight", (kv, D)), (p + "self_attn.v_proj.weight", (kv, D)),
                  (p + "self_attn.o_proj.weight", (D, q)), (p + "self_attn.q_norm.weight", (Dh,)),
                  (p + "self_attn.k_norm.weight", (Dh,)), (p + "post_attention_layernorm.weight", (D,)),
                  (p + "mlp.gate_proj.weight", (F, D)), (p + "mlp.up_proj.weight", (F, D)),
                  (p + "mlp.down_proj.weight", (D, F))]
    specs.append(("model.norm.weight", (D,)))
    if not cfg.tie_word_embeddings:
        specs.append(("lm_head.weight", (VOCAB, D)))
    gen = torch.Generator().manual_seed(0)
    groups, size = [[]], 0  # shard membership first (from the shapes), so each shard is made and written alone
    for name, shape in specs:
        n = 2 * math.prod(shape)
        if groups[-1] and size + n > shard_bytes:
            groups.append([])
            size = 0
        groups[-1].append((name, shape))
        size += n
    weight_map, total = {}, 0
    for k, group in enumerate(groups):
        file = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {name: torch.ones(shape, dtype=torch.bfloat16) if name.endswith("norm.weight")
                   else (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16) for name, shape in group}
        save_file(tensors, path / file, metadata={"format": "pt"})
        for name, t in tensors.items():
            weight_map[name] = file
            total += t.numel() * 2
        del tensors
    cfg.save_pretrained(path)
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")


def write_data(path, n, seq):
    """n lines of {"text": ...}, each longer than seq tokens (packing fills every row)."""
    rnd = random.Random(0)
    words = "the of and to in is was for on that with as by at from his her an it are be this".split()
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"text": " ".join(rnd.choice(words) for _ in range(seq * 2))}) + "\n")
