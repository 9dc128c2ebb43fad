"""Random-init 4-bit checkpoints (./quantize --random) against transformers + bitsandbytes.

Needs ./quantize (run `make` first). Two checks, both on the CPU:

1. The fixture (tests/fixtures/random_checkpoint/): a tiny Qwen3 config written by
   transformers (config.json: 2 layers, hidden 128, MLP 256, untied lm_head, bf16),
   then `./quantize --random config.json --seed 7` into a temp folder, which
   transformers loads with from_pretrained as a pre-quantized 4-bit model. Written:
     bnb.safetensors   input_ids [2, 16] i32; loss [1] f32: the mean CE of that batch
                       (labels = ids) of transformers' f32 Qwen3 holding every weight
                       bitsandbytes dequantizes from the checkpoint (f32 output);
                       and bitsandbytes' CPU dequantize_4bit (output f32) of two weights
                       (q_proj of layer 0, down_proj of layer 1: in_features % 64 == 0,
                       where bnb's CPU kernel indexes blocks as its quantizer does)
   tests/test_random_checkpoint.cpp regenerates the checkpoint (same seed) and
   checks our dequantization bit for bit, our loss against transformers'.
2. Preset-shaped: `./quantize --random qwen3-0.6b --layers 2` (the real shapes,
   vocabulary and tokenizer, 2 of 28 layers) loads in transformers, its tokenizer
   encodes a text, and the loss of a forward is finite and near ln(vocab) (a random
   init predicts nearly uniformly). Printed, nothing written.

Run: tools/ref/.venv/bin/python tools/ref/make_random_checkpoint_fixtures.py
"""
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import bitsandbytes as bnb
import bitsandbytes.functional as F
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "random_checkpoint"
QUANTIZE = ROOT / "quantize"
SEED = 7
DEQUANT = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.down_proj.weight"]


def quantize_random(source, out, *extra):
    if not QUANTIZE.exists():
        sys.exit(f"{QUANTIZE} is missing: run `make` first")
    cmd = [str(QUANTIZE), "--random", str(source), "--out", str(out), *extra]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def load_4bit(path):
    model = AutoModelForCausalLM.from_pretrained(path, device_map="cpu", dtype=torch.float32)
    n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert n4 == 7 * model.config.num_hidden_layers, f"{n4} Linear4bit modules"
    return model


def fixture():
    OUT.mkdir(parents=True, exist_ok=True)
    cfg = Qwen3Config(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=32, vocab_size=512, tie_word_embeddings=False,
                      rope_theta=10000.0, max_position_embeddings=256, rms_norm_eps=1e-6, dtype="bfloat16")
    cfg.save_pretrained(OUT)
    with tempfile.TemporaryDirectory() as tmp:
        quantize_random(OUT / "config.json", tmp, "--seed", str(SEED), "--tokenizer", "none")
        model = load_4bit(tmp)
        # Every NF4 weight dequantized by bitsandbytes to f32 (code * absmax unrounded, as ours),
        # loaded with the other tensors into transformers' f32 Qwen3: the f32 reference forward
        # (bnb's CPU Linear4bit forward rounds through bf16 on the way, ~5e-5 on this loss).
        dense_sd, tensors = {}, {}
        for name, module in model.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.weight.quant_state.dtype = torch.float32
                w = F.dequantize_4bit(module.weight.data, module.weight.quant_state).contiguous()
                assert w.dtype == torch.float32 and w.shape == (module.out_features, module.in_features)
                dense_sd[name + ".weight"] = w
                if name + ".weight" in DEQUANT:
                    tensors[name + ".weight"] = w
        for name, p in model.named_parameters():
            dense_sd.setdefault(name, p.data.float())
        dense = Qwen3ForCausalLM(model.config).float()
        dense.load_state_dict(dense_sd, strict=True)
        ids = torch.randint(0, cfg.vocab_size, (2, 16), generator=torch.Generator().manual_seed(SEED))
        with torch.no_grad():
            loss = dense(input_ids=ids, labels=ids).loss.float()
        assert torch.isfinite(loss), loss
        tensors["input_ids"] = ids.to(torch.int32)
        tensors["loss"] = loss.reshape(1)
        save_file(tensors, str(OUT / "bnb.safetensors"))
        print(f"fixture: transformers loaded the 4-bit checkpoint, loss {loss.item():.6f}; wrote {OUT}")


def preset_check():
    with tempfile.TemporaryDirectory() as tmp:
        quantize_random("qwen3-0.6b", tmp, "--layers", "2", "--seed", "0")
        model = load_4bit(tmp)
        tok = AutoTokenizer.from_pretrained(tmp)
        ids = tok("The quick brown fox jumps over the lazy dog. " * 4, return_tensors="pt").input_ids
        with torch.no_grad():
            loss = model(input_ids=ids, labels=ids).loss.item()
        expected = math.log(model.config.vocab_size)
        ok = math.isfinite(loss) and abs(loss - expected) < 1.0
        print(f"qwen3-0.6b --layers 2: transformers loads it, {ids.shape[1]} tokens, loss {loss:.4f} "
              f"(ln V = {expected:.4f}): {'ok' if ok else 'FAILED'}")
        if not ok:
            sys.exit(1)


if __name__ == "__main__":
    fixture()
    preset_check()
