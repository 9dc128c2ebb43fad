"""QLoRA parity fixture: the seed's Python stack, step by step, on the CPU.

transformers + bitsandbytes (NF4, double quant, fp32 compute) + PEFT (all-linear,
r=16, alpha=32, dropout 0) + torch AdamW + cosine schedule with warmup, run for
20 optimizer steps (2 micro-batches each) on a tiny random Qwen3 with fixed
batches. Writes into tests/fixtures/qlora/:

  model/            the fp32 base model (config.json + model.safetensors)
  model-bnb-4bit/   the same model quantized and saved by transformers + bitsandbytes
  adapter_init/     the PEFT adapter before training (A kaiming-uniform, B zero)
  adapter_final/    the PEFT adapter after 20 steps
  batches.safetensors   input_ids / labels, [steps * accum, B, T] int32
  trace.json        per step: loss, grad_norm (before clipping), lr; and the hyper-parameters

Loss per optimizer step follows transformers' Trainer with gradient accumulation:
sum of token cross-entropies over all micro-batches divided by the number of
counted tokens in the whole accumulated batch (num_items_in_batch).
"""
import json
import shutil
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import (AutoModelForCausalLM, BitsAndBytesConfig, Qwen3Config, Qwen3ForCausalLM,
                          get_cosine_schedule_with_warmup)

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "qlora"

HP = dict(r=16, lora_alpha=32, lora_dropout=0.0, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8,
          warmup_steps=2, steps=20, grad_accum=2, batch=2, seq=16, max_grad_norm=1.0, seed=1234)


def main():
    torch.manual_seed(HP["seed"])
    torch.use_deterministic_algorithms(True)
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)

    cfg = Qwen3Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=32, vocab_size=512, tie_word_embeddings=True,
                      rope_theta=10000.0, max_position_embeddings=256, rms_norm_eps=1e-6,
                      attn_implementation="eager")
    base = Qwen3ForCausalLM(cfg).float()
    base.save_pretrained(OUT / "model", safe_serialization=True)

    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(OUT / "model", quantization_config=bnb, dtype=torch.float32,
                                                 device_map="cpu", attn_implementation="eager")
    model.save_pretrained(OUT / "model-bnb-4bit", safe_serialization=True)

    torch.manual_seed(HP["seed"] + 1)
    lcfg = LoraConfig(r=HP["r"], lora_alpha=HP["lora_alpha"], lora_dropout=HP["lora_dropout"], bias="none",
                      task_type="CAUSAL_LM", target_modules="all-linear")
    model = get_peft_model(model, lcfg)
    model.peft_config["default"].base_model_name_or_path = "model"  # relative: the fixture travels
    model.save_pretrained(OUT / "adapter_init")

    g = torch.Generator().manual_seed(HP["seed"] + 2)
    n_micro = HP["steps"] * HP["grad_accum"]
    ids = torch.randint(0, cfg.vocab_size, (n_micro, HP["batch"], HP["seq"]), generator=g)
    labels = ids.clone()
    # Mask a random-length prompt prefix of each row (completion-only loss) and pad the
    # tail of some rows, so counted-token normalisation matters.
    for m in range(n_micro):
        for b in range(HP["batch"]):
            prompt = int(torch.randint(1, 6, (1,), generator=g))
            labels[m, b, :prompt] = -100
            if (m + b) % 3 == 0:
                labels[m, b, -4:] = -100
    save_file({"input_ids": ids.to(torch.int32).contiguous(), "labels": labels.to(torch.int32).contiguous()},
              str(OUT / "batches.safetensors"))

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=HP["lr"], betas=HP["betas"], eps=HP["eps"], weight_decay=HP["weight_decay"],
                            foreach=False)
    sched = get_cosine_schedule_with_warmup(opt, HP["warmup_steps"], HP["steps"])
    trace = []
    model.train()
    for step in range(HP["steps"]):
        micro = range(step * HP["grad_accum"], (step + 1) * HP["grad_accum"])
        # Counted tokens after the shift (labels[:, 1:]), as transformers' num_items_in_batch.
        n_items = sum(int((labels[m][:, 1:] != -100).sum()) for m in micro)
        lr = sched.get_last_lr()[0]
        total = 0.0
        for m in micro:
            out = model(input_ids=ids[m], labels=labels[m], num_items_in_batch=torch.tensor(n_items))
            out.loss.backward()
            total += out.loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, HP["max_grad_norm"]).item()
        opt.step()
        sched.step()
        opt.zero_grad()
        trace.append({"step": step + 1, "loss": total, "grad_norm": grad_norm, "lr": lr, "tokens": n_items})
        print(f"step {step + 1:2d} loss {total:.6f} grad_norm {grad_norm:.6f} lr {lr:.3e}")

    model.save_pretrained(OUT / "adapter_final")
    (OUT / "trace.json").write_text(json.dumps({"hyperparameters": HP, "steps": trace}, indent=1))
    for d in ("adapter_init", "adapter_final"):
        readme = OUT / d / "README.md"
        if readme.exists():
            readme.unlink()


if __name__ == "__main__":
    main()
