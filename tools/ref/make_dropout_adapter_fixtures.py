"""Reference fixture for inference with an adapter trained with LoRA dropout:
PEFT's greedy tokens, which ./generate --adapter must reproduce (dropout is a
training-time op; PEFT's model.eval() turns it off, and so does nanoqlora's eval
mode, autograd/var.h).

tests/fixtures/dropout_adapter/ holds
  adapter/adapter_config.json, adapter/adapter_model.safetensors
      a PEFT LoRA adapter on tests/fixtures/model/qwen3_tied (all-linear, r=4,
      lora_alpha=8, lora_dropout=0.1) with random non-zero A and B
  greedy.json   {"prompts": [[ids]...], "greedy": [[ids]...], "new_tokens": 16}: for each
      prompt, transformers' model.generate(do_sample=False) of the PEFT model in eval mode
      (fp32, eager attention), the new tokens only

The base model is read from tests/fixtures/model/qwen3_tied as committed
(tools/ref/make_model_fixtures.py writes it, deterministically). The prompts
are the first draws of a seeded stream for which every greedy step wins by a
clear margin (fp32 rounding cannot flip it) and applying the dropout (PEFT in
train mode) changes the tokens, so the test tells inference with dropout from
inference without.

Run with tools/ref/.venv/bin/python (see tools/ref/make_fixtures.sh).
"""
import json
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import Qwen3ForCausalLM

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "tests" / "fixtures" / "model" / "qwen3_tied"
OUT = ROOT / "tests" / "fixtures" / "dropout_adapter"

DROPOUT = 0.1
NEW_TOKENS = 16
PROMPT_LENGTHS = (6, 9)
PAD_ID = 0


def greedy(model, prompt):
    """The NEW_TOKENS greedy tokens after prompt [1, n], and the smallest top-1 / top-2 logit gap."""
    with torch.no_grad():
        gen = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                             max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, pad_token_id=PAD_ID,
                             eos_token_id=None)
        logits = model(input_ids=gen[:, :-1]).logits[0, prompt.shape[1] - 1:]
        top2 = logits.topk(2, dim=-1).values
    return gen[0, prompt.shape[1]:].tolist(), (top2[:, 0] - top2[:, 1]).min().item()


def main():
    base = Qwen3ForCausalLM.from_pretrained(BASE, torch_dtype=torch.float32, attn_implementation="eager")
    torch.manual_seed(400)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=DROPOUT, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.2 * torch.randn_like(p))  # PEFT inits B = 0, which would test nothing
            elif "lora_A" in name:
                p.copy_(0.3 * torch.randn_like(p))
    model.peft_config["default"].base_model_name_or_path = "tests/fixtures/model/qwen3_tied"
    adapter_dir = OUT / "adapter"
    model.save_pretrained(adapter_dir)
    (adapter_dir / "README.md").unlink(missing_ok=True)
    # PEFT writes target_modules in set order (varies run to run): sort for a stable fixture.
    config_path = adapter_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    assert config["lora_dropout"] == DROPOUT
    config["target_modules"] = sorted(config["target_modules"])
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    # Prompts: the first ones of a seeded stream whose greedy steps all win by a clear margin
    # (so fp32 rounding cannot flip a token) and whose tokens the dropout changes.
    g = torch.Generator().manual_seed(401)
    V = model.config.vocab_size
    result = {"new_tokens": NEW_TOKENS, "prompts": [], "greedy": []}
    for n in PROMPT_LENGTHS:
        for attempt in range(100):
            prompt = torch.randint(1, V, (1, n), generator=g)
            model.eval()
            tokens, margin = greedy(model, prompt)
            model.train()  # PEFT applies the dropout
            torch.manual_seed(402)
            with_dropout, _ = greedy(model, prompt)
            model.eval()
            if margin > 1e-3 and with_dropout != tokens:
                break
        else:
            raise SystemExit(f"no prompt of {n} tokens with a clear greedy margin in 100 draws")
        first_diff = next(i for i, (a, b) in enumerate(zip(tokens, with_dropout)) if a != b)
        print(f"prompt of {n} tokens (draw {attempt}): greedy {tokens} (margin {margin:.4f}); "
              f"with dropout they differ from new token {first_diff}")
        result["prompts"].append(prompt[0].tolist())
        result["greedy"].append(tokens)
    (OUT / "greedy.json").write_text(json.dumps(result) + "\n")
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"dropout_adapter: {len(result['prompts'])} prompts, {size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
