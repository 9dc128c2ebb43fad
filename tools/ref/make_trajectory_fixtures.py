"""Trajectory fixture for `./train --adapter INIT --no-shuffle`: the seed's Python stack
continuing from a given PEFT adapter, on a JSONL file, step by step on the CPU.

transformers + bitsandbytes (NF4, double quant, fp32 compute) + PEFT
(PeftModel.from_pretrained(..., is_trainable=True) on a given initial adapter:
r 8, alpha 12, rsLoRA, five of the seven projections, B not zero) + torch AdamW
(weight decay 0.01) + linear schedule with warmup + gradient accumulation 3, on a
tiny random Qwen3 with the small test BPE tokenizer. Unlike make_qlora_fixtures.py
the batches are not given: they are made from data.jsonl (prompt-completion) the
way docs/data.md says ./train makes them, so the C++ test runs the whole CLI path
(parse_train_args + train) and compares every step. Writes tests/fixtures/trajectory/:

  model/            fp32 base (config.json, model.safetensors) + tokenizer.json, tokenizer_config.json
  data.jsonl        the training file: {"prompt", "completion"} per line
  adapter_init/     the initial adapter (PEFT format), what --adapter reads
  adapter_final/    the adapter after the run
  trace.json        the hyper-parameters, the ./train arguments that match them, and per
                    step: loss, grad_norm (before clipping), lr, tokens (counted targets)

Data order (./train --no-shuffle, docs/data.md): micro-batch k (0-based) of step s
(1-based) is the samples [((s-1)*accum + k)*B, ((s-1)*accum + k + 1)*B) of the file,
each row encode(prompt) ++ encode(completion) ++ [EOS], right-padded to the batch's
longest, the loss on the completion and EOS. The loss of a step is transformers'
Trainer's with accumulation: all token CEs of the step / the step's counted targets.
"""
import json
import random
import shutil
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tokenizers import Tokenizer
from transformers import (AutoModelForCausalLM, BitsAndBytesConfig, Qwen3Config, Qwen3ForCausalLM,
                          get_linear_schedule_with_warmup)

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "trajectory"
TOKENIZER = ROOT / "tests" / "fixtures" / "tokenizer" / "gpt2" / "tokenizer.json"

HP = dict(r=8, lora_alpha=12, use_rslora=True, lora_dropout=0.0,
          target_modules=["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"],
          lr=2e-3, weight_decay=0.01, betas=(0.9, 0.999), eps=1e-8, schedule="linear", warmup_steps=2,
          batch=2, grad_accum=3, steps=8, max_length=64, max_grad_norm=1.0, seed=4321)

# SmolLM2-Instruct's chat template (ChatML with a default system message), so that
# make_trl_mask_fixtures.py can also run chats through this model.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

WORDS = ("the a cat dog sat on mat ran far near blue red green small big house tree river stone light dark "
         "one two three four five six seven eight nine ten").split()


def write_model_dir(path):
    # in_features all multiples of 64 (see make_qlora_fixtures.py: bitsandbytes' CPU
    # dequantize indexes absmax per row otherwise).
    cfg = Qwen3Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=32, vocab_size=1003, tie_word_embeddings=True,
                      rope_theta=10000.0, max_position_embeddings=256, rms_norm_eps=1e-6,
                      attn_implementation="eager")
    base = Qwen3ForCausalLM(cfg).float()
    base.save_pretrained(path, safe_serialization=True)
    shutil.copy(TOKENIZER, path / "tokenizer.json")
    # tokenizer_class: without it transformers 5 picks the model type's class
    # (Qwen2Tokenizer), which replaces this tokenizer.json's pre-tokenizer with
    # Qwen2's (digits split one by one): AutoTokenizer would not be tokenizer.json.
    (path / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>",
                    "pad_token": "<|endoftext|>", "chat_template": SMOLLM2_TEMPLATE}, indent=1) + "\n")


def write_data(path, n, rng):
    rows = []
    for i in range(n):
        prompt = "Q%d: " % i + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) + "?"
        completion = " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) + "."
        rows.append({"prompt": prompt, "completion": completion})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def encode(tok, eos, row, max_length):
    prompt = tok.encode(row["prompt"], add_special_tokens=False).ids
    completion = tok.encode(row["completion"], add_special_tokens=False).ids
    if not completion or completion[-1] != eos:
        completion.append(eos)
    ids = (prompt + completion)[:max_length]
    labels = ([-100] * len(prompt) + completion)[:max_length]
    return ids, labels


def micro_batch(samples, pad):
    T = max(len(ids) for ids, _ in samples)
    ids = torch.full((len(samples), T), pad, dtype=torch.long)
    labels = torch.full((len(samples), T), -100, dtype=torch.long)
    mask = torch.zeros((len(samples), T), dtype=torch.long)
    for b, (i, l) in enumerate(samples):
        ids[b, :len(i)] = torch.tensor(i)
        labels[b, :len(l)] = torch.tensor(l)
        mask[b, :len(i)] = 1
    return ids, labels, mask


def sorted_adapter_config(d):
    readme = d / "README.md"
    if readme.exists():
        readme.unlink()
    cfg_path = d / "adapter_config.json"
    acfg = json.loads(cfg_path.read_text())
    if isinstance(acfg.get("target_modules"), list):  # peft writes a set: order varies per process
        acfg["target_modules"] = sorted(acfg["target_modules"])
    cfg_path.write_text(json.dumps(acfg, indent=2, sort_keys=True) + "\n")


def main():
    torch.manual_seed(HP["seed"])
    torch.use_deterministic_algorithms(True)
    rng = random.Random(HP["seed"])
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    write_model_dir(OUT / "model")
    n_samples = HP["steps"] * HP["grad_accum"] * HP["batch"]  # one epoch, every step full
    rows = write_data(OUT / "data.jsonl", n_samples, rng)

    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.float32)

    def load_base():
        return AutoModelForCausalLM.from_pretrained(OUT / "model", quantization_config=bnb, dtype=torch.float32,
                                                    device_map="cpu", attn_implementation="eager")

    # The given adapter: PEFT's init with B drawn too, as an adapter trained before would be.
    lcfg = LoraConfig(r=HP["r"], lora_alpha=HP["lora_alpha"], use_rslora=HP["use_rslora"],
                      lora_dropout=HP["lora_dropout"], bias="none", task_type="CAUSAL_LM",
                      target_modules=HP["target_modules"])
    init = get_peft_model(load_base(), lcfg)
    with torch.no_grad():
        for name, p in init.named_parameters():
            if "lora_B" in name:
                p.copy_(0.02 * torch.randn_like(p))
    init.peft_config["default"].base_model_name_or_path = "model"  # relative: the fixture travels
    init.save_pretrained(OUT / "adapter_init")
    sorted_adapter_config(OUT / "adapter_init")
    del init

    # What ./train --adapter does: the given adapter, trainable; a fresh optimizer.
    model = PeftModel.from_pretrained(load_base(), OUT / "adapter_init", is_trainable=True)
    tok = Tokenizer.from_file(str(OUT / "model" / "tokenizer.json"))
    eos, pad = tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")
    samples = [encode(tok, eos, r, HP["max_length"]) for r in rows]

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=HP["lr"], betas=HP["betas"], eps=HP["eps"], weight_decay=HP["weight_decay"],
                            foreach=False)
    sched = get_linear_schedule_with_warmup(opt, HP["warmup_steps"], HP["steps"])
    B, K = HP["batch"], HP["grad_accum"]
    trace = []
    model.train()
    for step in range(HP["steps"]):
        micro = [micro_batch(samples[(step * K + k) * B:(step * K + k + 1) * B], pad) for k in range(K)]
        n_items = sum(int((labels[:, 1:] != -100).sum()) for _, labels, _ in micro)
        lr = sched.get_last_lr()[0]
        total = 0.0
        for ids, labels, mask in micro:
            out = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=torch.tensor(n_items))
            out.loss.backward()
            total += out.loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, HP["max_grad_norm"]).item()
        opt.step()
        sched.step()
        opt.zero_grad()
        trace.append({"step": step + 1, "loss": total, "grad_norm": grad_norm, "lr": lr, "tokens": n_items})
        print(f"step {step + 1:2d} loss {total:.6f} grad_norm {grad_norm:.6f} lr {lr:.3e} tokens {n_items}")

    model.save_pretrained(OUT / "adapter_final")
    sorted_adapter_config(OUT / "adapter_final")
    # The ./train arguments of the same run (paths relative to the fixture folder).
    train_args = ["--model", "model", "--data", "data.jsonl", "--adapter", "adapter_init", "--no-shuffle",
                  "--lr", str(HP["lr"]), "--schedule", HP["schedule"], "--warmup-steps", str(HP["warmup_steps"]),
                  "--weight-decay", str(HP["weight_decay"]), "--batch-size", str(B), "--grad-accum", str(K),
                  "--max-length", str(HP["max_length"]), "--max-grad-norm", str(HP["max_grad_norm"]),
                  "--epochs", "1", "--device", "cpu"]
    (OUT / "trace.json").write_text(json.dumps({"hyperparameters": HP, "train_args": train_args, "steps": trace},
                                               indent=1) + "\n")


if __name__ == "__main__":
    main()
